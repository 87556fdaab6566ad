//! The GPU check's parts that run anywhere: `scripts/gpu-check.sh --dry-run` and its argument
//! errors, and the report it builds from `ddpm bench`'s JSON.

use crate::common;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn gpu_check_dry_run_and_bad_arguments() {
    let out = Command::new(repo().join("scripts/gpu-check.sh")).arg("--dry-run").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    for want in [
        "gpu/out/gpu-check.md",
        "paper UNet bf16",
        "DDPM_DIST_BACKEND=nccl",
        "bench_pytorch.py --device cuda",
        "--set train.cuda_graphs=false",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let out = Command::new(repo().join("scripts/gpu-check.sh")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("unknown argument '--bogus'"), "{}", common::stderr(&out));
}

#[test]
fn gpu_report_reads_what_bench_writes() {
    let Some(py) = common::venv_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::tiny_config(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let json = out.join("ddpm-unet-bf16.json");
    let args = ["bench", "--config", cfg.to_str().unwrap(), "--batches", "128", "--repeats", "2"];
    let run = common::ddpm(
        dir.path(),
        &[&args[..], &["--epoch-steps", "0", "--no-sampling", "--json", json.to_str().unwrap()]].concat(),
    );
    assert!(run.status.success(), "{}", common::stderr(&run));
    std::fs::write(out.join("ddpm-unet-bf16.log"), "INFO bf16 autocast on Cuda(0): autocast dtype BFloat16\n").unwrap();
    std::fs::write(out.join("machine.txt"), "NVIDIA H100 80GB HBM3, 81559 MiB, 550.54\ntorch 2.11.0\n").unwrap();
    std::fs::write(out.join("status.txt"), "ddpm-unet-bf16: exit 0 in 9 s\nnccl: exit 1 in 2 s\n").unwrap();
    std::fs::write(out.join("nccl.log"), "error: this ddpm was built without NCCL\n").unwrap();
    std::fs::write(out.join("gpu-memory.log"), "512\n2048\n1024\n").unwrap();
    std::fs::write(out.join("graphs-equal.log"), "ddpm: graphs vs no graphs, max |difference| 2.38e-07\n").unwrap();
    let train_log = "train cuda_graphs=true: 2026-11-27T02:00:00Z  INFO ddpm::train::run: epoch 1/10: loss 0.09871, 118 steps, 1.9 s, 31234 images/s\n\
                     train cuda_graphs=false2: INFO epoch 1/10: loss 0.09870, 118 steps, 2.8 s, 21000 images/s\n\
                     training EMA after 125 steps: graphs vs no graphs max |difference| 1.2e-07, no graphs twice 3e-08\n";
    std::fs::write(out.join("train-graphs.log"), train_log).unwrap();
    let fid = r#"{"sampler":"ddpm","steps":1000,"sample_seconds":41.5,"feature_seconds":20.25,"fid":3.0}"#;
    std::fs::write(out.join("fid-10k.json"), fid).unwrap();
    std::fs::write(out.join("fid-10k.log"), "eval: 70.12 s wall\n").unwrap();
    let report = Command::new(py).arg(repo().join("scripts/python/gpu_report.py")).arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}{}", common::stderr(&report));
    let row = |start: &str| {
        text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no {start:?} row in:\n{text}"))
    };
    assert!(text.starts_with("## GPU check: NVIDIA H100 80GB HBM3"), "{text}");
    let bf16 = row("| paper UNet (35.7M), batch 128, bf16 |");
    assert!(bf16.contains("images/s), 4 steps, losses finite, autocast dtype BFloat16"), "{bf16}");
    assert!(row("| paper UNet (35.7M), batch 128, fp32 |").contains("failed"));
    assert!(row("| peak GPU memory").contains("2048 MiB"));
    assert!(row("| data-parallel step").contains("failed: error: this ddpm was built without NCCL"));
    assert!(row("| ddpm samples (81, same seed), graphs vs no graphs |").contains("max abs difference 2.38e-07"));
    assert!(row("| demo UNet: 81 samples, DDPM-1000, CUDA graphs off vs on |").contains("failed"));
    assert!(row("| demo UNet: train, batch 128, CUDA graphs off vs on |").contains("failed"));
    let on = row("| ddpm train, epoch 1 (batch 512, warm-up and capture included), CUDA graphs on |");
    assert!(on.contains("| 31234 images/s, 1.9 s, loss 0.09871 |"), "{on}");
    assert!(row("| ddpm train, epoch 1 (batch 512, warm-up and capture included), CUDA graphs off, again |")
        .contains("21000 images/s"));
    let ema = row("| ddpm train, EMA after 125 steps |");
    assert!(ema.contains("graphs vs no graphs max |difference| 1.2e-07, no graphs twice 3e-08"), "{ema}");
    let fid = row("| ddpm eval --metric fid -n 10000");
    assert!(fid.contains("70.12 s in all: sampling 41.5 s (ddpm, 1000 steps), Inception + FID 20.2 s"), "{fid}");
}
