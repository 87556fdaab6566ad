//! `ddpm train`: the whole dataset in memory as u8, a fresh permutation each epoch, batches
//! converted to [-1, 1] on the device, `t ~ U{0..n_steps-1}` and `noise ~ N(0, 1)` per sample,
//! loss `MSE(net(x_t, t), noise)`, Adam, and an EMA of the weights. The host syncs with the
//! device only when the loss is logged (every `train.log_every` steps).
//!
//! The random generator is re-seeded from `(seed, epoch)` for each epoch's permutation and from
//! `(seed, step)` for each step. A run is therefore reproducible, the per-epoch sample grids
//! (drawn from a fixed seed) do not disturb the training stream, and a resumed run needs only
//! the step, the epoch and the position in the epoch to continue exactly where it stopped.
//!
//! Files: `mod.rs` (set-up), `run.rs` (the loop), `state.rs` (save, resume, broadcast),
//! `epoch_end.rs` (metrics, grids, evaluation). The `train:` section is
//! [`crate::config::train`]; the step itself is [`crate::learner`], which `ddpm bench` times
//! too.

mod epoch_end;
mod run;
mod state;

use crate::checkpoint::ModelInfo;
use crate::config::Config;
use crate::data::{self, ImageDataset, Split};
use crate::dist::{self, ProcessGroup};
use crate::error::UsageError;
use crate::learner::Learner;
use crate::run_dir::{self, RunLock};
use crate::score::classifier::Classifier;
use crate::{device, interrupt, logging};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub use crate::config::train::TrainConfig;

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOptions {
    /// Continue from the run_dir's latest checkpoint.
    pub resume: bool,
    /// Start over in a run_dir that already has checkpoints, deleting them.
    pub overwrite: bool,
}

/// Where training stands: `epoch` (1-based) and the batches of it already done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    step: i64,
    epoch: i64,
    batch: i64,
}

/// A training run: what the loop, the saves and the epoch ends share.
struct Trainer<'a> {
    cfg: &'a Config,
    run_dir: PathBuf,
    dataset: ImageDataset,
    learner: Learner,
    info: ModelInfo,
    pos: Position,
    curve: Vec<(i64, f64)>,
    /// The classifier and test split for evaluation during training, when enabled.
    evaluator: Option<(Classifier, ImageDataset)>,
    /// The process group of a data-parallel run (None: a single process).
    dist: Option<ProcessGroup>,
    /// A stop agreed by all ranks at the last step (data-parallel runs).
    stop: Option<u8>,
    /// `DDPM_TRACE_DIR`: record each step's inputs and the weights (trajectory parity tests).
    trace: Option<crate::trace::Trace>,
}

impl Trainer<'_> {
    /// Rank 0 (or the only process) writes checkpoints, grids, logs and metrics.
    fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank == 0)
    }

    fn steps_per_epoch(&self) -> i64 {
        self.cfg.train.steps_per_epoch(self.dataset.len())
    }

    fn total_steps(&self) -> i64 {
        self.cfg.train.total_steps(self.dataset.len())
    }
}

/// `ddpm train`: join the process group, take the run directory, load and check the data,
/// build the learner, resume if asked, and run.
pub fn train(cfg: &Config, opts: TrainOptions) -> Result<()> {
    interrupt::install()?;
    let (dist, device) = join_group(cfg)?;
    let main = dist.as_ref().is_none_or(|d| d.rank == 0);
    let _lock = match main {
        true => Some(take_run_dir(cfg, opts)?),
        false => None,
    };
    if let Some(d) = &dist {
        if cfg.train.batch_size < d.world_size as i64 {
            bail!(UsageError(format!(
                "train.batch_size = {} is smaller than the {} processes: each needs at least one image per step",
                cfg.train.batch_size, d.world_size
            )));
        }
    }
    let dataset = training_data(cfg)?;
    let mut info = ModelInfo::from_config(cfg);
    info.spec.class_names = dataset.class_names.clone();
    let learner = build_learner(cfg, &info, &dataset, device, dist.is_some())?;
    let evaluator = match cfg.train.eval_every > 0 && main {
        true => {
            let test = data::load(&cfg.dataset, Split::Test)?;
            Some((crate::score::classifier_for(&cfg.dataset, &dataset, &test, device)?, test))
        }
        false => None,
    };
    let mut trainer = Trainer {
        cfg,
        run_dir: cfg.train.run_dir.clone(),
        dataset,
        learner,
        info,
        pos: Position { step: 0, epoch: 0, batch: 0 },
        curve: Vec::new(),
        evaluator,
        dist,
        stop: None,
        trace: crate::trace::Trace::from_env()?,
    };
    trainer.announce_graphs();
    if opts.resume && main {
        trainer.resume()?;
        write_config(cfg)?;
    }
    trainer.broadcast_state()?;
    if let Some(tr) = &trainer.trace {
        tr.initial(trainer.pos.step, &trainer.learner.model.vs)?;
    }
    trainer.run()
}

