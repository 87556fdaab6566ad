//! DDPM (Ho et al. 2020): `add_noise` (eq. 4) for training and the ancestral reverse `step`
//! (Algorithm 2), as in the demo's `sample_forward` / `sample_backward`.

use super::Schedule;
use tch::{Device, Kind, Tensor};

/// The scheduler of DDPM (diffusers' name): the schedule on the host plus the per-timestep
/// factors of `add_noise` on the device, and the reverse `step`.
#[derive(Debug)]
pub struct DdpmScheduler {
    pub schedule: Schedule,
    sqrt_alphas_cumprod: Tensor,
    sqrt_one_minus_alphas_cumprod: Tensor,
}

/// Options of a reverse step.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    /// `beta_t` as the variance (the demo's default) instead of the posterior variance.
    pub simple_var: bool,
    /// Estimate x0, clamp it to [-1, 1] and use the posterior mean.
    pub clip_x0: bool,
}

impl DdpmScheduler {
    pub fn new(schedule: Schedule, device: Device) -> Self {
        let to_dev = |v: Vec<f64>| Tensor::from_slice(&v).to_kind(Kind::Float).to_device(device);
        let sqrt_ab = schedule.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let sqrt_1m = schedule.alphas_cumprod.iter().map(|a| (1.0 - a).sqrt()).collect();
        Self { sqrt_alphas_cumprod: to_dev(sqrt_ab), sqrt_one_minus_alphas_cumprod: to_dev(sqrt_1m), schedule }
    }

    pub fn n_steps(&self) -> i64 {
        self.schedule.n_steps() as i64
    }

    /// `(sqrt(abar_t), sqrt(1 - abar_t))` for each sample's `t`, shaped `[N, 1, 1, 1]`.
    pub fn coefficients(&self, t: &Tensor) -> (Tensor, Tensor) {
        let n = t.size()[0];
        let a = self.sqrt_alphas_cumprod.index_select(0, t).view([n, 1, 1, 1]);
        let b = self.sqrt_one_minus_alphas_cumprod.index_select(0, t).view([n, 1, 1, 1]);
        (a, b)
    }

    /// `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, one `t` per sample.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &Tensor) -> Tensor {
        let (a, b) = self.coefficients(t);
        x0 * a + noise * b
    }

    /// One reverse step from `x_t` to `x_{t-1}` given the predicted noise and a fresh `z`
    /// (ignored at t = 0).
    pub fn step(&self, eps: &Tensor, t: usize, x_t: &Tensor, z: &Tensor, opts: StepOptions) -> Tensor {
        let s = &self.schedule;
        let (alpha, abar, beta) = (s.alphas[t], s.alphas_cumprod[t], s.betas[t]);
        let mean = if opts.clip_x0 {
            // x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), clamped; posterior mean (eq. 7).
            let x0 = ((x_t - eps * (1.0 - abar).sqrt()) / abar.sqrt()).clamp(-1.0, 1.0);
            let abar_prev = s.alphas_cumprod_prev(t);
            let c0 = abar_prev.sqrt() * beta / (1.0 - abar);
            let ct = alpha.sqrt() * (1.0 - abar_prev) / (1.0 - abar);
            x0 * c0 + x_t * ct
        } else {
            // eq. 11: (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
            (x_t - eps * ((1.0 - alpha) / (1.0 - abar).sqrt())) / alpha.sqrt()
        };
        if t == 0 {
            mean
        } else {
            mean + z * s.step_variance(t, opts.simple_var).sqrt()
        }
    }
}
