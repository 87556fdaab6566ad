//! The errors `ddpm` stops with and their exit codes, in one place:
//!
//! | error | exit code |
//! |---|---|
//! | [`UsageError`]: the configuration, the command line or a path the user gave is wrong | 2 |
//! | [`Interrupted`]: Ctrl-C (130) or SIGTERM (143), after the run was saved | 130 / 143 |
//! | anything else (I/O, a corrupt file, a diverging run, libtorch) | 1 |

/// Exit code for an interruption by SIGINT (Ctrl-C).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code for an interruption by SIGTERM.
pub const EXIT_SIGTERM: u8 = 143;

/// Something the user asked for cannot be done as asked: a bad key or value in `options.yml`
/// or on the command line, a missing checkpoint, a run directory in use, a path that cannot be
/// written. The message says what was wrong and what would be right.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `bail!`-style shorthand: a [`UsageError`] as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A run stopped by a signal after saving.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Interrupted {
    /// [`EXIT_SIGINT`] or [`EXIT_SIGTERM`].
    pub code: u8,
    pub message: String,
}

/// The exit code for an error that ended a command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(i) = err.downcast_ref::<Interrupted>() {
        return i.code;
    }
    if err.chain().any(|e| e.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// Runs `f`, turning a panic inside it (a library that unwraps on bad input) into `Err`
/// without the panic message on stderr: the caller reports the input as bad in one line.
#[allow(clippy::result_unit_err)]
pub fn quiet_catch<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&usage("bad key")), 2);
        assert_eq!(exit_code(&usage("bad key").context("loading options.yml")), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), 1);
        let int = Interrupted { code: EXIT_SIGTERM, message: "stopped".into() };
        assert_eq!(exit_code(&int.into()), 143);
    }
}
