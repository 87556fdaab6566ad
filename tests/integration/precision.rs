//! Mixed precision and the optimizer's bookkeeping: bf16 that is bf16 (not libtorch's float16
//! default for CUDA autocast), fp16 rejected, gradients dropped rather than zeroed, and the
//! paper's learning-rate warm-up. Its own test binary: autocast state is process-wide.

use crate::common;

use ddpm::config::Config;
use ddpm::optim::{Adam, AdamConfig};
use ddpm::precision;
use ddpm::train::{train, TrainOptions};
use tch::{nn, Device, Kind, Tensor};

/// `ddpm train` with `precision: bf16` sets CUDA's autocast dtype to bfloat16, even on a
/// machine without a GPU, and trains to a finite loss (in bf16 where this CPU's oneDNN has it).
#[test]
fn bf16_training_sets_the_cuda_autocast_dtype_to_bfloat16() {
    let _rng = common::rng_lock();
    assert_eq!(precision::autocast_dtype(true), Some(Kind::Half), "libtorch's CUDA default is float16");
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 64);
    let cfg_path = common::tiny_config(dir.path());
    let set = |k: &str, v: &str| (k.to_string(), v.to_string());
    let cfg = Config::load(
        &cfg_path,
        &[set("train.precision", "bf16"), set("train.max_steps", "3"), set("train.grid_samples", "0")],
    )
    .unwrap();
    train(&cfg, TrainOptions::default()).unwrap();
    assert_eq!(precision::autocast_dtype(true), Some(Kind::BFloat16));
    assert_eq!(precision::autocast_dtype(false), Some(Kind::BFloat16));
    let losses = common::losses(&cfg.train.run_dir);
    assert!(!losses.is_empty() && losses.iter().all(|(_, l)| l.is_finite()), "{losses:?}");
    println!("oneDNN bf16 on this CPU: {}", precision::cpu_supports_bf16());
}

/// bf16 on a CPU with oneDNN bf16 runs in one compute stream even when two are asked for
/// (autocast is per thread); fp32 keeps the two.
#[test]
fn cpu_bf16_trains_in_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_config(dir.path());
    let set = |k: &str, v: &str| (k.to_string(), v.to_string());
    for (precision, want) in [("bf16", if precision::cpu_supports_bf16() { 1 } else { 2 }), ("fp32", 2)] {
        let cfg = Config::load(&path, &[set("streams", "2"), set("train.precision", precision)]).unwrap();
        assert_eq!(ddpm::learner::streams::wanted(&cfg, Device::Cpu, false), want, "{precision}");
    }
}

/// Under bf16 autocast a convolution computes in bfloat16, on the CPU as on CUDA; outside it,
/// in float32 again.
#[test]
fn bf16_autocast_runs_convolutions_in_bfloat16() {
    let _rng = common::rng_lock();
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
    let conv = || x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let y = precision::with_bf16_autocast(Device::Cpu, conv).unwrap();
    assert_eq!(y.kind(), Kind::BFloat16);
    assert_eq!(conv().kind(), Kind::Float);
    let d = (y.to_kind(Kind::Float) - conv()).abs().max().double_value(&[]);
    assert!(d > 0.0 && d < 0.2, "bf16 result differs from fp32 by {d}");
}

/// After `zero_grad` a parameter that the next loss does not use has no gradient, so the
/// step leaves it where it is; a zeroed gradient would let Adam's momentum move it.
#[test]
fn zero_grad_drops_gradients_so_unused_parameters_stay_put() {
    let _rng = common::rng_lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let a = vs.root().var("a", &[3], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[3], nn::Init::Const(2.0));
    let mut opt = Adam::new(&vs, 0.1, AdamConfig::default());
    opt.backward_step(&(&a * &b).sum(Kind::Float));
    let b_after_first = Vec::<f32>::try_from(&b.detach()).unwrap();
    assert_ne!(b_after_first, vec![2.0f32; 3], "the first step uses b");
    opt.backward_step(&a.square().sum(Kind::Float));
    assert!(!b.grad().defined(), "b's gradient was not dropped");
    assert_eq!(Vec::<f32>::try_from(&b.detach()).unwrap(), b_after_first, "an unused parameter moved");
}

/// The paper's warm-up: the learning rate of update s (0-based) is lr * min(1, s / warmup),
/// logged per step in metrics.jsonl.
#[test]
fn warm_up_is_lr_times_step_over_warmup() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 64);
    let cfg = common::tiny_config(dir.path());
    let out = common::ddpm(
        dir.path(),
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "train.warmup_steps=4",
            "--set",
            "train.log_every=1",
            "--set",
            "train.max_steps=6",
            "--set",
            "train.grid_samples=0",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let lrs: Vec<f64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap()).collect();
    // tiny_config's lr is 0.002: updates 0..5 use 0, 1/4, 2/4, 3/4, 1, 1 of it.
    let want = [0.0, 0.0005, 0.001, 0.0015, 0.002, 0.002];
    assert_eq!(lrs.len(), want.len(), "{text}");
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
}

/// `sample.precision: bf16`: where this CPU runs bf16, the samples differ from fp32's (the network
/// really ran in bf16) but only a little; where it does not, a one-line refusal.
#[test]
fn bf16_sampling_is_close_to_fp32_or_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 64);
    let cfg = common::tiny_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let o = common::ddpm(dir.path(), &["train", "--config", cfg, "--max-steps", "6"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let draw = |precision: &str| {
        let t = dir.path().join(format!("{precision}.safetensors"));
        let set = format!("sample.precision={precision}");
        let args = ["sample", "--config", cfg, "--sampler", "ddim", "--steps", "10", "--eta", "0", "--set", &set];
        let o = common::ddpm(dir.path(), &[&args[..], &["--save-tensor", t.to_str().unwrap()]].concat());
        (o, t)
    };
    let (o, fp32) = draw("fp32");
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (o, bf16) = draw("bf16");
    if !precision::cpu_supports_bf16() {
        assert_eq!(o.status.code(), Some(2));
        assert!(common::stderr(&o).contains("sample.precision = bf16: this CPU's oneDNN does not run bfloat16"));
        return;
    }
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (a, b) = (&common::tensors(&fp32)["samples"], &common::tensors(&bf16)["samples"]);
    let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let mean = diff.iter().sum::<f32>() / diff.len() as f32;
    let max = diff.iter().cloned().fold(0.0, f32::max);
    assert!(max > 0.0, "bf16 gave fp32's samples bit for bit: autocast did not act");
    assert!(mean < 0.05, "bf16 samples are far from fp32's: mean |diff| {mean}, max {max}");
    println!("bf16 vs fp32 samples: mean |diff| {mean}, max {max}");
}
