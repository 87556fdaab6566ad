//! The training-recipe options do what they say, read off the trajectory that `ddpm train`
//! records with `DDPM_TRACE_DIR`: label dropout, horizontal flips, gradient clipping; dropout
//! only while training; and `ddpm sample` draws with the EMA weights.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

/// Trains `steps` steps of the tiny config with `sets`, tracing every step; returns the trace
/// folder.
fn traced_run(dir: &Path, steps: i64, sets: &[&str]) -> PathBuf {
    common::write_tiny_mnist(&dir.join("data"), 64);
    let cfg = common::tiny_config(dir);
    let trace = dir.join("trace");
    let all: Vec<String> = (1..=steps).map(|s| s.to_string()).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ddpm"));
    cmd.args(["train", "--config", cfg.to_str().unwrap(), "--max-steps", &steps.to_string()])
        .args(["--set", "train.grid_samples=0", "--set", "train.n_epochs=100"])
        .env("DDPM_TRACE_DIR", &trace)
        .env("DDPM_TRACE_WEIGHTS", all.join(","));
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    trace
}

fn inputs(trace: &Path, step: i64) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(trace.join(format!("inputs-{step:06}.safetensors"))).unwrap().into_iter().collect()
}

/// Label dropout replaces a `cond_drop_prob` share of the labels by the null class (index
/// `num_classes`) and leaves the others as the dataset's; 0 drops none.
#[test]
fn label_dropout_sends_the_asked_share_to_the_null_class() {
    for (p, lo, hi) in [(0.5, 0.4, 0.6), (0.0, 0.0, 0.0)] {
        let dir = tempfile::tempdir().unwrap();
        let trace = traced_run(dir.path(), 20, &["network.num_classes=2", &format!("train.cond_drop_prob={p}")]);
        let (mut null, mut total) = (0, 0);
        for step in 1..=20 {
            let inp = inputs(&trace, step);
            let y = Vec::<i64>::try_from(&inp["labels"]).unwrap();
            let idx = Vec::<i64>::try_from(&inp["idx"]).unwrap();
            for (y, i) in y.iter().zip(&idx) {
                total += 1;
                if *y == 2 {
                    null += 1;
                } else {
                    assert_eq!(*y, i % 2, "a kept label differs from the dataset's");
                }
            }
        }
        let share = null as f64 / total as f64;
        assert!(share >= lo && share <= hi, "cond_drop_prob {p}: {null} of {total} labels dropped");
    }
}

/// With `hflip`, each training image is the dataset's image or its mirror, and about half of
/// the images that a mirror changes are mirrored; without it none is.
#[test]
fn hflip_mirrors_about_half_of_the_images() {
    for (hflip, lo, hi) in [(true, 0.35, 0.65), (false, 0.0, 0.0)] {
        let dir = tempfile::tempdir().unwrap();
        let trace = traced_run(dir.path(), 20, &[&format!("train.hflip={hflip}")]);
        let data = ddpm::data::load(
            &ddpm::data::DatasetConfig {
                name: ddpm::data::DatasetName::Mnist,
                root: dir.path().join("data"),
                download: false,
                ..Default::default()
            },
            ddpm::data::Split::Train,
        )
        .unwrap();
        let (mut mirrored, mut asymmetric) = (0, 0);
        for step in 1..=20 {
            let inp = inputs(&trace, step);
            let want = data.batch(&inp["idx"], Device::Cpu);
            let got = &inp["x0"];
            for i in 0..got.size()[0] {
                let (g, w) = (got.get(i), want.get(i));
                let m = w.flip([2]);
                let same = g.equal(&w);
                assert!(same || g.equal(&m), "step {step}, image {i} is neither the image nor its mirror");
                if !w.equal(&m) {
                    asymmetric += 1;
                    mirrored += (!same) as i32;
                }
            }
        }
        let share = mirrored as f64 / asymmetric as f64;
        assert!(share >= lo && share <= hi, "hflip {hflip}: {mirrored} of {asymmetric} mirrored");
    }
}

