//! `ddpm bench`: training images/s at batch 128 and 512, the time of one epoch including data
//! preparation, sampling time for 81 images (DDPM over all steps and DDIM-50), and peak memory,
//! for the configured network and dataset shape. Warm-up first, medians over repeats.

use crate::config::Config;
use crate::data::{self, ImageDataset, Split};
use crate::device;
use crate::diffusion::ddim::Spacing;
use crate::diffusion::ddpm::StepOptions;
use crate::diffusion::reverse::{ReverseProcess, Sampler};
use crate::diffusion_model::{Model, ModelSpec};
use crate::draw::{self, Request};
use crate::learner::{BatchSlice, Learner};
use crate::model::Denoiser;
use crate::precision::Precision;
use crate::seed::{self, derived_seed, SEED_STEP};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Results, all in seconds unless named otherwise.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub device: String,
    pub threads: i32,
    /// Compute streams of the training step (see `streams` in options.yml).
    pub streams: usize,
    /// `train.precision` and `sample.precision` as they ran (`bf16` only where the device has it).
    pub train_precision: String,
    pub sample_precision: String,
    /// Whether sampling replayed CUDA graphs (CUDA, fp32, `sample.cuda_graphs`).
    pub sample_cuda_graphs: bool,
    /// Whether the timed training steps replayed CUDA graphs (`train.cuda_graphs`).
    pub train_cuda_graphs: bool,
    pub network: String,
    pub image_shape: [i64; 3],
    /// `(batch, seconds per step, images per second)`.
    pub train: Vec<(i64, f64, f64)>,
    /// Training steps run for those measurements (warm-up included), and whether every one of
    /// their losses was finite.
    pub train_steps_run: i64,
    pub train_losses_finite: bool,
    /// One epoch of the real loop (data preparation included), from `epoch_steps` timed steps.
    pub epoch_sec: Option<f64>,
    pub epoch_steps_timed: i64,
    /// The losses of those steps: the first steps of `ddpm train` with the same config.
    pub epoch_losses: Vec<f64>,
    /// One denoising forward at batch 81.
    pub forward81_sec: f64,
    /// 81 samples with DDPM over all n_steps (measured per step, times n_steps).
    pub sample_ddpm_sec: f64,
    /// 81 samples with DDIM-50 (measured whole).
    pub sample_ddim50_sec: f64,
    /// 81 samples with DPM-Solver++(2M) in 20 steps (measured whole).
    pub sample_dpm20_sec: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Peak resident memory after the training measurements (before sampling), MiB.
    pub train_peak_rss_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Peak resident set size of this process in MiB (Linux), 0 elsewhere.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark; `epoch_steps = 0` skips the epoch measurement, `sampling = false` the
/// sampling ones (reported as NaN). The training step is `ddpm train`'s own
/// ([`crate::learner::Learner`]): the configured recipe, streams and precision.
pub fn run(cfg: &Config, repeats: usize, epoch_steps: i64, batches: &[i64], sampling: bool) -> Result<BenchResult> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    let ran_as = |p: Precision| match p == Precision::Bf16 && crate::precision::bf16_available(device) {
        true => "bf16".to_string(),
        false => "fp32".to_string(),
    };
    let spec = ModelSpec::from_config(cfg);
    let mut learner = Learner::new(cfg, &spec, device, false)?;
    let streams = learner.streams();
    let trained = time_training(cfg, &spec, &mut learner, batches, repeats)?;
    let train_cuda_graphs = learner.graph_replays() > 0;
    let model = sampling_model(cfg, &spec, learner)?;
    let (epoch_sec, epoch_losses) = measure_epoch(cfg, &spec, device, epoch_steps)?;
    let _guard = tch::no_grad_guard();
    let mut result = BenchResult {
        device: device::describe(device),
        threads: tch::get_num_threads(),
        streams,
        train_precision: ran_as(cfg.train.precision),
        sample_precision: ran_as(cfg.sample.precision),
        sample_cuda_graphs: false,
        train_cuda_graphs,
        network: cfg.network.describe(),
        image_shape: spec.image_shape,
        train: trained.rows,
        train_steps_run: trained.steps_run,
        train_losses_finite: trained.finite,
        epoch_sec,
        epoch_steps_timed: epoch_steps,
        epoch_losses,
        forward81_sec: f64::NAN,
        sample_ddpm_sec: f64::NAN,
        sample_ddim50_sec: f64::NAN,
        sample_dpm20_sec: f64::NAN,
        peak_rss_mib: 0.0,
        train_peak_rss_mib: peak_rss_mib(),
    };
    if sampling {
        time_sampling(cfg, &model, repeats, &mut result);
    }
    result.peak_rss_mib = peak_rss_mib();
    Ok(result)
}

/// The training measurements: per batch size, the median seconds of a step.
struct TrainTimes {
    /// `(batch, seconds per step, images per second)`.
    rows: Vec<(i64, f64, f64)>,
    steps_run: i64,
    finite: bool,
}

