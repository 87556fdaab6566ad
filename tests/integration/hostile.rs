//! The catalogue of hostile inputs: every class of bad input found against the binary, with
//! the one-line message (exit 2) or the result it must give instead of a panic, a hang or a
//! lost file. Each test names its class; the README's "Never losing a run" section points here.
//!
//! | class | what happens |
//! |---|---|
//! | the demo network on non-square sizes | trains (the upsampled maps are padded on the right axes) |
//! | an endless file (`/dev/zero`) as config or checkpoint | refused: not a regular file |
//! | YAML nested hundreds of thousands deep | refused at once, naming the line |
//! | `--set train=null` | refused: a section is not a value |
//! | huge `sample.padding` or `threads` | refused with the allowed range |
//! | loops, parent links, FIFOs, dangling links, non-UTF-8 names, a run directory inside a picture folder | skipped with one warning; the rest trains |
//! | a decompression bomb (a small PNG of 20000x20000) | skipped as unreadable |
//! | an IDX file with no images, labels outside the classes | refused, naming the data set |
//! | `--out` / `--save-tensor` at a checkpoint, a symlink or a device | refused; the file is untouched |
//! | `--out options.yml`, `--out grid.jpg`, `--json x.txt`: a name for other content | refused; the file is untouched |
//! | `--out` inside the picture folder the model trains on | refused |
//! | `train.run_dir: /` | refused |
//! | a SIGKILL inside a checkpoint save | the run resumes from one step's trio (the old or the new) and ends as an uninterrupted one |
//! | a `--resume` refused (another network) | refused; the run's `config.yml` is left as it was |
//! | NaN weights | refused at load, naming the tensor |
//! | `--save-tensor` of a 3-channel model on the CPU | written (the channels-last output made contiguous) |
//! | checkpoint metadata describing an enormous image | refused, naming the key |
//! | eval samples of the wrong shape, FID statistics of the wrong size or NaN | refused |

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `ddpm` and returns (exit code, stderr).
fn run(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = common::ddpm(cwd, args);
    (o.status.code(), common::stderr(&o))
}

/// Exit 2 with one line that contains every `needle`, and no panic.
fn refused(cwd: &Path, args: &[&str], needles: &[&str]) {
    let (code, err) = run(cwd, args);
    assert_eq!(code, Some(2), "{args:?}: expected exit 2, got {code:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?} panicked: {err}");
    let line =
        err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{args:?}: no error line: {err}"));
    for n in needles {
        assert!(line.contains(n), "{args:?}: {n:?} not in {line:?}");
    }
}

/// A folder of `n` coloured `w`x`h` PNGs under `dir`.
fn pictures(dir: &Path, n: usize, (w, h): (u32, u32)) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, (i * 40) as u8]));
        img.save(dir.join(format!("{i:02}.png"))).unwrap();
    }
}

/// A config training a tiny network one step on the folder `pics` at `size`.
fn folder_config(d: &Path, size: &str, extra: &str) -> String {
    let yml = format!(
        "device: cpu\nstreams: 1\ndataset:\n  name: folder\n  path: {pics}\n  root: {root}\n  image_size: {size}\n  channels: 3\n\
         ddpm:\n  n_steps: 10\nnetwork:\n  channels: [4, 8, 8, 8]\n  pe_dim: 8\n\
         train:\n  batch_size: 4\n  n_epochs: 1\n  max_steps: 1\n  run_dir: {run}\n  grid_samples: 0\n{extra}",
        pics = d.join("pics").display(),
        root = d.join("data").display(),
        run = d.join("run").display()
    );
    let p = d.join("folder.yml");
    std::fs::write(&p, yml).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn the_demo_network_trains_on_non_square_sizes_in_both_orientations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pictures(&d.join("pics"), 8, (50, 60));
    for size in ["[40, 28]", "[28, 40]", "[33, 17]"] {
        let cfg = folder_config(d, size, "");
        let (code, err) = run(d, &["train", "--config", &cfg, "--overwrite"]);
        assert_eq!(code, Some(0), "{size}: {err}");
    }
}

