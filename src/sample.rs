//! `ddpm sample`: rebuild the model from a checkpoint (its EMA weights when present), run the
//! reverse process (DDPM or DDIM, guided for conditional models) under no_grad with a progress
//! bar over the steps, write a PNG grid, and optionally the raw tensor and pictures of the
//! process.

use crate::checkpoint::{self, Checkpoint, ModelInfo};
use crate::config::{Config, ConfigError};
use crate::diffusion::ddim::Spacing;
use crate::diffusion::ddpm::SampleOptions;
use crate::diffusion::sampler::{self, Sampler, SamplerConfig};
use crate::diffusion::{Ddpm, Schedule};
use crate::{device, grid, logging, model};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Kind, Tensor};

/// Which classes to draw.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelChoice {
    One(i64),
    /// One row per class.
    All,
}

/// What to sample, beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct SampleRequest {
    pub checkpoint: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub save_tensor: Option<PathBuf>,
    pub label: Option<LabelChoice>,
    /// `--guidance` given explicitly (an error for unconditional models).
    pub guidance_given: bool,
    /// Also write the reverse process as a PNG (a row per sample) and a GIF.
    pub process: bool,
}

/// A loaded model ready to sample.
pub struct Loaded {
    pub vs: nn::VarStore,
    pub net: Box<dyn model::Denoiser>,
    pub ddpm: Ddpm,
    pub info: ModelInfo,
    /// Whether the EMA weights were loaded.
    pub ema: bool,
    /// Convolutions run in the channels-last memory format (weights and inputs).
    pub channels_last: bool,
}

/// Loads a checkpoint onto `device`, preferring its EMA companion when `use_ema`; files
/// without our metadata (the demo's own state_dict) take the architecture from `cfg`.
pub fn load_model(path: &Path, cfg: &Config, device: tch::Device, use_ema: bool) -> Result<Loaded> {
    let ckpt = Checkpoint::read(path)?;
    let info = match &ckpt.info {
        Some(i) => i.clone(),
        None => {
            tracing::info!("{} has no ddpm metadata: taking the network from the config", path.display());
            ModelInfo::from_config(cfg)
        }
    };
    let mut vs = nn::VarStore::new(device);
    let net = model::build(&vs, &info.network, info.image_shape, info.ddpm.n_steps);
    let ema_path = checkpoint::companion(path, "ema");
    let ema = use_ema && ema_path.exists();
    if ema {
        Checkpoint::read(&ema_path)?.load_into(&mut vs)?;
    } else {
        ckpt.load_into(&mut vs)?;
    }
    let ddpm = Ddpm::new(Schedule::linear(info.ddpm.n_steps, info.ddpm.min_beta, info.ddpm.max_beta), device);
    if cfg.channels_last {
        model::vs_to_channels_last(&vs);
    }
    Ok(Loaded { vs, net, ddpm, info, ema, channels_last: cfg.channels_last })
}

/// The sampler settings of a configuration.
pub fn sampler_config(cfg: &Config) -> Result<SamplerConfig> {
    let s = &cfg.sample;
    let sampler = match s.sampler.to_lowercase().as_str() {
        "ddpm" => Sampler::Ddpm,
        "ddim" => Sampler::Ddim {
            steps: s.steps as usize,
            eta: s.eta,
            spacing: Spacing::parse(&s.spacing)
                .ok_or_else(|| ConfigError(format!("sample.spacing = {:?}: use uniform or quadratic", s.spacing)))?,
        },
        other => bail!(ConfigError(format!("sample.sampler = {other:?}: use ddpm or ddim"))),
    };
    Ok(SamplerConfig {
        sampler,
        opts: SampleOptions { simple_var: s.simple_var, clip_x0: s.clip_x0 },
        guidance: s.guidance,
    })
}

/// Draws one image per entry of `labels` (or `n` unconditional ones) in batches of `batch`,
/// seeded, with a progress bar; `frames` (if given) collects `keep` evenly spaced snapshots.
pub fn draw(
    loaded: &Loaded,
    n: i64,
    labels: Option<&Tensor>,
    batch: i64,
    seed: u64,
    sc: &SamplerConfig,
    mut frames: Option<(&mut Vec<Tensor>, usize)>,
) -> Tensor {
    let device = loaded.vs.device();
    let [c, h, w] = loaded.info.image_shape;
    tch::manual_seed(seed as i64);
    let steps = sampler::visited_steps(&loaded.ddpm, sc.sampler).len();
    let chunks = (n + batch - 1) / batch;
    let bar = logging::progress_bar(
        steps as u64 * chunks as u64,
        "sampling [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}",
    );
    let keep_at: Vec<usize> = match &frames {
        Some((_, k)) => (1..=*k).map(|i| i * steps / k - 1).collect(),
        None => Vec::new(),
    };
    let mut parts = Vec::new();
    let mut chunk_frames: Vec<Vec<Tensor>> = Vec::new();
    for i in 0..chunks {
        let b = batch.min(n - i * batch);
        let mut noise = Tensor::randn([b, c, h, w], (Kind::Float, device));
        if loaded.channels_last {
            noise = model::channels_last(&noise);
        }
        let y = labels.map(|l| l.narrow(0, i * batch, b));
        let mut mine = vec![noise.to_device(tch::Device::Cpu)];
        let x = sampler::sample(loaded.net.as_ref(), &loaded.ddpm, noise, y.as_ref(), sc, |j, _, x| {
            bar.inc(1);
            if keep_at.contains(&j) {
                mine.push(x.to_device(tch::Device::Cpu));
            }
        });
        chunk_frames.push(mine);
        parts.push(x);
    }
    bar.finish_and_clear();
    if let Some((out, _)) = frames.as_mut() {
        let k = chunk_frames[0].len();
        for f in 0..k {
            let per: Vec<&Tensor> = chunk_frames.iter().map(|c| &c[f]).collect();
            out.push(Tensor::cat(&per, 0));
        }
    }
    Tensor::cat(&parts, 0)
}

