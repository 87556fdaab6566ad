//! Ctrl-C and SIGTERM: the first one sets a flag that the training loop checks after each step
//! (it then saves a checkpoint and exits 130 or 143); a second Ctrl-C exits at once, which is
//! safe because every file is written atomically.

use crate::error::{EXIT_SIGINT, EXIT_SIGTERM};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAGS: OnceLock<(Arc<AtomicBool>, Arc<AtomicBool>)> = OnceLock::new();

/// Installs the handlers (once).
pub fn install() -> anyhow::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let int = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Order matters: the conditional exit sees the flag before the second handler sets it.
    signal_hook::flag::register_conditional_shutdown(SIGINT, EXIT_SIGINT as i32, Arc::clone(&int))?;
    signal_hook::flag::register(SIGINT, Arc::clone(&int))?;
    signal_hook::flag::register_conditional_shutdown(SIGTERM, EXIT_SIGTERM as i32, Arc::clone(&term))?;
    signal_hook::flag::register(SIGTERM, Arc::clone(&term))?;
    let _ = FLAGS.set((int, term));
    Ok(())
}

/// The exit code of a pending interruption, if any.
pub fn pending() -> Option<u8> {
    let (int, term) = FLAGS.get()?;
    if int.load(Ordering::Relaxed) {
        Some(EXIT_SIGINT)
    } else if term.load(Ordering::Relaxed) {
        Some(EXIT_SIGTERM)
    } else {
        None
    }
}