/// Global L2 norm of the gradients ddpm stepped with at `step`.
fn grad_norm(trace: &Path, step: i64) -> f64 {
    let t = common::tensors(&trace.join(format!("after-{step:06}.safetensors")));
    t.iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .flat_map(|(_, v)| v.iter())
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `grad_clip` caps the global gradient norm the optimizer sees; unclipped it is far above.
#[test]
fn grad_clip_caps_the_global_gradient_norm() {
    let dir = tempfile::tempdir().unwrap();
    let clipped = traced_run(dir.path(), 5, &["train.grad_clip=0.01"]);
    let dir2 = tempfile::tempdir().unwrap();
    let free = traced_run(dir2.path(), 5, &[]);
    for step in 1..=5 {
        let (c, f) = (grad_norm(&clipped, step), grad_norm(&free, step));
        assert!(c <= 0.01 * (1.0 + 1e-4) && c > 0.009, "step {step}: clipped norm {c}");
        if step == 1 {
            assert!(f > 0.1, "step 1: unclipped norm {f}");
        }
    }
}

/// Dropout acts while training and not while sampling.
#[test]
fn unet_dropout_only_in_training() {
    let _rng = common::rng_lock();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ddpm::model::NetworkConfig::Unet(ddpm::model::UnetConfig {
        base_channels: 8,
        channel_mults: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        dropout: 0.5,
        groups: 4,
        num_classes: 0,
    });
    let net = ddpm::model::build(&vs, &cfg, [1, 12, 12], 100);
    // The paper's init zeroes the residual branches' ends: give every weight a value.
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let r = v.randn_like() * 0.2;
            v.copy_(&r);
        }
    });
    let xs = Tensor::randn([2, 1, 12, 12], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 70]);
    let run = || tch::no_grad(|| net.forward(&xs, &t, None));
    assert!(run().equal(&run()), "sampling mode is not deterministic");
    net.set_training(true);
    let (a, b) = (run(), run());
    net.set_training(false);
    assert!(!a.equal(&b), "dropout did nothing in training mode");
    assert!(run().equal(&run()));
}

