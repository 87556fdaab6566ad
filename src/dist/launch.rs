//! `--nproc N`: one command started as N local workers that find each other through the
//! torchrun-style environment.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on the loopback interface (for `--nproc`'s rendezvous).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free TCP port for the workers")?;
    Ok(l.local_addr()?.port())
}

/// The command line of this process without `--nproc N` / `--nproc=N`.
pub fn args_without_nproc(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a == "--nproc" {
            skip = true;
        } else if !a.starts_with("--nproc=") {
            out.push(a.clone());
        }
    }
    out
}

/// `ddpm train --nproc N`: runs this same command as N local workers (ranks 0..N) on one
/// rendezvous port and waits for them. When one fails, the others are given `grace` to stop
/// on their own (they see the broken group) and are then killed; the error names the rank.
pub fn launch(nproc: usize, grace: Duration) -> Result<()> {
    if nproc == 0 {
        bail!(crate::error::UsageError("--nproc must be at least 1".into()));
    }
    let exe = std::env::current_exe().context("cannot find the ddpm executable to start the workers")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = args_without_nproc(&args);
    let port = free_port()?;
    tracing::info!("starting {nproc} workers (rendezvous at 127.0.0.1:{port})");
    crate::interrupt::install()?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..nproc {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("cannot start worker {rank} ({})", exe.display()));
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    // Every failed worker's status, and when the first failed (the others get `grace` then).
    let mut failures: Vec<(usize, std::process::ExitStatus)> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        let mut running = 0;
        for (rank, child) in &mut children {
            match child.try_wait()? {
                Some(status) if !status.success() && !failures.iter().any(|(r, _)| r == rank) => {
                    failures.push((*rank, status));
                    first_failure.get_or_insert_with(Instant::now);
                }
                Some(_) => {}
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        // A SIGTERM to the launcher goes on to the workers (Ctrl-C reaches them from the
        // terminal already).
        if !forwarded && crate::interrupt::pending() == Some(crate::error::EXIT_SIGTERM) {
            forwarded = true;
            for (_, child) in &children {
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        if first_failure.is_some_and(|at| at.elapsed() > grace) {
            kill_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The worker whose exit says most: a usage error or an interruption (the others often fail
    // only because it did), the lowest rank first; else the first to fail.
    let telling = |s: &std::process::ExitStatus| matches!(s.code(), Some(2 | 130 | 143));
    let mut by_rank = failures.clone();
    by_rank.sort_by_key(|(r, _)| *r);
    match by_rank.into_iter().find(|(_, s)| telling(s)).or_else(|| failures.first().copied()) {
        None => Ok(()),
        Some((rank, status)) => match status.code() {
            Some(code @ (2 | 130 | 143)) => Err(crate::error::Interrupted {
                code: code as u8,
                message: format!("worker {rank} of {nproc} exited with status {code} (its message is above)"),
            }
            .into()),
            _ => bail!("worker {rank} of {nproc} failed ({status}); the others were stopped"),
        },
    }
}

fn kill_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
