//! The training loop: the whole dataset in memory as u8, a fresh permutation each epoch,
//! batches converted to [-1, 1] on the device, `t ~ U{0..n_steps-1}` and `noise ~ N(0, 1)` per
//! sample, loss `MSE(net(x_t, t), noise)`, Adam, and an EMA of the weights. The host syncs with
//! the device only when the loss is logged (every `train.log_every` steps).
//!
//! The random generator is re-seeded from `(seed, epoch)` for each epoch's permutation and from
//! `(seed, step)` for each step. A run is therefore reproducible, the per-epoch sample grids
//! (drawn from a fixed seed) do not disturb the training stream, and a resumed run needs only
//! the step, the epoch and the position in the epoch to continue exactly where it stopped.

use crate::checkpoint::{self, Checkpoint, ModelInfo};
use crate::config::{Config, ConfigError};
use crate::data::{self, ImageDataset, Split};
use crate::diffusion::{Ddpm, Schedule};
use crate::dist::{DistEnv, ProcessGroup};
use crate::ema::Ema;
use crate::interrupt::{self, Interrupted};
use crate::model::{self, Denoiser};
use crate::optim::{Adam, AdamConfig};
use crate::run_dir::{self, RunLock};
use crate::tensorboard::EventWriter;
use crate::{device, grid, logging, plot};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// Seeds derived from the run's seed, one stream per purpose (splitmix64; positive).
pub fn derived_seed(seed: u64, purpose: u64, index: i64) -> i64 {
    let mut z = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}
const SEED_EPOCH: u64 = 1;
const SEED_STEP: u64 = 2;

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOptions {
    /// Continue from the run_dir's latest checkpoint.
    pub resume: bool,
    /// Start over in a run_dir that already has checkpoints, deleting them.
    pub overwrite: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: i64,
    pub epochs: i64,
    pub last_loss: f64,
    pub images_per_sec: f64,
    pub latest: PathBuf,
}

/// Where training stands: `epoch` (1-based) and the batches of it already done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    step: i64,
    epoch: i64,
    batch: i64,
}

struct Trainer<'a> {
    cfg: &'a Config,
    run_dir: PathBuf,
    device: Device,
    shape: [i64; 3],
    dataset: ImageDataset,
    vs: nn::VarStore,
    net: Box<dyn Denoiser>,
    ema: Option<(Ema, Box<dyn Denoiser>)>,
    opt: Adam,
    ddpm: Ddpm,
    info: ModelInfo,
    pos: Position,
    curve: Vec<(i64, f64)>,
    bf16: bool,
    /// The classifier and test split for evaluation during training, when enabled.
    evaluator: Option<(crate::eval::classifier::Classifier, ImageDataset)>,
    /// The process group of a data-parallel run (None: a single process).
    dist: Option<ProcessGroup>,
    /// A stop agreed by all ranks at the last step (data-parallel runs).
    stop: Option<u8>,
    /// The second compute stream and the trainable variables it adds gradients to.
    streams: Option<(crate::streams::Streams, Vec<Tensor>)>,
    /// `DDPM_TRACE_DIR`: record each step's inputs and the weights (trajectory parity tests).
    trace: Option<crate::trace::Trace>,
}

/// Builds the network described by `cfg` on `device` in a fresh store (its convolution
/// weights channels-last when so configured).
fn build_net(cfg: &Config, shape: [i64; 3], device: Device) -> (nn::VarStore, Box<dyn Denoiser>) {
    let vs = nn::VarStore::new(device);
    let net = model::build(&vs, &cfg.network, shape, cfg.ddpm.n_steps);
    if cfg.channels_last {
        model::vs_to_channels_last(&vs);
    }
    (vs, net)
}

