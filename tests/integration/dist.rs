//! Data-parallel training on libtorch's c10d (gloo over loopback): N processes take the same
//! steps as one process with the same global batch, and a dead worker ends the run.

use crate::common::*;
use ddpm::dist::{args_without_nproc, DistEnv};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn loss_values(run: &Path) -> Vec<f64> {
    losses(run).into_iter().map(|(_, l)| l).collect()
}

/// Largest absolute difference between two checkpoints with the same tensors.
fn max_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{a:?} and {b:?} hold other tensors");
    let mut worst = 0f32;
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (x, y) in va.iter().zip(vb) {
            assert!(x.is_finite() && y.is_finite(), "{k} is not finite");
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// The same run with one process and with `--nproc 2` and `--nproc 3` (a batch of 16 splits
/// 8+8 and 5+5+6; 40 images make a short last batch of 8), and with two compute streams in one
/// process: the weights, the EMA, the Adam moments and the logged losses agree to float
/// tolerance, and the weights moved.
#[test]
#[ignore = "slow: several processes"]
fn n_processes_take_the_steps_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 40);
    let cfg = tiny_config(d);
    let c = cfg.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let rd = d.join(name);
        let mut args = vec!["train", "--config", c, "--run-dir", rd.to_str().unwrap(), "--max-steps", "5"];
        args.extend(["--set", "train.log_every=1", "--set", "train.grid_samples=0", "--set", "threads=1"]);
        args.extend(extra);
        let o = ddpm(d, &args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        (rd, stderr(&o))
    };
    let (one, _) = run("one", &[]);
    let (two, log2) = run("two", &["--nproc", "2"]);
    assert!(log2.contains("data-parallel: 2 processes (gloo"), "{log2}");
    let (three, _) = run("three", &["--nproc", "3"]);
    // Two compute streams in one process take the same steps too.
    let (streams, log) = run("streams", &["--set", "streams=2"]);
    assert!(log.contains("two compute streams"), "{log}");
    let ck = |rd: &Path, f: &str| rd.join("checkpoints").join(f);
    let init = {
        // The initial weights (lr 1e-30), to check that the 5 steps changed them.
        let (zero, _) = run("zero", &["--set", "train.lr=1e-30"]);
        ck(&zero, "latest.safetensors")
    };
    assert!(max_diff(&ck(&one, "latest.safetensors"), &init) > 1e-3, "training did not move the weights");
    for rd in [&two, &three, &streams] {
        for f in ["latest.safetensors", "latest.ema.safetensors", "latest.state.safetensors"] {
            let diff = max_diff(&ck(&one, f), &ck(rd, f));
            assert!(diff < 2e-4, "{f}: {rd:?} differs from the single process by {diff}");
        }
        let (la, lb) = (loss_values(&one), loss_values(rd));
        assert_eq!(la.len(), 5);
        assert_eq!(la.len(), lb.len());
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "losses {la:?} vs {lb:?}");
        }
    }
    // Only rank 0 writes: one metrics line per step, one checkpoint set.
    assert_eq!(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().count(), 5);
}

/// A resumed data-parallel run continues exactly where it stopped.
#[test]
#[ignore = "slow: several processes"]
fn a_data_parallel_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 32);
    let cfg = tiny_config(d);
    let c = cfg.to_str().unwrap();
    let base = ["train", "--config", c, "--set", "train.log_every=1", "--set", "train.grid_samples=0"];
    let go = |rd: &Path, extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--run-dir", rd.to_str().unwrap(), "--set", "threads=1", "--epochs", "2"]);
        args.extend(extra);
        let o = ddpm(d, &args);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (a, b) = (d.join("a"), d.join("b"));
    go(&a, &["--nproc", "2"]);
    go(&b, &["--nproc", "2", "--max-steps", "3"]);
    go(&b, &["--nproc", "2", "--resume"]);
    assert_eq!(losses(&a).len(), 4);
    assert_eq!(losses(&a), losses(&b));
    let f = "checkpoints/latest.safetensors";
    assert_eq!(max_diff(&a.join(f), &b.join(f)), 0.0);
}

