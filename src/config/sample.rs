//! The `sample:` section of options.yml: how `ddpm sample`, `ddpm eval` and the per-epoch
//! grids draw images.

use crate::diffusion::ddim::Spacing;
use crate::diffusion::ddpm::StepOptions;
use crate::diffusion::reverse::{ReverseProcess, Sampler, SamplerKind};
use crate::precision::Precision;
use serde::{Deserialize, Serialize};

crate::choice! {
    /// `sample.format` (`--format`): what `ddpm sample` writes.
    pub enum Format {
        /// One PNG grid.
        Grid = "grid",
        /// `000000.png`, `000001.png`, ... in a folder.
        PngDir = "png-dir" | "png" | "pngs",
        /// `arr_0`: `uint8 [N, H, W, C]`; `arr_1`: `int64 [N]` labels of a conditional model.
        Npz = "npz",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    pub n_samples: i64,
    /// The demo's variance: beta_t (true) or the posterior variance (false).
    pub simple_var: bool,
    /// Estimate x0, clamp it to [-1, 1] and step with the posterior mean.
    pub clip_x0: bool,
    /// Images denoised at once; larger counts are done in batches.
    pub batch_size: i64,
    /// Pixels between tiles in the PNG grid.
    pub padding: i64,
    /// `ddpm` (ancestral, every step), `ddim` or `dpm-solver++`.
    pub sampler: SamplerKind,
    /// DDIM and DPM-Solver++: number of steps.
    pub steps: i64,
    /// DDIM: noise scale (0 = deterministic, 1 = DDPM's posterior variance).
    pub eta: f64,
    /// DDIM and DPM-Solver++: `uniform` or `quadratic` timestep spacing.
    pub spacing: Spacing,
    /// Classifier-free guidance weight for conditional models (1 = no guidance).
    pub guidance: f64,
    /// Use the EMA weights when the checkpoint has them.
    pub ema: bool,
    /// What `ddpm sample` writes: `grid` (one PNG), `png-dir` (a PNG per sample) or `npz`
    /// (`arr_0` uint8 NHWC, `arr_1` labels).
    pub format: Format,
    /// `fp32` or `bf16`: the network under bfloat16 autocast (CUDA, and CPUs whose oneDNN
    /// runs bf16; `ddpm sample` and `ddpm eval` refuse it elsewhere, grids stay fp32 there).
    pub precision: Precision,
    /// CUDA: replay the network's kernels from a CUDA graph captured once per batch shape
    /// (fp32; no effect on the CPU or with precision bf16).
    pub cuda_graphs: bool,
    /// CPU: the demo network's blocks run oneDNN-fused conv + ReLU and conv + add + ReLU calls,
    /// the paper UNet's residual blocks a fused conv + residual add, wherever no gradient is
    /// recorded (sampling, grids, evaluation; fp32).
    pub freeze: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            n_samples: 81,
            simple_var: true,
            clip_x0: false,
            batch_size: 256,
            padding: 0,
            sampler: SamplerKind::Ddpm,
            steps: 50,
            eta: 1.0,
            spacing: Spacing::Uniform,
            guidance: 2.0,
            ema: true,
            format: Format::Grid,
            precision: Precision::Fp32,
            cuda_graphs: true,
            freeze: true,
        }
    }
}

fn check(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("sample.{key} = {value} is not allowed: {allowed}"))
    }
}

impl SampleConfig {
    /// Checks the values for a schedule of `n_steps`; the message names the key.
    pub fn validate(&self, n_steps: i64) -> Result<(), String> {
        check(self.n_samples >= 1, "n_samples", self.n_samples, "n_samples >= 1")?;
        check(self.batch_size >= 1, "batch_size", self.batch_size, "batch_size >= 1")?;
        check((0..=256).contains(&self.padding), "padding", self.padding, "0 <= padding <= 256 pixels")?;
        let strided = self.sampler != SamplerKind::Ddpm;
        check(
            self.steps >= 1 && (!strided || self.steps <= n_steps),
            "steps",
            self.steps,
            &format!("1 <= steps <= n_steps ({n_steps})"),
        )?;
        check((0.0..=1.0).contains(&self.eta), "eta", self.eta, "0 <= eta <= 1")?;
        check(self.guidance >= 0.0 && self.guidance.is_finite(), "guidance", self.guidance, "guidance >= 0 (1 = none)")
    }

    /// The reverse process these settings describe (guidance as configured).
    /// `precision: bf16` where the device cannot run it is a one-line error.
    pub fn check_precision(&self, device: tch::Device) -> Result<(), crate::error::UsageError> {
        if self.precision == Precision::Bf16 && !crate::precision::bf16_available(device) {
            return Err(crate::error::UsageError(
                "sample.precision = bf16: this CPU's oneDNN does not run bfloat16 (it needs AVX512-BF16 or AMX), \
                 and bf16 emulated here is slower than fp32: use fp32, or a GPU"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn sampler_config(&self) -> ReverseProcess {
        self.reverse_process(self.sampler, self.steps)
    }

    /// The reverse process `kind` in `steps` steps (DDIM, DPM-Solver++) with these settings'
    /// eta, spacing, variance, clipping and guidance.
    pub fn reverse_process(&self, kind: SamplerKind, steps: i64) -> ReverseProcess {
        let sampler = match kind {
            SamplerKind::Ddpm => Sampler::Ddpm,
            SamplerKind::Ddim => Sampler::Ddim { steps: steps as usize, eta: self.eta, spacing: self.spacing },
            SamplerKind::DpmSolverPP => Sampler::DpmSolverPP { steps: steps as usize, spacing: self.spacing, order: 2 },
        };
        ReverseProcess {
            sampler,
            opts: StepOptions { simple_var: self.simple_var, clip_x0: self.clip_x0 },
            guidance: self.guidance,
            bf16: self.precision == Precision::Bf16,
            cuda_graphs: self.cuda_graphs,
        }
    }
}