impl Trainer<'_> {
    /// Rank 0 (or the only process) writes checkpoints, grids, logs and metrics.
    fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank == 0)
    }

    /// This rank's part `(start, len)` of a global batch of `len` images.
    fn shard(&self, len: i64) -> (i64, i64) {
        match &self.dist {
            None => (0, len),
            Some(d) => {
                let (r, w) = (d.rank as i64, d.world_size as i64);
                let start = r * len / w;
                (start, (r + 1) * len / w - start)
            }
        }
    }

    /// `x` in the configured memory format (channels-last or not).
    fn format(&self, x: Tensor) -> Tensor {
        if self.cfg.channels_last {
            model::channels_last(&x)
        } else {
            x
        }
    }

    fn steps_per_epoch(&self) -> i64 {
        (self.dataset.len() + self.cfg.train.batch_size - 1) / self.cfg.train.batch_size
    }

    fn total_steps(&self) -> i64 {
        let all = self.steps_per_epoch() * self.cfg.train.n_epochs;
        match self.cfg.train.max_steps {
            0 => all,
            m => m.min(all),
        }
    }

    /// One optimizer step on the (global) batch `idx`; returns the (device) loss. In a
    /// data-parallel run every rank draws the random numbers of the whole batch from the same
    /// seed and uses its shard of them, so N processes take the step one process would take.
    fn step(&mut self, idx: &Tensor) -> Result<Tensor> {
        let c = self.cfg;
        let full = idx.size()[0];
        let (lo, len) = self.shard(full);
        let idx = idx.narrow(0, lo, len);
        let [ch, h, w] = self.shape;
        tch::manual_seed(derived_seed(c.seed, SEED_STEP, self.pos.step));
        let mut x0 = self.dataset.batch(&idx, self.device);
        if c.channels_last {
            x0 = model::channels_last(&x0);
        }
        if c.train.hflip {
            let flip = Tensor::rand([full, 1, 1, 1], (Kind::Float, self.device)).narrow(0, lo, len).lt(0.5);
            x0 = x0.flip([3]).where_self(&flip, &x0);
        }
        let t = Tensor::randint(c.ddpm.n_steps, [full], (Kind::Int64, self.device)).narrow(0, lo, len);
        let mut noise = Tensor::randn([full, ch, h, w], (Kind::Float, self.device)).narrow(0, lo, len);
        if c.channels_last {
            noise = model::channels_last(&noise);
        }
        let labels = (self.net.num_classes() > 0).then(|| {
            let y = self.dataset.labels.index_select(0, &idx).to_device(self.device);
            // Label dropout to the null class (index num_classes) for classifier-free guidance.
            let drop = Tensor::rand([full], (Kind::Float, self.device)).narrow(0, lo, len).lt(c.train.cond_drop_prob);
            y.where_self(&drop.logical_not(), &y.full_like(self.net.num_classes()))
        });
        if let Some(tr) = &self.trace {
            tr.inputs(self.pos.step + 1, &idx, &x0, &t, &noise, labels.as_ref())?;
        }
        let x_t = self.ddpm.add_noise(&x0, &noise, &t);
        if c.train.warmup_steps > 0 {
            // The paper's warm-up: lr * min(1, step / warmup) with step the updates done so far.
            self.opt.lr = c.train.lr * (self.pos.step as f64 / c.train.warmup_steps as f64).min(1.0);
        }
        if let Some((streams, params)) = &self.streams {
            // Two streams: this thread and the worker each take half of the batch.
            self.opt.zero_grad();
            let loss = streams.forward_backward(self.net.as_ref(), params, &x_t, &t, labels.as_ref(), &noise)?;
            return self.finish_step(loss);
        }
        self.net.set_training(true);
        let forward =
            || self.net.forward(&x_t, &t, labels.as_ref()).to_kind(Kind::Float).mse_loss(&noise, Reduction::Mean);
        let loss = if self.bf16 { crate::precision::with_bf16_autocast(self.device, forward)? } else { forward() };
        self.net.set_training(false);
        self.opt.zero_grad();
        // Unequal shards (a short last batch) weigh their mean by their share of the batch.
        let scaled = match &self.dist {
            Some(d) if len * d.world_size as i64 != full => &loss * (len * d.world_size as i64) as f64 / full as f64,
            _ => loss.shallow_clone(),
        };
        scaled.backward();
        let mut loss = loss.detach();
        if let Some(d) = &self.dist {
            // Gradients, the loss and a stop flag in one all-reduce; the flag makes every rank
            // stop at the same step when any of them got a signal.
            let code = interrupt::pending();
            let flag = Tensor::from(match code {
                None => 0f32,
                Some(interrupt::EXIT_SIGINT) => 1.0,
                Some(_) => 1000.0,
            })
            .to_device(self.device);
            loss = scaled.detach().copy();
            let grads = self.opt.grads();
            let mut all: Vec<&Tensor> = grads.iter().collect();
            all.push(&loss);
            all.push(&flag);
            d.all_reduce_mean(&all)?;
            let f = flag.double_value(&[]) * d.world_size as f64;
            if f > 0.5 {
                self.stop =
                    Some(code.unwrap_or(if f >= 999.5 { interrupt::EXIT_SIGTERM } else { interrupt::EXIT_SIGINT }));
            }
        }
        self.finish_step(loss)
    }

    /// Clipping, the optimizer step and the EMA update after the gradients are in place.
    fn finish_step(&mut self, loss: Tensor) -> Result<Tensor> {
        if self.cfg.train.grad_clip > 0.0 {
            self.opt.clip_grad_norm(self.cfg.train.grad_clip);
        }
        self.opt.step();
        if let Some((ema, _)) = &mut self.ema {
            ema.update(self.pos.step);
        }
        self.pos.step += 1;
        if let Some(tr) = &self.trace {
            tr.after_step(self.pos.step, &loss, &self.vs, &self.opt)?;
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

    /// Rank 0's weights, EMA, optimizer state and position into every rank.
    fn broadcast_state(&mut self) -> Result<()> {
        let Some(d) = &self.dist else { return Ok(()) };
        let pos = Tensor::from_slice(&[self.pos.step, self.pos.epoch, self.pos.batch, self.opt.step]);
        let mut all: Vec<&Tensor> = self.opt.tensors();
        let ema_vars: Vec<Tensor> = match &self.ema {
            Some((ema, _)) => {
                let mut v: Vec<(String, Tensor)> = ema.vs.variables().into_iter().collect();
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
        self.opt.step = p[3];
        Ok(())
    }

    fn sampling_net(&self) -> &dyn Denoiser {
        match &self.ema {
            Some((_, net)) => net.as_ref(),
            None => self.net.as_ref(),
        }
    }

    /// Saves `latest` (weights, EMA, training state) and, at the end of an epoch, the epoch's
    /// checkpoint. Refuses to write non-finite weights.
    fn save(&mut self, end_of_epoch: bool) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let finite =
            tch::no_grad(|| self.vs.trainable_variables().iter().all(|t| t.isfinite().all().int64_value(&[]) == 1));
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
            if let Some((ema, _)) = &self.ema {
                checkpoint::save(&ema.vs, &self.info, &checkpoint::companion(path, "ema"))?;
            }
            checkpoint::save(&self.vs, &self.info, path)?;
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
            ("adam_step".to_string(), self.opt.step.to_string()),
        ]);
        checkpoint::save_tensors(&self.opt.state(), meta, path)
    }

    /// Restores weights, EMA, optimizer moments and position from the latest checkpoint.
    fn resume(&mut self) -> Result<()> {
        let latest = checkpoint::latest_path(&self.run_dir);
        let ck = Checkpoint::read(&latest)?;
        if let Some(info) = &ck.info {
            let want = ModelInfo::from_config(self.cfg);
            if info.network != want.network || info.ddpm != want.ddpm || info.image_shape != want.image_shape {
                bail!(ConfigError(format!(
                    "--resume: {} was trained with network {:?}, ddpm {:?}, images {:?}, but the config asks for network {:?}, ddpm {:?}, images {:?}",
                    latest.display(), info.network, info.ddpm, info.image_shape, want.network, want.ddpm, want.image_shape
                )));
            }
        }
        ck.load_into(&mut self.vs)?;
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
            bail!(ConfigError(format!(
                "--resume: the run used batch_size {} and seed {}; resume with the same values (the config has {} and {})",
                num("batch_size")?, num("seed")?, self.cfg.train.batch_size, self.cfg.seed
            )));
        }
        self.opt
            .load_state(&state.tensors()?, num("adam_step")?)
            .map_err(|m| anyhow::anyhow!("{}: {m}", state_path.display()))?;
        if let Some((ema, _)) = &mut self.ema {
            let ema_path = checkpoint::companion(&latest, "ema");
            if ema_path.exists() {
                Checkpoint::read(&ema_path)?.load_into(&mut ema.vs)?;
            } else {
                tracing::warn!("{} is missing: the EMA restarts from the current weights", ema_path.display());
                ema.vs.copy(&self.vs)?;
            }
        }
        self.pos = pos;
        self.curve = read_curve(&self.run_dir, pos.step)?;
        tracing::info!("resumed from {} at epoch {}, step {}", latest.display(), pos.epoch, pos.step);
        Ok(())
    }

    fn interrupted(&mut self, code: u8) -> Result<()> {
        if let Some(d) = self.dist.as_ref().filter(|d| d.rank != 0) {
            let message = format!("rank {} stopped with the others at step {}", d.rank, self.pos.step);
            return Err(Interrupted { code, message }.into());
        }
        self.save(false)?;
        let how = if code == interrupt::EXIT_SIGINT { "Ctrl-C" } else { "SIGTERM" };
        Err(Interrupted {
            code,
            message: format!(
                "interrupted by {how} at step {} (epoch {}); saved {}. Continue with `ddpm train --config <this config> --resume`",
                self.pos.step,
                self.pos.epoch,
                checkpoint::latest_path(&self.run_dir).display()
            ),
        }
        .into())
    }

    fn run(&mut self) -> Result<TrainSummary> {
        let c = self.cfg;
        let n_images = self.dataset.len();
        let bs = c.train.batch_size;
        let spe = self.steps_per_epoch();
        let total = self.total_steps();
        let main = self.is_main();
        let mut metrics = match main {
            true => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.run_dir.join("metrics.jsonl"))
                    .with_context(|| format!("cannot write metrics into {}", self.run_dir.display()))?,
            ),
            false => None,
        };
        let mut tb = match main {
            true => Some(EventWriter::create(&self.run_dir.join("tensorboard"))?),
            false => None,
        };
        let started = Instant::now();
        let (mut last_loss, mut ips) = (f64::NAN, 0.0);
        if self.pos.batch >= spe {
            self.pos = Position { epoch: self.pos.epoch + 1, batch: 0, ..self.pos };
        }
        if self.pos.epoch == 0 {
            self.pos.epoch = 1;
        }
        while self.pos.epoch <= c.train.n_epochs && self.pos.step < total {
            let epoch = self.pos.epoch;
            let epoch_start = Instant::now();
            tch::manual_seed(derived_seed(c.seed, SEED_EPOCH, epoch));
            let perm = Tensor::randperm(n_images, (Kind::Int64, Device::Cpu));
            let last_batch = spe.min(self.pos.batch + total - self.pos.step);
            let bar = logging::progress_bar(
                (last_batch - self.pos.batch) as u64,
                "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
            );
            bar.set_prefix(format!("epoch {epoch}/{}", c.train.n_epochs));
            let mut epoch_sum = Tensor::zeros([], (Kind::Float, self.device));
            let mut window_sum = Tensor::zeros([], (Kind::Float, self.device));
            let (mut window_steps, mut window_images, mut window_start) = (0i64, 0i64, Instant::now());
            let (mut epoch_steps, mut epoch_images) = (0i64, 0i64);
            while self.pos.batch < last_batch {
                let b = self.pos.batch;
                let len = bs.min(n_images - b * bs);
                let loss = self.step(&perm.narrow(0, b * bs, len))?;
                self.pos.batch += 1;
                epoch_sum += &loss;
                window_sum += &loss;
                (window_steps, window_images) = (window_steps + 1, window_images + len);
                (epoch_steps, epoch_images) = (epoch_steps + 1, epoch_images + len);
                bar.inc(1);
                let step = self.pos.step;
                if step % c.train.log_every == 0 || self.pos.batch == last_batch {
                    let mean = window_sum.double_value(&[]) / window_steps as f64;
                    if !mean.is_finite() {
                        bar.abandon();
                        bail!(
                            "the loss became {mean} at step {step} (epoch {epoch}); stopping without saving. \
                             The last good checkpoint is {} (try a lower train.lr)",
                            checkpoint::latest_path(&self.run_dir).display()
                        );
                    }
                    ips = window_images as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                    last_loss = mean;
                    self.curve.push((step, mean));
                    bar.set_message(format!("loss {mean:.4} | {ips:.0} img/s"));
                    let row = serde_json::json!({
                        "step": step, "epoch": epoch, "loss": mean, "lr": self.opt.lr,
                        "images_per_sec": ips, "elapsed_sec": started.elapsed().as_secs_f64()
                    });
                    if let (Some(metrics), Some(tb)) = (&mut metrics, &mut tb) {
                        writeln!(metrics, "{row}").context("writing metrics.jsonl")?;
                        tb.scalar("train/loss", step, mean)?;
                        tb.scalar("train/images_per_sec", step, ips)?;
                    }
                    let _ = window_sum.zero_();
                    (window_steps, window_images, window_start) = (0, 0, Instant::now());
                }
                if let Some(code) = self.stop_requested() {
                    bar.abandon();
                    if let Some(tb) = &mut tb {
                        tb.flush()?;
                    }
                    return Err(self.interrupted(code).unwrap_err());
                }
            }
            bar.finish_and_clear();
            let epoch_loss = epoch_sum.double_value(&[]) / epoch_steps.max(1) as f64;
            let secs = epoch_start.elapsed().as_secs_f64();
            tracing::info!(
                "epoch {epoch}/{}: loss {epoch_loss:.5}, {epoch_steps} steps, {secs:.1} s, {:.0} images/s",
                c.train.n_epochs,
                epoch_images as f64 / secs
            );
            if let Some(tb) = &mut tb {
                tb.scalar("train/epoch_loss", self.pos.step, epoch_loss)?;
                tb.flush()?;
            }
            if main {
                // The other workers wait meanwhile: let rank 0 use the machine's cores.
                let threads = tch::get_num_threads();
                if self.dist.is_some() && c.threads == 0 {
                    tch::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as i32);
                }
                self.save(self.pos.batch == spe)?;
                plot::save_loss_curve(&self.curve, &self.run_dir.join("loss.png"))?;
                if c.train.grid_samples > 0 {
                    self.write_grid(epoch)?;
                }
                if c.train.eval_every > 0 && epoch % c.train.eval_every == 0 {
                    self.evaluate(epoch)?;
                }
                tch::set_num_threads(threads);
            }
            if self.pos.batch == spe {
                self.pos = Position { epoch: epoch + 1, batch: 0, ..self.pos };
            }
        }
        let latest = checkpoint::latest_path(&self.run_dir);
        tracing::info!(
            "done: step {} in {:.1} s; checkpoint {}; sample with `ddpm sample --config <this config>`",
            self.pos.step,
            started.elapsed().as_secs_f64(),
            latest.display()
        );
        Ok(TrainSummary {
            steps: self.pos.step,
            epochs: self.pos.epoch.min(c.train.n_epochs),
            last_loss,
            images_per_sec: ips,
            latest,
        })
    }

    /// A small evaluation (DDIM-50 from the EMA weights) appended to evals.jsonl and eval.png.
    fn evaluate(&self, epoch: i64) -> Result<()> {
        let Some((clf, test)) = &self.evaluator else { return Ok(()) };
        let c = self.cfg;
        let n = c.train.eval_samples.min(test.len() / 2);
        let classes = self.net.num_classes();
        let labels = (classes > 0).then(|| Tensor::arange(n, (Kind::Int64, self.device)).remainder(classes));
        let sc = crate::diffusion::sampler::SamplerConfig {
            sampler: crate::diffusion::sampler::Sampler::Ddim {
                steps: 50,
                eta: c.sample.eta,
                spacing: crate::diffusion::ddim::Spacing::Uniform,
            },
            opts: crate::diffusion::ddpm::SampleOptions { simple_var: c.sample.simple_var, clip_x0: c.sample.clip_x0 },
            guidance: if classes > 0 { c.sample.guidance } else { 1.0 },
        };
        tch::manual_seed(c.seed as i64);
        let mut parts = Vec::new();
        let bs = c.sample.batch_size;
        for i in 0..(n + bs - 1) / bs {
            let b = bs.min(n - i * bs);
            let noise = self
                .format(Tensor::randn([b, self.shape[0], self.shape[1], self.shape[2]], (Kind::Float, self.device)));
            let y = labels.as_ref().map(|l| l.narrow(0, i * bs, b));
            parts.push(crate::diffusion::sampler::sample(
                self.sampling_net(),
                &self.ddpm,
                noise,
                y.as_ref(),
                &sc,
                |_, _, _| {},
            ));
        }
        let s = crate::eval::score_samples(clf, test, &Tensor::cat(&parts, 0), labels.as_ref());
        tracing::info!(
            "eval at epoch {epoch}: Frechet distance {:.3} (real vs real {:.3}), classifier score {:.3}, class entropy {:.3}{}",
            s.frechet_distance,
            s.frechet_distance_real,
            s.classifier_score,
            s.class_entropy,
            s.label_fidelity.map_or(String::new(), |f| format!(", label fidelity {f:.3}"))
        );
        let row = serde_json::json!({
            "step": self.pos.step, "epoch": epoch, "sampler": "ddim", "steps": 50, "eta": c.sample.eta, "n": n, "seed": c.seed,
            "frechet_distance": s.frechet_distance, "frechet_distance_real": s.frechet_distance_real,
            "classifier_score": s.classifier_score, "classifier_score_real": s.classifier_score_real,
            "class_entropy": s.class_entropy, "class_entropy_real": s.class_entropy_real, "label_fidelity": s.label_fidelity,
        });
        let path = self.run_dir.join("evals.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{row}")?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let points: Vec<(i64, f64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["step"].as_i64()?, v["frechet_distance"].as_f64()?)))
            .collect();
        plot::save_loss_curve(&points, &self.run_dir.join("eval.png"))
    }

    /// The per-epoch grid from the EMA weights (if any), with fixed noise; conditional models
    /// get one row per class.
    fn write_grid(&self, epoch: i64) -> Result<()> {
        let c = self.cfg;
        let classes = self.net.num_classes();
        let n = c.train.grid_samples;
        let labels = (classes > 0).then(|| {
            let per = (n + classes - 1) / classes;
            Tensor::arange(classes, (Kind::Int64, self.device)).repeat_interleave_self_int(per, 0, None)
        });
        let n = labels.as_ref().map_or(n, |l| l.size()[0]);
        let mut sc = crate::sample::sampler_config(c)?;
        sc.guidance = if classes > 0 { c.sample.guidance } else { 1.0 };
        tch::manual_seed(c.seed as i64);
        let noise =
            self.format(Tensor::randn([n, self.shape[0], self.shape[1], self.shape[2]], (Kind::Float, self.device)));
        let xs = crate::diffusion::sampler::sample(
            self.sampling_net(),
            &self.ddpm,
            noise,
            labels.as_ref(),
            &sc,
            |_, _, _| {},
        );
        let path = self.run_dir.join("samples").join(format!("epoch-{epoch:04}.png"));
        let cols = if classes > 0 { n / classes } else { grid::default_cols(n) };
        grid::save_png(&grid::grid_image(&xs, cols, c.sample.padding)?, &path)?;
        tracing::info!("wrote {}", path.display());
        Ok(())
    }
}

