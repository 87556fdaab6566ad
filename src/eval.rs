//! `ddpm eval`: how good are the samples? Generates N samples from a checkpoint (or reads a
//! saved tensor), scores them against N images of the dataset's test split with
//! [`crate::score`], prints a table and appends to `evals.jsonl`.

use crate::checkpoint::{self, ModelInfo};
use crate::config::Config;
use crate::data::{self, Split};
use crate::error::UsageError;
use crate::generate;
use crate::score::{self, Scores};
use crate::shard::{RowSpec, Shard};
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
    /// `--real-vs-real`: N test-split images in place of samples (FID only).
    pub real_vs_real: bool,
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

/// `ddpm eval`; `None` on the ranks other than 0 of a data-parallel evaluation, which only
/// draw their share of the samples.
pub fn eval(cfg: &Config, req: &EvalRequest) -> Result<Option<EvalResult>> {
    let (shard, device) = Shard::from_env(cfg.threads, device::resolve(&cfg.device)?)?;
    cfg.sample.check_precision(device)?;
    let test = data::load(&cfg.dataset, Split::Test)?;
    let n = req.n;
    if n < 2 || 2 * n > test.len() {
        bail!(UsageError(format!(
            "--n {n}: use 2 <= N <= {} (half the test split, for the real-vs-real reference)",
            test.len() / 2
        )));
    }
    if req.samples.is_some() && !shard.is_main() {
        return Ok(None);
    }
    // Rank 0 scores; the classifier is trained (once, then cached) before the others need it.
    let clf = match shard.is_main() {
        true => {
            let train = data::load(&cfg.dataset, Split::Train)?;
            Some(score::classifier_for(&cfg.dataset, &train, &test, device)?)
        }
        false => None,
    };
    let started = Instant::now();
    let (xs, labels, ckpt_name, sampler, steps) = match &req.samples {
        Some(p) => read_samples(p, n)?,
        None => {
            let d = Drawing::new(cfg, req, device, n)?;
            let [c, h, w] = d.loaded.model.image_shape;
            let rows = [RowSpec { shape: vec![c, h, w], kind: tch::Kind::Float }];
            let bar = Drawing::bar(&shard, n, cfg.sample.batch_size, "sampling");
            let xs = shard.map_batches(n, cfg.sample.batch_size, &rows, |k, start, len| {
                let xs = d.batch(cfg, (k, start, len));
                bar.inc(len as u64);
                Ok(vec![xs])
            })?;
            bar.finish_and_clear();
            (xs.into_iter().next().unwrap_or_default(), d.labels, d.name, d.sampler, d.steps)
        }
    };
    let (Some(clf), true) = (clf, shard.is_main()) else { return Ok(None) };
    let sample_seconds = started.elapsed().as_secs_f64();
    let sc = score::score_samples(&clf, &test, &xs, labels.as_ref().map(|l| l.to_device(tch::Device::Cpu)).as_ref());
    let result = EvalResult { checkpoint: ckpt_name, sampler, steps, n, seed: cfg.seed, scores: sc, sample_seconds };
    record(cfg, req, "evals.jsonl", &serde_json::to_string(&result)?)?;
    Ok(Some(result))
}

type Drawn = (Tensor, Option<Tensor>, String, String, usize);

/// Saved samples (`--samples`, a ddpm tensor file): the first `n`.
fn read_samples(p: &std::path::Path, n: i64) -> Result<Drawn> {
    let xs = crate::score::fid::read_sample_tensor(p)?;
    if xs.size()[0] < n {
        bail!(UsageError(format!("{} holds {} samples, fewer than --n {n}", p.display(), xs.size()[0])));
    }
    Ok((xs.narrow(0, 0, n), None, p.display().to_string(), "saved".to_string(), 0))
}

/// Samples to draw from a checkpoint: global batch `k` of `sample.batch_size` images from noise
/// seeded by `(seed, k)`, with labels cycling through the classes of a conditional model, as
/// `ddpm sample --format npz` draws them; so the samples do not depend on the number of
/// processes.
struct Drawing {
    loaded: checkpoint::LoadedModel,
    labels: Option<Tensor>,
    sc: crate::diffusion::sampler::ReverseProcess,
    name: String,
    sampler: String,
    steps: usize,
}

