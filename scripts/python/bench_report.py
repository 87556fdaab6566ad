"""Prints the Rust/PyTorch comparison of scripts/bench.sh as Markdown tables: fp32 against every
PyTorch fp32 variant, and, where both sides ran bf16, bf16 against PyTorch's bf16 eager.

usage: bench_report.py RUST_JSON PYTORCH_JSON [RUST_BF16_JSON]
"""

import json
import sys

rust = json.load(open(sys.argv[1]))
py = json.load(open(sys.argv[2]))
rust_bf16 = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None
v = py["variants"]
FP32 = [
    ("eager", "PyTorch eager"),
    ("channels_last", "channels-last"),
    ("fused", "channels-last + fused Adam"),
    ("compile", "torch.compile"),
    ("compile_frozen", "torch.compile + freezing"),
]
FP32 = [(k, label) for k, label in FP32 if k in v]


def train_ips(r, batch):
    return next(x[2] for x in r["train"] if x[0] == batch)


def table(ours, variants):
    rows = []
    for batch in (128, 512):
        mine = train_ips(ours, batch)
        line = f"| train images/s, batch {batch} | {mine:.0f} |"
        for name, _ in variants:
            theirs = train_ips(v[name], batch)
            line += f" {theirs:.0f} ({mine / theirs:.2f}x) |"
        rows.append(line)

    def time_row(label, key, scale=1.0, digits=1):
        """A row of times (lower is better): ddpm's, then each variant's with ddpm's speed-up."""
        line = f"| {label} | {ours[key] * scale:.{digits}f} |"
        for name, _ in variants:
            theirs = v[name].get(key)
            line += f" {theirs * scale:.{digits}f} ({theirs / ours[key]:.2f}x) |" if theirs else " - |"
        return line

    pad = " |" * (len(variants) - 1)
    rows.append(time_row("forward, batch 81 (ms)", "forward81_sec", 1e3))
    if ours.get("epoch_sec") and py.get("epoch_sec") and ours is rust:
        rows.append(f"| one MNIST epoch (s) | {ours['epoch_sec']:.1f} | {py['epoch_sec']:.1f} ({py['epoch_sec'] / ours['epoch_sec']:.2f}x, demo pipeline) |{pad}")
    rows.append(time_row("81 samples, DDPM-1000 (s)", "sample_ddpm_sec"))
    rows.append(f"| 81 samples, DDIM-50 (s) | {ours['sample_ddim50_sec']:.2f} |{pad} |")
    rows.append(f"| 81 samples, DPM-Solver++-20 (s) | {ours['sample_dpm20_sec']:.2f} |{pad} |")
    if ours is rust and py.get("train_peak_rss_mib") and ours.get("train_peak_rss_mib"):
        rows.append(f"| peak memory, MNIST training (MiB) | {ours['train_peak_rss_mib']:.0f} | {py['train_peak_rss_mib']:.0f} ({py['train_peak_rss_mib'] / ours['train_peak_rss_mib']:.2f}x less, demo pipeline) |{pad}")
    head = "| measure | ddpm | " + " | ".join(label for _, label in variants) + " |"
    return "\n".join([head, "|---" * (len(variants) + 2) + "|"] + rows)


print(f"Threads: {rust['threads']} (ddpm's training step in {rust.get('streams', 1)} stream(s)). Ratios are speed-ups of ddpm over each PyTorch variant.\n")
print("fp32:\n")
print(table(rust, FP32))
print(f"\npeak memory, whole benchmark: ddpm {rust['peak_rss_mib']:.0f} MiB, PyTorch {py['peak_rss_mib']:.0f} MiB (all variants)")
if rust_bf16 and "bf16" in v:
    print(f"\nbf16 autocast (ddpm: train.precision and sample.precision bf16, {rust_bf16.get('streams', 1)} stream(s)):\n")
    print(table(rust_bf16, [("bf16", "PyTorch bf16 (channels-last eager)")]))
elif rust_bf16 is None:
    print("\nbf16: not measured (this CPU's oneDNN does not run bfloat16)")
