//! Logging through `tracing` to stderr and, once a run directory is known, to its log file;
//! progress bars through one `indicatif::MultiProgress` that log lines suspend, so neither
//! tears the other.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

static BARS: OnceLock<MultiProgress> = OnceLock::new();
static LOG_FILE: Mutex<Option<File>> = Mutex::new(None);

/// The process-wide progress bars (hidden when stderr is not a terminal).
pub fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| {
        let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

/// A bar of `len` steps with the given template, added to [`bars`].
pub fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    bars().add(ProgressBar::new(len).with_style(style))
}

#[derive(Clone, Copy)]
struct StderrW;
impl Write for StderrW {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
impl<'a> MakeWriter<'a> for StderrW {
    type Writer = StderrW;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[derive(Clone, Copy)]
struct FileW;
impl Write for FileW {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = LOG_FILE.lock().map_err(|_| std::io::Error::other("log lock"))?.as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl<'a> MakeWriter<'a> for FileW {
    type Writer = FileW;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Installs the subscriber: `RUST_LOG` overrides the level (default `info`, `debug` with
/// `verbose`, `warn` with `quiet`, which also hides the progress bars).
pub fn init(verbose: bool, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, true) => "debug",
        (false, false) => "info",
    };
    if quiet {
        bars().set_draw_target(ProgressDrawTarget::hidden());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer().with_writer(StderrW).with_target(false).compact();
    let file = tracing_subscriber::fmt::layer().with_writer(FileW).with_target(false).with_ansi(false);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init();
}

/// From now on log lines also go (appended) to `path`.
pub fn log_to_file(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
    if let Ok(mut g) = LOG_FILE.lock() {
        *g = Some(f);
    }
    Ok(())
}
