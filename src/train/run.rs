//! The loop: epochs of batches in a fresh permutation, the loss logged every
//! `train.log_every` steps (the only host syncs), a stop on Ctrl-C or SIGTERM that saves
//! first, and the epoch ends.

use super::epoch_end::Logs;
use super::{Position, Trainer};
use crate::error::{Interrupted, EXIT_SIGINT, EXIT_SIGTERM};
use crate::learner::BatchSlice;
use crate::seed;
use crate::{checkpoint, interrupt, logging};
use anyhow::{bail, Result};
use std::time::Instant;
use tch::{Kind, Tensor};

impl Trainer<'_> {
    /// One optimizer step on the global batch `idx`; returns the (device) loss. In a
    /// data-parallel run the gradients, the loss and a stop flag go through one all-reduce; the
    /// flag makes every rank stop at the same step when any of them got a signal.
    fn step(&mut self, idx: &Tensor) -> Result<Tensor> {
        let full = idx.size()[0];
        let shard = match &self.dist {
            None => BatchSlice::whole(full),
            Some(d) => BatchSlice::of(d.rank as i64, d.world_size as i64, full),
        };
        let device = self.learner.model.device();
        let inp = self.learner.inputs_at(&self.dataset, idx, shard, self.pos.step);
        if let Some(tr) = &self.trace {
            let idx = idx.narrow(0, shard.start, shard.len);
            tr.inputs(self.pos.step + 1, &idx, &inp.x0, &inp.batch.t, &inp.noise, inp.batch.labels.as_ref())?;
        }
        let loss = match &self.dist {
            None => self.learner.step(&inp, self.pos.step, None)?,
            Some(d) => {
                let mut stop = None;
                let mut reduce = |grads: &[Tensor], loss: &Tensor| -> Result<()> {
                    let code = interrupt::pending();
                    let flag = Tensor::from(match code {
                        None => 0f32,
                        Some(EXIT_SIGINT) => 1.0,
                        Some(_) => 1000.0,
                    })
                    .to_device(device);
                    let mut all: Vec<&Tensor> = grads.iter().collect();
                    all.push(loss);
                    all.push(&flag);
                    d.all_reduce_mean(&all)?;
                    let f = flag.double_value(&[]) * d.world_size as f64;
                    if f > 0.5 {
                        stop = Some(code.unwrap_or(if f >= 999.5 { EXIT_SIGTERM } else { EXIT_SIGINT }));
                    }
                    Ok(())
                };
                let loss = self.learner.step(&inp, self.pos.step, Some(&mut reduce))?;
                self.stop = stop;
                loss
            }
        };
        self.pos.step += 1;
        if let Some(tr) = &self.trace {
            tr.after_step(self.pos.step, &loss, &self.learner.model.vs, &self.learner.opt)?;
        }
        Ok(loss)
    }

    /// A stop requested by a signal: this process's, or in a data-parallel run the one all
    /// ranks agreed on at the last step.
    fn stop_requested(&self) -> Option<u8> {
        match &self.dist {
            None => interrupt::pending(),
            Some(_) => self.stop,
        }
    }

    /// Saves and returns the error that makes `main` exit with `code`.
    fn interrupted(&mut self, code: u8) -> anyhow::Error {
        if let Some(d) = self.dist.as_ref().filter(|d| d.rank != 0) {
            let message = format!("rank {} stopped with the others at step {}", d.rank, self.pos.step);
            return Interrupted { code, message }.into();
        }
        if let Err(e) = self.save(false) {
            return e;
        }
        let how = if code == EXIT_SIGINT { "Ctrl-C" } else { "SIGTERM" };
        Interrupted {
            code,
            message: format!(
                "interrupted by {how} at step {} (epoch {}); saved {}. Continue with `ddpm train --config <this config> --resume`",
                self.pos.step,
                self.pos.epoch,
                checkpoint::latest_path(&self.run_dir).display()
            ),
        }
        .into()
    }

    /// Trains until `n_epochs` or `max_steps`.
    pub(super) fn run(&mut self) -> Result<()> {
        let mut logs = match self.is_main() {
            true => Some(Logs::open(&self.run_dir)?),
            false => None,
        };
        let started = Instant::now();
        let mut images = 0i64;
        let spe = self.steps_per_epoch();
        if self.pos.batch >= spe {
            self.pos = Position { epoch: self.pos.epoch + 1, batch: 0, ..self.pos };
        }
        if self.pos.epoch == 0 {
            self.pos.epoch = 1;
        }
        while self.pos.epoch <= self.cfg.train.n_epochs && self.pos.step < self.total_steps() {
            let epoch = self.pos.epoch;
            images += self.run_epoch(epoch, &mut logs, started)?;
            if self.pos.batch == spe {
                self.pos = Position { epoch: epoch + 1, batch: 0, ..self.pos };
            }
        }
        if self.is_main() {
            self.summary(started.elapsed().as_secs_f64(), images);
        }
        Ok(())
    }

    /// The rest of epoch `epoch` (from `pos.batch`, up to the step limit) in the epoch's order,
    /// then its end; returns the images trained on.
    fn run_epoch(&mut self, epoch: i64, logs: &mut Option<Logs>, started: Instant) -> Result<i64> {
        let c = self.cfg;
        let (n_images, bs, spe) = (self.dataset.len(), c.train.batch_size, self.steps_per_epoch());
        let epoch_start = Instant::now();
        let perm = seed::epoch_order(c.seed, epoch, n_images);
        let last_batch = spe.min(self.pos.batch + self.total_steps() - self.pos.step);
        let bar = logging::progress_bar(
            (last_batch - self.pos.batch) as u64,
            "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
        );
        bar.set_prefix(format!("epoch {epoch}/{}", c.train.n_epochs));
        let mut sums = LossSums::new(self.learner.model.device());
        while self.pos.batch < last_batch {
            let b = self.pos.batch;
            let len = bs.min(n_images - b * bs);
            let loss = self.step(&perm.narrow(0, b * bs, len))?;
            self.pos.batch += 1;
            sums.add(&loss, len);
            bar.inc(1);
            if self.pos.step % c.train.log_every == 0 || self.pos.batch == last_batch {
                self.log_window(&mut sums, epoch, started, &bar, logs)?;
            }
            if let Some(code) = self.stop_requested() {
                bar.abandon();
                if let Some(logs) = logs {
                    logs.flush()?;
                }
                return Err(self.interrupted(code));
            }
        }
        bar.finish_and_clear();
        let epoch_loss = sums.epoch.double_value(&[]) / sums.epoch_steps.max(1) as f64;
        let secs = epoch_start.elapsed().as_secs_f64();
        tracing::info!(
            "epoch {epoch}/{}: loss {epoch_loss:.5}, {} steps, {secs:.1} s, {:.0} images/s",
            c.train.n_epochs,
            sums.epoch_steps,
            sums.epoch_images as f64 / secs
        );
        if let Some(logs) = logs {
            logs.epoch(self.pos.step, epoch_loss)?;
            self.epoch_end(epoch, self.pos.batch == spe, logs)?;
        }
        Ok(sums.epoch_images)
    }

    /// The end of a logging window: its mean loss (a NaN or inf stops the run, saving
    /// nothing), on the bar, in the loss curve and in the metrics.
    fn log_window(
        &mut self,
        sums: &mut LossSums,
        epoch: i64,
        started: Instant,
        bar: &indicatif::ProgressBar,
        logs: &mut Option<Logs>,
    ) -> Result<()> {
        let step = self.pos.step;
        let mean = sums.window.double_value(&[]) / sums.window_steps as f64;
        if !mean.is_finite() {
            bar.abandon();
            bail!(
                "the loss became {mean} at step {step} (epoch {epoch}); stopping without saving. \
                 The last good checkpoint is {} (try a lower train.lr)",
                checkpoint::latest_path(&self.run_dir).display()
            );
        }
        let ips = sums.window_images as f64 / sums.window_start.elapsed().as_secs_f64().max(1e-9);
        self.curve.push((step, mean));
        bar.set_message(format!("loss {mean:.4} | {ips:.0} img/s"));
        let row = serde_json::json!({
            "step": step, "epoch": epoch, "loss": mean, "lr": self.learner.opt.lr,
            "images_per_sec": ips, "elapsed_sec": started.elapsed().as_secs_f64()
        });
        if let Some(logs) = logs {
            logs.window(&row, step, mean, ips)?;
        }
        sums.new_window();
        Ok(())
    }

    /// The closing lines of a run: time, speed, final loss, where things are, what next.
    fn summary(&self, secs: f64, images: i64) {
        let dir = self.run_dir.display();
        let loss = self.curve.last().map_or("n/a".to_string(), |(s, l)| format!("{l:.5} (step {s})"));
        let grids = match self.cfg.train.grid_samples {
            0 => "none (train.grid_samples: 0)".to_string(),
            _ => format!("{dir}/samples/epoch-NNNN.png"),
        };
        tracing::info!(
            "done: {} steps, epoch {}, in {secs:.1} s ({:.0} images/s); final loss {loss}\n  \
             checkpoint: {} (EMA: {})\n  grids: {grids}; loss plot: {dir}/loss.png\n  \
             next: ddpm sample --config {dir}/config.yml --n-samples 81",
            self.pos.step,
            self.pos.epoch.min(self.cfg.train.n_epochs),
            images as f64 / secs.max(1e-9),
            checkpoint::latest_path(&self.run_dir).display(),
            if self.learner.ema.is_some() { "yes" } else { "no" },
        );
    }
}

/// The loss summed over the logging window and the epoch, on the device (adding needs no host
/// sync; the window's mean is read once per window).
struct LossSums {
    window: Tensor,
    window_steps: i64,
    window_images: i64,
    window_start: Instant,
    epoch: Tensor,
    epoch_steps: i64,
    epoch_images: i64,
}

impl LossSums {
    fn new(device: tch::Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self {
            window: zero(),
            window_steps: 0,
            window_images: 0,
            window_start: Instant::now(),
            epoch: zero(),
            epoch_steps: 0,
            epoch_images: 0,
        }
    }

    /// One step's loss over `images` images.
    fn add(&mut self, loss: &Tensor, images: i64) {
        self.epoch += loss;
        self.window += loss;
        (self.window_steps, self.window_images) = (self.window_steps + 1, self.window_images + images);
        (self.epoch_steps, self.epoch_images) = (self.epoch_steps + 1, self.epoch_images + images);
    }

    fn new_window(&mut self) {
        let _ = self.window.zero_();
        (self.window_steps, self.window_images, self.window_start) = (0, 0, Instant::now());
    }
}