#[test]
fn endless_and_special_files_are_refused_as_config_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = Instant::now();
    refused(d, &["train", "--config", "/dev/zero"], &["/dev/zero", "not a regular file"]);
    refused(d, &["info", "/dev/zero"], &["/dev/zero", "not a regular file"]);
    refused(d, &["sample", "--checkpoint", "/dev/zero"], &["/dev/zero", "not a regular file"]);
    refused(d, &["train", "--config", d.to_str().unwrap()], &["a folder"]);
    // A file that lies about being a config: binary, or far larger than any config.
    let binary = d.join("binary.yml");
    std::fs::write(&binary, [b'a', b':', b' ', 0xff, 0xfe, b'\n']).unwrap();
    refused(d, &["train", "--config", binary.to_str().unwrap()], &["binary.yml", "not UTF-8 text (byte 3)"]);
    let huge = d.join("huge.yml");
    std::fs::write(&huge, "# padding\n".repeat(500_000)).unwrap();
    refused(d, &["train", "--config", huge.to_str().unwrap()], &["huge.yml", "larger than 4 MB"]);
    assert!(start.elapsed() < Duration::from_secs(60), "refusing took {:?}", start.elapsed());
}

#[test]
fn deep_yaml_huge_values_and_null_sections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_tiny_mnist(&d.join("data"), 32);
    let cfg = common::tiny_config(d);
    let cfg = cfg.to_str().unwrap();
    let deep = d.join("deep.yml");
    std::fs::write(&deep, format!("seed: {}{}\n", "[".repeat(300_000), "]".repeat(300_000))).unwrap();
    let start = Instant::now();
    refused(d, &["train", "--config", deep.to_str().unwrap()], &["deep.yml", "nested deeper than 64", "line 1"]);
    refused(d, &["train", "--config", cfg, "--set", &format!("seed={}", "{a: ".repeat(1000))], &["--set", "nested"]);
    assert!(start.elapsed() < Duration::from_secs(30), "refusing deep YAML took {:?}", start.elapsed());
    refused(d, &["train", "--config", cfg, "--set", "train=null"], &["--set train=null", "is a section"]);
    refused(d, &["train", "--config", cfg, "--set", "sample=3"], &["sample is a section"]);
    refused(d, &["sample", "--config", cfg, "--padding", "100000000"], &["sample.padding = 100000000", "256"]);
    refused(d, &["train", "--config", cfg, "--set", "threads=1000000000"], &["threads = 1000000000", "4096"]);
}

