//! CUDA graphs for the training step (`train.cuda_graphs`): on a GPU a small network's step is
//! bound by the host launching its kernels (forward, backward, Adam, the EMA: hundreds of
//! them), so the whole step is captured once per batch shape and replayed, as
//! `torch.compile(mode="reduce-overhead")` and PyTorch's whole-network capture do.
//!
//! What changes between steps lives in device tensors that the captured kernels read: the
//! step's inputs (noisy images, timesteps, labels, target; drawn outside the graph as before,
//! so the random stream is the one eager steps use), the learning rate and Adam's step count
//! (libtorch's fused Adam reads both from tensors), and the EMA weight. Each is filled from the
//! host before a replay. The first [`WARMUP`] steps of each shape run the same kernels eagerly
//! on the graph's side stream (lazy initialisation and algorithm choices happen outside the
//! capture); the next one is captured and replayed, and every later one replayed.
//!
//! Gradients are dropped before the capture, so the captured backward writes fresh gradients
//! (in the graph's memory) rather than adding to old ones. A batch of another shape (the short
//! last batch of an epoch) gets its own graph, up to [`MAX_SHAPES`]; beyond that, and wherever a
//! capture fails (with one warning), the step runs eagerly.

use crate::cuda_graph::{CudaGraph, WARMUP};
use crate::diffusion::loss::{NetBatch, Target};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// Batch shapes with a graph of their own.
pub const MAX_SHAPES: usize = 4;

/// The host values a captured step reads, in float32 0-dim tensors on the device.
pub struct DeviceScalars {
    pub lr: Tensor,
    /// Adam's step count for bias correction (the step being taken, 1-based).
    pub step: Tensor,
    /// `1 - decay` of the EMA update.
    pub ema_weight: Tensor,
}

impl DeviceScalars {
    pub fn new(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Float, device));
        Self { lr: zero(), step: zero(), ema_weight: zero() }
    }

    /// Sets the values (one small kernel each on a GPU, no host sync).
    pub fn fill(&mut self, lr: f64, step: i64, ema_weight: f64) {
        let _guard = tch::no_grad_guard();
        let _ = self.lr.fill_(lr);
        let _ = self.step.fill_(step as f64);
        let _ = self.ema_weight.fill_(ema_weight);
    }
}

/// What a step of a given shape needs to run from device values alone: its inputs and scalars.
pub struct StaticStep {
    pub batch: NetBatch,
    pub scalars: DeviceScalars,
}

impl StaticStep {
    /// Static copies of `b`'s tensors and zeroed scalars.
    pub fn for_batch(b: &NetBatch) -> Self {
        let _guard = tch::no_grad_guard();
        let batch = NetBatch {
            x_t: b.x_t.copy(),
            t: b.t.copy(),
            labels: b.labels.as_ref().map(Tensor::copy),
            target: Target { value: b.target.value.copy(), weights: b.target.weights.as_ref().map(Tensor::copy) },
        };
        Self { batch, scalars: DeviceScalars::new(b.x_t.device()) }
    }

    fn matches(&self, b: &NetBatch) -> bool {
        let s = &self.batch;
        let same = |a: &Tensor, b: &Tensor| a.size() == b.size() && a.kind() == b.kind() && a.stride() == b.stride();
        same(&s.x_t, &b.x_t)
            && same(&s.target.value, &b.target.value)
            && s.labels.is_some() == b.labels.is_some()
            && s.target.weights.is_some() == b.target.weights.is_some()
    }

    /// Copies `b` into the static inputs.
    pub fn load(&mut self, b: &NetBatch) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let s = &self.batch;
        s.x_t.shallow_clone().f_copy_(&b.x_t)?;
        s.t.shallow_clone().f_copy_(&b.t)?;
        if let (Some(d), Some(v)) = (&s.labels, &b.labels) {
            d.shallow_clone().f_copy_(v)?;
        }
        s.target.value.shallow_clone().f_copy_(&b.target.value)?;
        if let (Some(d), Some(v)) = (&s.target.weights, &b.target.weights) {
            d.shallow_clone().f_copy_(v)?;
        }
        Ok(())
    }
}

/// One shape's graph and where it stands.
struct ShapeGraph {
    graph: CudaGraph,
    io: StaticStep,
    /// Eager steps run so far on the side stream.
    warmed: usize,
    /// The loss tensor the captured step writes (after the capture).
    loss: Option<Tensor>,
}

/// The training step's graphs.
#[derive(Default)]
pub struct StepGraphs {
    on: bool,
    shapes: Vec<ShapeGraph>,
    replays: i64,
}

/// How a step went through [`StepGraphs::run`].
pub enum Ran {
    /// The loss of the step, taken from the graph (or its warm-up).
    Done(Tensor),
    /// Not through a graph: run the step eagerly.
    Eager,
}

impl StepGraphs {
    pub fn new(on: bool) -> Self {
        Self { on, ..Default::default() }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Steps replayed from a graph so far.
    pub fn replays(&self) -> i64 {
        self.replays
    }

    /// Graphs off for the rest of the run (after a failure); their memory is freed.
    pub fn turn_off(&mut self) {
        self.on = false;
        self.shapes.clear();
    }

    /// Takes the step on `batch` through its shape's graph: `step` runs the whole step from the
    /// static inputs and scalars (it is what gets captured); `values` are the learning rate,
    /// Adam's 1-based step count and the EMA weight of this step.
    pub fn run(
        &mut self,
        batch: &NetBatch,
        values: (f64, i64, f64),
        mut step: impl FnMut(&mut StaticStep) -> Result<Tensor>,
    ) -> Result<Ran> {
        let Device::Cuda(device) = batch.x_t.device() else { return Ok(Ran::Eager) };
        let i = match self.shapes.iter().position(|g| g.io.matches(batch)) {
            Some(i) => i,
            None if self.shapes.len() < MAX_SHAPES => {
                let graph = CudaGraph::new(device)?;
                self.shapes.push(ShapeGraph { graph, io: StaticStep::for_batch(batch), warmed: 0, loss: None });
                self.shapes.len() - 1
            }
            None => return Ok(Ran::Eager),
        };
        let g = &mut self.shapes[i];
        g.io.load(batch)?;
        let (lr, adam_step, ema_weight) = values;
        g.io.scalars.fill(lr, adam_step, ema_weight);
        if g.warmed < WARMUP {
            let loss = g.graph.on_side_stream(|| step(&mut g.io))?;
            g.warmed += 1;
            return Ok(Ran::Done(loss));
        }
        if g.loss.is_none() {
            let graph = &g.graph;
            let io = &mut g.io;
            g.loss = Some(graph.on_side_stream(|| graph.capture(|| step(io)))?);
        }
        g.graph.replay()?;
        self.replays += 1;
        // The next replay overwrites the static loss.
        let loss = g.loss.as_ref().ok_or_else(|| anyhow::anyhow!("the captured step left no loss"))?;
        Ok(Ran::Done(loss.copy()))
    }
}
