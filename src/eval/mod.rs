//! `ddpm eval`: how good are the samples? Generates N samples (or reads a saved tensor) and
//! reports, against N images of the dataset's test split, a Fréchet distance between the
//! features of a small CNN classifier trained on the dataset (not the Inception FID of papers),
//! a classifier score in the spirit of the Inception Score, the entropy of the predicted-class
//! histogram, and, for conditional models, label fidelity; beside each, the same number for
//! N other real test images, since these numbers depend strongly on N.

pub mod classifier;
pub mod metrics;

use crate::config::{Config, ConfigError};
use crate::data::{self, Split};
use crate::sample::{draw, load_model, sampler_config};
use crate::{checkpoint, device};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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

/// The numbers for one set of samples.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scores {
    pub frechet_distance: f64,
    pub frechet_distance_real: f64,
    pub classifier_score: f64,
    pub classifier_score_real: f64,
    pub class_entropy: f64,
    pub class_entropy_real: f64,
    pub label_fidelity: Option<f64>,
}

/// Scores `xs` (`[N, C, H, W]` in [-1, 1]) against the first N test images, and N other test
/// images against the same for reference. Needs `2 N <= test.len()`.
pub fn score_samples(
    clf: &classifier::Classifier,
    test: &data::ImageDataset,
    xs: &Tensor,
    labels: Option<&Tensor>,
) -> Scores {
    let n = xs.size()[0];
    let real = |from: i64| data::to_signed_unit(&test.images.narrow(0, from, n));
    let (f_real, _) = clf.embed(&real(0));
    let (f_other, p_other) = clf.embed(&real(n));
    let (f_s, p_s) = clf.embed(&xs.to_device(Device::Cpu));
    Scores {
        frechet_distance: metrics::frechet_distance_of(&f_s, &f_real),
        frechet_distance_real: metrics::frechet_distance_of(&f_other, &f_real),
        classifier_score: metrics::classifier_score(&p_s),
        classifier_score_real: metrics::classifier_score(&p_other),
        class_entropy: metrics::class_histogram_entropy(&p_s),
        class_entropy_real: metrics::class_histogram_entropy(&p_other),
        label_fidelity: labels.map(|l| metrics::label_fidelity(&p_s, l)),
    }
}

/// The classifier for a configuration's dataset, cached beside the data.
pub fn classifier_for(
    cfg: &Config,
    train: &data::ImageDataset,
    test: &data::ImageDataset,
    device: Device,
) -> Result<classifier::Classifier> {
    let cache = cfg.dataset.root.join(format!("ddpm-classifier-{}.safetensors", cfg.dataset_name().as_str()));
    classifier::load_or_train(&cache, train, test, device)
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
    let train = data::load(&cfg.dataset, Split::Train)?;
    let test = data::load(&cfg.dataset, Split::Test)?;
    let n = req.n;
    if n < 2 || 2 * n > test.len() {
        bail!(ConfigError(format!(
            "--n {n}: use 2 <= N <= {} (half the test split, for the real-vs-real reference)",
            test.len() / 2
        )));
    }
    let clf = classifier_for(cfg, &train, &test, device)?;

    let started = Instant::now();
    let (xs, labels, ckpt_name, sampler, steps) = match &req.samples {
        Some(p) => {
            let t = Tensor::read_safetensors(p).with_context(|| format!("reading samples {}", p.display()))?;
            let xs = t.into_iter().find(|(k, _)| k == "samples").map(|(_, v)| v);
            let xs = xs.with_context(|| format!("{}: no tensor named 'samples'", p.display()))?;
            if xs.size()[0] < n {
                bail!(ConfigError(format!("{} holds {} samples, fewer than --n {n}", p.display(), xs.size()[0])));
            }
            (xs.narrow(0, 0, n), None, p.display().to_string(), "saved".to_string(), 0)
        }
        None => {
            let path = req.checkpoint.clone().unwrap_or_else(|| checkpoint::latest_path(&cfg.train.run_dir));
            if !path.exists() {
                bail!(ConfigError(format!(
                    "no checkpoint at {}: pass --checkpoint PATH or --samples PATH",
                    path.display()
                )));
            }
            let loaded = load_model(&path, cfg, device, cfg.sample.ema)?;
            let mut sc = sampler_config(cfg)?;
            let k = loaded.net.num_classes();
            let labels = (k > 0).then(|| Tensor::arange(n, (Kind::Int64, device)).remainder(k));
            if k == 0 {
                sc.guidance = 1.0;
            } else {
                crate::sample::warn_untrained_null_class(&loaded.info, &path, sc.guidance);
            }
            let steps = crate::diffusion::sampler::visited_steps(&loaded.ddpm, sc.sampler).len();
            let xs = draw(&loaded, n, labels.as_ref(), cfg.sample.batch_size.min(n), cfg.seed, &sc, None);
            (xs, labels, path.display().to_string(), cfg.sample.sampler.clone(), steps)
        }
    };
    let sample_seconds = started.elapsed().as_secs_f64();
    let sc = score_samples(&clf, &test, &xs, labels.as_ref());
    let result = EvalResult { checkpoint: ckpt_name, sampler, steps, n, seed: cfg.seed, scores: sc, sample_seconds };
    let line = serde_json::to_string(&result)?;
    if req.samples.is_none() && req.checkpoint.is_none() {
        let path = cfg.train.run_dir.join("evals.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}")?;
        tracing::info!("appended to {}", path.display());
    }
    if let Some(p) = &req.json {
        crate::fsutil::write_atomic(p, format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(result)
}
