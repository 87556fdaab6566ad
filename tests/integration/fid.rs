//! Inception FID against pytorch-fid itself (installed in the venv from PyPI, no real weights):
//! the same randomly initialised FID-Inception weights, saved from pytorch-fid's own `InceptionV3`
//! module, give the same features; the Fréchet distance equals `calculate_frechet_distance`;
//! statistics written by ddpm load with pytorch-fid's loader; a wrong weights file is refused
//! with the expected checksum named.

use crate::common;

use ddpm::score::inception::Inception;
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// Where `fid_random_weights.py` (the network at random) lives.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python");

/// pytorch-fid's InceptionV3 (block 3, 2048-d) with random weights in place of the download:
/// writes the weights (official names), random images of three shapes and pytorch-fid's
/// features of them.
const MAKE: &str = r#"
import sys, torch
import pytorch_fid.inception as fi
from safetensors.torch import save_file
out = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from fid_random_weights import build
net = build(0, random_bn=True)
state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
fi.load_state_dict_from_url = lambda *a, **k: net.state_dict()
model = fi.InceptionV3([3]).eval()
save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/weights.safetensors")
imgs, feats = {}, {}
for name, shape in [("rgb32", (3, 3, 32, 32)), ("grey28", (3, 1, 28, 28)), ("rgb64", (2, 3, 64, 64))]:
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    imgs[name] = x
    x3 = x.float() / 255
    if x3.shape[1] == 1:
        x3 = x3.repeat(1, 3, 1, 1)
    with torch.no_grad():
        feats[name] = model(x3)[0].flatten(1)
save_file(imgs, f"{out}/images.safetensors")
save_file(feats, f"{out}/features.safetensors")
"#;

#[test]
fn inception_features_match_pytorch_fid() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(&py).args(["-c", MAKE, dir.path().to_str().unwrap(), SCRIPTS]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let net = Inception::load(&dir.path().join("weights.safetensors"), Device::Cpu, true).unwrap();
    let read = |f: &str| -> std::collections::HashMap<String, Tensor> {
        Tensor::read_safetensors(dir.path().join(f)).unwrap().into_iter().collect()
    };
    let (imgs, feats) = (read("images.safetensors"), read("features.safetensors"));
    for name in ["rgb32", "grey28", "rgb64"] {
        let ours = net.features_u8(&imgs[name], 2, "test").pool;
        let theirs = &feats[name];
        assert_eq!(ours.size(), theirs.size(), "{name}");
        let scale = theirs.abs().max().double_value(&[]);
        let diff = (&ours - theirs).abs().max().double_value(&[]);
        assert!(scale > 1e-2, "{name}: features too small to compare ({scale})");
        assert!(diff / scale < 1e-4, "{name}: features differ by {diff} (scale {scale})");
    }
    // The weights include torchvision's `fc` (1008 classes): logits for the Inception Score.
    let logits = net.forward(&Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu))).logits.unwrap();
    assert_eq!(logits.size(), [1, 1008]);
}

#[test]
fn frechet_distance_and_stats_files_agree_with_pytorch_fid() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    let a = Tensor::randn([300, 64], (Kind::Double, Device::Cpu));
    let b = Tensor::randn([300, 64], (Kind::Double, Device::Cpu)) * 1.3 + 0.2;
    let b = b.matmul(
        &(Tensor::eye(64, (Kind::Double, Device::Cpu)) + Tensor::randn([64, 64], (Kind::Double, Device::Cpu)) * 0.1),
    );
    let ours = ddpm::score::metrics::frechet_distance_of(&a, &b);
    let (pa, pb) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    ddpm::score::fid::write_stats(&pa, &a).unwrap();
    ddpm::score::fid::write_stats(&pb, &b).unwrap();
    Tensor::write_npz(&[("a", &a), ("b", &b)], dir.path().join("feats.npz")).unwrap();
    let script = format!(
        "import numpy as np\nfrom pytorch_fid.fid_score import calculate_frechet_distance\n\
         f = np.load(r'{d}/feats.npz')\na, b = f['a'], f['b']\n\
         mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)\n\
         sa, sb = np.load(r'{d}/a.npz'), np.load(r'{d}/b.npz')\n\
         assert np.allclose(sa['mu'], mu1, rtol=0, atol=1e-12) and np.allclose(sa['sigma'], s1, rtol=0, atol=1e-12)\n\
         assert sa['mu'].dtype == np.float64 and sa['sigma'].shape == (64, 64)\n\
         print(float(calculate_frechet_distance(mu1, s1, mu2, s2)), float(calculate_frechet_distance(sa['mu'], sa['sigma'], sb['mu'], sb['sigma'])))\n",
        d = dir.path().display()
    );
    let o = Command::new(&py).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let vals: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    for theirs in vals {
        assert!((ours - theirs).abs() / theirs < 1e-6, "ours {ours}, pytorch-fid {theirs}");
    }
    // And the stats read back by ddpm give the same distance.
    let (m1, s1) = ddpm::score::fid::read_stats(&pa).unwrap();
    let (m2, s2) = ddpm::score::fid::read_stats(&pb).unwrap();
    let again = ddpm::score::metrics::frechet_distance(&m1, &s1, &m2, &s2);
    assert!((again - ours).abs() / ours < 1e-12);
}

