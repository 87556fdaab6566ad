//! Drawing images from a model in batches: the one batched sampler behind `ddpm sample`,
//! `ddpm eval`, and the grids and evaluations during training.

use crate::diffusion::prediction::AsEps;
use crate::diffusion::reverse::{self, ReverseProcess};
use crate::diffusion_model::Model;
use crate::error::UsageError;
use crate::logging;
use crate::seed::{derived_seed, SEED_BATCH};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Which classes to draw.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelChoice {
    One(i64),
    /// A class by name (a folder dataset's subfolder, `Sneaker`, ...).
    Name(String),
    /// One row per class.
    All,
}

impl std::str::FromStr for LabelChoice {
    type Err = UsageError;

    /// `all`, a class number or a class name (the value of `--label`).
    fn from_str(s: &str) -> Result<Self, UsageError> {
        match s {
            "all" => Ok(Self::All),
            "" => Err(UsageError("--label: expected a class number (0, 1, ...), a class name or all".into())),
            _ => Ok(s.parse().map(Self::One).unwrap_or_else(|_| Self::Name(s.to_string()))),
        }
    }
}

/// `--label NAME` as the class number of a conditional model.
pub fn resolve_label_name(
    label: Option<&LabelChoice>,
    loaded: &crate::checkpoint::LoadedModel,
    path: &Path,
) -> anyhow::Result<Option<LabelChoice>> {
    let names = &loaded.info.spec.class_names;
    Ok(match label {
        Some(LabelChoice::Name(name)) if loaded.model.num_classes() > 0 => {
            let i = names.iter().position(|n| n == name).ok_or_else(|| {
                UsageError(format!(
                    "--label {name:?} is not a class of {} (its classes: {})",
                    path.display(),
                    if names.is_empty() { "unnamed, use a number".to_string() } else { names.join(", ") }
                ))
            })?;
            Some(LabelChoice::One(i as i64))
        }
        other => other.cloned(),
    })
}

/// What to draw.
pub struct Request<'a> {
    /// How many images (one per label when labels are given).
    pub n: i64,
    /// Class labels, `i64 [n]`, for a conditional model.
    pub labels: Option<&'a Tensor>,
    /// Images denoised at once.
    pub batch: i64,
    /// libtorch is seeded with it before the first noise is drawn.
    pub seed: u64,
    pub sampler: &'a ReverseProcess,
    /// Show a progress bar over all steps of all batches.
    pub progress: bool,
}

/// Labels for `n` images of a model with `classes` classes spread evenly, `0, 1, .., k-1,
/// 0, 1, ..` (None for an unconditional model).
pub fn cycling_labels(n: i64, classes: i64, device: Device) -> Option<Tensor> {
    (classes > 0).then(|| Tensor::arange(n, (Kind::Int64, device)).remainder(classes))
}

/// `per` images of each class in turn, `0, 0, .., 1, 1, ..`: one grid row per class.
pub fn rows_of_labels(classes: i64, per: i64, device: Device) -> Tensor {
    Tensor::arange(classes, (Kind::Int64, device)).repeat_interleave_self_int(per, 0, None)
}

/// Draws `req.n` images (`[N, C, H, W]` in about [-1, 1], on the model's device). `frames`,
/// if given, receives `k` evenly spaced snapshots of the whole set along the reverse process.
pub fn draw(model: &Model, req: &Request, mut frames: Option<(&mut Vec<Tensor>, usize)>) -> Tensor {
    tch::manual_seed(req.seed as i64);
    let mut process = *req.sampler;
    if model.needs_x0_clipping() {
        process.opts.clip_x0 = true;
    }
    let steps = reverse::visited_steps(&model.scheduler, req.sampler.sampler).len();
    let batch = req.batch.clamp(1, req.n.max(1));
    let chunks = (req.n + batch - 1) / batch;
    let bar = match req.progress {
        true => logging::progress_bar(
            steps as u64 * chunks as u64,
            "sampling [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}",
        ),
        false => indicatif::ProgressBar::hidden(),
    };
    let keep_at: Vec<usize> = match &frames {
        Some((_, k)) => (1..=*k).map(|i| i * steps / k - 1).collect(),
        None => Vec::new(),
    };
    let bf16 = req.sampler.bf16 && crate::precision::bf16_available(model.device());
    let graphed = crate::cuda_graph::Graphed::new(model.net.as_ref(), req.sampler.cuda_graphs && !bf16);
    let mut parts = Vec::new();
    let mut chunk_frames: Vec<Vec<Tensor>> = Vec::new();
    for i in 0..chunks {
        let b = batch.min(req.n - i * batch);
        let noise = model.noise(b);
        let y = req.labels.map(|l| l.narrow(0, i * batch, b));
        let mut mine = vec![noise.to_device(Device::Cpu)];
        let net = AsEps { net: &graphed, prediction: model.prediction, scheduler: &model.scheduler, bf16 };
        let x = reverse::sample(&net, &model.scheduler, noise, y.as_ref(), &process, |j, _, x| {
            bar.inc(1);
            if keep_at.contains(&j) {
                mine.push(x.to_device(Device::Cpu));
            }
        });
        chunk_frames.push(mine);
        parts.push(x);
    }
    bar.finish_and_clear();
    if let Some((out, _)) = frames.as_mut() {
        for f in 0..chunk_frames[0].len() {
            let per: Vec<&Tensor> = chunk_frames.iter().map(|c| &c[f]).collect();
            out.push(Tensor::cat(&per, 0));
        }
    }
    Tensor::cat(&parts, 0)
}

/// Global batch `k` of a large set (exports, evaluations): the `len` images from `start`,
/// with the labels of those indices, from noise seeded by `(seed, k)` alone, so a batch is the
/// same whichever process draws it and whatever was drawn before. `progress`: a bar over the
/// batch's steps.
pub fn draw_batch(
    model: &Model,
    labels: Option<&Tensor>,
    (k, start, len): (i64, i64, i64),
    seed: u64,
    sampler: &ReverseProcess,
    progress: bool,
) -> Tensor {
    let y = labels.map(|l| l.narrow(0, start, len));
    let req = Request {
        n: len,
        labels: y.as_ref(),
        batch: len,
        seed: derived_seed(seed, SEED_BATCH, k) as u64,
        sampler,
        progress,
    };
    draw(model, &req, None)
}

/// Writes samples (`[N, C, H, W]` in [-1, 1]) as the safetensors file `--save-tensor` names,
/// the tensor called `samples` (what `ddpm eval --samples` reads).
pub fn save_samples(xs: &Tensor, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    // Contiguous: a channels-last network's output is not, and the writer needs it.
    let xs = xs.to_device(Device::Cpu).contiguous();
    Tensor::write_safetensors(&[("samples", &xs)], path)
        .with_context(|| format!("cannot write samples to {}", path.display()))?;
    tracing::info!("wrote {}", path.display());
    Ok(())
}
