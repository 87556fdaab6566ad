//! The real `ddpm` binary: help, bad input with exit code 2 and one clear line, a tiny training
//! run with everything it writes, sampling, determinism, and Python interop.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One tiny training run shared by the tests that need a checkpoint.
fn trained() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        write_tiny_mnist(&dir.join("data"), 48);
        let cfg = tiny_config(&dir);
        let out = ddpm(&dir, &["train", "--config", cfg.to_str().unwrap()]);
        assert!(out.status.success(), "training failed: {}", stderr(&out));
        dir
    })
}

#[test]
fn help_explains_the_tool() {
    let out = ddpm(Path::new("."), &["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["train", "sample", "options.yml", "--config", "--set", "--device", "--seed"] {
        assert!(text.contains(want), "--help lacks {want}:\n{text}");
    }
    let out = ddpm(Path::new("."), &["sample", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["--n-samples", "--checkpoint", "--out", "--no-simple-var", "--batch-size", "--save-tensor"] {
        assert!(text.contains(want), "sample --help lacks {want}:\n{text}");
    }
}

/// Runs `train` with a config text; returns (exit code, stderr).
fn train_with(yml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("options.yml"), yml).unwrap();
    let out = ddpm(dir.path(), &["train"]);
    (out.status.code().unwrap_or(-1), stderr(&out))
}

fn assert_one_line_error(code: i32, err: &str, wants: &[&str]) {
    assert_eq!(code, 2, "exit code for: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    for w in wants {
        assert!(last.contains(w), "missing {w:?} in: {last}");
    }
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[test]
fn bad_configs_exit_2_with_one_clear_line() {
    let (c, e) = train_with("train:\n  batch_size: [1,\n");
    assert_one_line_error(c, &e, &["options.yml", "YAML syntax error at line"]);
    let (c, e) = train_with("train:\n  btach_size: 4\n");
    assert_one_line_error(c, &e, &["train.btach_size", "did you mean 'train.batch_size'"]);
    let (c, e) = train_with("train:\n  lr: fast\n");
    assert_one_line_error(c, &e, &["train.lr", "fast"]);
    let (c, e) = train_with("network:\n  pe_dim: 7\n");
    assert_one_line_error(c, &e, &["network.pe_dim = 7", "even"]);
    let (c, e) = train_with("device: cuda:7\n");
    // Without CUDA this falls back to the CPU (and then fails on the missing data, exit 1);
    // with fewer than 8 GPUs it is a config error listing them.
    if tch::Cuda::is_available() {
        assert_one_line_error(c, &e, &["cuda:7", "GPU"]);
    } else {
        assert_eq!(c, 1, "{e}");
        assert!(e.contains("CUDA is not available") && e.contains("train-images-idx3-ubyte"), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = ddpm(dir.path(), &["train", "--config", "nope.yml"]);
    assert_one_line_error(out.status.code().unwrap(), &stderr(&out), &["nope.yml"]);
    let out = ddpm(dir.path(), &["train", "--set", "train.lr"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
    let out = ddpm(dir.path(), &["sample", "--n-samples", "0", "--config", "nope.yml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn training_writes_checkpoints_grids_metrics_and_logs() {
    let dir = trained();
    let run = dir.join("run");
    for f in [
        "config.yml",
        "train.log",
        "metrics.jsonl",
        "loss.png",
        "checkpoints/latest.safetensors",
        "checkpoints/epoch-0002.safetensors",
        "samples/epoch-0001.png",
        "samples/epoch-0002.png",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    assert!(!run.join("checkpoints/epoch-0001.safetensors").exists(), "keep_checkpoints: 1 should drop epoch 1");
    // 48 images / batch 16 = 3 steps per epoch, 2 epochs, a log line every 2 steps and at epoch end.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<i64> = rows.iter().map(|r| r["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![2, 3, 4, 6]);
    for r in &rows {
        for k in ["epoch", "loss", "lr", "images_per_sec", "elapsed_sec"] {
            assert!(r.get(k).is_some(), "metrics row lacks {k}: {r}");
        }
        assert!(r["loss"].as_f64().unwrap().is_finite());
    }
    let cfg = std::fs::read_to_string(run.join("config.yml")).unwrap();
    assert!(cfg.contains("n_steps: 20") && cfg.contains("batch_size: 16"), "{cfg}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("epoch 2/2") && log.contains("saved checkpoint"), "{log}");
    let tb: Vec<_> = std::fs::read_dir(run.join("tensorboard")).unwrap().collect();
    assert_eq!(tb.len(), 1);
    let grid = image::open(run.join("samples/epoch-0002.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (56, 56), "4 samples -> 2x2 grid of 28x28");
}

#[test]
fn sample_81_gives_a_9x9_grid_and_the_same_seed_the_same_bytes() {
    let dir = trained();
    let cfg = dir.join("tiny.yml");
    let cfg = cfg.to_str().unwrap();
    let a = dir.join("a.png");
    let b = dir.join("b.png");
    let c = dir.join("c.png");
    for (out, seed) in [(&a, "1"), (&b, "1"), (&c, "2")] {
        let o = ddpm(
            dir,
            &["sample", "--config", cfg, "--n-samples", "81", "--seed", seed, "--out", out.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let img = image::open(&a).unwrap();
    assert_eq!((img.width(), img.height()), (252, 252));
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, different bytes");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap(), "different seeds, same bytes");
}

#[test]
fn sample_from_a_checkpoint_alone_batches_and_saves_the_tensor() {
    let dir = trained();
    let empty = tempfile::tempdir().unwrap();
    let ck = dir.join("run/checkpoints/latest.safetensors");
    let out = empty.path().join("g.png");
    let tensor = empty.path().join("s.safetensors");
    let o = ddpm(
        empty.path(),
        &[
            "sample",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--n-samples",
            "10",
            "--batch-size",
            "4",
            "--padding",
            "2",
            "--no-simple-var",
            "--out",
            out.to_str().unwrap(),
            "--save-tensor",
            tensor.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&out).unwrap();
    // 10 samples -> 4 columns, 3 rows; 2 px padding around every tile.
    assert_eq!((img.width(), img.height()), (4 * 30 + 2, 3 * 30 + 2));
    let t = tch::Tensor::read_safetensors(&tensor).unwrap();
    assert_eq!(t[0].0, "samples");
    assert_eq!(t[0].1.size(), vec![10, 1, 28, 28]);
}

#[test]
fn sample_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("options.yml"), "train:\n  run_dir: nowhere\n").unwrap();
    let o = ddpm(dir.path(), &["sample"]);
    assert_one_line_error(o.status.code().unwrap(), &stderr(&o), &["no checkpoint at nowhere", "ddpm train"]);
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let o = ddpm(dir.path(), &["sample", "--checkpoint", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.lines().last().unwrap().contains("bad.safetensors") && e.contains("not a valid safetensors"), "{e}");
}

/// Our checkpoints open in Python, and the PyTorch demo network given our weights computes
/// what ours computes.
#[test]
fn python_reads_checkpoints_and_the_pytorch_demo_agrees() {
    let Some(py) = venv_python() else { return };
    let dir = trained();
    let ck = dir.join("run/checkpoints/latest.safetensors");
    // Our forward on a fixed input, for Python to compare against.
    let fallback = ddpm::checkpoint::ModelInfo::from_config(&ddpm::config::Config::default());
    let loaded = ddpm::checkpoint::load_model(&ck, &fallback, tch::Device::Cpu, false, false).unwrap();
    let xs = (tch::Tensor::arange(3 * 28 * 28, (tch::Kind::Float, tch::Device::Cpu)) * 0.37).sin().view([3, 1, 28, 28]);
    let t = tch::Tensor::from_slice(&[0i64, 7, 19]);
    let ys = tch::no_grad(|| loaded.model.net.forward(&xs, &t, None));
    let io = dir.join("parity.safetensors");
    tch::Tensor::write_safetensors(&[("x", &xs), ("t", &t), ("y", &ys)], &io).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python/check_parity.py");
    let out = std::process::Command::new(py).arg(&script).arg(&ck).arg(&io).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let line = text.lines().find(|l| l.starts_with("max_abs_diff")).unwrap_or_else(|| panic!("{text}"));
    let diff: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(diff < 1e-4, "PyTorch and ddpm differ by {diff}");
}

/// Variance of the column means minus variance of the row means: > 0 for vertical bars.
fn verticality(img: &image::GrayImage) -> f64 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = |x: usize, y: usize| img.get_pixel(x as u32, y as u32).0[0] as f64;
    let cols: Vec<f64> = (0..w).map(|x| (0..h).map(|y| px(x, y)).sum::<f64>() / h as f64).collect();
    let rows: Vec<f64> = (0..h).map(|y| (0..w).map(|x| px(x, y)).sum::<f64>() / w as f64).collect();
    let var = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64
    };
    var(&cols) - var(&rows)
}

/// A tiny conditional model learns vertical (label 0) versus horizontal (label 1) bars, and
/// `--label`, `--guidance`, DDIM and `--process` work through the binary.
#[test]
#[ignore = "slow: a 25-epoch training"]
fn conditional_model_draws_the_asked_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_mnist(&d.join("data"), 256);
    let cfg = tiny_config(d);
    let c = cfg.to_str().unwrap();
    let train = ddpm(
        d,
        &[
            "train",
            "--config",
            c,
            "--epochs",
            "25",
            "--batch-size",
            "32",
            "--lr",
            "3e-3",
            "--set",
            "network.num_classes=2",
            "--set",
            "network.channels=[16, 32]",
            "--set",
            "network.pe_dim=32",
            "--set",
            "ddpm.n_steps=100",
            "--set",
            "train.grid_samples=0",
            "--set",
            "train.ema_decay=0.99",
            "--set",
            "train.log_every=50",
        ],
    );
    assert!(train.status.success(), "{}", stderr(&train));
    for (label, sign) in [("0", 1.0), ("1", -1.0)] {
        let out = d.join(format!("label{label}.png"));
        let o = ddpm(
            d,
            &[
                "sample",
                "--config",
                c,
                "--label",
                label,
                "--guidance",
                "2",
                "--n-samples",
                "8",
                "--out",
                out.to_str().unwrap(),
                "--seed",
                "5",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let img = image::open(&out).unwrap().to_luma8();
        let mut right = 0;
        for i in 0..8u32 {
            let tile = image::imageops::crop_imm(&img, (i % 3) * 28, (i / 3) * 28, 28, 28).to_image();
            if sign * verticality(&tile) > 0.0 {
                right += 1;
            }
        }
        assert!(right >= 6, "label {label}: only {right}/8 samples have the class's orientation");
    }
    // --label all: one row per class; DDIM; --process writes PNG and GIF with 11 frames.
    let all = d.join("all.png");
    let o = ddpm(
        d,
        &[
            "sample",
            "--config",
            c,
            "--label",
            "all",
            "--n-samples",
            "6",
            "--sampler",
            "ddim",
            "--steps",
            "10",
            "--process",
            "--out",
            all.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&all).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 28, 2 * 28), "2 rows of 3");
    let proc_png = image::open(d.join("all.process.png")).unwrap();
    assert_eq!((proc_png.width(), proc_png.height()), (11 * 28, 6 * 28), "a row per sample, 11 snapshots");
    let gif = std::fs::File::open(d.join("all.process.gif")).unwrap();
    let frames = image::AnimationDecoder::into_frames(
        image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif)).unwrap(),
    );
    let frames: Vec<_> = frames.collect::<Result<_, _>>().unwrap();
    assert_eq!(frames.len(), 11);
    assert_eq!(frames[0].buffer().dimensions(), (3 * 28, 2 * 28));
    // Bad labels and guidance on an unconditional model are refused with exit 2.
    let o = ddpm(d, &["sample", "--config", c, "--label", "5"]);
    assert_one_line_error(o.status.code().unwrap(), &stderr(&o), &["--label 5", "0..1"]);
}

#[test]
fn label_and_guidance_need_a_conditional_model() {
    let dir = trained();
    let cfg = dir.join("tiny.yml");
    let o = ddpm(dir, &["sample", "--config", cfg.to_str().unwrap(), "--label", "1"]);
    assert_one_line_error(o.status.code().unwrap(), &stderr(&o), &["--label", "unconditional"]);
    let o = ddpm(dir, &["sample", "--config", cfg.to_str().unwrap(), "--guidance", "3"]);
    assert_one_line_error(o.status.code().unwrap(), &stderr(&o), &["--guidance", "unconditional"]);
}

/// Bad names of choices (fp16 with its reason) and a demo key under `kind: unet` are one-line
/// errors with exit code 2 from the real binary.
#[test]
fn bad_choices_and_keys_of_the_other_kind_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    for (sets, want) in [
        (&["train.precision=fp16"][..], &["train.precision", "gradient scaler"][..]),
        (&["train.precision=fp8"], &["train.precision", "fp32 or bf16"]),
        (&["train.optimizer=sgd"], &["train.optimizer", "adam or adamw"]),
        (&["sample.sampler=euler"], &["sample.sampler", "ddpm, ddim or dpm-solver++"]),
        (&["sample.spacing=cosine"], &["sample.spacing", "uniform or quadratic"]),
        // tiny.yml has the demo's `channels` and `pe_dim`.
        (&["network.kind=unet"], &["network.channels", "for network kind unet", "did you mean"]),
    ] {
        let mut args = vec!["train", "--config", cfg.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ddpm(dir.path(), &args);
        let code = out.status.code().unwrap_or(-1);
        assert_one_line_error(code, &stderr(&out), want);
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
}