#[test]
fn wrong_or_truncated_weights_name_the_expected_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("pt_inception.pth");
    std::fs::write(&pth, b"PK\x03\x04 truncated").unwrap();
    let err = format!("{:#}", Inception::load(&pth, Device::Cpu, false).err().unwrap());
    assert!(err.contains("expected one beginning with 6726825d") && err.lines().count() == 1, "{err}");
    let missing = format!("{:#}", Inception::load(&dir.path().join("nope.pth"), Device::Cpu, false).err().unwrap());
    assert!(missing.contains("pt_inception-2015-12-05-6726825d.pth") && missing.contains("--inception"), "{missing}");
    // A conversion without the official source recorded.
    let st = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&[("fc.bias", &Tensor::zeros([3], (Kind::Float, Device::Cpu)))], &st).unwrap();
    let err = format!("{:#}", Inception::load(&st, Device::Cpu, false).err().unwrap());
    assert!(err.contains("no source_sha256 recorded") && err.contains("6726825d"), "{err}");
    // Accepted without the check, it still must have every tensor.
    let err = format!("{:#}", Inception::load(&st, Device::Cpu, true).err().unwrap());
    assert!(err.contains("lack 'Conv2d_1a_3x3.conv.weight'") || err.contains("lack '"), "{err}");
}

#[test]
fn the_weights_come_from_eval_inception_weights_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = common::tiny_config(d);
    let c = cfg.to_str().unwrap();
    let o = common::ddpm(d, &["eval", "--config", c, "--metric", "fid", "--set", "eval.inception_weights=w/key.pth"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("no Inception weights at w/key.pth"), "{}", common::stderr(&o));
    let args = ["eval", "--config", c, "--metric", "fid", "--set", "eval.inception_weights=w/key.pth"];
    let o = common::ddpm(d, &[&args[..], &["--inception", "w/flag.pth"]].concat());
    assert!(common::stderr(&o).contains("no Inception weights at w/flag.pth"), "the flag wins: {}", common::stderr(&o));
    // Neither: the file name pytorch-fid uses, under dataset.root.
    let o = common::ddpm(d, &["eval", "--config", c, "--metric", "fid"]);
    let want = d.join("data/pt_inception-2015-12-05-6726825d.pth");
    assert!(common::stderr(&o).contains(&format!("at {}", want.display())), "{}", common::stderr(&o));
}

