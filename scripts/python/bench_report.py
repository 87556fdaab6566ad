"""Prints the Rust/PyTorch comparison of scripts/bench.sh as a Markdown table."""

import json
import sys

rust = json.load(open(sys.argv[1]))
py = json.load(open(sys.argv[2]))
v = py["variants"]


def train_ips(r, batch):
    return next(x[2] for x in r["train"] if x[0] == batch)


rows = []
for batch in (128, 512):
    ours = train_ips(rust, batch)
    line = f"| train images/s, batch {batch} | {ours:.0f} |"
    for name in ("eager", "channels_last", "compile"):
        if name in v:
            theirs = train_ips(v[name], batch)
            line += f" {theirs:.0f} ({ours / theirs:.2f}x) |"
        else:
            line += " - |"
    rows.append(line)


def time_row(label, key, scale=1.0, digits=1):
    """A row of times (lower is better): ddpm's, then each variant's with ddpm's speed-up."""
    line = f"| {label} | {rust[key] * scale:.{digits}f} |"
    for name in ("eager", "channels_last", "compile"):
        theirs = v.get(name, {}).get(key)
        line += f" {theirs * scale:.{digits}f} ({theirs / rust[key]:.2f}x) |" if theirs else " - |"
    return line


rows.append(time_row("forward, batch 81 (ms)", "forward81_sec", 1e3))
if rust.get("epoch_sec") and py.get("epoch_sec"):
    rows.append(f"| one MNIST epoch (s) | {rust['epoch_sec']:.1f} | {py['epoch_sec']:.1f} ({py['epoch_sec'] / rust['epoch_sec']:.2f}x, demo pipeline) | | |")
rows.append(time_row("81 samples, DDPM-1000 (s)", "sample_ddpm_sec"))
rows.append(f"| 81 samples, DDIM-50 (s) | {rust['sample_ddim50_sec']:.2f} | | | |")
if py.get("train_peak_rss_mib") and rust.get("train_peak_rss_mib"):
    rows.append(f"| peak memory, MNIST training (MiB) | {rust['train_peak_rss_mib']:.0f} | {py['train_peak_rss_mib']:.0f} ({py['train_peak_rss_mib'] / rust['train_peak_rss_mib']:.2f}x less, demo pipeline) | | |")
rows.append(f"| peak memory, whole benchmark (MiB) | {rust['peak_rss_mib']:.0f} | {py['peak_rss_mib']:.0f} (all variants) | | |")
print(f"Threads: {rust['threads']} (ddpm's training step in {rust.get('streams', 1)} stream(s)). Ratios are speed-ups of ddpm over each PyTorch variant.\n")
print("| measure | ddpm | PyTorch eager | channels-last | torch.compile |")
print("|---|---|---|---|---|")
print("\n".join(rows))
