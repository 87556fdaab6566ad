//! The Inception FID metric (as pytorch-fid computes it) with the Inception Score: features of
//! the samples (or of saved samples, or of test images for the real-vs-real floor) against the
//! statistics of a reference set, by default the training split's, cached beside the data.

use super::{record, Drawing, EvalRequest};
use crate::config::Config;
use crate::data::{self, DatasetConfig, Split};
use crate::device;
use crate::error::UsageError;
use crate::score::{fid, inception::Inception, metrics};
use crate::shard::{RowSpec, Shard};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

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
    req.check_json()?;
    let (shard, device) = Shard::from_env(cfg.threads, device::resolve(&cfg.device)?)?;
    cfg.sample.check_precision(device)?;
    let n = req.n;
    if n < 2 {
        bail!(UsageError(format!("--n {n}: use at least 2 (10,000 to 50,000 for numbers others report)")));
    }
    let weights = req.inception.clone().unwrap_or_else(|| cfg.eval.inception_weights_path(&cfg.dataset.root));
    let net = Inception::load(&weights, device, req.inception_any_weights)?;
    let mut rows = vec![RowSpec { shape: vec![2048], kind: tch::Kind::Float }];
    if net.has_logits() {
        rows.push(RowSpec { shape: vec![1008], kind: tch::Kind::Float });
    }
    let fx = Features { shard: &shard, net: &net, batch: cfg.sample.batch_size.clamp(1, 200), rows: &rows };
    let started = Instant::now();
    let scored = scored_features(cfg, req, &fx, device)?;
    let inception_score = scored.feats.get(1).map(|l| metrics::classifier_score(&l.softmax(-1, tch::Kind::Double)));
    let (mu1, s1) = metrics::gaussian_stats(&scored.feats[0]);
    let reference = reference_stats(cfg, req, &fx)?;
    if !shard.is_main() {
        return Ok(None);
    }
    let result = FidResult {
        metric: "fid",
        samples: scored.name,
        reference: reference.name,
        sampler: scored.sampler,
        steps: scored.steps,
        n,
        n_reference: reference.n,
        seed: cfg.seed,
        fid: metrics::frechet_distance(&mu1, &s1, &reference.mu, &reference.sigma),
        inception_score,
        sample_seconds: scored.sample_seconds,
        feature_seconds: started.elapsed().as_secs_f64() - scored.sample_seconds,
        processes: shard.world,
    };
    record(cfg, req, crate::run_dir::files::FID, &serde_json::to_string(&result)?)?;
    Ok(Some(result))
}

/// The Inception network and how its features are computed across the processes.
struct Features<'a> {
    shard: &'a Shard,
    net: &'a Inception,
    /// Images per Inception forward.
    batch: i64,
    /// `[pool]`, or `[pool, logits]` where the weights have the logits head.
    rows: &'a [RowSpec],
}

/// The features of what is scored, and where they came from.
struct Scored {
    feats: Vec<Tensor>,
    name: String,
    sampler: String,
    steps: usize,
    /// Drawing the samples (summed over this process's batches; 0 for saved samples).
    sample_seconds: f64,
}

/// The features of the N images scored: test images (`--real-vs-real`), saved samples
/// (`--samples`), or samples drawn batch by batch and fed to Inception as they come.
fn scored_features(cfg: &Config, req: &EvalRequest, fx: &Features, device: tch::Device) -> Result<Scored> {
    let n = req.n;
    let scored =
        |feats, name, sampler: &str| Scored { feats, name, sampler: sampler.into(), steps: 0, sample_seconds: 0.0 };
    match &req.samples {
        None if req.real_vs_real => {
            let test = data::load(&cfg.dataset, Split::Test)?;
            if test.len() < n {
                bail!(UsageError(format!(
                    "--real-vs-real: the test split of {} has {} images, fewer than --n {n}",
                    cfg.dataset.name,
                    test.len()
                )));
            }
            let f = features_of(fx, &test.images.narrow(0, 0, n), "Inception (test images)")?;
            Ok(scored(f, format!("{} test images", cfg.dataset.name), "real"))
        }
        Some(p) => {
            let px = fid::load_images(p)?;
            if px.size()[0] < n {
                bail!(UsageError(format!("{} holds {} images, fewer than --n {n}", p.display(), px.size()[0])));
            }
            let f = features_of(fx, &px.narrow(0, 0, n), "Inception (samples)")?;
            Ok(scored(f, p.display().to_string(), "saved"))
        }
        None => {
            let d = Drawing::new(cfg, req, device, n)?;
            let bar = Drawing::bar(fx.shard, n, cfg.sample.batch_size, "sampling + Inception");
            let mut sample_seconds = 0.0;
            let feats = fx.shard.map_batches(n, cfg.sample.batch_size, fx.rows, |k, start, len| {
                let t = Instant::now();
                let px = crate::grid::to_pixels(&d.batch(cfg, (k, start, len)));
                sample_seconds += t.elapsed().as_secs_f64();
                let out = fx.net.features_with(&px, fx.batch, &indicatif::ProgressBar::hidden());
                bar.inc(len as u64);
                Ok([Some(out.pool), out.logits].into_iter().flatten().collect())
            })?;
            bar.finish_and_clear();
            Ok(Scored { feats, name: d.name, sampler: d.sampler, steps: d.steps, sample_seconds })
        }
    }
}

