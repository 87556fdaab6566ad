//! One training step, the only one: the random draws of a batch (flips, `t`, noise, label
//! dropout), the loss `MSE(net(x_t, t, y), target)` (the target: the noise, v or x0, optionally
//! Min-SNR weighted per sample), backward (in one or two compute streams,
//! under bf16 autocast when configured), the gradients' all-reduce in a data-parallel run,
//! clipping, warm-up, Adam and the EMA update. `ddpm train` and `ddpm bench` both run it.

mod lr;
pub mod step_graphs;
pub mod streams;

pub use lr::lr_at;

use crate::config::train::Optimizer;
use crate::config::Config;
use crate::data::ImageDataset;
use crate::diffusion::loss::{denoising_loss, NetBatch, Target};
use crate::diffusion::prediction::LossWeighting;
use crate::diffusion_model::{Model, ModelSpec};
use crate::ema::Ema;
use crate::optim::{Adam, AdamConfig};
use crate::precision::Precision;
use crate::seed::{derived_seed, SEED_STEP};
use anyhow::Result;
use step_graphs::{Ran, StaticStep, StepGraphs};
use streams::Streams;
use tch::{Device, Kind, Tensor};

/// This process's part `[start, start + len)` of a global batch of `full` images split over
/// `world` processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlice {
    pub start: i64,
    pub len: i64,
    pub full: i64,
    pub world: i64,
}

impl BatchSlice {
    /// The whole batch, in a single process.
    pub fn whole(full: i64) -> Self {
        Self { start: 0, len: full, full, world: 1 }
    }

    /// Rank `rank`'s part.
    pub fn of(rank: i64, world: i64, full: i64) -> Self {
        let start = rank * full / world;
        Self { start, len: (rank + 1) * full / world - start, full, world }
    }

    /// Unequal shards (a short last batch) weigh their mean loss by their share of the batch.
    fn weight(&self) -> f64 {
        (self.len * self.world) as f64 / self.full as f64
    }
}

/// A step's inputs, as trained on.
pub struct StepInputs {
    pub shard: BatchSlice,
    /// This shard's images, after flips, in [-1, 1].
    pub x0: Tensor,
    pub noise: Tensor,
    /// What the network sees: `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, `t`, the labels
    /// after dropout to the null class (conditional networks) and the target.
    pub batch: NetBatch,
}

/// Called between backward and the update with the gradients and the loss (both reduced in
/// place across the processes of a data-parallel run).
pub type Reduce<'a> = &'a mut dyn FnMut(&[Tensor], &Tensor) -> Result<()>;

/// The model being trained, with what updates it.
pub struct Learner {
    pub model: Model,
    /// The averaging and the averaged model, when `train.ema_decay > 0`.
    pub ema: Option<(Ema, Model)>,
    pub opt: Adam,
    /// The second compute stream and the trainable variables it adds gradients to.
    streams: Option<(Streams, Vec<Tensor>)>,
    /// Forward under bf16 autocast.
    bf16: bool,
    /// Steps of the whole run, for the learning-rate decay (0: no decay).
    total_steps: i64,
    /// CUDA graphs of the step (`train.cuda_graphs`; off where they cannot be used).
    graphs: StepGraphs,
    cfg: Config,
}

impl Learner {
    /// A fresh model for `cfg` on `device`, its weights drawn from `cfg.seed`.
    pub fn new(cfg: &Config, spec: &ModelSpec, device: Device, distributed: bool) -> Result<Self> {
        tch::manual_seed(cfg.seed as i64);
        let model = spec.build(device, cfg.channels_last.for_training(device));
        let ema = (cfg.train.ema_decay > 0.0).then(|| {
            let mut averaged = spec.build(device, cfg.channels_last.for_training(device));
            (Ema::new(&model.vs, &mut averaged.vs, cfg.train.ema_decay), averaged)
        });
        let t = &cfg.train;
        let adam = AdamConfig {
            weight_decay: t.weight_decay,
            decoupled: t.optimizer == Optimizer::AdamW,
            fused: t.fused_optimizer,
            ..Default::default()
        };
        let opt = Adam::new(&model.vs, t.lr, adam);
        if t.precision == Precision::Bf16 {
            // libtorch's CUDA autocast defaults to float16; bf16 it is, on every device type.
            crate::precision::set_autocast_dtype(true, Kind::BFloat16)?;
            crate::precision::set_autocast_dtype(false, Kind::BFloat16)?;
        }
        let bf16 = t.precision == Precision::Bf16 && crate::precision::bf16_available(device);
        if bf16 {
            let dtype =
                crate::precision::autocast_dtype(device.is_cuda()).map_or("unknown".into(), |k| format!("{k:?}"));
            tracing::info!("bf16 autocast on {device:?}: autocast dtype {dtype}");
        }
        if t.precision == Precision::Bf16 && !bf16 {
            tracing::warn!(
                "train.precision bf16: oneDNN has no bf16 support on this CPU (it needs AVX512-BF16 or AMX); this run trains in fp32"
            );
        }
        let streams = match streams::wanted(cfg, device, distributed) {
            2 => {
                let params = crate::model::trainable_sorted(&model.vs).into_iter().map(|(_, t)| t).collect();
                Some((Streams::new(cfg, spec, &model.vs)?, params))
            }
            _ => None,
        };
        let graphs = StepGraphs::new(cfg.train.cuda_graphs && device.is_cuda());
        let mut learner = Self { model, ema, opt, streams, bf16, total_steps: 0, graphs, cfg: cfg.clone() };
        if let Some(why) = graphs_obstacle(cfg, distributed, bf16, learner.streams.is_some()) {
            learner.graphs_off(why);
        }
        Ok(learner)
    }