/// Times `repeats` training steps at each batch size on random images, after warm-up.
fn time_training(
    cfg: &Config,
    spec: &ModelSpec,
    learner: &mut Learner,
    batches: &[i64],
    repeats: usize,
) -> Result<TrainTimes> {
    let [c, h, w] = spec.image_shape;
    let device = learner.model.device();
    let classes = cfg.network.num_classes().max(1);
    let mut out = TrainTimes { rows: Vec::new(), steps_run: 0, finite: true };
    for &batch in batches {
        let x0 = Tensor::rand([batch, c, h, w], (Kind::Float, device)) * 2.0 - 1.0;
        let labels = Tensor::randint(classes, [batch], (Kind::Int64, device));
        // Two warm-up steps, and with CUDA graphs those before the first replay of this shape.
        let warmup = 2 + learner.graph_warmup_steps();
        let mut step = |i: i64| -> Result<Tensor> {
            let inp = learner.inputs(
                x0.shallow_clone(),
                &labels,
                BatchSlice::whole(batch),
                derived_seed(cfg.seed, SEED_STEP, i),
            );
            learner.step(&inp, i, None)
        };
        for i in 0..warmup {
            out.finite &= step(i)?.double_value(&[]).is_finite();
        }
        sync(device);
        let mut times = Vec::new();
        for i in 0..repeats as i64 {
            let t0 = Instant::now();
            out.finite &= step(warmup + i)?.double_value(&[]).is_finite();
            times.push(t0.elapsed().as_secs_f64());
        }
        out.steps_run += warmup + repeats as i64;
        let s = median(times);
        tracing::info!("train step at batch {batch}: {:.3} s, {:.0} images/s", s, batch as f64 / s);
        out.rows.push((batch, s, batch as f64 / s));
    }
    Ok(out)
}

/// The trained weights as `ddpm sample` would load them (the EMA copy and the optimizer go),
/// in the memory format it loads a network in.
fn sampling_model(cfg: &Config, spec: &ModelSpec, learner: Learner) -> Result<Model> {
    let model = learner.model;
    let device = model.device();
    if cfg.channels_last.for_sampling(device) == model.channels_last {
        return Ok(model);
    }
    let mut sampling = spec.build(device, cfg.channels_last.for_sampling(device));
    sampling.vs.copy(&model.vs).context("copying the trained weights for sampling")?;
    Ok(sampling)
}

/// One epoch of the real loop from `epoch_steps` timed steps (None when skipped or when the
/// data set cannot be loaded), with the losses of those steps.
fn measure_epoch(cfg: &Config, spec: &ModelSpec, device: Device, epoch_steps: i64) -> Result<(Option<f64>, Vec<f64>)> {
    if epoch_steps <= 0 {
        return Ok((None, Vec::new()));
    }
    match data::load(&cfg.dataset, Split::Train) {
        Ok(ds) => {
            let (sec, losses) = time_epoch(cfg, spec, &ds, device, epoch_steps)?;
            Ok((Some(sec), losses))
        }
        Err(e) => {
            tracing::warn!("no epoch measurement: {e:#}");
            Ok((None, Vec::new()))
        }
    }
}

