//! Ownership of a run directory: a lock file with the pid of the live run (a stale lock of a
//! dead process is taken over with a warning), and no fresh run over existing checkpoints
//! unless asked.

use crate::checkpoint;
use crate::error::UsageError;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The files of a run directory, by what they hold (the folders `checkpoints/`, `samples/`
/// and `tensorboard/` beside them).
pub mod files {
    /// The resolved configuration of the run.
    pub const CONFIG: &str = "config.yml";
    /// The log of `ddpm train`.
    pub const TRAIN_LOG: &str = "train.log";
    /// One JSON line per logged training window: step, epoch, loss, learning rate, images/s.
    pub const METRICS: &str = "metrics.jsonl";
    /// The loss curve.
    pub const LOSS_PLOT: &str = "loss.png";
    /// One JSON line per CNN-metric evaluation (during training and by `ddpm eval`).
    pub const EVALS: &str = "evals.jsonl";
    /// The evaluations during training, plotted.
    pub const EVAL_PLOT: &str = "eval.png";
    /// One JSON line per `ddpm eval --metric fid`.
    pub const FID: &str = "fid.jsonl";
    /// The grid `ddpm sample` draws by default.
    pub const SAMPLES_GRID: &str = "samples.png";
    /// The folder `ddpm sample --format png-dir` writes by default.
    pub const SAMPLES_PNG_DIR: &str = "samples-png";
    /// The archive `ddpm sample --format npz` writes by default.
    pub const SAMPLES_NPZ: &str = "samples.npz";
}

/// Held while a run writes into its directory; removed on drop.
pub struct RunLock {
    path: PathBuf,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let lock = Self::take(run_dir, |pid, path| {
            format!(
                "run_dir {} is in use by a live run (pid {pid}, lock file {}); wait for it, stop it, or pick another train.run_dir",
                run_dir.display(),
                path.display()
            )
        })?;
        crate::fsutil::remove_stale_temps(run_dir);
        crate::fsutil::remove_stale_temps(&checkpoint::checkpoint_dir(run_dir));
        Ok(lock)
    }

    /// The lock of an export's folder (`out` is what the user named), so that two exports
    /// cannot write into one at once.
    pub fn acquire_export(dir: &Path, out: &Path) -> Result<Self> {
        Self::take(dir, |pid, path| {
            format!(
                "{} is being exported by a live process (pid {pid}, lock file {}); wait for it, stop it, or choose another --out",
                out.display(),
                path.display()
            )
        })
    }

    fn take(dir: &Path, busy: impl Fn(u32, &Path) -> String) -> Result<Self> {
        let path = dir.join(".lock");
        if let Ok(text) = std::fs::read_to_string(&path) {
            match text.trim().parse::<u32>() {
                Ok(pid) if pid != std::process::id() && alive(pid) => bail!(UsageError(busy(pid, &path))),
                Ok(pid) => {
                    tracing::warn!("taking over the stale lock {} of process {pid}, which is gone", path.display())
                }
                Err(_) => tracing::warn!("replacing the unreadable lock file {}", path.display()),
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the lock file {} (is the folder writable?)", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Refuses to start a fresh run over existing checkpoints unless `overwrite`, in which case
/// the previous run's outputs are removed.
pub fn check_fresh_start(run_dir: &Path, resume: bool, overwrite: bool) -> Result<()> {
    let latest = checkpoint::latest_path(run_dir);
    if resume {
        if !latest.exists() {
            bail!(UsageError(format!("--resume: there is no checkpoint at {} to resume from", latest.display())));
        }
        return Ok(());
    }
    if !latest.exists() {
        return Ok(());
    }
    if !overwrite {
        bail!(UsageError(format!(
            "run_dir {} already holds a run ({}): pass --resume to continue it, or --overwrite to start over (deletes its checkpoints, samples and metrics)",
            run_dir.display(),
            latest.display()
        )));
    }
    tracing::warn!(
        "--overwrite: removing the previous run's checkpoints, samples and metrics in {}",
        run_dir.display()
    );
    for sub in ["checkpoints", "samples", "tensorboard"] {
        let p = run_dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for f in [files::METRICS, files::LOSS_PLOT, files::TRAIN_LOG] {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
    Ok(())
}

/// Whether `path` holds a ddpm checkpoint (its safetensors header says so); reads the header
/// only.
pub fn is_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return false;
    }
    let mut header = Vec::new();
    if f.take(n).read_to_end(&mut header).is_err() {
        return false;
    }
    let needle = format!("\"format\":\"{}\"", checkpoint::FORMAT);
    String::from_utf8_lossy(&header).contains(&needle)
}

/// Fails early, with the path named, when a command's output file cannot or must not be
/// written: its folder cannot be created or written, or the path is a symbolic link, not a
/// regular file (a folder, a device, a FIFO), or a ddpm checkpoint, which no output replaces.
pub fn check_output(path: &Path) -> Result<()> {
    check_existing(path)?;
    check_output_in(path, None)
}

/// [`check_output`] for a file of one kind, written by a command that reads `inputs` (a folder
/// of training pictures): its name must end in one of `exts` (so `--out options.yml` or
/// `--out grid.jpg` cannot receive PNG bytes), and it must not lie inside `inputs`.
pub fn check_output_named(path: &Path, exts: &[&str], kind: &str, inputs: Option<&Path>) -> Result<()> {
    check_existing(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    if !ext.as_deref().is_some_and(|e| exts.contains(&e)) {
        let names: Vec<String> = exts.iter().map(|e| format!(".{e}")).collect();
        bail!(UsageError(format!(
            "will not write {}: {kind}, so its name must end in {}",
            path.display(),
            names.join(" or ")
        )));
    }
    check_output_in(path, inputs)
}

/// What is at `path` already may not be replaced: a link, a folder or device, a checkpoint.
fn check_existing(path: &Path) -> Result<()> {
    let refuse = |why: &str| -> Result<()> { bail!(UsageError(format!("will not write {}: {why}", path.display()))) };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            return refuse("it is a symbolic link (ddpm writes only to plain files; pick another path)");
        }
        if !meta.is_file() {
            return refuse("it is not a regular file (a folder, device or FIFO)");
        }
        if is_checkpoint(path) {
            return refuse("it holds a ddpm checkpoint (pick another path)");
        }
    }
    Ok(())
}

fn check_output_in(path: &Path, inputs: Option<&Path>) -> Result<()> {
    let refuse = |why: &str| -> Result<()> { bail!(UsageError(format!("will not write {}: {why}", path.display()))) };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Some(inputs) = inputs.and_then(|i| i.canonicalize().ok()) {
        // The nearest existing folder on the way up (the output's may not exist yet).
        let existing = dir.ancestors().find(|d| d.as_os_str().is_empty() || d.exists());
        let existing = existing.filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if existing.canonicalize().is_ok_and(|d| d.starts_with(&inputs)) {
            return refuse(&format!(
                "it lies inside dataset.path {} (the pictures the model trains on; pick a path outside it)",
                inputs.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?;
    let probe = dir.join(format!(".ddpm-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
