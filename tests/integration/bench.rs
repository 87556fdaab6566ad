//! `ddpm bench` times the training step of `ddpm train`, not a copy of it: with the same
//! config, the losses of its epoch measurement are the first losses of a real run.

use crate::common;

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