    /// Whether steps go through CUDA graphs (see [`step_graphs`]).
    pub fn cuda_graphs(&self) -> bool {
        self.graphs.is_on()
    }

    /// Switches CUDA graphs off for this run, saying why.
    pub fn graphs_off(&mut self, why: &str) {
        if self.graphs.is_on() {
            tracing::info!("train.cuda_graphs: the training step runs without CUDA graphs: {why}");
            self.graphs.turn_off();
        }
    }

    /// Steps replayed from a CUDA graph so far.
    pub fn graph_replays(&self) -> i64 {
        self.graphs.replays()
    }

    /// Steps of one batch shape before the first replay of its graph (0 without graphs).
    pub fn graph_warmup_steps(&self) -> i64 {
        match self.graphs.is_on() {
            true => crate::cuda_graph::WARMUP as i64 + 1,
            false => 0,
        }
    }

    /// The steps the learning-rate decay spans (`n_epochs` epochs).
    pub fn set_total_steps(&mut self, total: i64) {
        self.total_steps = total;
    }

    /// Compute streams of the step (1 or 2).
    pub fn streams(&self) -> usize {
        if self.streams.is_some() {
            2
        } else {
            1
        }
    }

    /// The model to sample from: the EMA weights when there are any.
    pub fn sampling_model(&self) -> &Model {
        self.ema.as_ref().map_or(&self.model, |(_, m)| m)
    }

    /// Draws the step's random numbers from `seed` for the whole global batch and keeps
    /// `shard`'s part of them, so N processes take the step one process would take. `x0` and
    /// `labels` are the shard's images in [-1, 1] and their classes.
    pub fn inputs(&self, x0: Tensor, labels: &Tensor, shard: BatchSlice, seed: i64) -> StepInputs {
        let (device, full, lo, len) = (self.model.device(), shard.full, shard.start, shard.len);
        let [c, h, w] = self.model.image_shape;
        tch::manual_seed(seed);
        let mut x0 = self.model.layout(x0);
        if self.cfg.train.hflip {
            let flip = Tensor::rand([full, 1, 1, 1], (Kind::Float, device)).narrow(0, lo, len).lt(0.5);
            x0 = x0.flip([3]).where_self(&flip, &x0);
        }
        let t = Tensor::randint(self.cfg.ddpm.n_steps, [full], (Kind::Int64, device)).narrow(0, lo, len);
        let noise = self.model.layout(Tensor::randn([full, c, h, w], (Kind::Float, device)).narrow(0, lo, len));
        let k = self.model.num_classes();
        let labels = (k > 0).then(|| {
            // Label dropout to the null class (index k) for classifier-free guidance.
            let drop = Tensor::rand([full], (Kind::Float, device)).narrow(0, lo, len).lt(self.cfg.train.cond_drop_prob);
            labels.where_self(&drop.logical_not(), &labels.full_like(k))
        });
        let x_t = self.model.scheduler.add_noise(&x0, &noise, &t);
        let (a, b) = self.model.scheduler.coefficients(&t);
        let prediction = self.model.prediction;
        let weights = (self.cfg.train.loss_weighting == LossWeighting::MinSnr).then(|| {
            let snr = (a.square() / b.square()).view([-1]);
            prediction.min_snr_weights(&snr, self.cfg.train.min_snr_gamma)
        });
        let target = Target { value: self.model.layout(prediction.target(&x0, &noise, &a, &b)), weights };
        StepInputs { shard, x0, noise, batch: NetBatch { x_t, t, labels, target } }
    }

