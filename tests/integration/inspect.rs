//! Reading a run without Python: `ddpm info`, checkpoint rotation by epoch, the plots, the
//! closing summary, and shell completion, all through the binary; and TensorBoard's own
//! reader on the event file.

use crate::common;
use std::path::Path;

fn info(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["info"];
    all.extend(args);
    let out = common::ddpm(dir, &all);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), common::stderr(&out))
}

#[test]
fn info_rotation_plots_and_summary_of_a_four_epoch_run() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 32);
    let cfg = common::tiny_config(dir.path());
    let args = ["train", "--config", cfg.to_str().unwrap(), "--epochs", "4", "--set", "train.keep_checkpoints=3"];
    let out = common::ddpm(dir.path(), &args);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    let run = dir.path().join("run");
    // The closing block says where everything is and what to run next.
    assert!(err.contains("done: 8 steps, epoch 4"), "{err}");
    assert!(err.contains(&format!("next: ddpm sample --config {}/config.yml", run.display())), "{err}");

    // Rotation keeps the 3 newest epochs whole (weights and EMA), and nothing of epoch 1.
    let ck = run.join("checkpoints");
    for e in 2..=4 {
        for f in [format!("epoch-{e:04}.safetensors"), format!("epoch-{e:04}.ema.safetensors")] {
            assert!(ck.join(&f).exists(), "missing {f}");
        }
    }
    assert!(std::fs::read_dir(&ck).unwrap().all(|f| !f.unwrap().file_name().to_string_lossy().contains("0001")));

    let (w, h) = ddpm::plot::SIZE;
    let loss = image::open(run.join("loss.png")).unwrap();
    assert_eq!((loss.width(), loss.height()), (w, h));

    let (code, table, err) = info(dir.path(), &[run.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "demo (channels [4, 8], pe_dim 8, residual true)",
        "trained         epoch 4, step 8",
        "EMA weights     yes",
        "training state  yes",
        "linear betas 0.0001..0.02 over 20 steps",
        "last loss",
        "checkpoints/epoch-0002.ema.safetensors",
        "loss.png",
    ] {
        assert!(table.contains(want), "missing {want:?} in:\n{table}");
    }
    let (code, json, err) = info(dir.path(), &[run.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["epoch"].as_i64(), v["step"].as_i64()), (Some(4), Some(8)));
    assert_eq!(v["network"]["kind"], "demo");
    assert_eq!(v["image_shape"], serde_json::json!([1, 28, 28]));
    assert!(v["trainable_parameters"].as_i64().unwrap() > 1000, "{v}");
    assert_eq!(v["last_loss"]["step"].as_i64(), Some(8));
    // 3 epochs x (weights, EMA) + latest (weights, EMA, state); config.yml, train.log,
    // metrics.jsonl, loss.png, one TensorBoard file and 4 grids.
    assert_eq!(v["files"].as_array().unwrap().len(), 9 + 9, "{v}");

    // One checkpoint file: its own epoch, and the run it belongs to.
    let (code, table, _) = info(dir.path(), &[ck.join("epoch-0003.safetensors").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(table.contains("epoch 3, step 6") && table.contains("run directory"), "{table}");
}

#[test]
fn info_on_a_plain_state_dict_and_on_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.safetensors");
    let t = tch::Tensor::zeros([3, 4], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("w", &t)], &plain).unwrap();
    let (code, table, err) = info(dir.path(), &[plain.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("no ddpm metadata") && table.contains("1 tensors, 12 values"), "{table}");

    for (path, want) in [("missing.safetensors", "no such file or run directory"), (".", "no checkpoints/latest")] {
        let (code, _, err) = info(dir.path(), &[path]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want) && err.trim().lines().count() == 1, "{err}");
    }
    std::fs::write(dir.path().join("junk.safetensors"), b"not a checkpoint").unwrap();
    let (code, _, err) = info(dir.path(), &["junk.safetensors"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("junk.safetensors") && err.contains("not a valid safetensors"), "{err}");
}

#[test]
fn shell_completions() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, wants) in [
        ("bash", &["_ddpm()", "complete -F _ddpm", "completions", "--n-samples"][..]),
        ("zsh", &["#compdef ddpm", "'--n-samples=[", "info"]),
        ("fish", &["complete -c ddpm", "__fish_ddpm_needs_command", "-l resume"]),
    ] {
        let out = common::ddpm(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for w in wants {
            assert!(script.contains(w), "{shell}: missing {w:?}");
        }
    }
    let out = common::ddpm(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("possible values"), "{}", common::stderr(&out));
}

/// The per-epoch grid is what `ddpm sample` draws from the run's EMA weights with the grid's
/// sampler (`train.grid_sampler`, `grid_steps`) and the same seed: byte for byte.
#[test]
fn the_epoch_grid_is_the_configured_sampler() {
    for (sampler, steps) in [("ddim", "7"), ("dpm-solver++", "5"), ("ddpm", "20")] {
        let dir = tempfile::tempdir().unwrap();
        common::write_tiny_mnist(&dir.path().join("data"), 32);
        let cfg = common::tiny_config(dir.path());
        let c = cfg.to_str().unwrap();
        let sets = [format!("train.grid_sampler={sampler}"), format!("train.grid_steps={steps}")];
        let out = common::ddpm(dir.path(), &["train", "--config", c, "--set", &sets[0], "--set", &sets[1]]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let png = dir.path().join("same.png");
        let args = ["sample", "--config", c, "--n-samples", "4", "--sampler", sampler, "--out", png.to_str().unwrap()];
        let out = common::ddpm(dir.path(), &[&args[..], &["--steps", steps]].concat());
        assert!(out.status.success(), "{}", common::stderr(&out));
        let grid = std::fs::read(dir.path().join("run/samples/epoch-0002.png")).unwrap();
        assert!(grid == std::fs::read(&png).unwrap(), "{sampler}: the epoch grid differs from ddpm sample's");
    }
}

/// TensorBoard's own reader parses the event file: the loss scalars and, per epoch, the grid as
/// an image summary whose PNG is the epoch's grid file.
#[test]
fn tensorboard_reads_the_scalars_and_the_epoch_grids() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 64);
    let cfg = common::tiny_config(dir.path());
    let o = common::ddpm(dir.path(), &["train", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let run = dir.path().join("run");
    let script = format!(
        "import sys, hashlib\n\
         from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
         ea = EventAccumulator(r'{}', size_guidance={{'images': 0, 'scalars': 0}})\n\
         ea.Reload()\n\
         t = ea.Tags()\n\
         print(sorted(t['scalars']), t['images'])\n\
         for im in ea.Images('samples'):\n\
         \x20   print(im.step, im.width, im.height, hashlib.md5(im.encoded_image_string).hexdigest())\n",
        run.join("tensorboard").display()
    );
    let o = std::process::Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "['train/epoch_loss', 'train/images_per_sec', 'train/loss'] ['samples']", "{out}");
    assert_eq!(lines.len(), 3, "one image per epoch: {out}");
    // 64 images at batch 16: 4 steps per epoch; the image is the epoch's grid PNG.
    for (epoch, line) in lines[1..].iter().enumerate() {
        let png = std::fs::read(run.join(format!("samples/epoch-{:04}.png", epoch + 1))).unwrap();
        let sha = ddpm::data::download::md5_hex(&png);
        assert_eq!(*line, format!("{} 56 56 {sha}", 4 * (epoch + 1)), "{out}");
    }
}