/// `ddpm sample` draws with `latest.ema.safetensors` when it exists (unless --no-ema): with the
/// EMA file replaced by the raw weights, the default sample equals the --no-ema one.
#[test]
fn sample_uses_the_ema_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::write_tiny_mnist(&d.join("data"), 64);
    let cfg = common::tiny_config(d);
    let c = cfg.to_str().unwrap();
    let o = common::ddpm(d, &["train", "--config", c, "--set", "train.grid_samples=0"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let draw = |name: &str, extra: &[&str]| -> Tensor {
        let path = d.join(name);
        let mut args = vec!["sample", "--config", c, "--save-tensor", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = common::ddpm(d, &args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        Tensor::read_safetensors(&path).unwrap().remove(0).1
    };
    let ema = draw("ema.safetensors", &[]);
    let raw = draw("raw.safetensors", &["--no-ema"]);
    assert!(!ema.equal(&raw), "EMA and raw weights gave the same samples");
    let ck = d.join("run/checkpoints");
    std::fs::copy(ck.join("latest.safetensors"), ck.join("latest.ema.safetensors")).unwrap();
    assert!(draw("swapped.safetensors", &[]).equal(&raw), "sample did not read latest.ema.safetensors");
}

/// Guidance asked of a conditional model trained with `cond_drop_prob: 0` warns that its
/// null class was never trained; with label dropout it does not.
#[test]
fn guidance_on_a_model_without_label_dropout_warns() {
    for (p, warns) in [("0", true), ("0.2", false)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        common::write_tiny_mnist(&d.join("data"), 32);
        let cfg = common::tiny_config(d);
        let c = cfg.to_str().unwrap();
        let sets = ["--set", "network.num_classes=2", "--set", &format!("train.cond_drop_prob={p}")];
        let mut args = vec!["train", "--config", c, "--max-steps", "2", "--set", "train.grid_samples=0"];
        args.extend_from_slice(&sets);
        let o = common::ddpm(d, &args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let mut args = vec!["sample", "--config", c, "--label", "1", "--guidance", "3", "--set", "sample.n_samples=2"];
        args.extend_from_slice(&sets);
        let o = common::ddpm(d, &args);
        let e = common::stderr(&o);
        assert!(o.status.success(), "{e}");
        assert_eq!(e.contains("cond_drop_prob 0") && e.contains("--guidance 1"), warns, "cond_drop_prob {p}: {e}");
    }
}

/// A bad `DDPM_TRACE_WEIGHTS` stops the run before training with a message naming it.
#[test]
fn bad_trace_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 32);
    let cfg = common::tiny_config(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["train", "--config", cfg.to_str().unwrap()])
        .env("DDPM_TRACE_DIR", dir.path().join("trace"))
        .env("DDPM_TRACE_WEIGHTS", "1,ten")
        .output()
        .unwrap();
    let e = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("DDPM_TRACE_WEIGHTS=\"1,ten\""), "{e}");
    assert!(!dir.path().join("run/checkpoints/latest.safetensors").exists(), "it trained anyway");
}

/// `ddpm.schedule: cosine` trains, is stored in the checkpoint, and samples from it without a
/// config (the checkpoint alone rebuilds the schedule).
#[test]
fn cosine_schedule_trains_and_travels_with_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 32);
    let cfg = common::tiny_config(dir.path());
    let args = ["train", "--config", cfg.to_str().unwrap(), "--max-steps", "4", "--set", "ddpm.schedule=cosine"];
    let out = common::ddpm(dir.path(), &args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::losses(&dir.path().join("run")).iter().all(|(_, l)| l.is_finite()));
    let ck = dir.path().join("run/checkpoints/latest.safetensors");
    let info = ddpm::checkpoint::Checkpoint::read(&ck).unwrap().info.unwrap();
    assert_eq!(info.spec.schedule.schedule, ddpm::diffusion::BetaSchedule::Cosine);
    let out = common::ddpm(dir.path(), &["info", ck.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cosine (s = 0.008) over 20 steps"));
    let png = dir.path().join("s.png");
    let args = ["sample", "--config", "none.yml", "--checkpoint", ck.to_str().unwrap(), "--out", png.to_str().unwrap()];
    let out = common::ddpm(dir.path(), &args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let img = image::open(&png).unwrap().to_luma8();
    // Clipped to [-1, 1] and not one flat colour.
    let (lo, hi) = img.pixels().fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(hi > lo, "a flat grid");
}

/// Every prediction target with uniform and Min-SNR weighting: a tiny model's loss falls over
/// 40 steps, the target is stored in the checkpoint, and sampling converts it (finite images).
#[test]
fn each_prediction_target_and_weighting_trains_and_samples() {
    for (prediction, weighting) in [("v", "uniform"), ("x0", "uniform"), ("eps", "min-snr"), ("v", "min-snr")] {
        let dir = tempfile::tempdir().unwrap();
        common::write_tiny_mnist(&dir.path().join("data"), 64);
        let cfg = common::tiny_config(dir.path());
        let sets = [format!("train.prediction={prediction}"), format!("train.loss_weighting={weighting}")];
        let args = ["train", "--config", cfg.to_str().unwrap(), "--epochs", "10", "--set", &sets[0], "--set", &sets[1]];
        let out = common::ddpm(dir.path(), &args);
        assert!(out.status.success(), "{prediction}/{weighting}: {}", common::stderr(&out));
        let losses: Vec<f64> = common::losses(&dir.path().join("run")).into_iter().map(|(_, l)| l).collect();
        let (first, last) = (losses[..3].iter().sum::<f64>(), losses[losses.len() - 3..].iter().sum::<f64>());
        assert!(last < 0.8 * first, "{prediction}/{weighting}: the loss did not fall: {losses:?}");
        let ck = dir.path().join("run/checkpoints/latest.safetensors");
        let out = common::ddpm(dir.path(), &["info", ck.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("predicts        {prediction}")));
        let t = dir.path().join("s.safetensors");
        let args = ["sample", "--config", cfg.to_str().unwrap(), "--sampler", "ddim", "--steps", "10"];
        let out = common::ddpm(dir.path(), &[&args[..], &["--save-tensor", t.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{prediction}/{weighting}: {}", common::stderr(&out));
        let xs = tch::Tensor::read_safetensors(&t).unwrap().remove(0).1;
        assert!(xs.isfinite().all().int64_value(&[]) == 1, "{prediction}/{weighting}: non-finite samples");
    }
}

/// Gradient accumulation: 4 micro-batches give the update of the whole batch (one and two
/// compute streams).
#[test]
fn gradient_accumulation_equals_the_whole_batch() {
    for streams in ["1", "2"] {
        let dir = tempfile::tempdir().unwrap();
        common::write_tiny_mnist(&dir.path().join("data"), 64);
        let cfg = common::tiny_config(dir.path());
        let run = |name: &str, accum: &str| {
            let run_dir = dir.path().join(name);
            let sets = [format!("streams={streams}"), format!("train.grad_accum={accum}")];
            let args = [
                "train",
                "--config",
                cfg.to_str().unwrap(),
                "--max-steps",
                "2",
                "--run-dir",
                run_dir.to_str().unwrap(),
            ];
            // L2 weight decay added to the gradient makes Adam's update depend on the gradient's
            // scale, so a wrongly weighted sum of micro-batches would show.
            let l2 = ["--set", "train.weight_decay=0.5"];
            let out = common::ddpm(dir.path(), &[&args[..], &["--set", &sets[0], "--set", &sets[1]], &l2].concat());
            assert!(out.status.success(), "{}", common::stderr(&out));
            common::tensors(&run_dir.join("checkpoints/latest.safetensors"))
        };
        let (whole, micro) = (run("whole", "1"), run("micro", "4"));
        let mut worst = 0f32;
        for (name, w) in &whole {
            for (a, b) in w.iter().zip(&micro[name]) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst < 1e-5, "streams {streams}: weights differ by {worst}");
    }
}

/// The learning rate follows warm-up then cosine decay over n_epochs, as logged, and a run
/// stopped by max_steps and resumed takes the same rates as one that was not stopped.
#[test]
fn learning_rate_schedule_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 48);
    let cfg = common::tiny_config(dir.path());
    let base = ["--set", "train.lr_schedule=cosine", "--set", "train.warmup_steps=2", "--set", "train.log_every=1"];
    let run = |name: &str, extra: &[&str]| {
        let run_dir = dir.path().join(name);
        let args =
            ["train", "--config", cfg.to_str().unwrap(), "--epochs", "3", "--run-dir", run_dir.to_str().unwrap()];
        let out = common::ddpm(dir.path(), &[&args[..], &base, extra].concat());
        assert!(out.status.success(), "{}", common::stderr(&out));
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    let whole = run("a", &[]);
    // 48 images at batch 16: 3 steps per epoch, 9 in all; step s (1-based) used update s - 1.
    let want: Vec<f64> = (0..9)
        .map(|done: i64| {
            let warm = (done as f64 / 2.0).min(1.0);
            let p = ((done - 2) as f64 / 7.0).clamp(0.0, 1.0);
            0.002 * warm * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        })
        .collect();
    assert_eq!(whole.len(), 9);
    for (got, want) in whole.iter().zip(&want) {
        assert!((got - want).abs() < 1e-12, "{whole:?} vs {want:?}");
    }
    run("b", &["--max-steps", "4"]);
    let resumed = run("b", &["--resume"]);
    assert_eq!(resumed, whole);
}

/// Cosine schedule with eps prediction: the last beta is 0.999, so the first reverse step
/// divides the noise estimate by sqrt(alpha_bar_T); unclamped, the samples blow up (they did:
/// a 10-epoch MNIST run gave a Fréchet distance of 3e9). Every sampler clamps x0 there, and the
/// samples of even an untrained network stay in range; v-prediction is left alone.
#[test]
fn cosine_eps_samples_stay_bounded_in_every_sampler() {
    use ddpm::diffusion::ddim::Spacing;
    use ddpm::diffusion::ddpm::StepOptions;
    use ddpm::diffusion::prediction::Prediction;
    use ddpm::diffusion::reverse::{ReverseProcess, Sampler};
    use ddpm::diffusion::{BetaSchedule, ScheduleConfig};
    use ddpm::diffusion_model::ModelSpec;
    use ddpm::model::{DemoConfig, NetworkConfig};
    let _rng = common::rng_lock();
    tch::manual_seed(4);
    let spec = |prediction| ModelSpec {
        network: NetworkConfig::Demo(DemoConfig { channels: vec![4, 8], pe_dim: 8, residual: true, num_classes: 0 }),
        schedule: ScheduleConfig { schedule: BetaSchedule::Cosine, n_steps: 100, ..Default::default() },
        image_shape: [1, 28, 28],
        class_names: vec![],
        prediction,
    };
    let model = spec(Prediction::Eps).build(Device::Cpu, false);
    assert!(model.needs_x0_clipping());
    assert!(!spec(Prediction::V).build(Device::Cpu, false).needs_x0_clipping());
    let linear = ModelSpec { schedule: ScheduleConfig::default(), ..spec(Prediction::Eps) };
    assert!(!linear.build(Device::Cpu, false).needs_x0_clipping(), "the demo's recipe is sampled as before");
    for sampler in [
        Sampler::Ddpm,
        Sampler::Ddim { steps: 10, eta: 1.0, spacing: Spacing::Uniform },
        Sampler::DpmSolverPP { steps: 10, spacing: Spacing::Uniform, order: 2 },
    ] {
        let sc = ReverseProcess {
            sampler,
            opts: StepOptions { simple_var: true, clip_x0: false },
            guidance: 1.0,
            bf16: false,
            cuda_graphs: false,
        };
        let req = ddpm::draw::Request { n: 4, labels: None, batch: 4, seed: 1, sampler: &sc, progress: false };
        let xs = ddpm::draw::draw(&model, &req, None);
        let m = xs.abs().max().double_value(&[]);
        assert!(m.is_finite() && m < 5.0, "{sampler:?}: samples reach {m}");
    }
}
