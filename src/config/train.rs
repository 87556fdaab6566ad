//! The `train:` section of options.yml.

use crate::diffusion::prediction::{LossWeighting, Prediction};
use crate::diffusion::reverse::SamplerKind;
use crate::precision::Precision;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

crate::choice! {
    /// `train.optimizer`.
    pub enum Optimizer {
        /// Adam, with L2 weight decay added to the gradient.
        Adam = "adam",
        /// AdamW: decoupled weight decay.
        AdamW = "adamw",
    }
}

crate::choice! {
    /// `train.lr_schedule`: the learning rate after the warm-up.
    pub enum LrSchedule {
        Constant = "constant",
        /// Half a cosine from lr to 0 over the rest of the run.
        Cosine = "cosine",
        /// A straight line from lr to 0 over the rest of the run.
        Linear = "linear",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub batch_size: i64,
    pub n_epochs: i64,
    pub lr: f64,
    /// Where checkpoints, grids, logs and metrics go.
    pub run_dir: PathBuf,
    /// Stop after this many optimizer steps (0 = run all epochs).
    pub max_steps: i64,
    /// Log the loss (metrics, TensorBoard, progress bar) every this many steps.
    pub log_every: i64,
    /// Samples in the grid written after each epoch (0 = no grid).
    pub grid_samples: i64,
    /// The reverse process of the per-epoch grid: `ddim` (with `grid_steps` steps and the
    /// sample section's eta and spacing; eta 1 draws like DDPM) or `ddpm` (all steps).
    pub grid_sampler: SamplerKind,
    /// DDIM steps of the per-epoch grid (at most ddpm.n_steps are taken).
    pub grid_steps: i64,
    /// Per-epoch checkpoints to keep besides `latest` (0 = only `latest`).
    pub keep_checkpoints: i64,
    /// Decay of the exponential moving average of the weights (0 = no EMA). The decay used at
    /// step s is `min(ema_decay, (1 + s) / (10 + s))`, so short runs are not stuck near the
    /// initial weights.
    pub ema_decay: f64,
    /// For conditional networks: the share of labels replaced by the null class, so one model
    /// learns conditional and unconditional generation (classifier-free guidance).
    pub cond_drop_prob: f64,
    /// `adam` (L2 weight decay added to the gradient) or `adamw` (decoupled weight decay).
    pub optimizer: Optimizer,
    /// Update all parameters in libtorch's fused Adam/AdamW kernel (PyTorch's `fused=True`);
    /// `false` takes the per-tensor update (nine kernels per parameter tensor).
    pub fused_optimizer: bool,
    /// On CUDA: capture the whole training step (forward, backward, Adam, EMA) in a CUDA graph
    /// per batch shape after three warm-up steps, and replay it (one process, fp32, fused Adam;
    /// elsewhere the step runs as it is).
    pub cuda_graphs: bool,
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0 = none).
    pub warmup_steps: i64,
    /// What the network learns to predict: `eps` (the noise), `v` or `x0`; stored in the
    /// checkpoint, and every sampler converts it.
    pub prediction: Prediction,
    /// `uniform` or `min-snr` (Min-SNR-gamma, weights `min(SNR, min_snr_gamma)` as an x0 loss).
    pub loss_weighting: LossWeighting,
    pub min_snr_gamma: f64,
    /// `constant`, `cosine` or `linear` decay to 0 after the warm-up, spanning `n_epochs` epochs
    /// (`max_steps` stops a run early without shortening the schedule, so a run stopped there
    /// and resumed follows the same learning rates).
    pub lr_schedule: LrSchedule,
    /// Split each batch into this many micro-batches whose gradients add up (the same update as
    /// the whole batch, in less memory).
    pub grad_accum: i64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub grad_clip: f64,
    /// Random horizontal flips of the training images.
    pub hflip: bool,
    /// `fp32` or `bf16` (bfloat16 autocast on CUDA, and on CPUs where oneDNN supports bf16;
    /// elsewhere training stays fp32, with a warning).
    pub precision: Precision,
    /// Evaluate every this many epochs (0 = never): `eval_samples` DDIM-50 samples scored like
    /// `ddpm eval`, appended to evals.jsonl and plotted in eval.png.
    pub eval_every: i64,
    pub eval_samples: i64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 512,
            n_epochs: 10,
            lr: 1e-3,
            run_dir: "runs/mnist".into(),
            max_steps: 0,
            log_every: 10,
            grid_samples: 64,
            grid_sampler: SamplerKind::Ddim,
            grid_steps: 50,
            keep_checkpoints: 3,
            ema_decay: 0.999,
            cond_drop_prob: 0.1,
            optimizer: Optimizer::Adam,
            fused_optimizer: true,
            cuda_graphs: true,
            weight_decay: 0.0,
            warmup_steps: 0,
            prediction: Prediction::Eps,
            loss_weighting: LossWeighting::Uniform,
            min_snr_gamma: 5.0,
            lr_schedule: LrSchedule::Constant,
            grad_accum: 1,
            grad_clip: 0.0,
            hflip: false,
            precision: Precision::Fp32,
            eval_every: 0,
            eval_samples: 1000,
        }
    }
}