/// The process group of a data-parallel run (None for one process) and this worker's device.
fn join_group(cfg: &Config) -> Result<(Option<ProcessGroup>, tch::Device)> {
    let (joined, device) = dist::join(cfg.threads, device::resolve(&cfg.device)?)?;
    let group = joined.map(|(e, pg)| {
        if e.rank == 0 {
            tracing::info!(
                "data-parallel: {} processes ({}, rendezvous {}:{}), {} images per process per step",
                e.world_size,
                pg.backend,
                e.master_addr,
                e.master_port,
                cfg.train.batch_size / e.world_size as i64
            );
        }
        pg
    });
    Ok((group, device))
}

/// Rank 0 takes the run directory: creates it, locks it, refuses to start over a finished run
/// unless asked, writes the resolved configuration and starts the log file.
fn take_run_dir(cfg: &Config, opts: TrainOptions) -> Result<RunLock> {
    let run_dir = &cfg.train.run_dir;
    if std::fs::canonicalize(run_dir).is_ok_and(|c| c.parent().is_none()) {
        bail!(UsageError(format!(
            "train.run_dir = {}: that is the filesystem root; give the run a folder of its own, e.g. runs/mnist",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run_dir {}", run_dir.display()))?;
    let lock = RunLock::acquire(run_dir)?;
    state::recover_latest(run_dir)?;
    run_dir::check_fresh_start(run_dir, opts.resume, opts.overwrite)?;
    // A resumed run's config.yml is rewritten only once the resume is accepted.
    if !opts.resume {
        write_config(cfg)?;
    }
    logging::log_to_file(&run_dir.join(run_dir::files::TRAIN_LOG))?;
    tracing::info!("run directory {}", run_dir.display());
    Ok(lock)
}

/// The resolved configuration into the run directory's config.yml.
fn write_config(cfg: &Config) -> Result<()> {
    let run_dir = &cfg.train.run_dir;
    crate::fsutil::write_atomic(&run_dir.join(run_dir::files::CONFIG), cfg.to_yaml().as_bytes())
        .with_context(|| format!("cannot write into run_dir {}", run_dir.display()))
}

/// The training split, checked against the configuration (its image shape; for a folder,
/// enough pictures and the classes the network is built for).
fn training_data(cfg: &Config) -> Result<ImageDataset> {
    let dataset = data::load(&cfg.dataset, Split::Train)?;
    let name = cfg.dataset.name;
    let shape = cfg.image_shape();
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
    if name == data::DatasetName::Folder {
        check_folder(cfg, &dataset)?;
    }
    if let Some(w) = cfg.network.unmatched_attention(shape) {
        tracing::warn!("{w}");
    }
    Ok(dataset)
}

/// The learner of the run (model, EMA, Adam, streams), described in the log.
fn build_learner(
    cfg: &Config,
    info: &ModelInfo,
    dataset: &ImageDataset,
    device: tch::Device,
    distributed: bool,
) -> Result<Learner> {
    let mut learner = Learner::new(cfg, &info.spec, device, distributed)?;
    learner.set_total_steps(cfg.train.steps_per_epoch(dataset.len()) * cfg.train.n_epochs);
    tracing::info!(
        "network {}, classes {}: {} trainable parameters; EMA {}; device {}",
        cfg.network.describe(),
        cfg.network.num_classes(),
        crate::model::trainable_parameters(&learner.model.vs),
        if cfg.train.ema_decay > 0.0 { format!("decay {}", cfg.train.ema_decay) } else { "off".into() },
        device::describe(device)
    );
    if learner.streams() == 2 {
        tracing::info!(
            "two compute streams of {} threads each (streams: 1 switches them off)",
            (tch::get_num_threads() / 2).max(1)
        );
    }
    Ok(learner)
}

impl Trainer<'_> {
    /// CUDA graphs of the training step: off under the trajectory trace, else said in the log.
    fn announce_graphs(&mut self) {
        if self.trace.is_some() && self.learner.cuda_graphs() {
            self.learner
                .graphs_off("DDPM_TRACE_DIR records each step's gradients, which a replayed graph keeps to itself");
        }
        if self.learner.cuda_graphs() {
            tracing::info!(
                "training step in CUDA graphs: {} eager steps per batch shape, then captured and replayed (train.cuda_graphs: false switches them off)",
                crate::cuda_graph::WARMUP
            );
        }
    }
}

/// A folder dataset fits the run: enough pictures for one batch, and as many classes as the
/// network is built for.
fn check_folder(cfg: &Config, dataset: &data::ImageDataset) -> Result<()> {
    let path = cfg.dataset.path.display();
    if dataset.len() < cfg.train.batch_size {
        bail!(UsageError(format!(
            "dataset.path {path}: {} training pictures, fewer than train.batch_size = {}: add pictures or lower the batch size",
            dataset.len(),
            cfg.train.batch_size
        )));
    }
    let (want, have) = (cfg.network.num_classes(), dataset.class_names.len() as i64);
    if want > 0 && want != have {
        let found = match have {
            0 => "no classes (the pictures are not all in first-level subfolders)".to_string(),
            _ => format!("{have} classes ({})", dataset.class_names.join(", ")),
        };
        bail!(UsageError(format!(
            "network.num_classes = {want}, but dataset.path {path} has {found}: set network.num_classes to {have}"
        )));
    }
    Ok(())
}
