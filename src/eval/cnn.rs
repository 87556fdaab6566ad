//! The CNN metric: samples scored with ddpm's own classifier features against N images of the
//! test split (Frechet distance, classifier score, class-histogram entropy, label fidelity),
//! beside the same numbers for N other test images (the real-vs-real floor).

use super::{record, Drawing, EvalRequest};
use crate::config::Config;
use crate::data::{self, Split};
use crate::device;
use crate::error::UsageError;
use crate::score::{self, Scores};
use crate::shard::{RowSpec, Shard};
use anyhow::{bail, Result};
use std::time::Instant;
use tch::Tensor;

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
    req.check_json()?;
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
        Some(p) => read_samples(p, n, test.image_shape())?,
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
    record(cfg, req, crate::run_dir::files::EVALS, &serde_json::to_string(&result)?)?;
    Ok(Some(result))
}

type Drawn = (Tensor, Option<Tensor>, String, String, usize);

/// Saved samples (`--samples`, a ddpm tensor file): the first `n`.
fn read_samples(p: &std::path::Path, n: i64, shape: [i64; 3]) -> Result<Drawn> {
    let xs = crate::score::fid::read_sample_tensor(p)?;
    if xs.size()[1..] != shape {
        bail!(UsageError(format!(
            "{} holds samples of {:?}, but the data set's images are {shape:?}: score samples of the model trained on it",
            p.display(),
            &xs.size()[1..]
        )));
    }
    if xs.size()[0] < n {
        bail!(UsageError(format!("{} holds {} samples, fewer than --n {n}", p.display(), xs.size()[0])));
    }
    Ok((xs.narrow(0, 0, n), None, p.display().to_string(), "saved".to_string(), 0))
}
