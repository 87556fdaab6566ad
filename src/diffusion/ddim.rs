//! DDIM sampling (Song et al. 2021, eq. 12): a deterministic (eta = 0) or stochastic
//! (eta = 1 equals DDPM's fixed-small step) update over a subsequence of the training
//! timesteps, so 50 steps can stand in for 1000.

use super::Schedule;
use tch::Tensor;

crate::choice! {
/// How the sampling timesteps are spread over `0..n_steps`. Both reach the top of the
/// schedule (`n_steps - 1`, pure noise) for every step count and end at 0.
pub enum Spacing {
    /// Evenly spaced, rounded: `round(i (n_steps - 1) / (steps - 1))` (improved-diffusion's
    /// `space_timesteps` for one section). With `steps` dividing `n_steps - 1` it is the DDIM
    /// paper's `range(0, T, T / S)` stretched to end at T - 1.
    Uniform = "uniform" | "linear",
    /// Denser near t = 0: `round((i / (steps - 1))^2 (n_steps - 1))`, pushed apart where
    /// rounding would repeat a step. (The DDIM paper's version stops at 0.8 T.)
    Quadratic = "quadratic" | "quad",
}
}

/// The timesteps to visit, ascending and distinct: `steps` of them (at most `n_steps`), the
/// first 0 and the last `n_steps - 1` (a single step is `[n_steps - 1]`).
pub fn timesteps(n_steps: usize, steps: usize, spacing: Spacing) -> Vec<usize> {
    let n = n_steps.max(1);
    let steps = steps.clamp(1, n);
    if steps == 1 {
        return vec![n - 1];
    }
    let top = (n - 1) as f64;
    let frac = |i: usize| i as f64 / (steps - 1) as f64;
    let mut ts: Vec<usize> = (0..steps)
        .map(|i| match spacing {
            Spacing::Uniform => (frac(i) * top).round() as usize,
            Spacing::Quadratic => (frac(i) * frac(i) * top).round() as usize,
        })
        .collect();
    // Strictly increasing: push repeats up, then keep room for the steps above each one.
    for i in 1..steps {
        ts[i] = ts[i].max(ts[i - 1] + 1);
    }
    for (i, t) in ts.iter_mut().enumerate() {
        *t = (*t).min(n - steps + i);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_timesteps() {
        // Golden lists: improved-diffusion's space_timesteps(1000, [4]) is {0, 333, 666, 999}.
        assert_eq!(timesteps(1000, 4, Spacing::Uniform), vec![0, 333, 666, 999]);
        assert_eq!(timesteps(1000, 1, Spacing::Uniform), vec![999]);
        assert_eq!(timesteps(1000, 2, Spacing::Uniform), vec![0, 999]);
        // (i / 3)^2 * 999 = 0, 111, 444, 999.
        assert_eq!(timesteps(1000, 4, Spacing::Quadratic), vec![0, 111, 444, 999]);
        assert_eq!(timesteps(10, 100, Spacing::Uniform), (0..10).collect::<Vec<_>>());
    }

    /// Every step count of a 1000-step schedule, both spacings: the sampler's list (descending)
    /// has the requested length, no repeats, and starts within one stride of t = 999 (so the
    /// reverse process starts from pure noise: `--steps 600` and `--steps 501` once started at
    /// t = 599 and t = 500).
    #[test]
    fn ddim_timesteps_start_at_the_top_for_every_step_count() {
        let n = 1000;
        for spacing in [Spacing::Uniform, Spacing::Quadratic] {
            for steps in 1..=n {
                let ts = timesteps(n, steps, spacing);
                assert_eq!(ts.len(), steps, "{spacing:?} {steps}");
                assert!(ts.windows(2).all(|w| w[0] < w[1]), "{spacing:?} {steps}: not strictly increasing");
                let stride = n / steps;
                assert!(ts[steps - 1] + stride >= n - 1, "{spacing:?} {steps}: starts at {}", ts[steps - 1]);
                assert!(ts[steps - 1] < n, "{spacing:?} {steps}");
                if steps > 1 {
                    assert_eq!(ts[0], 0, "{spacing:?} {steps}");
                }
            }
        }
        for steps in [600, 501] {
            assert_eq!(*timesteps(n, steps, Spacing::Uniform).last().unwrap(), 999, "{steps}");
        }
    }
}
