//! `ddpm eval`: how good are the samples? Draws N samples from a checkpoint (or reads saved
//! ones) and scores them, with ddpm's own CNN features against the test split (`cnn.rs`,
//! appended to `evals.jsonl`) or with Inception FID as pytorch-fid computes it (`fid.rs`,
//! `fid.jsonl`). Both draw the same samples, through [`Drawing`].

mod cnn;
mod fid;

pub use cnn::{eval, table, EvalResult};
pub use fid::{eval_fid, fid_table, reference_cache, FidResult};

use crate::checkpoint;
use crate::config::Config;
use crate::draw;
use crate::fsutil;
use crate::shard::Shard;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::Tensor;

/// What to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalRequest {
    pub checkpoint: Option<PathBuf>,
    /// A tensor of samples (`samples`, `[N, C, H, W]` in [-1, 1]) instead of a checkpoint.
    pub samples: Option<PathBuf>,
    pub n: i64,
    pub json: Option<PathBuf>,
    /// `--metric fid`: the Inception weights, the reference set, and whether other weights
    /// than the official ones are accepted.
    pub inception: Option<PathBuf>,
    pub reference: Option<PathBuf>,
    pub inception_any_weights: bool,
    /// `--real-vs-real`: N test-split images in place of samples (FID only).
    pub real_vs_real: bool,
}

impl EvalRequest {
    /// Whether `--json` can be written, before anything is drawn.
    fn check_json(&self) -> Result<()> {
        match &self.json {
            Some(p) => crate::run_dir::check_output_named(p, &["json"], "--json writes a JSON record", None),
            None => Ok(()),
        }
    }
}

/// Samples to draw from a checkpoint: global batch `k` of `sample.batch_size` images from noise
/// seeded by `(seed, k)`, with labels cycling through the classes of a conditional model, as
/// `ddpm sample --format npz` draws them; so the samples do not depend on the number of
/// processes.
struct Drawing {
    loaded: checkpoint::LoadedModel,
    labels: Option<Tensor>,
    sc: crate::diffusion::reverse::ReverseProcess,
    name: String,
    sampler: String,
    steps: usize,
}

impl Drawing {
    fn new(cfg: &Config, req: &EvalRequest, device: tch::Device, n: i64) -> Result<Drawing> {
        let hint = "pass --checkpoint PATH or --samples PATH";
        let path = checkpoint::resolve_for_sampling(cfg, req.checkpoint.as_deref(), hint)?;
        let loaded = checkpoint::load_for_sampling(cfg, &path, device)?;
        let mut sc = cfg.sample.sampler_config();
        let k = loaded.model.num_classes();
        let labels = draw::cycling_labels(n, k, device);
        if k == 0 {
            sc.guidance = 1.0;
        } else {
            loaded.info.warn_untrained_null_class(&path, sc.guidance);
        }
        let steps = crate::diffusion::reverse::visited_steps(&loaded.model.scheduler, sc.sampler).len();
        Ok(Drawing {
            loaded,
            labels,
            sc,
            name: path.display().to_string(),
            sampler: cfg.sample.sampler.to_string(),
            steps,
        })
    }

    /// Global batch `k`: images `start..start + len`, `[len, C, H, W]` in about [-1, 1].
    fn batch(&self, cfg: &Config, (k, start, len): (i64, i64, i64)) -> Tensor {
        draw::draw_batch(&self.loaded.model, self.labels.as_ref(), (k, start, len), cfg.seed, &self.sc, true)
    }

    /// A bar over this rank's share of `n` images in batches of `batch`.
    fn bar(shard: &Shard, n: i64, batch: i64, what: &str) -> indicatif::ProgressBar {
        crate::logging::progress_bar(
            shard.images_of(n, batch) as u64,
            &format!("{what} [{{bar:30}}] {{pos}}/{{len}} images {{per_sec}} ETA {{eta}}"),
        )
    }
}

/// Appends a result line to the run's `file` (evals.jsonl, fid.jsonl; for the run's own latest
/// checkpoint) and writes it to `--json`.
fn record(cfg: &Config, req: &EvalRequest, file: &str, line: &str) -> Result<()> {
    if req.samples.is_none() && req.checkpoint.is_none() {
        let path = cfg.train.run_dir.join(file);
        fsutil::append_line(&path, line)?;
        tracing::info!("appended to {}", path.display());
    }
    if let Some(p) = &req.json {
        crate::fsutil::write_atomic(p, format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
