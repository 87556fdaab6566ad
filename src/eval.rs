//! `ddpm eval`: how good are the samples? Generates N samples from a checkpoint (or reads a
//! saved tensor), scores them against N images of the dataset's test split with
//! [`crate::score`], prints a table and appends to `evals.jsonl`.

use crate::checkpoint::{self, ModelInfo};
use crate::config::Config;
use crate::data::{self, Split};
use crate::error::UsageError;
use crate::generate::{self, Request};
use crate::score::{self, Scores};
use crate::{device, fsutil};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

/// What to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalRequest {
    pub checkpoint: Option<PathBuf>,
    /// A tensor of samples (`samples`, `[N, C, H, W]` in [-1, 1]) instead of a checkpoint.
    pub samples: Option<PathBuf>,
    pub n: i64,
    pub json: Option<PathBuf>,
}

/// One evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalResult {
    pub checkpoint: String,
    pub sampler: String,
    pub steps: usize,
    pub n: i64,
    pub seed: u64,
    #[serde(flatten)]
    pub scores: Scores,
    pub sample_seconds: f64,
}

/// The result as a terminal table.
pub fn table(r: &EvalResult) -> String {
    let sc = &r.scores;
    let mut s = format!(
        "{} | {} ({} steps) | N = {} | seed {}\n{:<34} {:>12} {:>16}\n",
        r.checkpoint, r.sampler, r.steps, r.n, r.seed, "metric", "samples", "real vs real"
    );
    s += &format!(
        "{:<34} {:>12.3} {:>16.3}\n",
        "Frechet distance (CNN features)", sc.frechet_distance, sc.frechet_distance_real
    );
    s += &format!(
        "{:<34} {:>12.3} {:>16.3}\n",
        "classifier score (IS-like)", sc.classifier_score, sc.classifier_score_real
    );
    s += &format!(
        "{:<34} {:>12.3} {:>16.3}\n",
        "class-histogram entropy (nats)", sc.class_entropy, sc.class_entropy_real
    );
    if let Some(f) = sc.label_fidelity {
        s += &format!("{:<34} {:>12.3} {:>16}\n", "label fidelity", f, "-");
    }
    s
}

/// `ddpm eval`.
pub fn eval(cfg: &Config, req: &EvalRequest) -> Result<EvalResult> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    cfg.sample.check_precision(device)?;
    let train = data::load(&cfg.dataset, Split::Train)?;
    let test = data::load(&cfg.dataset, Split::Test)?;
    let n = req.n;
    if n < 2 || 2 * n > test.len() {
        bail!(UsageError(format!(
            "--n {n}: use 2 <= N <= {} (half the test split, for the real-vs-real reference)",
            test.len() / 2
        )));
    }
    let clf = score::classifier_for(&cfg.dataset, &train, &test, device)?;

    let started = Instant::now();
    let (xs, labels, ckpt_name, sampler, steps) = match &req.samples {
        Some(p) => {
            let t = Tensor::read_safetensors(p).with_context(|| format!("reading samples {}", p.display()))?;
            let xs = t.into_iter().find(|(k, _)| k == "samples").map(|(_, v)| v);
            let xs = xs.with_context(|| format!("{}: no tensor named 'samples'", p.display()))?;
            if xs.size()[0] < n {
                bail!(UsageError(format!("{} holds {} samples, fewer than --n {n}", p.display(), xs.size()[0])));
            }
            (xs.narrow(0, 0, n), None, p.display().to_string(), "saved".to_string(), 0)
        }
        None => {
            let path = req.checkpoint.clone().unwrap_or_else(|| checkpoint::latest_path(&cfg.train.run_dir));
            if !path.exists() {
                bail!(UsageError(format!(
                    "no checkpoint at {}: pass --checkpoint PATH or --samples PATH",
                    path.display()
                )));
            }
            let fallback = ModelInfo::from_config(cfg);
            let loaded = checkpoint::load_model(&path, &fallback, device, cfg.channels_last, cfg.sample.ema)?;
            let mut sc = cfg.sample.sampler_config();
            let k = loaded.model.num_classes();
            let labels = generate::cycling_labels(n, k, device);
            if k == 0 {
                sc.guidance = 1.0;
            } else {
                loaded.info.warn_untrained_null_class(&path, sc.guidance);
            }
            let steps = crate::diffusion::sampler::visited_steps(&loaded.model.scheduler, sc.sampler).len();
            let req = Request {
                n,
                labels: labels.as_ref(),
                batch: cfg.sample.batch_size,
                seed: cfg.seed,
                sampler: &sc,
                progress: true,
            };
            let xs = generate::draw(&loaded.model, &req, None);
            (xs, labels, path.display().to_string(), cfg.sample.sampler.to_string(), steps)
        }
    };
    let sample_seconds = started.elapsed().as_secs_f64();
    let sc = score::score_samples(&clf, &test, &xs, labels.as_ref());
    let result = EvalResult { checkpoint: ckpt_name, sampler, steps, n, seed: cfg.seed, scores: sc, sample_seconds };
    let line = serde_json::to_string(&result)?;
    if req.samples.is_none() && req.checkpoint.is_none() {
        let path = cfg.train.run_dir.join("evals.jsonl");
        fsutil::append_line(&path, &line)?;
        tracing::info!("appended to {}", path.display());
    }
    if let Some(p) = &req.json {
        crate::fsutil::write_atomic(p, format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(result)
}
