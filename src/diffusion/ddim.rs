//! DDIM sampling (Song et al. 2021, eq. 12): a deterministic (eta = 0) or stochastic
//! (eta = 1 equals DDPM's fixed-small step) update over a subsequence of the training
//! timesteps, so 50 steps can stand in for 1000.

use super::Schedule;
use tch::Tensor;

/// How the sampling timesteps are spread over `0..n_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `0, k, 2k, ...` with `k = n_steps / steps` (the DDIM paper's choice).
    Uniform,
    /// Denser near t = 0: `(linspace(0, sqrt(0.8 n_steps), steps))^2`.
    Quadratic,
}

impl Spacing {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_lowercase().as_str() {
            "uniform" | "linear" => Some(Self::Uniform),
            "quadratic" | "quad" => Some(Self::Quadratic),
            _ => None,
        }
    }
}

/// The timesteps to visit, ascending and distinct, always starting at 0.
pub fn timesteps(n_steps: usize, steps: usize, spacing: Spacing) -> Vec<usize> {
    let steps = steps.clamp(1, n_steps);
    let mut ts: Vec<usize> = match spacing {
        Spacing::Uniform => {
            let k = n_steps / steps;
            (0..steps).map(|i| i * k).collect()
        }
        Spacing::Quadratic => {
            let top = (n_steps as f64 * 0.8).sqrt();
            (0..steps)
                .map(|i| {
                    let f = if steps == 1 { 0.0 } else { top * i as f64 / (steps - 1) as f64 };
                    ((f * f) as usize).min(n_steps - 1)
                })
                .collect()
        }
    };
    ts.dedup();
    ts
}

/// One DDIM step from `x_t` to `x_prev` for `(t, prev)` (`prev = None` means past t = 0,
/// abar = 1). `z` is the fresh noise, used when `eta > 0`.
pub fn step(
    s: &Schedule,
    eps: &Tensor,
    x_t: &Tensor,
    (t, prev): (usize, Option<usize>),
    z: &Tensor,
    eta: f64,
    clip_x0: bool,
) -> Tensor {
    let abar = s.alphas_cumprod[t];
    let abar_prev = prev.map_or(1.0, |p| s.alphas_cumprod[p]);
    // x0 predicted from the noise (eq. 12's "predicted x0").
    let mut x0 = (x_t - eps * (1.0 - abar).sqrt()) / abar.sqrt();
    let mut eps = eps.shallow_clone();
    if clip_x0 {
        x0 = x0.clamp(-1.0, 1.0);
        eps = (x_t - &x0 * abar.sqrt()) / (1.0 - abar).sqrt();
    }
    let sigma = eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)).max(0.0).sqrt();
    let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
    let out = x0 * abar_prev.sqrt() + eps * dir;
    if sigma > 0.0 {
        out + z * sigma
    } else {
        out
    }
}
