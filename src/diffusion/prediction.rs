//! What the network predicts and how its loss is weighted: epsilon (Ho et al. 2020), v
//! (Salimans & Ho 2022, `v = sqrt(abar) eps - sqrt(1 - abar) x0`) or x0; uniform or Min-SNR-gamma
//! weighting (Hang et al. 2023). The samplers work with epsilon: [`AsEps`] converts the output.
//!
//! With `a = sqrt(abar_t)`, `b = sqrt(1 - abar_t)` and `x_t = a x0 + b eps`:
//! `x0 = a x_t - b v`, `eps = b x_t + a v`, `eps = (x_t - a x0) / b`.

use super::DdpmScheduler;
use crate::model::Denoiser;
use tch::{Kind, Tensor};

crate::choice! {
    /// `train.prediction`: the network's target, stored in the checkpoint.
    pub enum Prediction {
        /// The noise (the paper's and the demo's).
        Eps = "eps" | "epsilon",
        /// `sqrt(abar) eps - sqrt(1 - abar) x0`.
        V = "v" | "v-prediction",
        /// The clean image.
        X0 = "x0" | "sample",
    }
}

crate::choice! {
    /// `train.loss_weighting`.
    pub enum LossWeighting {
        /// Every timestep weighs the same (the paper's "simple" loss).
        Uniform = "uniform",
        /// Min-SNR-gamma: the loss at t weighs as an x0 loss of weight min(SNR(t), gamma).
        MinSnr = "min-snr" | "minsnr",
    }
}

impl Prediction {
    /// The training target for `x_t = a x0 + b noise` (`a`, `b` shaped to broadcast).
    pub fn target(self, x0: &Tensor, noise: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        match self {
            Self::Eps => noise.shallow_clone(),
            Self::V => noise * a - x0 * b,
            Self::X0 => x0.shallow_clone(),
        }
    }

    /// The noise implied by the network's output at `x_t`.
    pub fn to_eps(self, out: &Tensor, x_t: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        match self {
            Self::Eps => out.shallow_clone(),
            Self::V => x_t * b + out * a,
            Self::X0 => (x_t - out * a) / b,
        }
    }

    /// The clean image implied by the network's output at `x_t`.
    pub fn to_x0(self, out: &Tensor, x_t: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        match self {
            Self::Eps => (x_t - out * b) / a,
            Self::V => x_t * a - out * b,
            Self::X0 => out.shallow_clone(),
        }
    }

    /// Min-SNR-gamma weights of this target's MSE for samples of signal-to-noise ratio `snr`
    /// (`abar / (1 - abar)`): the x0-loss weight `min(snr, gamma)` divided by how much the target's
    /// MSE already weighs x0 errors (eps: `snr`; v: `snr + 1`; x0: 1).
    pub fn min_snr_weights(self, snr: &Tensor, gamma: f64) -> Tensor {
        let clipped = snr.clamp_max(gamma);
        match self {
            Self::Eps => clipped / snr,
            Self::V => clipped / (snr + 1.0),
            Self::X0 => clipped,
        }
    }
}

/// A network of any target seen as a noise predictor, for the samplers.
pub struct AsEps<'a> {
    pub net: &'a dyn Denoiser,
    pub prediction: Prediction,
    pub scheduler: &'a DdpmScheduler,
    /// Run the network under bfloat16 autocast; its output comes back as float32.
    pub bf16: bool,
}

impl Denoiser for AsEps<'_> {
    fn forward(&self, xs: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let out = match self.bf16 {
            true => crate::precision::with_bf16_autocast(xs.device(), || self.net.forward(xs, t, labels))
                .map(|o| o.to_kind(Kind::Float))
                .unwrap_or_else(|_| self.net.forward(xs, t, labels)),
            false => self.net.forward(xs, t, labels),
        };
        if self.prediction == Prediction::Eps {
            return out;
        }
        let (a, b) = self.scheduler.coefficients(t);
        self.prediction.to_eps(&out.to_kind(Kind::Float), xs, &a, &b)
    }

    fn num_classes(&self) -> i64 {
        self.net.num_classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::Schedule;
    use tch::Device;

    #[test]
    fn targets_convert_back_to_x0_and_eps() {
        tch::manual_seed(0);
        let sched = DdpmScheduler::new(Schedule::linear(1000, 1e-4, 0.02), Device::Cpu);
        let x0 = Tensor::randn([4, 1, 3, 3], (Kind::Double, Device::Cpu)).to_kind(Kind::Float);
        let noise = Tensor::randn([4, 1, 3, 3], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 10, 500, 999]);
        let (a, b) = sched.coefficients(&t);
        let x_t = sched.add_noise(&x0, &noise, &t);
        for p in [Prediction::Eps, Prediction::V, Prediction::X0] {
            let target = p.target(&x0, &noise, &a, &b);
            let eps = p.to_eps(&target, &x_t, &a, &b);
            let back = p.to_x0(&target, &x_t, &a, &b);
            // x0 from eps at t = 999 divides by sqrt(abar) = 6e-3: allow for the float rounding.
            assert!(eps.allclose(&noise, 1e-3, 1e-3, false), "{p}: eps");
            assert!(back.allclose(&x0, 1e-2, 1e-2, false), "{p}: x0");
        }
    }

    /// SNR at t = 0 and 999 of the linear schedule: abar_0 = 0.9999 (snr 9999) and
    /// abar_999 = 4.0358297653756754e-05 (snr 4.0359926e-05); gamma 5.
    #[test]
    fn min_snr_weights_golden() {
        let snr = Tensor::from_slice(&[9999.0f64, 4.0358297653756754e-05 / (1.0 - 4.0358297653756754e-05)]);
        let w = |p: Prediction| Vec::<f64>::try_from(&p.min_snr_weights(&snr, 5.0)).unwrap();
        let s999 = 4.0358297653756754e-05 / (1.0 - 4.0358297653756754e-05);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.abs().max(1.0);
        let (e, v, x) = (w(Prediction::Eps), w(Prediction::V), w(Prediction::X0));
        assert!(close(e[0], 5.0 / 9999.0) && close(e[1], 1.0), "{e:?}");
        assert!(close(v[0], 5.0 / 10000.0) && close(v[1], s999 / (s999 + 1.0)), "{v:?}");
        assert!(close(x[0], 5.0) && close(x[1], s999), "{x:?}");
    }
}