/// `ddpm eval --metric fid` end to end on a CIFAR-10-format run (files written here) with
/// pytorch-fid's network at random weights: the FID of the samples against the training images,
/// the Inception Score, the JSON; and an image set against itself (npz against a PNG folder of
/// the same pictures) scores 0.
#[test]
fn eval_metric_fid_end_to_end_on_cifar_format_files() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = Command::new(&py).args(["-c", MAKE, d.to_str().unwrap(), SCRIPTS]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    crate::data::write_cifar(&d.join("data/cifar-10-batches-bin"), 12);
    let yml = format!(
        "device: cpu\nseed: 2\ndataset:\n  name: cifar10\n  root: {root}\n  download: false\nddpm:\n  n_steps: 20\n\
         network:\n  channels: [4, 8]\n  pe_dim: 8\ntrain:\n  batch_size: 8\n  n_epochs: 1\n  max_steps: 2\n  run_dir: {run}\n  grid_samples: 0\n\
         sample:\n  sampler: ddim\n  steps: 5\n",
        root = d.join("data").display(),
        run = d.join("run").display()
    );
    std::fs::write(d.join("c.yml"), yml).unwrap();
    let cfg = d.join("c.yml");
    let cfg = cfg.to_str().unwrap();
    let o = common::ddpm(d, &["train", "--config", cfg]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let w = d.join("weights.safetensors");
    let json = d.join("fid.json");
    let args = ["eval", "--config", cfg, "--metric", "fid", "-n", "12", "--inception", w.to_str().unwrap()];
    // Without the flag, random weights are refused.
    let o = common::ddpm(d, &args);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("6726825d"), "{}", common::stderr(&o));
    let o = common::ddpm(d, &[&args[..], &["--inception-any-weights", "--json", json.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let fid = r["fid"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{r}");
    assert!(r["inception_score"].as_f64().unwrap() >= 1.0, "{r}");
    assert_eq!((r["n"].as_i64(), r["n_reference"].as_i64()), (Some(12), Some(12)));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FID (Inception, pytorch-fid)"));
    assert!(d.join("run/fid.jsonl").exists());
    // Shared among 3 processes (12 samples and 12 reference images in batches of 4): the same
    // samples, features and FID as in one process (one libtorch thread each: reductions round
    // differently with another number of threads).
    let shared = |extra: &[&str]| -> serde_json::Value {
        let json = json.to_str().unwrap();
        let set = ["--inception-any-weights", "--set", "sample.batch_size=4", "--set", "threads=1", "--json", json];
        let o = common::ddpm(d, &[&args[..], &set, extra].concat());
        assert!(o.status.success(), "{extra:?}: {}", common::stderr(&o));
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
    };
    let (one, three) = (shared(&[]), shared(&["--nproc", "3"]));
    assert_eq!((&one["fid"], &one["inception_score"]), (&three["fid"], &three["inception_score"]), "{one} vs {three}");
    assert_eq!(three["processes"], 3);
    assert!(one["fid"].as_f64().unwrap() > 0.0);
    // The real-vs-real floor: 12 test images against the same reference.
    let real = shared(&["--real-vs-real"]);
    assert_eq!((real["samples"].as_str(), real["sampler"].as_str()), (Some("cifar10 test images"), Some("real")));
    let floor = real["fid"].as_f64().unwrap();
    assert!(floor.is_finite() && floor > 0.0 && floor != one["fid"].as_f64().unwrap(), "{real}");
    let o = common::ddpm(d, &["eval", "--config", cfg, "--real-vs-real", "-n", "12"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("--real-vs-real goes with --metric fid"), "{}", common::stderr(&o));
    // The same 12 samples exported as an npz (same seed and batch size) score the same.
    let npz = d.join("s12.npz");
    let o = common::ddpm(
        d,
        &[
            &["sample", "--config", cfg, "--format", "npz", "-n", "12", "--batch-size", "4", "--set", "threads=1"][..],
            &["--out", npz.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let exported = shared(&["--samples", npz.to_str().unwrap()]);
    assert_eq!(exported["fid"], one["fid"], "{exported} vs {one}");
    // The same pictures as an npz and as a PNG folder: FID 0 (to rounding).
    let o = common::ddpm(
        d,
        &["sample", "--config", cfg, "--format", "npz", "-n", "6", "--out", d.join("s.npz").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::ddpm(
        d,
        &["sample", "--config", cfg, "--format", "png-dir", "-n", "6", "--out", d.join("s").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    // The 6 exported samples scored against a reference, as JSON.
    let saved_against = |reference: &std::path::Path| -> serde_json::Value {
        let args = ["eval", "--config", cfg, "--metric", "fid", "-n", "6", "--inception", w.to_str().unwrap()];
        let samples = d.join("s.npz");
        let more = ["--inception-any-weights", "--samples", samples.to_str().unwrap(), "--ref"];
        let o = common::ddpm(
            d,
            &[&args[..], &more, &[reference.to_str().unwrap(), "--json", json.to_str().unwrap()]].concat(),
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
    };
    let r = saved_against(&d.join("s"));
    assert!(r["fid"].as_f64().unwrap().abs() < 1e-3, "{r}");
    // --ref as pytorch-fid statistics (mu, sigma) of the PNG folder: 0 again, n_reference 0.
    let net = Inception::load(&w, Device::Cpu, true).unwrap();
    let px = ddpm::score::fid::load_images(&d.join("s")).unwrap();
    let stats = d.join("stats.npz");
    ddpm::score::fid::write_stats(&stats, &net.features_u8(&px, 3, "test").pool).unwrap();
    let r = saved_against(&stats);
    assert!(r["fid"].as_f64().unwrap().abs() < 1e-3 && r["n_reference"] == 0, "{r}");
}
