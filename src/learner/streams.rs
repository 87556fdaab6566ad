//! Two compute streams in one process for CPU training: a second copy of the network, on its
//! own thread and sharing the weights' storage, takes half of each batch while this thread
//! takes the other half, each with half of the intra-op threads; the gradients are then added.
//! The convolutions of a small network parallelise poorly inside one operation, so two
//! independent streams of one thread each get more out of two cores than one stream of two.
//!
//! All random numbers are drawn before the split, so a step is as reproducible as with one
//! stream (the split only changes float rounding).

use crate::config::Config;
use crate::diffusion::loss::{denoising_loss, NetBatch};
use crate::diffusion_model::ModelSpec;
use crate::model;
use anyhow::{anyhow, Result};
use std::sync::mpsc;
use std::thread::JoinHandle;
use tch::{nn, Device, Tensor};

struct Job {
    batch: NetBatch,
    /// The half's share of the batch (its mean loss is weighted by it).
    weight: f64,
}

/// The second stream: a worker thread with its own copy of the network.
pub struct Streams {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<std::result::Result<(Tensor, Vec<Tensor>), String>>,
    handle: Option<JoinHandle<()>>,
    /// Intra-op threads of each stream.
    threads: i32,
}

/// How many streams `cfg` asks for on `device` (`streams: 0` = two on a CPU with at least
/// two threads when nothing in the network draws random numbers, else one). bf16 autocast on
/// the CPU always runs in one stream: autocast is per thread, and the worker would run fp32.
pub fn wanted(cfg: &Config, device: Device, distributed: bool) -> usize {
    let bf16 = cfg.train.precision == crate::precision::Precision::Bf16;
    if device == Device::Cpu && bf16 && crate::precision::bf16_available(device) {
        return 1;
    }
    let threads =
        if cfg.threads > 0 { cfg.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let dropout = cfg.network.has_dropout();
    match cfg.streams {
        0 => {
            if device == Device::Cpu && !distributed && threads >= 2 && !dropout {
                2
            } else {
                1
            }
        }
        n => n.min(2),
    }
}

impl Streams {
    /// Starts the worker: it builds the network of `spec` and points every variable at the
    /// storage of the same-named variable of `vs`.
    pub fn new(cfg: &Config, spec: &ModelSpec, vs: &nn::VarStore) -> Result<Streams> {
        let total = if cfg.threads > 0 { cfg.threads as i32 } else { tch::get_num_threads() };
        let threads = (total / 2).max(1);
        let device = vs.device();
        let shared: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        let spec = spec.clone();
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
        let handle = std::thread::Builder::new().name("ddpm-stream".into()).spawn(move || {
            tch::set_num_threads(threads);
            let replica = nn::VarStore::new(device);
            let net = spec.network(&replica);
            let mine = replica.variables();
            for (name, src) in &shared {
                match mine.get(name) {
                    Some(v) => v.shallow_clone().set_data(src),
                    None => {
                        let _ = ready_tx.send(Err(format!("the stream's network lacks '{name}'")));
                        return;
                    }
                }
            }
            let params: Vec<Tensor> = model::trainable_sorted(&replica).into_iter().map(|(_, t)| t).collect();
            let _ = ready_tx.send(Ok(()));
            for job in job_rx {
                for p in &params {
                    crate::optim::reset_grad(p);
                }
                net.set_training(true);
                let loss = denoising_loss(net.as_ref(), &job.batch);
                net.set_training(false);
                (&loss * job.weight).backward();
                let grads = params.iter().map(|p| p.grad()).collect();
                if done_tx.send(Ok((loss.detach(), grads))).is_err() {
                    return;
                }
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("the second stream did not start"))?.map_err(|e| anyhow!(e))?;
        Ok(Streams { jobs: Some(job_tx), done: done_rx, handle: Some(handle), threads })
    }

    /// Forward and backward of the batch, the first half by `net` on this thread and the rest by
    /// the worker, the gradients being those of `scale` times the batch's mean loss; the worker's
    /// are added to `params`' (which may hold earlier micro-batches' or be undefined). Returns the
    /// batch's mean loss, detached.
    pub fn forward_backward(
        &self,
        net: &dyn model::Denoiser,
        params: &[Tensor],
        batch: &NetBatch,
        scale: f64,
    ) -> Result<Tensor> {
        let len = batch.len();
        let half = len / 2;
        let (wa, wb) = (half as f64 / len as f64, (len - half) as f64 / len as f64);
        // The gradients are those of `scale` times the batch's mean loss.
        let (ga, gb) = if scale != 1.0 { (wa * scale, wb * scale) } else { (wa, wb) };
        let job = Job { batch: batch.narrow(half, len - half), weight: gb };
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("stream closed"))?
            .send(job)
            .map_err(|_| anyhow!("the second stream stopped"))?;
        let restore = tch::get_num_threads();
        tch::set_num_threads(self.threads);
        net.set_training(true);
        let la = denoising_loss(net, &batch.narrow(0, half));
        net.set_training(false);
        (&la * ga).backward();
        tch::set_num_threads(restore);
        let (lb, grads) =
            self.done.recv().map_err(|_| anyhow!("the second stream stopped"))?.map_err(|e| anyhow!(e))?;
        tch::no_grad(|| {
            for (p, gb) in params.iter().zip(&grads) {
                let mut g = p.grad();
                if g.defined() && gb.defined() {
                    let _ = g.g_add_(gb);
                }
            }
        });
        Ok(la.detach() * wa + lb * wb)
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