/// A 1x1 PNG whose header says `w`x`h`: a few bytes that would decode to gigabytes.
fn bomb_png(path: &Path, w: u32, h: u32) {
    let mut bytes = Vec::new();
    image::RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    // IHDR: length (4) and type (4) after the 8-byte signature; width and height follow.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_hostile_picture_folder_trains_on_its_real_pictures_only() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pics = d.join("pics");
    pictures(&pics.join("a"), 4, (32, 32));
    pictures(&pics.join("b"), 4, (32, 32));
    // A link loop, a link to the parent, a dangling link.
    std::os::unix::fs::symlink(&pics, pics.join("a/loop")).unwrap();
    std::os::unix::fs::symlink(d, pics.join("b/parent")).unwrap();
    std::os::unix::fs::symlink(d.join("gone.png"), pics.join("a/dangling.png")).unwrap();
    // A FIFO named like a picture (reading it would block for ever).
    let fifo = std::ffi::CString::new(pics.join("a/fifo.png").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A name that is not UTF-8, a decompression bomb, a run directory inside the folder.
    std::fs::write(pics.join(std::ffi::OsStr::from_bytes(b"b/bad-\xff.png")), b"x").unwrap();
    bomb_png(&pics.join("a/bomb.png"), 20000, 20000);
    let inner = pics.join("b/run-inside");
    pictures(&inner, 3, (32, 32));
    std::fs::write(inner.join("config.yml"), "{}").unwrap();
    std::fs::write(inner.join("train.log"), "").unwrap();
    let cfg = folder_config(d, "16", "");
    let start = Instant::now();
    let (code, err) = run(d, &["train", "--config", &cfg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
    // The 8 real pictures, nothing counted twice; the bomb skipped as unreadable.
    assert!(err.contains("8 training images"), "{err}");
    assert!(err.contains("skipped 1 unreadable file") && err.contains("bomb.png"), "{err}");
    for why in ["link loop", "not a regular file", "not UTF-8", "a ddpm run directory", "dangling.png"] {
        assert!(err.contains(why), "no warning naming {why:?}: {err}");
    }
}

#[test]
fn empty_and_mislabelled_idx_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_tiny_mnist(&d.join("data"), 32);
    let cfg = common::tiny_config(d);
    let cfg = cfg.to_str().unwrap();
    let m = d.join("data/mnist");
    std::fs::write(m.join("train-labels-idx1-ubyte"), common::idx_labels(&[12; 32])).unwrap();
    refused(d, &["train", "--config", cfg], &["mnist", "labels run from 12 to 12", "10 classes"]);
    std::fs::write(m.join("train-images-idx3-ubyte"), common::idx_images(0, 28, 28, |_, _, _| 0)).unwrap();
    std::fs::write(m.join("train-labels-idx1-ubyte"), common::idx_labels(&[])).unwrap();
    refused(d, &["train", "--config", cfg], &["mnist", "holds no images"]);
    assert!(!d.join("run/checkpoints/latest.safetensors").exists());
}

/// A trained tiny run in `d/run` (MNIST bars); returns the config path.
fn trained(d: &Path) -> String {
    common::write_tiny_mnist(&d.join("data"), 32);
    let cfg = common::tiny_config(d);
    let o = common::ddpm(d, &["train", "--config", cfg.to_str().unwrap(), "--set", "train.n_epochs=1"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    cfg.to_string_lossy().into_owned()
}

#[test]
fn outputs_never_replace_a_checkpoint_a_link_or_a_device_and_the_root_is_no_run_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let ckpt = d.join("run/checkpoints/latest.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    refused(d, &["sample", "--config", &cfg, "--out", c], &["will not write", "holds a ddpm checkpoint"]);
    refused(d, &["sample", "--config", &cfg, "--save-tensor", c], &["holds a ddpm checkpoint"]);
    let link = d.join("link.png");
    std::os::unix::fs::symlink(d.join("elsewhere.png"), &link).unwrap();
    refused(d, &["sample", "--config", &cfg, "--out", link.to_str().unwrap()], &["symbolic link"]);
    refused(d, &["sample", "--config", &cfg, "--save-tensor", "/dev/null"], &["/dev/null", "not a regular file"]);
    std::fs::create_dir(d.join("t.safetensors")).unwrap();
    refused(d, &["sample", "--config", &cfg, "--save-tensor", "t.safetensors"], &["not a regular file"]);
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the checkpoint changed");
    assert!(!d.join("elsewhere.png").exists(), "written through the link");
    refused(d, &["train", "--config", &cfg, "--set", "train.run_dir=/"], &["filesystem root"]);
    assert!(!Path::new("/.lock").exists() && !Path::new("/config.yml").exists());
}

#[test]
fn outputs_are_named_for_what_they_hold_and_lie_outside_the_training_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let yml = std::fs::read(&cfg).unwrap();
    fn with<'a>(cfg: &'a str, more: &[&'a str]) -> Vec<&'a str> {
        [&["sample", "--config", cfg][..], more].concat()
    }
    let sample = |more: &[&'static str]| with(&cfg, more);
    refused(d, &with(&cfg, &["--out", &cfg]), &["tiny.yml", "a grid is a PNG picture", "must end in .png"]);
    refused(d, &sample(&["--out", "grid.jpg"]), &["grid.jpg", "must end in .png"]);
    refused(d, &sample(&["--format", "npz", "--out", "x.png"]), &["x.png", "must end in .npz"]);
    refused(d, &sample(&["--save-tensor", "t.npy"]), &["t.npy", "must end in .safetensors"]);
    refused(d, &["eval", "--config", &cfg, "--n", "4", "--json", "out.txt"], &["out.txt", "must end in .json"]);
    assert_eq!(std::fs::read(&cfg).unwrap(), yml, "the config was written over");
    assert!(!d.join("grid.jpg").exists() && !d.join("x.png").exists() && !d.join("out.txt").exists());
    // A model trained on a picture folder: no output inside that folder, where it would become
    // training data.
    pictures(&d.join("pics"), 8, (12, 12));
    let fcfg = folder_config(d, "8", "");
    let (code, err) = run(d, &["train", "--config", &fcfg, "--overwrite"]);
    assert_eq!(code, Some(0), "{err}");
    for out in ["pics/new.png", "pics/sub/dir/new.png"] {
        refused(d, &["sample", "--config", &fcfg, "--out", out], &[out, "inside dataset.path"]);
    }
    let pics = d.join("pics");
    refused(d, &["sample", "--config", &fcfg, "--format", "png-dir", "--out", pics.to_str().unwrap()], &["inside"]);
    assert_eq!(std::fs::read_dir(&pics).unwrap().count(), 8, "the picture folder changed");
}

#[test]
fn nan_weights_and_enormous_metadata_are_refused_at_load() {
    use ddpm::checkpoint::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let ckpt = d.join("run/checkpoints/latest.safetensors");
    let info = Checkpoint::read(&ckpt).unwrap().info.unwrap();
    let mut tensors: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&ckpt).unwrap().into_iter().collect();
    // NaN weights: sampling them would draw NaN pictures.
    let bad = d.join("nan.safetensors");
    let mut nan: std::collections::BTreeMap<String, tch::Tensor> =
        tensors.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
    let w = nan.get_mut("conv_out.weight").unwrap();
    *w = w.full_like(f64::NAN);
    ddpm::checkpoint::save_tensors(&nan, info.to_metadata(), &bad).unwrap();
    refused(d, &["sample", "--config", &cfg, "--checkpoint", bad.to_str().unwrap()], &["NaN", "conv_out.weight"]);
    // Metadata describing an enormous image.
    let huge = d.join("huge.safetensors");
    let mut meta = info.to_metadata();
    meta.insert("image_shape".into(), "[1, 100000, 100000]".into());
    ddpm::checkpoint::save_tensors(&std::mem::take(&mut tensors), meta, &huge).unwrap();
    refused(d, &["info", huge.to_str().unwrap()], &["huge.safetensors", "image_shape", "100000"]);
    refused(d, &["sample", "--config", &cfg, "--checkpoint", huge.to_str().unwrap()], &["image_shape"]);
}

#[test]
fn a_three_channel_model_saves_its_sample_tensor_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pictures(&d.join("pics"), 8, (32, 32));
    let cfg = folder_config(d, "16", "sample:\n  n_samples: 4\n  sampler: ddim\n  steps: 3\n");
    let (code, err) = run(d, &["train", "--config", &cfg]);
    assert_eq!(code, Some(0), "{err}");
    let t = d.join("s.safetensors");
    let (code, err) = run(d, &["sample", "--config", &cfg, "--save-tensor", t.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let xs = ddpm::score::fid::read_sample_tensor(&t).unwrap();
    assert_eq!(xs.size(), vec![4, 3, 16, 16]);
    assert_eq!(xs.isfinite().all().int64_value(&[]), 1);
}

#[test]
fn wrong_evaluation_inputs_and_fid_statistics_are_refused() {
    use ddpm::score::fid;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |mu: tch::Tensor, sigma: tch::Tensor| {
        let p = d.join("stats.npz");
        tch::Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &p).unwrap();
        p
    };
    let err = |r: anyhow::Result<()>| r.unwrap_err().to_string();
    let f = (tch::Kind::Double, tch::Device::Cpu);
    // A --reference of statistics must describe Inception's 2048 features.
    let p = write(tch::Tensor::zeros([10], f), tch::Tensor::eye(10, f));
    let e = err(fid::load_reference(&p).map(|_| ()));
    assert!(e.contains("mu [2048]") && e.contains("[10]"), "{e}");
    let p = write(tch::Tensor::zeros([10], f), tch::Tensor::eye(12, f));
    let e = err(fid::read_stats(&p).map(|_| ()));
    assert!(e.contains("[12, 12]"), "{e}");
    let p = write(tch::Tensor::full([2048], f64::NAN, f), tch::Tensor::eye(2048, f));
    assert!(err(fid::read_stats(&p).map(|_| ())).contains("NaN"));
    // Samples of the wrong channel count for the data set, and NaN samples.
    common::write_tiny_mnist(&d.join("data"), 32);
    let m = d.join("data/mnist");
    std::fs::copy(m.join("train-images-idx3-ubyte"), m.join("t10k-images-idx3-ubyte")).unwrap();
    std::fs::copy(m.join("train-labels-idx1-ubyte"), m.join("t10k-labels-idx1-ubyte")).unwrap();
    let cfg = common::tiny_config(d);
    let cfg = cfg.to_str().unwrap();
    let rgb = d.join("rgb.safetensors");
    tch::Tensor::write_safetensors(
        &[("samples", tch::Tensor::zeros([8, 3, 28, 28], (tch::Kind::Float, tch::Device::Cpu)))],
        &rgb,
    )
    .unwrap();
    refused(
        d,
        &["eval", "--config", cfg, "--samples", rgb.to_str().unwrap(), "--n", "4"],
        &["[3, 28, 28]", "[1, 28, 28]"],
    );
    let nan = d.join("nan.safetensors");
    tch::Tensor::write_safetensors(
        &[("samples", tch::Tensor::full([8, 1, 28, 28], f64::NAN, (tch::Kind::Float, tch::Device::Cpu)))],
        &nan,
    )
    .unwrap();
    refused(d, &["eval", "--config", cfg, "--samples", nan.to_str().unwrap(), "--n", "4"], &["NaN"]);
}

#[test]
fn a_refused_resume_leaves_the_runs_config_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = trained(d);
    let before = std::fs::read_to_string(d.join("run/config.yml")).unwrap();
    refused(d, &["train", "--config", &cfg, "--resume", "--set", "network.channels=[4, 8, 16]"], &["--resume"]);
    assert_eq!(
        std::fs::read_to_string(d.join("run/config.yml")).unwrap(),
        before,
        "a refused --resume rewrote config.yml"
    );
}

#[test]
fn a_kill_inside_a_checkpoint_save_leaves_a_resumable_run() {
    let train = |d: &Path, args: &[&str], abort: Option<&str>| {
        let cfg = d.join("tiny.yml");
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"));
        c.args(["train", "--config", cfg.to_str().unwrap()]).args(args).current_dir(d).env_remove("RUST_BACKTRACE");
        if let Some(point) = abort {
            c.env("DDPM_TEST_ABORT_SAVE", point);
        }
        c.output().unwrap()
    };
    let weights = |d: &Path| common::tensors(&d.join("run/checkpoints/latest.safetensors"));
    let uninterrupted = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&uninterrupted.path().join("data"), 32);
    common::tiny_config(uninterrupted.path());
    assert!(train(uninterrupted.path(), &["--epochs", "2"], None).status.success());
    for point in ["staged", "committing"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        common::write_tiny_mnist(&d.join("data"), 32);
        common::tiny_config(d);
        assert!(train(d, &["--epochs", "1"], None).status.success());
        // Killed inside the save at the end of epoch 2: the old trio is whole (staged) or the
        // new one is complete in checkpoints/.next (committing, the state already renamed).
        let o = train(d, &["--resume", "--epochs", "2"], Some(point));
        assert_eq!(o.status.code(), None, "{point}: the save was not killed: {}", common::stderr(&o));
        let o = train(d, &["--resume", "--epochs", "2"], None);
        assert!(o.status.success(), "{point}: the run does not resume: {}", common::stderr(&o));
        let err = common::stderr(&o);
        let said =
            if point == "staged" { "removing an incomplete checkpoint save" } else { "finishing a checkpoint save" };
        assert!(err.contains(said), "{point}: {err}");
        assert!(!d.join("run/checkpoints/.next").exists());
        assert_eq!(weights(d), weights(uninterrupted.path()), "{point}: the resumed run ends elsewhere");
    }
}
