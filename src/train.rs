//! The training loop: the whole dataset in memory as u8, a fresh permutation each epoch,
//! batches converted to [-1, 1] on the device, `t ~ U{0..n_steps-1}` and `noise ~ N(0, 1)` per
//! sample, loss `MSE(net(x_t, t), noise)`, Adam. The host syncs with the device only when the
//! loss is logged (every `train.log_every` steps).
//!
//! The random generator is re-seeded from `(seed, epoch)` for each epoch's permutation and from
//! `(seed, step)` for each step, so a run is reproducible and the per-epoch sample grids (drawn
//! from a fixed seed) do not disturb the training stream.

use crate::checkpoint::{self, ModelInfo};
use crate::config::Config;
use crate::data::{self, Split};
use crate::diffusion::ddpm::SampleOptions;
use crate::diffusion::{Ddpm, Schedule};
use crate::model::{self, Denoiser};
use crate::tensorboard::EventWriter;
use crate::{device, grid, logging, plot};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

/// Seeds derived from the run's seed, one stream per purpose.
pub fn derived_seed(seed: u64, purpose: u64, index: i64) -> i64 {
    // splitmix64 of the three values: well spread, and positive for manual_seed.
    let mut z = seed
        ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}
const SEED_EPOCH: u64 = 1;
const SEED_STEP: u64 = 2;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: i64,
    pub epochs: i64,
    pub last_loss: f64,
    pub images_per_sec: f64,
    pub latest: PathBuf,
}

/// One line of `metrics.jsonl`.
fn metrics_line(step: i64, epoch: i64, loss: f64, lr: f64, ips: f64, elapsed: f64) -> String {
    serde_json::json!({
        "step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_sec": ips, "elapsed_sec": elapsed
    })
    .to_string()
}

/// Samples `n` images from `net` with a fixed seed (for per-epoch grids).
pub fn sample_grid(
    net: &dyn Denoiser,
    ddpm: &Ddpm,
    cfg: &Config,
    shape: [i64; 3],
    n: i64,
    device: Device,
) -> Tensor {
    tch::manual_seed(cfg.seed as i64);
    let noise = Tensor::randn([n, shape[0], shape[1], shape[2]], (Kind::Float, device));
    let opts = SampleOptions {
        simple_var: cfg.sample.simple_var,
        clip_x0: cfg.sample.clip_x0,
    };
    ddpm.sample(net, noise, opts, |_, _| {})
}

/// Prepares the run directory: config, log file.
fn prepare_run_dir(cfg: &Config) -> Result<PathBuf> {
    let dir = cfg.train.run_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create run_dir {}", dir.display()))?;
    crate::fsutil::write_atomic(&dir.join("config.yml"), cfg.to_yaml().as_bytes())
        .with_context(|| format!("cannot write into run_dir {}", dir.display()))?;
    logging::log_to_file(&dir.join("train.log"))?;
    Ok(dir)
}