/// Two workers started by hand the torchrun way; rank 1 is killed mid-run and rank 0 must
/// stop with an error naming the failed collective, long before the collective timeout.
#[test]
#[ignore = "slow: several processes"]
fn a_killed_worker_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 32);
    let cfg = tiny_config(d);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spawn = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(["train", "--config", cfg.to_str().unwrap(), "--epochs", "100000", "--set", "train.log_every=1"])
            .args(["--set", "train.grid_samples=0", "--set", "threads=1"])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("DDPM_DIST_TIMEOUT", "300")
            .env_remove("RUST_BACKTRACE")
            .current_dir(d)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let r0 = spawn(0);
    let mut r1 = spawn(1);
    wait_for_steps(&d.join("run"), 3);
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 took {:?} to notice", killed.elapsed());
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("rank 0 of 2: all-reduce failed"), "{e}");
    assert!(!e.contains("panicked") && !e.contains("terminate called"), "{e}");
    // The last checkpoint is intact.
    assert!(ddpm::checkpoint::Checkpoint::read(&d.join("run/checkpoints/latest.safetensors")).is_ok());
}

#[test]
fn the_torchrun_environment_is_read_and_checked() {
    let env = |pairs: &[(&str, &str)]| {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(move |k| m.get(k).cloned())
    };
    assert_eq!(env(&[]).unwrap(), None);
    let e =
        env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "10.0.0.2")]).unwrap().unwrap();
    assert_eq!((e.rank, e.world_size, e.local_rank, e.local_world_size), (3, 4, 1, 4));
    assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.2", 29500));
    let err = |pairs: &[(&str, &str)]| format!("{:#}", env(pairs).unwrap_err());
    assert!(err(&[("WORLD_SIZE", "2")]).contains("RANK is not"));
    assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("RANK=2 must be below WORLD_SIZE=2"));
    assert!(err(&[("WORLD_SIZE", "two"), ("RANK", "0")]).contains("WORLD_SIZE=\"two\""));
    assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")]).contains("MASTER_PORT=70000"));
    let args: Vec<String> =
        ["train", "--nproc", "2", "--epochs", "3", "--nproc=4"].iter().map(|s| s.to_string()).collect();
    assert_eq!(args_without_nproc(&args), ["train", "--epochs", "3"]);
}

/// A batch smaller than the number of processes is refused with the key named.
#[test]
#[ignore = "slow: several processes"]
fn too_many_processes_for_the_batch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 16);
    let cfg = tiny_config(d);
    let o = ddpm(d, &["train", "--config", cfg.to_str().unwrap(), "--batch-size", "1", "--nproc", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("train.batch_size = 1 is smaller than the 2 processes"), "{}", stderr(&o));
}

/// SIGTERM to `ddpm train --nproc 2` reaches both workers; they stop at the same step, rank 0
/// saves `latest`, and the run resumes from it.
#[test]
#[ignore = "slow: several processes"]
fn sigterm_to_the_launcher_stops_the_workers_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 32);
    let cfg = tiny_config(d);
    let child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["train", "--config", cfg.to_str().unwrap(), "--epochs", "100000", "--nproc", "2"])
        .args(["--set", "train.log_every=1", "--set", "train.grid_samples=0", "--set", "threads=1"])
        .env_remove("RUST_BACKTRACE")
        .current_dir(d)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&d.join("run"), 3);
    let metrics = d.join("run/metrics.jsonl");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{e}");
    assert!(e.contains("interrupted by SIGTERM") && e.contains("--resume"), "{e}");
    let steps = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let ck = ddpm::checkpoint::Checkpoint::read(&d.join("run/checkpoints/latest.safetensors")).unwrap();
    assert_eq!(ck.info.unwrap().step as usize, steps, "checkpoint at the last finished step");
}

/// Bad values of the data-parallel environment knobs are one-line errors naming the variable.
#[test]
fn bad_dist_environment_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 16);
    let cfg = tiny_config(d);
    for (key, value, code, want) in [
        ("DDPM_DIST_BACKEND", "mpi", 2, "DDPM_DIST_BACKEND=\"mpi\": expected gloo or nccl"),
        ("DDPM_DIST_TIMEOUT", "soon", 1, "DDPM_DIST_TIMEOUT=\"soon\": expected seconds > 0"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .env("WORLD_SIZE", "1")
            .env("RANK", "0")
            .env(key, value)
            .env_remove("RUST_BACKTRACE")
            .current_dir(d)
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{e}");
        assert!(e.contains(want) && e.trim().lines().count() <= 2, "{e}");
    }
}
