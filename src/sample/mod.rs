//! `ddpm sample`: rebuild the model from a checkpoint (its EMA weights when present), run the
//! reverse process (DDPM or DDIM, guided for conditional models) under no_grad with a progress
//! bar over the steps, write a PNG grid, and optionally the raw tensor and pictures of the
//! process.

pub mod export;

use crate::checkpoint;
use crate::config::sample::Format;
use crate::config::Config;
use crate::diffusion::reverse;
pub use crate::draw::LabelChoice;
use crate::draw::{self, resolve_label_name, Request};
use crate::error::UsageError;
use crate::shard::Shard;
use crate::{device, grid};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

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
    /// Continue an interrupted `png-dir` or `npz` export.
    pub resume: bool,
}

/// `ddpm sample`: check the request, load the checkpoint, resolve the labels, then draw a grid
/// or run an export.
pub fn sample(cfg: &Config, req: &SampleRequest) -> Result<PathBuf> {
    let format = cfg.sample.format;
    check_nproc(cfg, crate::dist::DistEnv::from_env()?.map_or(1, |e| e.world_size))?;
    let (shard, device) = Shard::from_env(cfg.threads, device::resolve(&cfg.device)?)?;
    cfg.sample.check_precision(device)?;
    let path = checkpoint::resolve_for_sampling(
        cfg,
        req.checkpoint.as_deref(),
        "train first (`ddpm train --config ...`) or pass --checkpoint PATH",
    )?;
    let out = req.out.clone().unwrap_or_else(|| export::default_out(&cfg.train.run_dir, format));
    check_outputs(cfg, req, format, &out)?;
    let loaded = checkpoint::load_for_sampling(cfg, &path, device)?;
    let mut sc = cfg.sample.sampler_config();
    let label = resolve_label_name(req.label.as_ref(), &loaded, &path)?;
    let labels = labels_for(cfg, req, label.as_ref(), &loaded, &path, &mut sc)?;
    if labels.is_some() {
        loaded.info.warn_untrained_null_class(&path, sc.guidance);
    }
    let plan =
        Plan { path: &path, loaded: &loaded, sc: &sc, label: label.as_ref(), labels: labels.as_ref(), out: &out };
    match format {
        Format::Grid => draw_grid(cfg, req, &plan, device)?,
        _ => run_export(cfg, req, &plan, &shard)?,
    }
    Ok(out)
}

/// What a `ddpm sample` draws, once its checkpoint and labels are resolved.
struct Plan<'a> {
    path: &'a Path,
    loaded: &'a checkpoint::LoadedModel,
    sc: &'a reverse::ReverseProcess,
    label: Option<&'a LabelChoice>,
    labels: Option<&'a Tensor>,
    out: &'a Path,
}

impl Plan<'_> {
    /// How many images: `sample.n_samples`, or one per label.
    fn n(&self, cfg: &Config) -> i64 {
        self.labels.map_or(cfg.sample.n_samples, |l| l.size()[0])
    }

    /// "`<path>` (EMA weights, epoch E, step S)" for the log.
    fn source(&self) -> String {
        let (l, i) = (self.loaded, &self.loaded.info);
        format!(
            "{} ({} weights, epoch {}, step {})",
            self.path.display(),
            if l.ema { "EMA" } else { "raw" },
            i.epoch,
            i.step
        )
    }
}

/// The flags that go with one format only, and whether the outputs can be written (named for
/// what they hold, outside the training pictures), before anything is drawn.
fn check_outputs(cfg: &Config, req: &SampleRequest, format: Format, out: &Path) -> Result<()> {
    if req.resume && format == Format::Grid {
        bail!(UsageError("--resume continues a png-dir or npz export: add --format png-dir or --format npz".into()));
    }
    if format != Format::Grid && (req.process || req.save_tensor.is_some()) {
        bail!(UsageError(format!("--process and --save-tensor go with --format grid, not {}", format.as_str())));
    }
    let inputs = (cfg.dataset.name == crate::data::DatasetName::Folder).then_some(cfg.dataset.path.as_path());
    use crate::run_dir::check_output_named as named;
    if let Some(t) = &req.save_tensor {
        named(t, &["safetensors"], "--save-tensor writes a safetensors file", inputs)?;
    }
    match format {
        Format::PngDir => named(&out.join("000000.png"), &["png"], "a png-dir export holds PNG pictures", inputs),
        Format::Npz => named(out, &["npz"], "an npz export is a NumPy .npz archive", inputs),
        Format::Grid => named(out, &["png"], "a grid is a PNG picture", inputs),
    }
}

