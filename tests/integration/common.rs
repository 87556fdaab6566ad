//! Helpers shared by the integration tests: tiny datasets in the official formats, configs,
//! and running the real binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// IDX image file bytes for `n` images of `rows x cols` from `pixel(i, y, x)`.
pub fn idx_images(n: usize, rows: usize, cols: usize, pixel: impl Fn(usize, usize, usize) -> u8) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0x0803u32, n as u32, rows as u32, cols as u32] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    for i in 0..n {
        for y in 0..rows {
            for x in 0..cols {
                b.push(pixel(i, y, x));
            }
        }
    }
    b
}

/// IDX label file bytes.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0x0801u32, labels.len() as u32] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(labels);
    b
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A tiny MNIST-shaped dataset under `root/mnist/`: `n` images of bars, class 0 vertical and
/// class 1 horizontal.
pub fn write_tiny_mnist(root: &Path, n: usize) {
    let dir = root.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    let imgs = idx_images(n, 28, 28, |i, y, x| {
        let pos = 4 + (i * 7) % 20;
        let on = if i % 2 == 0 { x >= pos && x < pos + 4 } else { y >= pos && y < pos + 4 };
        if on {
            255
        } else {
            0
        }
    });
    std::fs::write(dir.join("train-images-idx3-ubyte"), &imgs).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&labels)).unwrap();
}

/// A config for a tiny, fast run on the tiny dataset in `dir/data`, run dir `dir/run`.
pub fn tiny_config(dir: &Path) -> PathBuf {
    let yml = format!(
        "device: cpu\nseed: 3\ndataset:\n  name: mnist\n  root: {root}\n  download: false\n\
         ddpm:\n  n_steps: 20\nnetwork:\n  channels: [4, 8]\n  pe_dim: 8\n\
         train:\n  batch_size: 16\n  n_epochs: 2\n  lr: 0.002\n  run_dir: {run}\n  log_every: 2\n  grid_samples: 4\n  keep_checkpoints: 1\n\
         sample:\n  n_samples: 9\n",
        root = dir.join("data").display(),
        run = dir.join("run").display()
    );
    let path = dir.join("tiny.yml");
    std::fs::write(&path, yml).unwrap();
    path
}

/// Runs the `ddpm` binary with `args` in `cwd`.
pub fn ddpm(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running ddpm")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a test needs from the set-up (`scripts/setup.sh`) is missing: the test fails and says
/// how to get it, or, with `DDPM_TEST_SKIP_MISSING=1`, says it skipped and returns None.
fn missing<T>(what: &str, how: &str) -> Option<T> {
    if std::env::var("DDPM_TEST_SKIP_MISSING").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {what} is absent ({how})");
        return None;
    }
    panic!("{what} is absent: {how} (or set DDPM_TEST_SKIP_MISSING=1 to skip the tests that need it)");
}

/// The folder holding the real `mnist/` and `fashion-mnist/`: `../shared/datasets`, else the
/// project's `data/` as `scripts/setup.sh --data mnist --data fashion-mnist` fills it.
pub fn real_datasets() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let complete = |p: &Path| {
        ["mnist", "fashion-mnist"].iter().all(|d| {
            let f = p.join(d).join("train-images-idx3-ubyte");
            f.exists() || f.with_extension("gz").exists()
        })
    };
    match [here.join("../shared/datasets"), here.join("data")].into_iter().find(|p| complete(p)) {
        Some(p) => Some(p),
        None => missing("real MNIST and Fashion-MNIST", "run scripts/setup.sh --data mnist --data fashion-mnist"),
    }
}

/// The emoji folder data set, as `scripts/setup.sh --data emoji` lays it out under `data/emoji`.
pub fn emoji() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/emoji");
    match p.join("ATTRIBUTION.txt").exists() {
        true => Some(p),
        false => missing("the emoji pictures (data/emoji)", "run scripts/setup.sh --data emoji"),
    }
}

/// The project's venv Python (with torch and safetensors).
pub fn venv_python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    match p.exists() {
        true => Some(p),
        false => missing(".venv", "run scripts/setup.sh"),
    }
}

/// libtorch's random generator is global to the test binary: tests that seed it and draw from
/// it in-process hold this lock, so a parallel test cannot shift their draws.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(step, loss)` of every line of a run's metrics.jsonl.
pub fn losses(run: &Path) -> Vec<(i64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_i64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// Every tensor of a safetensors file, flattened to f32.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap()))
        .collect()
}

/// Waits (at most 2 minutes) until a run's metrics.jsonl has `n` lines.
pub fn wait_for_steps(run: &Path, n: usize) {
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < n {
        assert!(start.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}