/// `ddpm train`.
pub fn train(cfg: &Config) -> Result<TrainSummary> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = device::resolve(&cfg.device)?;
    let run_dir = prepare_run_dir(cfg)?;
    tracing::info!("run directory {}", run_dir.display());
    let dataset = data::load(&cfg.dataset, Split::Train)?;
    let name = cfg.dataset_name();
    if dataset.image_shape() != name.image_shape() {
        bail!(
            "{} images are {:?}, but {} images should be {:?}",
            cfg.dataset.root.display(),
            dataset.image_shape(),
            name.as_str(),
            name.image_shape()
        );
    }
    let n_images = dataset.len();
    tracing::info!(
        "{}: {n_images} training images of {:?}",
        name.as_str(),
        dataset.image_shape()
    );

    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let shape = name.image_shape();
    let net = model::build(&vs, &cfg.network, shape, cfg.ddpm.n_steps);
    tracing::info!(
        "network channels {:?}, pe_dim {}, residual {}: {} trainable parameters; device {}",
        cfg.network.channels,
        cfg.network.pe_dim,
        cfg.network.residual,
        model::trainable_parameters(&vs),
        device::describe(device)
    );
    let ddpm = Ddpm::new(
        Schedule::linear(cfg.ddpm.n_steps, cfg.ddpm.min_beta, cfg.ddpm.max_beta),
        device,
    );
    let mut opt = nn::Adam::default().build(&vs, cfg.train.lr)?;

    let bs = cfg.train.batch_size;
    let steps_per_epoch = (n_images + bs - 1) / bs;
    let total_steps = match cfg.train.max_steps {
        0 => steps_per_epoch * cfg.train.n_epochs,
        m => m.min(steps_per_epoch * cfg.train.n_epochs),
    };
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .with_context(|| format!("cannot write metrics into {}", run_dir.display()))?;
    let mut tb = EventWriter::create(&run_dir.join("tensorboard"))?;
    let mut curve: Vec<(i64, f64)> = Vec::new();
    let mut info = ModelInfo::from_config(cfg);
    info.class_names = dataset.class_names.clone();

    let started = Instant::now();
    let mut step = 0i64;
    let mut last_loss = f64::NAN;
    let mut ips = 0.0;
    let mut epoch = 0;
    while epoch < cfg.train.n_epochs && step < total_steps {
        epoch += 1;
        let epoch_start = Instant::now();
        tch::manual_seed(derived_seed(cfg.seed, SEED_EPOCH, epoch));
        let perm = Tensor::randperm(n_images, (Kind::Int64, Device::Cpu));
        let steps_this_epoch = steps_per_epoch.min(total_steps - step);
        let bar = logging::progress_bar(
            steps_this_epoch as u64,
            "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
        );
        bar.set_prefix(format!("epoch {epoch}/{}", cfg.train.n_epochs));
        let mut epoch_sum = Tensor::zeros([], (Kind::Float, device));
        let mut window_sum = Tensor::zeros([], (Kind::Float, device));
        let (mut window_steps, mut window_images, mut window_start) = (0i64, 0i64, Instant::now());
        let mut epoch_images = 0i64;
        for b in 0..steps_this_epoch {
            let len = bs.min(n_images - b * bs);
            let idx = perm.narrow(0, b * bs, len);
            tch::manual_seed(derived_seed(cfg.seed, SEED_STEP, step));
            let x0 = dataset.batch(&idx, device);
            let t = Tensor::randint(cfg.ddpm.n_steps, [len], (Kind::Int64, device));
            let noise = x0.randn_like();
            let x_t = ddpm.add_noise(&x0, &noise, &t);
            let loss = net.forward(&x_t, &t).mse_loss(&noise, Reduction::Mean);
            opt.backward_step(&loss);
            let loss = loss.detach();
            epoch_sum += &loss;
            window_sum += &loss;
            step += 1;
            window_steps += 1;
            window_images += len;
            epoch_images += len;
            bar.inc(1);
            if step % cfg.train.log_every == 0 || b + 1 == steps_this_epoch {
                let mean = window_sum.double_value(&[]) / window_steps as f64;
                if !mean.is_finite() {
                    bar.abandon();
                    bail!(
                        "the loss became {mean} at step {step} (epoch {epoch}); stopping without saving. \
                         The last good checkpoint is {} (try a lower train.lr)",
                        checkpoint::latest_path(&run_dir).display()
                    );
                }
                ips = window_images as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
                last_loss = mean;
                curve.push((step, mean));
                bar.set_message(format!("loss {mean:.4} | {ips:.0} img/s"));
                writeln!(
                    metrics,
                    "{}",
                    metrics_line(
                        step,
                        epoch,
                        mean,
                        cfg.train.lr,
                        ips,
                        started.elapsed().as_secs_f64()
                    )
                )
                .context("writing metrics.jsonl")?;
                tb.scalar("train/loss", step, mean)?;
                tb.scalar("train/images_per_sec", step, ips)?;
                let _ = window_sum.zero_();
                (window_steps, window_images, window_start) = (0, 0, Instant::now());
            }
        }
        bar.finish_and_clear();
        let epoch_loss = epoch_sum.double_value(&[]) / steps_this_epoch.max(1) as f64;
        let secs = epoch_start.elapsed().as_secs_f64();
        tracing::info!(
            "epoch {epoch}/{}: loss {epoch_loss:.5}, {steps_this_epoch} steps, {:.1} s, {:.0} images/s",
            cfg.train.n_epochs,
            secs,
            epoch_images as f64 / secs
        );
        tb.scalar("train/epoch_loss", step, epoch_loss)?;
        tb.flush()?;
        info.epoch = epoch;
        info.step = step;
        save_checkpoints(&vs, &info, &run_dir, cfg.train.keep_checkpoints)?;
        plot::save_loss_curve(&curve, &run_dir.join("loss.png"))?;
        if cfg.train.grid_samples > 0 {
            let xs = sample_grid(
                net.as_ref(),
                &ddpm,
                cfg,
                shape,
                cfg.train.grid_samples,
                device,
            );
            let path = run_dir
                .join("samples")
                .join(format!("epoch-{epoch:04}.png"));
            grid::save_grid(&xs, &path, cfg.sample.padding)?;
            tracing::info!("wrote {}", path.display());
        }
    }
    let latest = checkpoint::latest_path(&run_dir);
    tracing::info!(
        "done: {step} steps in {:.1} s; checkpoint {}; sample with `ddpm sample --config <this config>`",
        started.elapsed().as_secs_f64(),
        latest.display()
    );
    Ok(TrainSummary {
        steps: step,
        epochs: epoch,
        last_loss,
        images_per_sec: ips,
        latest,
    })
}

/// Writes the epoch checkpoint and `latest`, then drops old epoch checkpoints.
fn save_checkpoints(vs: &nn::VarStore, info: &ModelInfo, run_dir: &Path, keep: i64) -> Result<()> {
    let epoch_file = checkpoint::epoch_path(run_dir, info.epoch);
    if keep > 0 {
        checkpoint::save(vs, info, &epoch_file)?;
    }
    checkpoint::save(vs, info, &checkpoint::latest_path(run_dir))?;
    checkpoint::rotate(run_dir, keep as usize)?;
    tracing::info!(
        "saved checkpoint {}",
        checkpoint::latest_path(run_dir).display()
    );
    Ok(())
}
