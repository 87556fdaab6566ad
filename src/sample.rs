//! `ddpm sample`: rebuild the model from a checkpoint, run the reverse process under no_grad
//! with a progress bar over the steps, write a PNG grid (and optionally the raw tensor).

use crate::checkpoint::{self, Checkpoint, ModelInfo};
use crate::config::{Config, ConfigError};
use crate::diffusion::ddpm::SampleOptions;
use crate::diffusion::{Ddpm, Schedule};
use crate::{device, grid, logging, model};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Kind, Tensor};

/// What to sample, beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct SampleRequest {
    pub checkpoint: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub save_tensor: Option<PathBuf>,
}

/// A loaded model ready to sample.
pub struct Loaded {
    pub vs: nn::VarStore,
    pub net: Box<dyn model::Denoiser>,
    pub ddpm: Ddpm,
    pub info: ModelInfo,
}

/// Loads a checkpoint onto `device`; files without our metadata (the demo's own state_dict)
/// take the architecture from `cfg`.
pub fn load_model(path: &std::path::Path, cfg: &Config, device: tch::Device) -> Result<Loaded> {
    let ckpt = Checkpoint::read(path)?;
    let info = match &ckpt.info {
        Some(i) => i.clone(),
        None => {
            tracing::info!(
                "{} has no ddpm metadata: taking the network from the config",
                path.display()
            );
            ModelInfo::from_config(cfg)
        }
    };
    let mut vs = nn::VarStore::new(device);
    let net = model::build(&vs, &info.network, info.image_shape, info.ddpm.n_steps);
    ckpt.load_into(&mut vs)?;
    let ddpm = Ddpm::new(
        Schedule::linear(info.ddpm.n_steps, info.ddpm.min_beta, info.ddpm.max_beta),
        device,
    );
    Ok(Loaded {
        vs,
        net,
        ddpm,
        info,
    })
}

/// Draws `n` samples in batches of `batch`, seeded, with a progress bar.
pub fn draw(loaded: &Loaded, n: i64, batch: i64, seed: u64, opts: SampleOptions) -> Tensor {
    let device = loaded.vs.device();
    let [c, h, w] = loaded.info.image_shape;
    tch::manual_seed(seed as i64);
    let steps = loaded.ddpm.n_steps() as u64;
    let chunks = (n + batch - 1) / batch;
    let bar = logging::progress_bar(
        steps * chunks as u64,
        "sampling [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}",
    );
    let mut parts = Vec::new();
    for i in 0..chunks {
        let b = batch.min(n - i * batch);
        let noise = Tensor::randn([b, c, h, w], (Kind::Float, device));
        parts.push(
            loaded
                .ddpm
                .sample(loaded.net.as_ref(), noise, opts, |_, _| bar.inc(1)),
        );
    }
    bar.finish_and_clear();
    Tensor::cat(&parts, 0)
}

/// `ddpm sample`.
pub fn sample(cfg: &Config, req: &SampleRequest) -> Result<PathBuf> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    let path = req
        .checkpoint
        .clone()
        .unwrap_or_else(|| checkpoint::latest_path(&cfg.train.run_dir));
    if !path.exists() {
        bail!(ConfigError(format!(
            "no checkpoint at {}: train first (`ddpm train --config ...`) or pass --checkpoint PATH",
            path.display()
        )));
    }
    let loaded = load_model(&path, cfg, device)?;
    let n = cfg.sample.n_samples;
    let [c, h, w] = loaded.info.image_shape;
    let bytes = n as f64 * (c * h * w) as f64 * 4.0;
    if bytes > 8e9 {
        bail!(ConfigError(format!(
            "--n-samples {n} would need {:.1} GB for the results alone; ask for fewer (at most {})",
            bytes / 1e9,
            (8e9 / ((c * h * w) as f64 * 4.0)) as i64
        )));
    }
    let out = req
        .out
        .clone()
        .unwrap_or_else(|| cfg.train.run_dir.join("samples.png"));
    let opts = SampleOptions {
        simple_var: cfg.sample.simple_var,
        clip_x0: cfg.sample.clip_x0,
    };
    tracing::info!(
        "sampling {n} images from {} (epoch {}, step {}) with {} steps on {}",
        path.display(),
        loaded.info.epoch,
        loaded.info.step,
        loaded.ddpm.n_steps(),
        device::describe(device)
    );
    let started = Instant::now();
    let xs = draw(&loaded, n, cfg.sample.batch_size.min(n), cfg.seed, opts);
    tracing::info!(
        "sampled {n} images in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    grid::save_grid(&xs, &out, cfg.sample.padding)
        .with_context(|| format!("cannot write the grid to {}", out.display()))?;
    tracing::info!("wrote {}", out.display());
    if let Some(t) = &req.save_tensor {
        let xs = xs.to_device(tch::Device::Cpu);
        Tensor::write_safetensors(&[("samples", &xs)], t)
            .with_context(|| format!("cannot write samples to {}", t.display()))?;
        tracing::info!("wrote {}", t.display());
    }
    Ok(out)
}