/// The sampling measurements at 81 images: one forward, DDPM over all steps (from 50 timed
/// steps), DDIM-50 and DPM-Solver++-20 through the sampler every command uses.
fn time_sampling(cfg: &Config, model: &Model, repeats: usize, result: &mut BenchResult) {
    let device = model.device();
    let ddpm = &model.scheduler;
    // No gradients are recorded while sampling (PyTorch's side runs under torch.no_grad() too).
    let _no_grad = tch::no_grad_guard();
    // The network as the samplers run it: under bf16 autocast with `sample.precision: bf16`.
    let bf16 = cfg.sample.precision == Precision::Bf16 && crate::precision::bf16_available(device);
    let graphed = crate::cuda_graph::Graphed::new(model.net.as_ref(), cfg.sample.cuda_graphs && !bf16);
    let net = crate::diffusion::prediction::AsEps {
        net: &graphed,
        prediction: crate::diffusion::prediction::Prediction::Eps,
        scheduler: ddpm,
        bf16,
    };
    let x = model.noise(81);
    let t = Tensor::full([81], 500, (Kind::Int64, device));
    for _ in 0..3 {
        let _ = net.forward(&x, &t, None);
    }
    sync(device);
    let fwd: Vec<f64> = (0..repeats.max(5))
        .map(|_| {
            let t0 = Instant::now();
            let y = net.forward(&x, &t, None);
            let _ = y.double_value(&[0, 0, 0, 0]);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let forward81 = median(fwd);
    // DDPM: time 50 full reverse steps (forward + update), scale to n_steps.
    let opts = StepOptions { simple_var: true, clip_x0: false };
    let probe = 50.min(cfg.ddpm.n_steps as usize);
    let t0 = Instant::now();
    let mut xs = x.copy();
    for i in 0..probe {
        let tt = (cfg.ddpm.n_steps as usize - 1 - i) as i64;
        let eps = net.forward(&xs, &Tensor::full([81], tt, (Kind::Int64, device)), None);
        xs = ddpm.step(&eps, tt as usize, &xs, &xs.randn_like(), opts);
    }
    let _ = xs.double_value(&[0, 0, 0, 0]);
    let sample_ddpm = t0.elapsed().as_secs_f64() / probe as f64 * cfg.ddpm.n_steps as f64;
    // 81 samples in one batch through the sampler every command uses.
    let time = |sampler: Sampler| {
        let sc = ReverseProcess {
            sampler,
            opts,
            guidance: 1.0,
            bf16: cfg.sample.precision == Precision::Bf16,
            cuda_graphs: cfg.sample.cuda_graphs,
        };
        let req = Request { n: 81, labels: None, batch: 81, seed: cfg.seed, sampler: &sc, progress: false };
        let t0 = Instant::now();
        let _ = draw::draw(model, &req, None).double_value(&[0, 0, 0, 0]);
        t0.elapsed().as_secs_f64()
    };
    let sample_ddim = time(Sampler::Ddim { steps: 50, eta: 0.0, spacing: Spacing::Uniform });
    let sample_dpm = time(Sampler::DpmSolverPP { steps: 20, spacing: Spacing::Uniform, order: 2 });
    tracing::info!(
        "forward at batch 81: {:.1} ms; 81 samples: DDPM-{} {:.1} s, DDIM-50 {:.2} s, DPM-Solver++-20 {:.2} s",
        forward81 * 1e3,
        cfg.ddpm.n_steps,
        sample_ddpm,
        sample_ddim,
        sample_dpm
    );
    result.forward81_sec = forward81;
    result.sample_ddpm_sec = sample_ddpm;
    result.sample_ddim50_sec = sample_ddim;
    result.sample_dpm20_sec = sample_dpm;
    result.sample_cuda_graphs = graphed.graphs() > 0;
}

/// Times the first `steps` steps of an epoch of `ddpm train` from a fresh model (data
/// preparation included) and scales to the whole epoch; returns the seconds and the losses.
fn time_epoch(
    cfg: &Config,
    spec: &ModelSpec,
    ds: &ImageDataset,
    device: Device,
    steps: i64,
) -> Result<(f64, Vec<f64>)> {
    let mut learner = Learner::new(cfg, spec, device, false)?;
    let bs = cfg.train.batch_size;
    let n = ds.len();
    let spe = cfg.train.steps_per_epoch(n);
    learner.set_total_steps(spe * cfg.train.n_epochs);
    let steps = steps.min(spe);
    let t0 = Instant::now();
    let perm = seed::epoch_order(cfg.seed, 1, n);
    let mut losses = Vec::new();
    for b in 0..steps {
        let idx = perm.narrow(0, b * bs, bs.min(n - b * bs));
        let shard = BatchSlice::whole(idx.size()[0]);
        let inp = learner.inputs_at(ds, &idx, shard, b);
        losses.push(learner.step(&inp, b, None)?);
    }
    let losses: Vec<f64> = losses.iter().map(|l| l.double_value(&[])).collect();
    let total = t0.elapsed().as_secs_f64() / steps as f64 * spe as f64;
    tracing::info!("epoch of {n} images at batch {bs}: {total:.1} s (from {steps} timed steps)");
    Ok((total, losses))
}

/// The result as a Markdown table.
pub fn table(r: &BenchResult) -> String {
    let mut s = format!(
        "ddpm bench: {} on {} ({} threads, {} training streams), {:?}\n\n| measure | value |\n|---|---|\n",
        r.network, r.device, r.threads, r.streams, r.image_shape
    );
    for (b, sec, ips) in &r.train {
        s += &format!("| train step, batch {b} | {sec:.3} s ({ips:.0} images/s) |\n");
    }
    if r.device.to_lowercase().contains("cuda") {
        let yes = |b: bool| if b { "yes" } else { "no" };
        s += &format!(
            "| CUDA graphs replayed: training, sampling | {}, {} |\n",
            yes(r.train_cuda_graphs),
            yes(r.sample_cuda_graphs)
        );
    }
    if r.train_steps_run > 0 {
        let finite = if r.train_losses_finite { "all finite" } else { "NOT all finite" };
        s += &format!("| losses of those {} steps | {finite} |\n", r.train_steps_run);
    }
    if let Some(e) = r.epoch_sec {
        s += &format!("| one epoch incl. data preparation (from {} steps) | {e:.1} s |\n", r.epoch_steps_timed);
    }
    if r.forward81_sec.is_finite() {
        s += &format!("| denoising forward, batch 81 | {:.1} ms |\n", r.forward81_sec * 1e3);
        s += &format!("| 81 samples, DDPM (all steps) | {:.1} s |\n", r.sample_ddpm_sec);
        s += &format!("| 81 samples, DDIM-50 | {:.2} s |\n", r.sample_ddim50_sec);
        s += &format!("| 81 samples, DPM-Solver++(2M), 20 steps | {:.2} s |\n", r.sample_dpm20_sec);
    }
    s += &format!("| peak memory (RSS), training | {:.0} MiB |\n", r.train_peak_rss_mib);
    s += &format!("| peak memory (RSS), all | {:.0} MiB |\n", r.peak_rss_mib);
    s
}

/// Writes the result as JSON.
pub fn write_json(r: &BenchResult, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    crate::fsutil::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
