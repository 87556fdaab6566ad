//! `ddpm bench`: training images/s at batch 128 and 512, the time of one epoch including data
//! preparation, sampling time for 81 images (DDPM over all steps and DDIM-50), and peak memory,
//! for the configured network and dataset shape. Warm-up first, medians over repeats.

use crate::config::Config;
use crate::data::{self, Split};
use crate::diffusion::ddim::Spacing;
use crate::diffusion::ddpm::SampleOptions;
use crate::diffusion::sampler::{self, Sampler, SamplerConfig};
use crate::diffusion::{Ddpm, Schedule};
use crate::optim::{Adam, AdamConfig};
use crate::{device, model};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// Results, all in seconds unless named otherwise.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub device: String,
    pub threads: i32,
    /// Compute streams of the training step (see `streams` in options.yml).
    pub streams: usize,
    pub network: String,
    pub image_shape: [i64; 3],
    /// `(batch, seconds per step, images per second)`.
    pub train: Vec<(i64, f64, f64)>,
    /// One epoch of the real loop (data preparation included), from `epoch_steps` timed steps.
    pub epoch_sec: Option<f64>,
    pub epoch_steps_timed: i64,
    /// One denoising forward at batch 81.
    pub forward81_sec: f64,
    /// 81 samples with DDPM over all n_steps (measured per step, times n_steps).
    pub sample_ddpm_sec: f64,
    /// 81 samples with DDIM-50 (measured whole).
    pub sample_ddim50_sec: f64,
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
/// sampling ones (reported as NaN).
pub fn run(cfg: &Config, repeats: usize, epoch_steps: i64, batches: &[i64], sampling: bool) -> Result<BenchResult> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    let shape = cfg.dataset_name().image_shape();
    let [c, h, w] = shape;
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = model::build(&vs, &cfg.network, shape, cfg.ddpm.n_steps);
    let cl = cfg.channels_last;
    let fmt = |x: Tensor| if cl { model::channels_last(&x) } else { x };
    if cl {
        model::vs_to_channels_last(&vs);
    }
    let ddpm = Ddpm::new(Schedule::linear(cfg.ddpm.n_steps, cfg.ddpm.min_beta, cfg.ddpm.max_beta), device);
    let mut opt = Adam::new(&vs, cfg.train.lr, AdamConfig::default());
    // The training step of `ddpm train`, two compute streams included when configured.
    let streams = match crate::streams::wanted(cfg, device, false) {
        2 => Some(crate::streams::Streams::new(cfg, shape, &vs)?),
        _ => None,
    };
    let params: Vec<Tensor> = crate::model::trainable_sorted(&vs).into_iter().map(|(_, t)| t).collect();
    let mut step = |x0: &Tensor| -> Result<Tensor> {
        let n = x0.size()[0];
        let t = Tensor::randint(cfg.ddpm.n_steps, [n], (Kind::Int64, device));
        let noise = x0.randn_like();
        let x_t = ddpm.add_noise(x0, &noise, &t);
        match &streams {
            Some(s) => {
                opt.zero_grad();
                let loss = s.forward_backward(net.as_ref(), &params, &x_t, &t, None, &noise)?;
                opt.step();
                Ok(loss)
            }
            None => {
                let loss = net.forward(&x_t, &t, None).mse_loss(&noise, Reduction::Mean);
                opt.backward_step(&loss);
                Ok(loss)
            }
        }
    };

    let mut train = Vec::new();
    for &batch in batches {
        let x0 = fmt(Tensor::rand([batch, c, h, w], (Kind::Float, device)) * 2.0 - 1.0);
        for _ in 0..2 {
            let _ = step(&x0)?;
        }
        sync(device);
        let mut times = Vec::new();
        for _ in 0..repeats {
            let t0 = Instant::now();
            let _ = step(&x0)?.double_value(&[]);
            times.push(t0.elapsed().as_secs_f64());
        }
        let s = median(times);
        tracing::info!("train step at batch {batch}: {:.3} s, {:.0} images/s", s, batch as f64 / s);
        train.push((batch, s, batch as f64 / s));
    }

    let epoch_sec = if epoch_steps > 0 {
        match data::load(&cfg.dataset, Split::Train) {
            Ok(ds) => {
                let bs = cfg.train.batch_size;
                let n = ds.len();
                let t0 = Instant::now();
                let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
                let steps = epoch_steps.min((n + bs - 1) / bs);
                let mut last = Tensor::zeros([], (Kind::Float, device));
                for b in 0..steps {
                    let idx = perm.narrow(0, b * bs, bs.min(n - b * bs));
                    last = step(&fmt(ds.batch(&idx, device)))?;
                }
                let _ = last.double_value(&[]);
                let per_step = t0.elapsed().as_secs_f64() / steps as f64;
                let total = per_step * ((n + bs - 1) / bs) as f64;
                tracing::info!("epoch of {n} images at batch {bs}: {total:.1} s (from {steps} timed steps)");
                Some(total)
            }
            Err(e) => {
                tracing::warn!("no epoch measurement: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let _guard = tch::no_grad_guard();
    let mut result = BenchResult {
        device: device::describe(device),
        threads: tch::get_num_threads(),
        streams: if streams.is_some() { 2 } else { 1 },
        network: crate::train::describe_network(&cfg.network),
        image_shape: shape,
        train,
        epoch_sec,
        epoch_steps_timed: epoch_steps,
        forward81_sec: f64::NAN,
        sample_ddpm_sec: f64::NAN,
        sample_ddim50_sec: f64::NAN,
        peak_rss_mib: 0.0,
        train_peak_rss_mib: peak_rss_mib(),
    };
    if !sampling {
        result.peak_rss_mib = peak_rss_mib();
        return Ok(result);
    }
    let x = fmt(Tensor::randn([81, c, h, w], (Kind::Float, device)));
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
    let opts = SampleOptions { simple_var: true, clip_x0: false };
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
    let sc = SamplerConfig {
        sampler: Sampler::Ddim { steps: 50, eta: 0.0, spacing: Spacing::Uniform },
        opts,
        guidance: 1.0,
    };
    let t0 = Instant::now();
    let out = sampler::sample(net.as_ref(), &ddpm, x.copy(), None, &sc, |_, _, _| {});
    let _ = out.double_value(&[0, 0, 0, 0]);
    let sample_ddim = t0.elapsed().as_secs_f64();
    tracing::info!(
        "forward at batch 81: {:.1} ms; 81 samples: DDPM-{} {:.1} s, DDIM-50 {:.2} s",
        forward81 * 1e3,
        cfg.ddpm.n_steps,
        sample_ddpm,
        sample_ddim
    );
    result.forward81_sec = forward81;
    result.sample_ddpm_sec = sample_ddpm;
    result.sample_ddim50_sec = sample_ddim;
    result.peak_rss_mib = peak_rss_mib();
    Ok(result)
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
    if let Some(e) = r.epoch_sec {
        s += &format!("| one epoch incl. data preparation (from {} steps) | {e:.1} s |\n", r.epoch_steps_timed);
    }
    if r.forward81_sec.is_finite() {
        s += &format!("| denoising forward, batch 81 | {:.1} ms |\n", r.forward81_sec * 1e3);
        s += &format!("| 81 samples, DDPM (all steps) | {:.1} s |\n", r.sample_ddpm_sec);
        s += &format!("| 81 samples, DDIM-50 | {:.2} s |\n", r.sample_ddim50_sec);
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
