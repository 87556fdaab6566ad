//! `ddpm bench` times the training step of `ddpm train`, not a copy of it: with the same
//! config, the losses of its epoch measurement are the first losses of a real run.

use crate::common;

use std::path::Path;
use std::process::Command;

#[test]
fn bench_epoch_steps_are_the_first_steps_of_train() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&dir.path().join("data"), 64);
    let cfg = common::tiny_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    // The whole recipe: flips, labels with dropout, warm-up, clipping and EMA.
    let recipe = [
        "--set",
        "train.hflip=true",
        "--set",
        "network.num_classes=2",
        "--set",
        "train.warmup_steps=2",
        "--set",
        "train.grad_clip=0.5",
        "--set",
        "train.log_every=1",
    ];
    let mut args = vec!["train", "--config", cfg, "--max-steps", "3"];
    args.extend(recipe);
    let out = common::ddpm(dir.path(), &args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let trained: Vec<f64> = common::losses(&dir.path().join("run")).into_iter().map(|(_, l)| l).collect();
    assert_eq!(trained.len(), 3, "{trained:?}");

    let json = dir.path().join("bench.json");
    let json_arg = json.to_str().unwrap();
    let mut args =
        vec!["bench", "--config", cfg, "--batches", "8", "--repeats", "1", "--epoch-steps", "3", "--no-sampling"];
    args.extend(["--json", json_arg]);
    args.extend(recipe);
    let out = common::ddpm(dir.path(), &args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let benched: Vec<f64> = report["epoch_losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(benched.len(), 3, "{report}");
    for (i, (a, b)) in trained.iter().zip(&benched).enumerate() {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "step {}: train {a}, bench {b}", i + 1);
    }
    // Different steps give different losses: the comparison is not of constants.
    assert!(trained[0] != trained[1] && trained[1] != trained[2], "{trained:?}");
}

/// `scripts/bench.sh`'s Python side and its report: the PyTorch variants it adds (fused Adam,
/// bf16 where this CPU runs it) run, and the report has a column per variant and a bf16 table
/// beside ddpm's own bf16 numbers.
#[test]
#[ignore = "slow: the demo network in PyTorch, two variants, and ddpm bench twice (about two minutes)"]
fn bench_report_compares_every_variant_it_ran() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bench = |json: &Path, extra: &[&str]| {
        let mut args = vec!["bench", "--config", "options.yml", "--set", "device=cpu", "--epoch-steps", "0"];
        args.extend_from_slice(&["--repeats", "1", "--json", json.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = common::ddpm(root, &args);
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    let (rust, rust_bf16, torch) = (dir.path().join("r.json"), dir.path().join("rb.json"), dir.path().join("p.json"));
    bench(&rust, &[]);
    let bf16 = ddpm::precision::cpu_supports_bf16();
    if bf16 {
        bench(&rust_bf16, &["--set", "train.precision=bf16", "--set", "sample.precision=bf16"]);
        let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&rust_bf16).unwrap()).unwrap();
        assert_eq!((&b["train_precision"], &b["sample_precision"]), (&"bf16".into(), &"bf16".into()));
    }
    let script = root.join("scripts/python/bench_pytorch.py");
    let o = Command::new(&py)
        .args([script.to_str().unwrap(), "--threads", "2", "--data", "data/mnist", "--epoch-steps", "0"])
        .args(["--repeats", "1", "--variants", "eager,fused,bf16", "--json", torch.to_str().unwrap()])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = vec![root.join("scripts/python/bench_report.py"), rust.clone(), torch.clone()];
    if bf16 {
        args.push(rust_bf16.clone());
    }
    let o = Command::new(&py).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(report.contains("| measure | ddpm | PyTorch eager | channels-last + fused Adam |"), "{report}");
    assert!(
        report.contains("| train images/s, batch 512 |") && report.contains("| 81 samples, DPM-Solver++-20 (s) |"),
        "{report}"
    );
    match bf16 {
        true => assert!(report.contains("| measure | ddpm | PyTorch bf16 (channels-last eager) |"), "{report}"),
        false => assert!(report.contains("bf16: not measured"), "{report}"),
    }
}