fn check(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("train.{key} = {value} is not allowed: {allowed}"))
    }
}

impl TrainConfig {
    /// Optimizer steps in an epoch of `n_images` (the last batch may be short).
    pub fn steps_per_epoch(&self, n_images: i64) -> i64 {
        (n_images + self.batch_size - 1) / self.batch_size
    }

    /// Optimizer steps this run takes: all epochs, or `max_steps` if fewer.
    pub fn total_steps(&self, n_images: i64) -> i64 {
        let all = self.steps_per_epoch(n_images) * self.n_epochs;
        match self.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        check(self.batch_size >= 1, "batch_size", self.batch_size, "batch_size >= 1")?;
        check(self.n_epochs >= 1, "n_epochs", self.n_epochs, "n_epochs >= 1")?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", self.lr, "lr > 0")?;
        check(!self.run_dir.as_os_str().is_empty(), "run_dir", "\"\"", "a folder path")?;
        check(self.max_steps >= 0, "max_steps", self.max_steps, "max_steps >= 0 (0 = no limit)")?;
        check(self.log_every >= 1, "log_every", self.log_every, "log_every >= 1")?;
        check(self.grid_samples >= 0, "grid_samples", self.grid_samples, "grid_samples >= 0 (0 = none)")?;
        check(self.grid_steps >= 1, "grid_steps", self.grid_steps, "grid_steps >= 1 (more than n_steps means all)")?;
        check(self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, "keep_checkpoints >= 0")?;
        check((0.0..1.0).contains(&self.ema_decay), "ema_decay", self.ema_decay, "0 <= ema_decay < 1 (0 = no EMA)")?;
        check(
            (0.0..1.0).contains(&self.cond_drop_prob),
            "cond_drop_prob",
            self.cond_drop_prob,
            "0 <= cond_drop_prob < 1",
        )?;
        check(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight_decay",
            self.weight_decay,
            "weight_decay >= 0",
        )?;
        check(
            self.grad_accum >= 1 && self.grad_accum <= self.batch_size,
            "grad_accum",
            self.grad_accum,
            &format!("1 <= grad_accum <= batch_size ({})", self.batch_size),
        )?;
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "warmup_steps >= 0 (0 = none)")?;
        check(
            self.grad_clip >= 0.0 && self.grad_clip.is_finite(),
            "grad_clip",
            self.grad_clip,
            "grad_clip >= 0 (0 = no clipping)",
        )?;
        check(
            self.min_snr_gamma > 0.0 && self.min_snr_gamma.is_finite(),
            "min_snr_gamma",
            self.min_snr_gamma,
            "min_snr_gamma > 0 (5 in the paper)",
        )?;
        check(self.eval_every >= 0, "eval_every", self.eval_every, "eval_every >= 0 (0 = never)")?;
        check(self.eval_samples >= 2, "eval_samples", self.eval_samples, "eval_samples >= 2")
    }
}