/// Classifier-free guidance `eps_u + w (eps_c - eps_u)` needs the unconditional prediction
/// `eps_u`, which only a model trained with label dropout (`cond_drop_prob > 0`) has learnt.
pub fn warn_untrained_null_class(info: &ModelInfo, path: &Path, guidance: f64) {
    if guidance != 1.0 && info.cond_drop_prob == Some(0.0) {
        tracing::warn!(
            "guidance {guidance}: {} was trained with train.cond_drop_prob 0, so its unconditional (null-class) \
             prediction was never trained and guidance mixes in noise; use --guidance 1 (plain conditional sampling)",
            path.display()
        );
    }
}

/// `ddpm sample`.
pub fn sample(cfg: &Config, req: &SampleRequest) -> Result<PathBuf> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    let path = req.checkpoint.clone().unwrap_or_else(|| checkpoint::latest_path(&cfg.train.run_dir));
    if !path.exists() {
        bail!(ConfigError(format!(
            "no checkpoint at {}: train first (`ddpm train --config ...`) or pass --checkpoint PATH",
            path.display()
        )));
    }
    let out = req.out.clone().unwrap_or_else(|| cfg.train.run_dir.join("samples.png"));
    check_writable(&out)?;
    let loaded = load_model(&path, cfg, device, cfg.sample.ema)?;
    let classes = loaded.net.num_classes();
    let mut sc = sampler_config(cfg)?;
    let labels = match (&req.label, classes) {
        (Some(_), 0) => bail!(ConfigError(format!(
            "--label: {} is an unconditional model (network.num_classes = 0)",
            path.display()
        ))),
        (None, 0) if req.guidance_given => {
            bail!(ConfigError(format!(
                "--guidance: {} is an unconditional model; guidance needs --label and a conditional model",
                path.display()
            )))
        }
        (None, _) => {
            sc.guidance = 1.0;
            None
        }
        (Some(LabelChoice::One(y)), k) if *y < 0 || *y >= k => {
            bail!(ConfigError(format!(
                "--label {y} is outside the model's classes 0..{} ({})",
                k - 1,
                loaded.info.class_names.join(", ")
            )))
        }
        (Some(LabelChoice::One(y)), _) => Some(Tensor::full([cfg.sample.n_samples], *y, (Kind::Int64, device))),
        (Some(LabelChoice::All), k) => {
            let per = (cfg.sample.n_samples + k - 1) / k;
            for (i, name) in loaded.info.class_names.iter().enumerate() {
                tracing::info!("row {i}: class {i} ({name})");
            }
            Some(Tensor::arange(k, (Kind::Int64, device)).repeat_interleave_self_int(per, 0, None))
        }
    };
    if labels.is_some() {
        warn_untrained_null_class(&loaded.info, &path, sc.guidance);
    }
    let n = labels.as_ref().map_or(cfg.sample.n_samples, |l| l.size()[0]);
    let [c, h, w] = loaded.info.image_shape;
    let bytes = n as f64 * (c * h * w) as f64 * 4.0;
    if bytes > 8e9 {
        bail!(ConfigError(format!(
            "--n-samples {n} would need {:.1} GB for the results alone; ask for at most {}",
            bytes / 1e9,
            (8e9 / ((c * h * w) as f64 * 4.0)) as i64
        )));
    }
    let steps = sampler::visited_steps(&loaded.ddpm, sc.sampler).len();
    tracing::info!(
        "sampling {n} images from {} ({} weights, epoch {}, step {}) with {} in {steps} steps on {}",
        path.display(),
        if loaded.ema { "EMA" } else { "raw" },
        loaded.info.epoch,
        loaded.info.step,
        cfg.sample.sampler,
        device::describe(device)
    );
    let started = Instant::now();
    let mut frames = Vec::new();
    let frames_arg = req.process.then_some((&mut frames, 10.min(steps)));
    let xs = draw(&loaded, n, labels.as_ref(), cfg.sample.batch_size.min(n), cfg.seed, &sc, frames_arg);
    tracing::info!("sampled {n} images in {:.2} s", started.elapsed().as_secs_f64());
    let cols = match (&req.label, classes) {
        (Some(LabelChoice::All), k) if k > 0 => n / k,
        _ => grid::default_cols(n),
    };
    grid::save_png(&grid::grid_image(&xs, cols, cfg.sample.padding)?, &out)
        .with_context(|| format!("cannot write the grid to {}", out.display()))?;
    tracing::info!("wrote {}", out.display());
    if let Some(t) = &req.save_tensor {
        check_writable(t)?;
        let xs = xs.to_device(tch::Device::Cpu);
        Tensor::write_safetensors(&[("samples", &xs)], t)
            .with_context(|| format!("cannot write samples to {}", t.display()))?;
        tracing::info!("wrote {}", t.display());
    }
    if req.process {
        let (png, gif) = crate::process::write(&frames, &out, cfg.sample.padding)?;
        tracing::info!("wrote {} and {}", png.display(), gif.display());
    }
    Ok(out)
}

/// Fails early, with the path named, when `path`'s folder cannot be created or written.
fn check_writable(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
    let probe = dir.join(format!(".ddpm-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
