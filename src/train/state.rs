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
        if !checkpoint::non_finite(&self.learner.model.vs).is_empty() {
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
            match *path == latest {
                true => self.save_latest()?,
                // Companions first, weights last: a complete weights file implies its companions.
                false => self.save_trio(path, false)?,
            }
        }
        if end_of_epoch {
            checkpoint::rotate(&self.run_dir, self.cfg.train.keep_checkpoints as usize)?;
        }
        tracing::info!("saved checkpoint {} (epoch {}, step {})", latest.display(), self.pos.epoch, self.pos.step);
        Ok(())
    }

    /// The weights at `path` with the EMA (and, with `state`, the training state) beside them.
    fn save_trio(&self, path: &Path, state: bool) -> Result<()> {
        if state {
            self.save_state(&checkpoint::companion(path, "state"))?;
        }
        if let Some((_, averaged)) = &self.learner.ema {
            checkpoint::save(&averaged.vs, &self.info, &checkpoint::companion(path, "ema"))?;
        }
        checkpoint::save(&self.learner.model.vs, &self.info, path)
    }

    /// `latest` (weights, EMA, training state) as one unit: the three are written into
    /// `checkpoints/.next/`, a marker says they are complete, and only then are they renamed
    /// over the old ones. A process killed before the marker leaves the old trio whole; one
    /// killed after it leaves the new trio in `.next/` and [`recover_latest`] finishes the
    /// renames before the next run reads it. Either way `--resume` finds one step's trio.
    fn save_latest(&self) -> Result<()> {
        let latest = checkpoint::latest_path(&self.run_dir);
        let next = next_dir(&self.run_dir);
        if next.exists() {
            std::fs::remove_dir_all(&next).with_context(|| format!("removing {}", next.display()))?;
        }
        std::fs::create_dir_all(&next).with_context(|| format!("creating {}", next.display()))?;
        let staged = next.join(latest.file_name().unwrap_or_default());
        self.save_trio(&staged, true)?;
        abort_for_tests("staged");
        crate::fsutil::write_atomic(&next.join(COMPLETE), b"")?;
        commit_next(&self.run_dir)
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

/// The staging folder of the `latest` trio, and its marker of a complete save.
fn next_dir(run_dir: &Path) -> std::path::PathBuf {
    checkpoint::checkpoint_dir(run_dir).join(".next")
}
const COMPLETE: &str = "COMPLETE";

/// Moves a complete staged trio over `latest` (the state first, the weights last) and removes
/// the staging folder.
fn commit_next(run_dir: &Path) -> Result<()> {
    let (next, dir) = (next_dir(run_dir), checkpoint::checkpoint_dir(run_dir));
    let latest = checkpoint::latest_path(run_dir);
    let name = |p: &Path| p.file_name().unwrap_or_default().to_owned();
    let files = [checkpoint::companion(&latest, "state"), checkpoint::companion(&latest, "ema"), latest.clone()];
    for (i, f) in files.iter().enumerate() {
        let staged = next.join(name(f));
        if staged.exists() {
            std::fs::rename(&staged, dir.join(name(f))).with_context(|| format!("renaming {}", staged.display()))?;
            if i == 0 {
                abort_for_tests("committing");
            }
        }
    }
    crate::fsutil::sync_dir(&latest);
    std::fs::remove_dir_all(&next).with_context(|| format!("removing {}", next.display()))
}

/// Finishes or drops a `latest` save that a killed process left in `checkpoints/.next/`:
/// complete (its marker written) it is committed, else it is removed and the previous trio,
/// untouched, stays. Called by `ddpm train` while it holds the run directory's lock.
pub fn recover_latest(run_dir: &Path) -> Result<()> {
    let next = next_dir(run_dir);
    if !next.exists() {
        return Ok(());
    }
    if next.join(COMPLETE).exists() {
        tracing::warn!("finishing a checkpoint save that was interrupted ({})", next.display());
        commit_next(run_dir)
    } else {
        tracing::warn!("removing an incomplete checkpoint save ({}); the previous checkpoint stays", next.display());
        std::fs::remove_dir_all(&next).with_context(|| format!("removing {}", next.display()))
    }
}

/// `DDPM_TEST_ABORT_SAVE=staged|committing`: the process dies at that point of a `latest`
/// save, as a SIGKILL would (for the tests of [`recover_latest`]).
fn abort_for_tests(point: &str) {
    if std::env::var("DDPM_TEST_ABORT_SAVE").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}