/// The loss curve logged so far, up to `step` (metrics.jsonl is cut back to it, so a resumed
/// run does not log the interrupted steps twice).
fn read_curve(run_dir: &Path, step: i64) -> Result<Vec<(i64, f64)>> {
    let path = run_dir.join("metrics.jsonl");
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

/// `ddpm train`.
pub fn train(cfg: &Config, opts: TrainOptions) -> Result<TrainSummary> {
    let env = DistEnv::from_env()?;
    match (&env, cfg.threads) {
        (_, n) if n > 0 => tch::set_num_threads(n as i32),
        // Workers on one machine share its cores instead of each taking all of them.
        (Some(e), _) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads((cores / e.local_world_size.max(1)).max(1) as i32);
        }
        _ => {}
    }
    let mut device = device::resolve(&cfg.device)?;
    if let (Some(e), Device::Cuda(_)) = (&env, device) {
        device = Device::Cuda(e.local_rank);
    }
    interrupt::install()?;
    let dist = match &env {
        None => None,
        Some(e) => {
            let backend = dist_backend(device)?;
            let timeout = dist_timeout()?;
            let pg = ProcessGroup::new(e, &backend, timeout)?;
            if e.rank == 0 {
                tracing::info!(
                    "data-parallel: {} processes ({backend}, rendezvous {}:{}), {} images per process per step",
                    e.world_size,
                    e.master_addr,
                    e.master_port,
                    cfg.train.batch_size / e.world_size as i64
                );
            }
            Some(pg)
        }
    };
    let main = dist.as_ref().is_none_or(|d| d.rank == 0);
    let run_dir = cfg.train.run_dir.clone();
    let _lock = match main {
        true => {
            std::fs::create_dir_all(&run_dir)
                .with_context(|| format!("cannot create run_dir {}", run_dir.display()))?;
            let lock = RunLock::acquire(&run_dir)?;
            run_dir::check_fresh_start(&run_dir, opts.resume, opts.overwrite)?;
            crate::fsutil::write_atomic(&run_dir.join("config.yml"), cfg.to_yaml().as_bytes())
                .with_context(|| format!("cannot write into run_dir {}", run_dir.display()))?;
            logging::log_to_file(&run_dir.join("train.log"))?;
            tracing::info!("run directory {}", run_dir.display());
            Some(lock)
        }
        false => None,
    };
    if let Some(d) = &dist {
        if cfg.train.batch_size < d.world_size as i64 {
            bail!(ConfigError(format!(
                "train.batch_size = {} is smaller than the {} processes: each needs at least one image per step",
                cfg.train.batch_size, d.world_size
            )));
        }
    }

    let dataset = data::load(&cfg.dataset, Split::Train)?;
    let name = cfg.dataset_name();
    let shape = name.image_shape();
    if dataset.image_shape() != shape {
        bail!(
            "{} images are {:?}, but {} images should be {:?}",
            cfg.dataset.root.display(),
            dataset.image_shape(),
            name.as_str(),
            shape
        );
    }
    tracing::info!("{}: {} training images of {:?}", name.as_str(), dataset.len(), shape);

    tch::manual_seed(cfg.seed as i64);
    let (vs, net) = build_net(cfg, shape, device);
    let ema = (cfg.train.ema_decay > 0.0).then(|| {
        let (evs, enet) = build_net(cfg, shape, device);
        (Ema::new(&vs, evs, cfg.train.ema_decay), enet)
    });
    tracing::info!(
        "network {}, classes {}: {} trainable parameters; EMA {}; device {}",
        describe_network(&cfg.network),
        cfg.network.num_classes,
        model::trainable_parameters(&vs),
        if cfg.train.ema_decay > 0.0 { format!("decay {}", cfg.train.ema_decay) } else { "off".into() },
        device::describe(device)
    );
    let ddpm = Ddpm::new(Schedule::linear(cfg.ddpm.n_steps, cfg.ddpm.min_beta, cfg.ddpm.max_beta), device);
    let adamw = cfg.train.optimizer.eq_ignore_ascii_case("adamw");
    let opt = Adam::new(
        &vs,
        cfg.train.lr,
        AdamConfig { weight_decay: cfg.train.weight_decay, decoupled: adamw, ..Default::default() },
    );
    let bf16 = cfg.train.precision.eq_ignore_ascii_case("bf16");
    if bf16 {
        // libtorch's CUDA autocast defaults to float16; bf16 it is, on every device type.
        crate::precision::set_autocast_dtype(true, Kind::BFloat16)?;
        crate::precision::set_autocast_dtype(false, Kind::BFloat16)?;
    }
    if bf16 && !crate::precision::bf16_autocast(cfg, device) {
        tracing::warn!(
            "train.precision bf16: oneDNN has no bf16 support on this CPU (it needs AVX512-BF16 or AMX); this run trains in fp32"
        );
    }
    let bf16 = crate::precision::bf16_autocast(cfg, device);
    let mut info = ModelInfo::from_config(cfg);
    info.class_names = dataset.class_names.clone();
    let mut trainer = Trainer {
        cfg,
        run_dir,
        device,
        shape,
        dataset,
        vs,
        net,
        ema,
        opt,
        ddpm,
        info,
        pos: Position { step: 0, epoch: 0, batch: 0 },
        curve: Vec::new(),
        bf16,
        evaluator: None,
        dist,
        stop: None,
        streams: None,
        trace: crate::trace::Trace::from_env()?,
    };
    if crate::streams::wanted(cfg, device, trainer.dist.is_some()) == 2 {
        let params = crate::model::trainable_sorted(&trainer.vs).into_iter().map(|(_, t)| t).collect();
        trainer.streams = Some((crate::streams::Streams::new(cfg, shape, &trainer.vs)?, params));
        tracing::info!(
            "two compute streams of {} threads each (streams: 1 switches them off)",
            (tch::get_num_threads() / 2).max(1)
        );
    }
    if cfg.train.eval_every > 0 && main {
        let test = data::load(&cfg.dataset, Split::Test)?;
        let clf = crate::eval::classifier_for(cfg, &trainer.dataset, &test, device)?;
        trainer.evaluator = Some((clf, test));
    }
    if opts.resume && main {
        trainer.resume()?;
    }
    trainer.broadcast_state()?;
    if let Some(tr) = &trainer.trace {
        tr.initial(trainer.pos.step, &trainer.vs)?;
    }
    trainer.run()
}