/// The label of every image (None for an unconditional draw, which also turns guidance off).
fn labels_for(
    cfg: &Config,
    req: &SampleRequest,
    label: Option<&LabelChoice>,
    loaded: &checkpoint::LoadedModel,
    path: &Path,
    sc: &mut reverse::ReverseProcess,
) -> Result<Option<Tensor>> {
    let device = loaded.model.device();
    Ok(match (label, loaded.model.num_classes()) {
        (Some(_), 0) => bail!(UsageError(format!(
            "--label: {} is an unconditional model (network.num_classes = 0)",
            path.display()
        ))),
        (None, 0) if req.guidance_given => {
            bail!(UsageError(format!(
                "--guidance: {} is an unconditional model; guidance needs --label and a conditional model",
                path.display()
            )))
        }
        (None, _) => {
            sc.guidance = 1.0;
            None
        }
        (Some(LabelChoice::One(y)), k) if *y < 0 || *y >= k => {
            bail!(UsageError(format!(
                "--label {y} is outside the model's classes 0..{} ({})",
                k - 1,
                loaded.info.spec.class_names.join(", ")
            )))
        }
        (Some(LabelChoice::One(y)), _) => Some(Tensor::full([cfg.sample.n_samples], *y, (Kind::Int64, device))),
        (Some(LabelChoice::Name(_)), _) => unreachable!("class names are resolved by resolve_label_name"),
        (Some(LabelChoice::All), k) => {
            let per = (cfg.sample.n_samples + k - 1) / k;
            for (i, name) in loaded.info.spec.class_names.iter().enumerate() {
                tracing::info!("row {i}: class {i} ({name})");
            }
            Some(draw::rows_of_labels(k, per, device))
        }
    })
}

/// `--format png-dir | npz`: the export, shared among the processes.
fn run_export(cfg: &Config, req: &SampleRequest, plan: &Plan, shard: &Shard) -> Result<()> {
    let (s, n, format) = (&cfg.sample, plan.n(cfg), cfg.sample.format);
    let settings = serde_json::json!({
        "checkpoint": plan.path.display().to_string(),
        "epoch": plan.loaded.info.epoch,
        "step": plan.loaded.info.step,
        "ema": plan.loaded.ema,
        "sampler": s.sampler.as_str(),
        "steps": s.steps, "eta": s.eta, "spacing": format!("{:?}", s.spacing),
        "simple_var": s.simple_var, "clip_x0": s.clip_x0, "guidance": plan.sc.guidance,
        "label": format!("{:?}", plan.label),
    });
    tracing::info!(
        "exporting {n} images from {} with {} to {} ({})",
        plan.source(),
        s.sampler,
        plan.out.display(),
        format.as_str()
    );
    let started = Instant::now();
    let export = export::Export {
        model: &plan.loaded.model,
        labels: plan.labels,
        n,
        batch: s.batch_size,
        seed: cfg.seed,
        sampler: plan.sc,
        format,
        out: plan.out,
        resume: req.resume,
        settings,
    };
    let drawn = export::run(&export, shard)?;
    tracing::info!(
        "wrote {} ({n} images; {drawn} batches drawn in {:.1} s)",
        plan.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--format grid`: the images in one process, as a PNG grid (a row per class for `--label
/// all`), with `--save-tensor` and `--process` beside it.
fn draw_grid(cfg: &Config, req: &SampleRequest, plan: &Plan, device: tch::Device) -> Result<()> {
    let n = plan.n(cfg);
    let [c, h, w] = plan.loaded.info.spec.image_shape;
    let bytes = n as f64 * (c * h * w) as f64 * 4.0;
    if bytes > 8e9 {
        bail!(UsageError(format!(
            "--n-samples {n} would need {:.1} GB for the results alone; ask for at most {}",
            bytes / 1e9,
            (8e9 / ((c * h * w) as f64 * 4.0)) as i64
        )));
    }
    let steps = reverse::visited_steps(&plan.loaded.model.scheduler, plan.sc.sampler).len();
    tracing::info!(
        "sampling {n} images from {} with {} in {steps} steps on {}",
        plan.source(),
        cfg.sample.sampler,
        device::describe(device)
    );
    let started = Instant::now();
    let mut frames = Vec::new();
    let frames_arg = req.process.then_some((&mut frames, 10.min(steps)));
    let req_draw = Request {
        n,
        labels: plan.labels,
        batch: cfg.sample.batch_size,
        seed: cfg.seed,
        sampler: plan.sc,
        progress: true,
    };
    let xs = draw::draw(&plan.loaded.model, &req_draw, frames_arg);
    tracing::info!("sampled {n} images in {:.2} s", started.elapsed().as_secs_f64());
    let cols = match (plan.label, plan.loaded.model.num_classes()) {
        (Some(LabelChoice::All), k) if k > 0 => n / k,
        _ => grid::default_cols(n),
    };
    let out = plan.out;
    grid::save_png(&grid::grid_image(&xs, cols, cfg.sample.padding)?, out)
        .with_context(|| format!("cannot write the grid to {}", out.display()))?;
    tracing::info!("wrote {}", out.display());
    if let Some(t) = &req.save_tensor {
        draw::save_samples(&xs, t)?;
    }
    if req.process {
        let (png, gif) = crate::reverse_pictures::write(&frames, out, cfg.sample.padding)?;
        tracing::info!("wrote {} and {}", png.display(), gif.display());
    }
    Ok(())
}

/// Refuses a grid drawn by `nproc` > 1 processes (exports are shared among processes, grids
/// are not).
pub fn check_nproc(cfg: &Config, nproc: usize) -> Result<()> {
    if nproc > 1 && cfg.sample.format == Format::Grid {
        bail!(UsageError(format!(
            "--nproc {nproc}: a grid is drawn by one process; draw many images across processes with \
             --format png-dir or --format npz"
        )));
    }
    Ok(())
}
