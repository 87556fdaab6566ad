//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", Algorithm 2): a second-order multistep solver of the probability-flow
//! ODE in data prediction, so 10-25 steps can stand in for DDPM's 1000.
//!
//! With `alpha_t = sqrt(abar_t)`, `sigma_t = sqrt(1 - abar_t)`, `lambda_t = log(alpha_t / sigma_t)`
//! and `h_i = lambda_{t_i} - lambda_{t_{i-1}}`, a step from `t_{i-1}` to `t_i` is
//!
//! `x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i`
//!
//! with `D_i = x0_{i-1}` (first order, the first step) or
//! `D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}`, `r_i = h_{i-1} / h_i` (second order).
//! The last step goes to `sigma = 0` (past t = 0), where `h` is infinite: it is first order and
//! returns the predicted x0, as DDIM's last step does. The first-order step is DDIM with eta 0.
//!
//! The solver visits `steps` timesteps spread like DDIM's but without t = 0 (`steps + 1` points,
//! the lowest dropped; see `reverse::visited_steps`), so its last step leaves from the lowest
//! visited t, as diffusers' `DPMSolverMultistepScheduler` does (linspace spacing, final sigma
//! zero). Visiting t = 0 as well makes the step before it extrapolate from a `h` ratio near 0.2
//! (for 10 steps of the linear schedule) and loses the second order's gain.

use super::Schedule;
use tch::Tensor;

/// `lambda_t = log(alpha_t / sigma_t)`, half the log signal-to-noise ratio.
pub fn lambda(s: &Schedule, t: usize) -> f64 {
    let abar = s.alphas_cumprod[t];
    0.5 * (abar / (1.0 - abar)).ln()
}

/// The solver's memory between steps: the previous x0 prediction and its step's `h`.
#[derive(Default)]
pub struct DpmSolverPP {
    prev: Option<(Tensor, f64)>,
    /// 1 = first order throughout (DDIM with eta 0), 2 = DPM-Solver++(2M).
    pub order: usize,
}

impl DpmSolverPP {
    pub fn new(order: usize) -> Self {
        Self { prev: None, order: order.clamp(1, 2) }
    }

    /// One step from `x_t` at `t` to `prev` (`None`: past t = 0, sigma = 0), given the network's
    /// noise prediction `eps` at `(x_t, t)`.
    pub fn step(
        &mut self,
        s: &Schedule,
        eps: &Tensor,
        x_t: &Tensor,
        (t, prev): (usize, Option<usize>),
        clip_x0: bool,
    ) -> Tensor {
        let abar = s.alphas_cumprod[t];
        let (alpha, sigma) = (abar.sqrt(), (1.0 - abar).sqrt());
        let mut x0 = (x_t - eps * sigma) / alpha;
        if clip_x0 {
            x0 = x0.clamp(-1.0, 1.0);
        }
        let Some(p) = prev else {
            // To sigma = 0: exp(-h) = 0 and alpha = 1, so x = D = x0 (first order).
            self.prev = None;
            return x0;
        };
        let abar_p = s.alphas_cumprod[p];
        let (alpha_p, sigma_p) = (abar_p.sqrt(), (1.0 - abar_p).sqrt());
        let h = lambda(s, p) - lambda(s, t);
        let d = match (&self.prev, self.order) {
            (Some((x0_before, h_before)), 2) => {
                let r = h_before / h;
                &x0 * (1.0 + 0.5 / r) - x0_before * (0.5 / r)
            }
            _ => x0.shallow_clone(),
        };
        let out = x_t * (sigma_p / sigma) - d * (alpha_p * ((-h).exp() - 1.0));
        self.prev = Some((x0, h));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_golden_and_monotone() {
        let s = Schedule::linear(1000, 1e-4, 0.02);
        // abar_0 = 0.9999: lambda = 0.5 ln(9999).
        assert!((lambda(&s, 0) - 0.5 * 9999f64.ln()).abs() < 1e-9);
        assert!((0..999).all(|t| lambda(&s, t + 1) < lambda(&s, t)));
    }
}