/// The collective backend of a data-parallel run: `DDPM_DIST_BACKEND` (gloo or nccl), else
/// NCCL on GPUs and gloo on the CPU.
fn dist_backend(device: Device) -> Result<String> {
    let backend = match std::env::var("DDPM_DIST_BACKEND") {
        Ok(b) if b == "gloo" || b == "nccl" => b,
        Ok(b) => bail!(ConfigError(format!("DDPM_DIST_BACKEND={b:?}: expected gloo or nccl"))),
        Err(_) if device.is_cuda() => "nccl".into(),
        Err(_) => "gloo".into(),
    };
    if backend == "nccl" && !device.is_cuda() {
        bail!(ConfigError("DDPM_DIST_BACKEND=nccl needs a CUDA device (use gloo on the CPU)".into()));
    }
    Ok(backend)
}

/// How long a rendezvous or a collective may wait for the other ranks: `DDPM_DIST_TIMEOUT`
/// seconds (default 1800: rank 0 samples the epoch's grid while the others wait).
fn dist_timeout() -> Result<std::time::Duration> {
    match std::env::var("DDPM_DIST_TIMEOUT") {
        Err(_) => Ok(std::time::Duration::from_secs(1800)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(std::time::Duration::from_secs_f64)
            .with_context(|| format!("DDPM_DIST_TIMEOUT={v:?}: expected seconds > 0")),
    }
}

/// A one-line description of the network settings.
pub fn describe_network(n: &crate::config::NetworkConfig) -> String {
    match n.kind {
        crate::config::NetworkKind::Demo => {
            format!("demo (channels {:?}, pe_dim {}, residual {})", n.channels, n.pe_dim, n.residual)
        }
        crate::config::NetworkKind::Unet => format!(
            "unet (base {}, mults {:?}, {} blocks, attention at {:?}, dropout {})",
            n.base_channels, n.channel_mults, n.num_res_blocks, n.attn_resolutions, n.dropout
        ),
    }
}