/// The reference the samples are compared with: Gaussian statistics of Inception features.
struct ReferenceStats {
    mu: Tensor,
    sigma: Tensor,
    /// Images behind the statistics (0 when read from a file of statistics).
    n: i64,
    name: String,
}

/// `--reference` (statistics or images), else the first N images of a seeded permutation of
/// the training split, whose statistics are cached beside the data ([`reference_cache`]).
fn reference_stats(cfg: &Config, req: &EvalRequest, fx: &Features) -> Result<ReferenceStats> {
    if let Some(p) = &req.reference {
        return Ok(match fid::load_reference(p)? {
            fid::Reference::Stats(mu, sigma) => {
                ReferenceStats { mu, sigma, n: 0, name: format!("statistics {}", p.display()) }
            }
            fid::Reference::Images(px) => {
                let f = features_of(fx, &px, "Inception (reference)")?;
                let (mu, sigma) = metrics::gaussian_stats(&f[0]);
                ReferenceStats { mu, sigma, n: px.size()[0], name: p.display().to_string() }
            }
        });
    }
    let train = data::load(&cfg.dataset, Split::Train)?;
    let k = req.n.min(train.len());
    let cache = reference_cache(&cfg.dataset, k, req.inception_any_weights);
    let stats = match (req.inception_any_weights, cache.exists()) {
        (false, true) => Some(fid::read_stats(&cache)?),
        _ => None,
    };
    let (mu, sigma) = match stats {
        Some(st) => {
            tracing::info!("reference statistics from {}", cache.display());
            st
        }
        None => {
            // The first k images of a permutation seeded by the run's seed.
            tch::manual_seed(cfg.seed as i64);
            let idx = Tensor::randperm(train.len(), (tch::Kind::Int64, tch::Device::Cpu)).narrow(0, 0, k);
            let px = train.images.index_select(0, &idx);
            let f = features_of(fx, &px, "Inception (training images)")?;
            let (mu, s) = metrics::gaussian_stats(&f[0]);
            if !req.inception_any_weights && fx.shard.is_main() {
                fid::write_mu_sigma(&cache, &mu, &s)?;
                tracing::info!("reference statistics cached in {}", cache.display());
            }
            (mu, s)
        }
    };
    Ok(ReferenceStats { mu, sigma, n: k, name: format!("{} training images", cfg.dataset.name) })
}

/// Where the Inception statistics of the first `k` training images of a data set are cached:
/// `<root>/fid-stats-<cache name>-<C>x<H>x<W>-train-<k>-<weights>.npz`, under the same
/// [`DatasetConfig::cache_name`] as the CNN metric's classifier.
pub fn reference_cache(dataset: &DatasetConfig, k: i64, any_weights: bool) -> PathBuf {
    let [c, h, w] = dataset.image_shape();
    let sha = if any_weights { "any" } else { crate::score::inception::WEIGHTS_SHA256_PREFIX };
    dataset.root.join(format!("fid-stats-{}-{c}x{h}x{w}-train-{k}-{sha}.npz", dataset.cache_name()))
}

/// Inception features of uint8 images, this rank's batches computed here and the rest
/// gathered: `[pool]` or `[pool, logits]` as `rows` says.
fn features_of(fx: &Features, px: &Tensor, what: &str) -> Result<Vec<Tensor>> {
    let n = px.size()[0];
    let bar = Drawing::bar(fx.shard, n, fx.batch, what);
    let out = fx.shard.map_batches(n, fx.batch, fx.rows, |_, start, len| {
        let out = fx.net.features_with(&px.narrow(0, start, len), fx.batch, &bar);
        Ok([Some(out.pool), out.logits].into_iter().flatten().collect())
    })?;
    bar.finish_and_clear();
    Ok(out)
}