    /// The inputs of training step `step` (0-based) on the global batch `idx` of `dataset`:
    /// `shard`'s images and labels, and the random draws seeded from `(seed, step)`. What
    /// `ddpm train` and `ddpm bench` both feed to [`Learner::step`].
    pub fn inputs_at(&self, dataset: &ImageDataset, idx: &Tensor, shard: BatchSlice, step: i64) -> StepInputs {
        let device = self.model.device();
        let idx = idx.narrow(0, shard.start, shard.len);
        let (x0, labels) = (dataset.batch(&idx, device), dataset.labels.index_select(0, &idx).to_device(device));
        self.inputs(x0, &labels, shard, derived_seed(self.cfg.seed, SEED_STEP, step))
    }

    /// One optimizer step on `inp` after `done` steps; returns the (device) loss of the batch.
    pub fn step(&mut self, inp: &StepInputs, done: i64, reduce: Option<Reduce>) -> Result<Tensor> {
        self.opt.lr = lr_at(&self.cfg.train, done, self.total_steps);
        // (Graphs are off in data-parallel runs, the only ones that reduce.)
        if self.graphs.is_on() && reduce.is_none() {
            let values = (self.opt.lr, self.opt.step + 1, self.ema.as_ref().map_or(0.0, |(e, _)| e.weight_at(done)));
            let mut graphs = std::mem::take(&mut self.graphs);
            let ran = graphs.run(&inp.batch, values, |io| self.step_from_device_values(io));
            self.graphs = graphs;
            match ran {
                Ok(Ran::Done(loss)) => {
                    self.opt.step += 1;
                    return Ok(loss);
                }
                Ok(Ran::Eager) => {}
                Err(e) => {
                    tracing::warn!("CUDA graphs are off for the training step from step {}: {e:#}", done + 1);
                    self.graphs.turn_off();
                }
            }
        }
        self.opt.zero_grad();
        let weight = inp.shard.weight();
        let mut loss = self.forward_backward(&inp.batch, weight)?;
        if let Some(reduce) = reduce {
            loss = if weight != 1.0 { &loss * weight } else { loss.copy() };
            reduce(&self.opt.grads(), &loss)?;
        }
        if self.cfg.train.grad_clip > 0.0 {
            self.opt.clip_grad_norm(self.cfg.train.grad_clip);
        }
        self.opt.step();
        if let Some((ema, _)) = &mut self.ema {
            ema.update(done);
        }
        Ok(loss)
    }

    /// Forward and backward of `batch` (gradients added to the parameters'), each backward
    /// scaled by `weight`; returns the batch's mean loss.
    fn forward_backward(&self, batch: &NetBatch, weight: f64) -> Result<Tensor> {
        let net = self.model.net.as_ref();
        // Gradient accumulation: micro-batches of the batch, each backward weighted by its
        // share, so the gradients add up to the whole batch's (the random draws were made for
        // the whole batch in `inputs`).
        let len = batch.len();
        let micro = self.cfg.train.grad_accum.clamp(1, len.max(1));
        let mut loss: Option<Tensor> = None;
        for i in 0..micro {
            let (lo, n) = (i * len / micro, (i + 1) * len / micro - i * len / micro);
            let share = n as f64 / len as f64;
            let part = batch.narrow(lo, n);
            let part_loss = match &self.streams {
                // Two streams: this thread and the worker each take half of the (micro-)batch.
                Some((streams, params)) => streams.forward_backward(net, params, &part, share)?,
                None => {
                    net.set_training(true);
                    let forward = || denoising_loss(net, &part);
                    let l = match self.bf16 {
                        true => crate::precision::with_bf16_autocast(self.model.device(), forward)?,
                        false => forward(),
                    };
                    net.set_training(false);
                    let scale = weight * share;
                    let scaled = if scale != 1.0 { &l * scale } else { l.shallow_clone() };
                    scaled.backward();
                    l.detach()
                }
            };
            loss = Some(match loss {
                None if micro == 1 => part_loss,
                None => part_loss * share,
                Some(acc) => acc + part_loss * share,
            });
        }
        Ok(loss.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, self.model.device()))))
    }

    /// The whole step from device values alone: gradients dropped, forward and backward of the
    /// static batch, clipping, fused Adam with the learning rate and step count read from
    /// tensors, the EMA update by a tensor weight. It launches kernels and reads no host value
    /// that changes between steps, so a CUDA graph can capture it; run eagerly it is the same
    /// update as [`Learner::step`]'s. The host step count is not advanced.
    pub fn step_from_device_values(&mut self, io: &mut StaticStep) -> Result<Tensor> {
        self.opt.zero_grad();
        let loss = self.forward_backward(&io.batch, 1.0)?;
        if self.cfg.train.grad_clip > 0.0 {
            self.opt.clip_grad_norm(self.cfg.train.grad_clip);
        }
        let s = &mut io.scalars;
        self.opt.step_from_tensors(&s.lr, &mut s.step).map_err(|e| anyhow::anyhow!("fused Adam: {e}"))?;
        if let Some((ema, _)) = &mut self.ema {
            ema.update_by(&s.ema_weight);
        }
        Ok(loss)
    }
}

