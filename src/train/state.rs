//! The run's state on disk: `latest` (weights, EMA, optimizer moments and position) and the
//! per-epoch checkpoints, written so that a crash never replaces a good checkpoint with a
//! partial or non-finite one; resuming from them; and the same state sent from rank 0 to
//! every rank of a data-parallel run.

use super::{Position, Trainer};
use crate::checkpoint::{self, Checkpoint, ModelInfo};
use crate::error::UsageError;
use crate::run_dir::files;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

impl Trainer<'_> {
    /// Saves `latest` (weights, EMA, training state) and, at the end of an epoch, the epoch's
    /// checkpoint. Refuses to write non-finite weights.
    pub(super) fn save(&mut self, end_of_epoch: bool) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let vs = &self.learner.model.vs;
        let finite = tch::no_grad(|| vs.trainable_variables().iter().all(|t| t.isfinite().all().int64_value(&[]) == 1));
        if !finite {
            bail!(
                "the weights contain NaN or infinity at step {}; not saving them. The last good checkpoint is {}",
                self.pos.step,
                checkpoint::latest_path(&self.run_dir).display()
            );
        }
        self.info.epoch = self.pos.epoch;
        self.info.step = self.pos.step;
        let latest = checkpoint::latest_path(&self.run_dir);
        let mut targets = vec![latest.clone()];
        if end_of_epoch && self.cfg.train.keep_checkpoints > 0 {
            targets.push(checkpoint::epoch_path(&self.run_dir, self.pos.epoch));
        }
        for path in &targets {
            // Companions first, weights last: a complete weights file implies its companions.
            if *path == latest {
                self.save_state(&checkpoint::companion(path, "state"))?;
            }
            if let Some((_, averaged)) = &self.learner.ema {
                checkpoint::save(&averaged.vs, &self.info, &checkpoint::companion(path, "ema"))?;
            }
            checkpoint::save(&self.learner.model.vs, &self.info, path)?;
        }
        if end_of_epoch {
            checkpoint::rotate(&self.run_dir, self.cfg.train.keep_checkpoints as usize)?;
        }
        tracing::info!("saved checkpoint {} (epoch {}, step {})", latest.display(), self.pos.epoch, self.pos.step);
        Ok(())
    }

    fn save_state(&self, path: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("step".to_string(), self.pos.step.to_string()),
            ("epoch".to_string(), self.pos.epoch.to_string()),
            ("batch".to_string(), self.pos.batch.to_string()),
            ("seed".to_string(), self.cfg.seed.to_string()),
            ("batch_size".to_string(), self.cfg.train.batch_size.to_string()),
            ("adam_step".to_string(), self.learner.opt.step.to_string()),
        ]);
        checkpoint::save_tensors(&self.learner.opt.state(), meta, path)
    }

    /// Restores weights, EMA, optimizer moments and position from the latest checkpoint.
    pub(super) fn resume(&mut self) -> Result<()> {
        let latest = checkpoint::latest_path(&self.run_dir);
        let ck = Checkpoint::read(&latest)?;
        if let Some(info) = &ck.info {
            let (have, want) = (&info.spec, &ModelInfo::from_config(self.cfg).spec);
            if !have.same_architecture(want) {
                bail!(UsageError(format!(
                    "--resume: {} was trained with network {:?}, ddpm {:?}, images {:?}, prediction {}, but the config asks for network {:?}, ddpm {:?}, images {:?}, prediction {}",
                    latest.display(), have.network, have.schedule, have.image_shape, have.prediction,
                    want.network, want.schedule, want.image_shape, want.prediction
                )));
            }
        }
        ck.load_into(&mut self.learner.model.vs)?;
        let state_path = checkpoint::companion(&latest, "state");
        let state = Checkpoint::read(&state_path)
            .with_context(|| "--resume needs the training state saved beside the checkpoint")?;
        let meta = state.metadata();
        let num = |k: &str| -> Result<i64> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{}: metadata lacks '{k}'", state_path.display()))
        };
        let pos = Position { step: num("step")?, epoch: num("epoch")?, batch: num("batch")? };
        if ck.info.as_ref().is_some_and(|i| i.step != pos.step) {
            bail!(
                "{} (step {}) and {} (step {}) do not belong together",
                latest.display(),
                ck.info.as_ref().map_or(0, |i| i.step),
                state_path.display(),
                pos.step
            );
        }
        if num("batch_size")? != self.cfg.train.batch_size || num("seed")? != self.cfg.seed as i64 {
            bail!(UsageError(format!(
                "--resume: the run used batch_size {} and seed {}; resume with the same values (the config has {} and {})",
                num("batch_size")?, num("seed")?, self.cfg.train.batch_size, self.cfg.seed
            )));
        }
        self.learner
            .opt
            .load_state(&state.tensors()?, num("adam_step")?)
            .map_err(|m| anyhow::anyhow!("{}: {m}", state_path.display()))?;
        if let Some((_, averaged)) = &mut self.learner.ema {
            let ema_path = checkpoint::companion(&latest, "ema");
            if ema_path.exists() {
                Checkpoint::read(&ema_path)?.load_into(&mut averaged.vs)?;
            } else {
                tracing::warn!("{} is missing: the EMA restarts from the current weights", ema_path.display());
                averaged.vs.copy(&self.learner.model.vs)?;
            }
        }
        self.pos = pos;
        self.curve = read_curve(&self.run_dir, pos.step)?;
        tracing::info!("resumed from {} at epoch {}, step {}", latest.display(), pos.epoch, pos.step);
        Ok(())
    }

    /// Rank 0's weights, EMA, optimizer state and position into every rank.
    pub(super) fn broadcast_state(&mut self) -> Result<()> {
        let Some(d) = &self.dist else { return Ok(()) };
        let opt = &mut self.learner.opt;
        let pos = Tensor::from_slice(&[self.pos.step, self.pos.epoch, self.pos.batch, opt.step]);
        let mut all: Vec<&Tensor> = opt.tensors();
        let ema_vars: Vec<Tensor> = match &self.learner.ema {
            Some((_, averaged)) => {
                let mut v: Vec<(String, Tensor)> = averaged.vs.variables().into_iter().collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v.into_iter().map(|(_, t)| t).collect()
            }
            None => Vec::new(),
        };
        all.extend(ema_vars.iter());
        d.broadcast(&all, 0)?;
        d.broadcast(&[&pos], 0)?;
        let p: Vec<i64> = Vec::try_from(&pos)?;
        self.pos = Position { step: p[0], epoch: p[1], batch: p[2] };
        opt.step = p[3];
        Ok(())
    }
}

/// The loss curve logged so far, up to `step` (metrics.jsonl is cut back to it, so a resumed
/// run does not log the interrupted steps twice).
fn read_curve(run_dir: &Path, step: i64) -> Result<Vec<(i64, f64)>> {
    let path = run_dir.join(files::METRICS);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let mut kept = String::new();
    let mut curve = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(s), Some(l)) = (v["step"].as_i64(), v["loss"].as_f64()) else { continue };
        if s <= step {
            curve.push((s, l));
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_atomic(&path, kept.as_bytes())?;
    Ok(curve)
}
