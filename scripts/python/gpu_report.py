"""The table of scripts/gpu-check.sh, from what it left in its output folder (missing pieces are
reported as such, with the log to read).

usage: gpu_report.py OUT_DIR
"""

import json
import os
import re
import sys


def load(out, name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def text(out, name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read()
    except OSError:
        return ""


def train(r, batch):
    for b, sec, ips in (r or {}).get("train", []):
        if b == batch:
            return sec, ips
    return None


def fmt(v, pattern):
    return "failed" if v is None else pattern.format(v)


def main(out):
    demo, pt = load(out, "ddpm-demo.json"), load(out, "pytorch.json")
    fp32, bf16 = load(out, "ddpm-unet-fp32.json"), load(out, "ddpm-unet-bf16.json")
    machine = text(out, "machine.txt").strip().splitlines()
    lines = [f"## GPU check: {machine[0] if machine else 'unknown GPU'}", ""]
    lines += [f"- {m}" for m in machine[1:]]
    lines += ["", "| measure | ddpm | PyTorch eager | channels-last | torch.compile | compile, reduce-overhead |",
              "|---|---|---|---|---|---|"]
    variants = (pt or {}).get("variants", {})

    def pt_row(key_fn, pattern):
        return [fmt(key_fn(variants[v]) if v in variants else None, pattern)
                for v in ("eager", "channels_last", "compile", "reduce_overhead")]

    for batch in (128, 512):
        d = train(demo, batch)
        cells = pt_row(lambda v: dict((b, ips) for b, _, ips in v["train"]).get(batch), "{:.0f}")
        lines.append(f"| demo UNet: train images/s, batch {batch} | {fmt(d and d[1], '{:.0f}')} | " + " | ".join(cells) + " |")
    epoch_pt = fmt((pt or {}).get("epoch_sec"), "{:.1f} s")
    lines.append(f"| demo UNet: one MNIST epoch, batch 512, data included | {fmt((demo or {}).get('epoch_sec'), '{:.1f} s')} | {epoch_pt} (torchvision DataLoader) | | | |")
    cells = pt_row(lambda v: v.get("forward81_sec", 0) * 1e3, "{:.2f} ms")
    lines.append(f"| demo UNet: denoising forward, batch 81 | {fmt((demo or {}).get('forward81_sec', 0) * 1e3 if demo else None, '{:.2f} ms')} | " + " | ".join(cells) + " |")
    cells = pt_row(lambda v: v.get("sample_ddpm_sec"), "{:.2f} s")
    lines.append(f"| demo UNet: 81 samples, DDPM-1000 | {fmt((demo or {}).get('sample_ddpm_sec'), '{:.2f} s')} | " + " | ".join(cells) + " |")
    lines.append(f"| demo UNet: 81 samples, DDIM-50 | {fmt((demo or {}).get('sample_ddim50_sec'), '{:.2f} s')} | | | | |")
    lines.append(f"| demo UNet: 81 samples, DPM-Solver++(2M)-20 | {fmt((demo or {}).get('sample_dpm20_sec'), '{:.2f} s')} | | | | |")
    dtype = re.search(r"autocast dtype (\w+)", text(out, "ddpm-unet-bf16.log"))
    for name, r in (("fp32", fp32), ("bf16", bf16)):
        t = train(r, 128)
        finite = "" if r is None else (f", {r['train_steps_run']} steps, losses " + ("finite" if r["train_losses_finite"] else "NOT finite"))
        extra = f", autocast dtype {dtype.group(1)}" if name == "bf16" and dtype else ""
        cell = "failed" if t is None else f"{t[0] * 1e3:.1f} ms/step ({t[1]:.0f} images/s){finite}{extra}"
        lines.append(f"| paper UNet (35.7M), batch 128, {name} | {cell} | | | | |")
    mem = [int(x) for x in text(out, "gpu-memory.log").split() if x.strip().isdigit()]
    pt_mem = (pt or {}).get("peak_gpu_mib")
    lines.append(f"| peak GPU memory in use (nvidia-smi, whole check) | {max(mem) if mem else 'n/a'} MiB | {fmt(pt_mem, '{:.0f} MiB allocated by torch')} | | | |")
    nccl = text(out, "nccl.log")
    status = text(out, "status.txt")
    ok = re.search(r"^nccl: exit 0", status, re.M) is not None
    last = [l for l in nccl.strip().splitlines() if l.strip()][-1:] or ["no log"]
    lines.append(f"| data-parallel step, 1 process, NCCL | {'ran 5 steps' if ok else 'failed: ' + last[0][-160:]} | | | | |")
    # CUDA graphs: the training and sampling rows without them, the samples and weights compared.
    nog = load(out, "ddpm-demo-nographs.json")
    for what, key in (("training", "train_cuda_graphs"), ("sampling", "sample_cuda_graphs")):
        used = (demo or {}).get(key)
        lines.append(f"| demo UNet {what} above used CUDA graphs | {'yes' if used else 'no' if demo else 'failed'} | | | | |")
    for batch in (128, 512):
        on, off = train(demo, batch), train(nog, batch)
        cell = "failed" if on is None or off is None else f"{off[1]:.0f} images/s without graphs, {on[1]:.0f} with ({on[1] / off[1]:.2f}x)"
        lines.append(f"| demo UNet: train, batch {batch}, CUDA graphs off vs on | {cell} | | | | |")
    graphs_log = text(out, "train-graphs.log")
    for m in re.finditer(r"^train cuda_graphs=(\w+): .*?epoch 1/\d+: loss ([\d.]+), (\d+) steps, ([\d.]+) s, (\d+) images/s", graphs_log, re.M):
        g = {"true": "on", "false": "off", "false2": "off, again"}.get(m.group(1), m.group(1))
        lines.append(f"| ddpm train, epoch 1 (batch 512, warm-up and capture included), CUDA graphs {g} | "
                     f"{m.group(5)} images/s, {m.group(4)} s, loss {m.group(2)} | | | | |")
    for m in re.finditer(r"^training (\w+) after 125 steps: (.*)$", graphs_log, re.M):
        lines.append(f"| ddpm train, {m.group(1)} after 125 steps | {m.group(2)} | | | | |")
    for key, what in (("forward81_sec", "denoising forward, batch 81"), ("sample_ddpm_sec", "81 samples, DDPM-1000"),
                      ("sample_ddim50_sec", "81 samples, DDIM-50"), ("sample_dpm20_sec", "81 samples, DPM-Solver++(2M)-20")):
        on, off = (demo or {}).get(key), (nog or {}).get(key)
        scale, unit = (1e3, "ms") if key == "forward81_sec" else (1, "s")
        cell = "failed" if on is None or off is None else f"{off * scale:.2f} {unit} without graphs, {on * scale:.2f} {unit} with ({off / on:.2f}x)"
        lines.append(f"| demo UNet: {what}, CUDA graphs off vs on | {cell} | | | | |")
    for m in re.finditer(r"^(\S+): graphs vs no graphs, max \|difference\| (\S+)", text(out, "graphs-equal.log"), re.M):
        lines.append(f"| {m.group(1)} samples (81, same seed), graphs vs no graphs | max abs difference {m.group(2)} | | | | |")
    fid = load(out, "fid-10k.json")
    wall = re.search(r"eval: ([\d.]+) s wall", text(out, "fid-10k.log"))
    if fid:
        cell = (f"{wall.group(1) if wall else '?'} s in all: sampling {fid['sample_seconds']:.1f} s "
                f"({fid['sampler']}, {fid['steps']} steps), Inception + FID {fid['feature_seconds']:.1f} s (random weights)")
    else:
        cell = "failed (fid-10k.log)"
    lines.append(f"| ddpm eval --metric fid -n 10000, demo UNet, CIFAR-10 shape | {cell} | | | | |")
    lines += ["", "```", status.strip(), "```"]
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_report.py OUT_DIR")
    main(sys.argv[1])
