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
    /// `--metric fid`: the Inception weights, the reference set, and whether other weights
    /// than the official ones are accepted.
    pub inception: Option<PathBuf>,
    pub reference: Option<PathBuf>,
    pub inception_any_weights: bool,
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
    let (xs, labels, ckpt_name, sampler, steps) = draw_or_read(cfg, req, device, n)?;
    let sample_seconds = started.elapsed().as_secs_f64();
    let sc = score::score_samples(&clf, &test, &xs, labels.as_ref());
    let result = EvalResult { checkpoint: ckpt_name, sampler, steps, n, seed: cfg.seed, scores: sc, sample_seconds };
    record(cfg, req, "evals.jsonl", &serde_json::to_string(&result)?)?;
    Ok(result)
}

type Drawn = (Tensor, Option<Tensor>, String, String, usize);

/// The samples to score: read from `--samples` (a ddpm tensor) or drawn from the checkpoint.
fn draw_or_read(cfg: &Config, req: &EvalRequest, device: tch::Device, n: i64) -> Result<Drawn> {
    Ok(match &req.samples {
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
    })
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

/// One Inception FID evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FidResult {
    pub metric: &'static str,
    pub samples: String,
    pub reference: String,
    pub sampler: String,
    pub steps: usize,
    pub n: i64,
    pub n_reference: i64,
    pub seed: u64,
    pub fid: f64,
    /// Inception Score of the samples (one split), where the weights have the logits head.
    pub inception_score: Option<f64>,
    pub sample_seconds: f64,
    pub feature_seconds: f64,
}

/// The FID result as a terminal table.
pub fn fid_table(r: &FidResult) -> String {
    let mut s = format!(
        "{} | {} ({} steps) | N = {} against {} reference images ({}) | seed {}\n",
        r.samples, r.sampler, r.steps, r.n, r.n_reference, r.reference, r.seed
    );
    s += &format!("{:<34} {:>12.3}\n", "FID (Inception, pytorch-fid)", r.fid);
    if let Some(is) = r.inception_score {
        s += &format!("{:<34} {:>12.3}\n", "Inception Score (1 split)", is);
    }
    s
}

/// `ddpm eval --metric fid`.
pub fn eval_fid(cfg: &Config, req: &EvalRequest) -> Result<FidResult> {
    use crate::score::{fid, inception::Inception, metrics};
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    cfg.sample.check_precision(device)?;
    let n = req.n;
    if n < 2 {
        bail!(UsageError(format!("--n {n}: use at least 2 (10,000 to 50,000 for numbers others report)")));
    }
    let weights =
        req.inception.clone().unwrap_or_else(|| cfg.dataset.root.join("pt_inception-2015-12-05-6726825d.pth"));
    let net = Inception::load(&weights, device, req.inception_any_weights)?;
    let batch = cfg.sample.batch_size.clamp(1, 200);
    // The samples, as uint8 pixels (quantised as a PNG would be).
    let started = Instant::now();
    let (pixels, name, sampler, steps) = match &req.samples {
        Some(p) if p.extension().is_none_or(|e| e != "safetensors") => {
            let px = fid::load_images(p)?;
            if px.size()[0] < n {
                bail!(UsageError(format!("{} holds {} images, fewer than --n {n}", p.display(), px.size()[0])));
            }
            (px.narrow(0, 0, n), p.display().to_string(), "saved".to_string(), 0)
        }
        _ => {
            let (xs, _, name, sampler, steps) = draw_or_read(cfg, req, device, n)?;
            (crate::grid::to_pixels(&xs), name, sampler, steps)
        }
    };
    let sample_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let out = net.features_u8(&pixels, batch, "Inception (samples)");
    let inception_score = out.logits.as_ref().map(|l| metrics::classifier_score(&l.softmax(-1, tch::Kind::Double)));
    let (mu1, s1) = metrics::gaussian_stats(&out.pool);
    // The reference statistics.
    let (mu2, s2, n_ref, ref_name) = match &req.reference {
        Some(p) => match fid::load_reference(p)? {
            fid::Reference::Stats(mu, s) => (mu, s, 0, format!("statistics {}", p.display())),
            fid::Reference::Images(px) => {
                let f = net.features_u8(&px, batch, "Inception (reference)").pool;
                let (mu, s) = metrics::gaussian_stats(&f);
                (mu, s, px.size()[0], p.display().to_string())
            }
        },
        None => {
            let train = data::load(&cfg.dataset, Split::Train)?;
            let k = n.min(train.len());
            let [c, h, w] = train.image_shape();
            let sha = if req.inception_any_weights {
                "any".to_string()
            } else {
                crate::score::inception::WEIGHTS_SHA256_PREFIX.into()
            };
            let cache = cfg.dataset.root.join(format!(
                "fid-stats-{}-{c}x{h}x{w}-train-{k}-{sha}.npz",
                match cfg.dataset.name {
                    data::DatasetName::Folder => format!(
                        "folder-{}",
                        cfg.dataset.path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
                    ),
                    name => name.as_str().to_string(),
                }
            ));
            let stats = match (req.inception_any_weights, cache.exists()) {
                (false, true) => Some(fid::read_stats(&cache)?),
                _ => None,
            };
            let (mu, s) = match stats {
                Some(st) => {
                    tracing::info!("reference statistics from {}", cache.display());
                    st
                }
                None => {
                    // The first k images of a permutation seeded by the run's seed.
                    tch::manual_seed(cfg.seed as i64);
                    let idx = Tensor::randperm(train.len(), (tch::Kind::Int64, tch::Device::Cpu)).narrow(0, 0, k);
                    let f =
                        net.features_u8(&train.images.index_select(0, &idx), batch, "Inception (training images)").pool;
                    let (mu, s) = metrics::gaussian_stats(&f);
                    if !req.inception_any_weights {
                        fid::write_mu_sigma(&cache, &mu, &s)?;
                        tracing::info!("reference statistics cached in {}", cache.display());
                    }
                    (mu, s)
                }
            };
            (mu, s, k, format!("{} training images", cfg.dataset.name))
        }
    };
    let fid_value = metrics::frechet_distance(&mu1, &s1, &mu2, &s2);
    let result = FidResult {
        metric: "fid",
        samples: name,
        reference: ref_name,
        sampler,
        steps,
        n,
        n_reference: n_ref,
        seed: cfg.seed,
        fid: fid_value,
        inception_score,
        sample_seconds,
        feature_seconds: started.elapsed().as_secs_f64(),
    };
    record(cfg, req, "fid.jsonl", &serde_json::to_string(&result)?)?;
    Ok(result)
}