/// What keeps the training step out of CUDA graphs on a GPU, if anything: a build without
/// them, a data-parallel run, bf16, the per-tensor Adam or two compute streams.
fn graphs_obstacle(cfg: &Config, distributed: bool, bf16: bool, two_streams: bool) -> Option<&'static str> {
    if !crate::cuda_graph::available() {
        Some("this ddpm was built without the CUDA headers")
    } else if distributed {
        Some("data-parallel runs reduce the gradients between backward and the update")
    } else if bf16 {
        Some("train.precision is bf16 (graphs are captured in fp32 only)")
    } else if !cfg.train.fused_optimizer {
        Some("train.fused_optimizer is false (the per-tensor update takes host values)")
    } else if two_streams {
        Some("the step runs on two compute streams")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::prediction::LossWeighting;
    use crate::diffusion_model::ModelSpec;

    /// Every parameter, EMA weight and Adam moment of a learner, by name.
    fn state_of(l: &Learner) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = crate::model::trainable_sorted(&l.model.vs);
        if let Some((_, m)) = &l.ema {
            let mut ema: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
            ema.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(ema.into_iter().map(|(k, v)| (format!("ema.{k}"), v)));
        }
        out.extend(l.opt.state());
        out
    }

    /// The step as a CUDA graph captures it (device scalars, fused Adam with a tensor learning
    /// rate, the EMA by a tensor weight), run eagerly here, takes the same steps as the host
    /// step: AdamW with weight decay, clipping, Min-SNR weights, the EMA and a warm-up included.
    #[test]
    fn the_capturable_step_equals_the_host_step() {
        let (mut cfg, mut io) = (Config { streams: 1, threads: 1, ..Default::default() }, None::<StaticStep>);
        let t = &mut cfg.train;
        (t.optimizer, t.weight_decay, t.grad_clip, t.warmup_steps) = (Optimizer::AdamW, 0.1, 0.5, 2);
        (t.loss_weighting, t.ema_decay) = (LossWeighting::MinSnr, 0.9);
        let spec = ModelSpec::from_config(&cfg);
        let mut host = Learner::new(&cfg, &spec, Device::Cpu, false).unwrap();
        let mut dev = Learner::new(&cfg, &spec, Device::Cpu, false).unwrap();
        // The same starting weights whatever the parallel tests drew from the global generator.
        dev.model.vs.copy(&host.model.vs).unwrap();
        if let (Some((_, a)), Some((_, b))) = (&host.ema, &mut dev.ema) {
            b.vs.copy(&a.vs).unwrap();
        }
        let start: Vec<(String, Tensor)> = state_of(&host).into_iter().map(|(k, v)| (k, v.copy())).collect();
        let x0 = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let labels = Tensor::zeros([6], (Kind::Int64, Device::Cpu));
        for done in 0..4 {
            let inp = host.inputs(x0.shallow_clone(), &labels, BatchSlice::whole(6), 100 + done);
            let want = host.step(&inp, done, None).unwrap();
            let io = io.get_or_insert_with(|| StaticStep::for_batch(&inp.batch));
            io.load(&inp.batch).unwrap();
            let lr = lr_at(&cfg.train, done, 0);
            let ema_w = dev.ema.as_ref().unwrap().0.weight_at(done);
            io.scalars.fill(lr, dev.opt.step + 1, ema_w);
            let got = dev.step_from_device_values(io).unwrap();
            dev.opt.step += 1;
            assert_eq!(want.double_value(&[]), got.double_value(&[]), "loss of step {done}");
        }
        let (a, b) = (state_of(&host), state_of(&dev));
        assert_eq!(a.len(), b.len());
        let mut moved = 0.0f64;
        for (((name, x), (_, y)), (_, s)) in a.iter().zip(&b).zip(&start) {
            let diff = (x - y).abs().max().double_value(&[]);
            // 1% of the learning rate: a near-zero gradient (a bias ahead of a norm) turns rounding
            // into ~3e-6 on some CPUs; weight decay 0.1 keeps a missing decay (~1e-4) visible.
            assert!(diff < 1e-5, "{name}: the two steps differ by {diff}");
            moved = moved.max((x - s).abs().max().double_value(&[]));
        }
        assert!(moved > 1e-4, "the steps moved nothing ({moved})");
    }
}
