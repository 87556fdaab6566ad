//! The denoising loss (Algorithm 1 of Ho et al. 2020, with the prediction targets and Min-SNR
//! weights of `prediction.rs`): a batch as the network sees it and the mean squared error of
//! its output against the target.

use crate::model::Denoiser;
use tch::{Kind, Reduction, Tensor};

/// What the network is fitted to in a step: its target and, for Min-SNR weighting, one weight
/// per sample.
pub struct Target {
    pub value: Tensor,
    pub weights: Option<Tensor>,
}

impl Target {
    /// Rows `[lo, lo + n)`.
    pub fn narrow(&self, lo: i64, n: i64) -> Target {
        Target { value: self.value.narrow(0, lo, n), weights: self.weights.as_ref().map(|w| w.narrow(0, lo, n)) }
    }
}

/// A (micro-)batch as the network sees it: the noisy images, their timesteps and labels, and
/// what the output is fitted to.
pub struct NetBatch {
    pub x_t: Tensor,
    pub t: Tensor,
    pub labels: Option<Tensor>,
    pub target: Target,
}

impl NetBatch {
    /// Rows `[lo, lo + n)`.
    pub fn narrow(&self, lo: i64, n: i64) -> NetBatch {
        NetBatch {
            x_t: self.x_t.narrow(0, lo, n),
            t: self.t.narrow(0, lo, n),
            labels: self.labels.as_ref().map(|l| l.narrow(0, lo, n)),
            target: self.target.narrow(lo, n),
        }
    }

    pub fn len(&self) -> i64 {
        self.x_t.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The training loss: the mean squared error between the target and the network's output (in
/// fp32 whatever the autocast dtype); with weights, each sample's mean error times its weight,
/// averaged.
pub fn denoising_loss(net: &dyn Denoiser, b: &NetBatch) -> Tensor {
    let out = net.forward(&b.x_t, &b.t, b.labels.as_ref()).to_kind(Kind::Float);
    match &b.target.weights {
        None => out.mse_loss(&b.target.value, Reduction::Mean),
        Some(w) => {
            ((out - &b.target.value).square().mean_dim(&[1i64, 2, 3][..], false, Kind::Float) * w).mean(Kind::Float)
        }
    }
}