impl Drawing {
    fn new(cfg: &Config, req: &EvalRequest, device: tch::Device, n: i64) -> Result<Drawing> {
        let path = req.checkpoint.clone().unwrap_or_else(|| checkpoint::latest_path(&cfg.train.run_dir));
        if !path.exists() {
            bail!(UsageError(format!("no checkpoint at {}: pass --checkpoint PATH or --samples PATH", path.display())));
        }
        let fallback = ModelInfo::from_config(cfg);
        let loaded =
            checkpoint::load_model(&path, &fallback, device, cfg.channels_last.for_sampling(device), cfg.sample.ema)?;
        let mut sc = cfg.sample.sampler_config();
        let k = loaded.model.num_classes();
        let labels = generate::cycling_labels(n, k, device);
        if k == 0 {
            sc.guidance = 1.0;
        } else {
            loaded.info.warn_untrained_null_class(&path, sc.guidance);
        }
        let steps = crate::diffusion::sampler::visited_steps(&loaded.model.scheduler, sc.sampler).len();
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
        generate::draw_batch(&self.loaded.model, self.labels.as_ref(), (k, start, len), cfg.seed, &self.sc, true)
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
    /// Drawing the samples (summed over this process's batches; 0 for saved samples).
    pub sample_seconds: f64,
    /// Everything else: Inception features, statistics, FID.
    pub feature_seconds: f64,
    /// Processes that shared the work.
    pub processes: usize,
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

/// `ddpm eval --metric fid`; `None` on the ranks other than 0 of a data-parallel evaluation,
/// which compute their share of the features (rank 0 gathers the features, not the images).
pub fn eval_fid(cfg: &Config, req: &EvalRequest) -> Result<Option<FidResult>> {
    use crate::score::{fid, inception::Inception, metrics};
    let (shard, device) = Shard::from_env(cfg.threads, device::resolve(&cfg.device)?)?;
    cfg.sample.check_precision(device)?;
    let n = req.n;
    if n < 2 {
        bail!(UsageError(format!("--n {n}: use at least 2 (10,000 to 50,000 for numbers others report)")));
    }
    let weights = req.inception.clone().unwrap_or_else(|| cfg.eval.inception_weights_path(&cfg.dataset.root));
    let net = Inception::load(&weights, device, req.inception_any_weights)?;
    let batch = cfg.sample.batch_size.clamp(1, 200);
    let mut rows = vec![RowSpec { shape: vec![2048], kind: tch::Kind::Float }];
    if net.has_logits() {
        rows.push(RowSpec { shape: vec![1008], kind: tch::Kind::Float });
    }
    let started = Instant::now();
    let mut sample_seconds = 0.0;
    // The samples' features.
    let (feats, name, sampler, steps) = match &req.samples {
        None if req.real_vs_real => {
            let test = data::load(&cfg.dataset, Split::Test)?;
            if test.len() < n {
                bail!(UsageError(format!(
                    "--real-vs-real: the test split of {} has {} images, fewer than --n {n}",
                    cfg.dataset.name,
                    test.len()
                )));
            }
            let px = test.images.narrow(0, 0, n);
            let f = features_of(&shard, &net, &px, batch, &rows, "Inception (test images)")?;
            (f, format!("{} test images", cfg.dataset.name), "real".to_string(), 0)
        }
        Some(p) => {
            let px = fid::load_images(p)?;
            if px.size()[0] < n {
                bail!(UsageError(format!("{} holds {} images, fewer than --n {n}", p.display(), px.size()[0])));
            }
            let f = features_of(&shard, &net, &px.narrow(0, 0, n), batch, &rows, "Inception (samples)")?;
            (f, p.display().to_string(), "saved".to_string(), 0)
        }
        None => {
            let d = Drawing::new(cfg, req, device, n)?;
            let bar = Drawing::bar(&shard, n, cfg.sample.batch_size, "sampling + Inception");
            let f = shard.map_batches(n, cfg.sample.batch_size, &rows, |k, start, len| {
                let t = Instant::now();
                let px = crate::grid::to_pixels(&d.batch(cfg, (k, start, len)));
                sample_seconds += t.elapsed().as_secs_f64();
                let out = net.features_with(&px, batch, &indicatif::ProgressBar::hidden());
                bar.inc(len as u64);
                Ok([Some(out.pool), out.logits].into_iter().flatten().collect())
            })?;
            bar.finish_and_clear();
            (f, d.name, d.sampler, d.steps)
        }
    };
    let inception_score = feats.get(1).map(|l| metrics::classifier_score(&l.softmax(-1, tch::Kind::Double)));
    let (mu1, s1) = metrics::gaussian_stats(&feats[0]);
    // The reference statistics.
    let (mu2, s2, n_ref, ref_name) = match &req.reference {
        Some(p) => match fid::load_reference(p)? {
            fid::Reference::Stats(mu, s) => (mu, s, 0, format!("statistics {}", p.display())),
            fid::Reference::Images(px) => {
                let f = features_of(&shard, &net, &px, batch, &rows, "Inception (reference)")?;
                let (mu, s) = metrics::gaussian_stats(&f[0]);
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
                    let px = train.images.index_select(0, &idx);
                    let f = features_of(&shard, &net, &px, batch, &rows, "Inception (training images)")?;
                    let (mu, s) = metrics::gaussian_stats(&f[0]);
                    if !req.inception_any_weights && shard.is_main() {
                        fid::write_mu_sigma(&cache, &mu, &s)?;
                        tracing::info!("reference statistics cached in {}", cache.display());
                    }
                    (mu, s)
                }
            };
            (mu, s, k, format!("{} training images", cfg.dataset.name))
        }
    };
    if !shard.is_main() {
        return Ok(None);
    }
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
        feature_seconds: started.elapsed().as_secs_f64() - sample_seconds,
        processes: shard.world,
    };
    record(cfg, req, "fid.jsonl", &serde_json::to_string(&result)?)?;
    Ok(Some(result))
}

/// Inception features of uint8 images, this rank's batches computed here and the rest
/// gathered: `[pool]` or `[pool, logits]` as `rows` says.
fn features_of(
    shard: &Shard,
    net: &crate::score::inception::Inception,
    px: &Tensor,
    batch: i64,
    rows: &[RowSpec],
    what: &str,
) -> Result<Vec<Tensor>> {
    let n = px.size()[0];
    let bar = Drawing::bar(shard, n, batch, what);
    let out = shard.map_batches(n, batch, rows, |_, start, len| {
        let out = net.features_with(&px.narrow(0, start, len), batch, &bar);
        Ok([Some(out.pool), out.logits].into_iter().flatten().collect())
    })?;
    bar.finish_and_clear();
    Ok(out)
}
