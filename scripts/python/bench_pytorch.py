"""The PyTorch side of `scripts/bench.sh`: the demo's UNet and training loop at the same thread
count as ddpm, in several variants:
  eager           the demo as written
  channels_last   the channels-last memory format
  compile         torch.compile
  fused           channels-last with Adam(fused=True), PyTorch's fastest eager training step
  compile_frozen  torch.compile with torch._inductor.config.freezing = True (weights folded and
                  pre-packed for inference: PyTorch's best inference on a CPU)
  reduce_overhead torch.compile(mode="reduce-overhead") with Adam(fused=True): inductor's kernels
                  replayed from CUDA graphs (GPU only)
  bf16            channels-last eager under bfloat16 autocast (training and inference), where the
                  device runs bf16 (skipped elsewhere)
Measures what `ddpm bench` measures and writes JSON.

usage: bench_pytorch.py --threads N --data DIR --json OUT [--repeats R] [--variants eager,channels_last,compile]
                        [--device cpu|cuda]
"""

import argparse
import contextlib
import gzip
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_unet import DDPM, UNet  # noqa: E402


DEVICE = "cpu"


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bf16_supported():
    if DEVICE.startswith("cuda"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def bench_variant(name, repeats):
    torch.manual_seed(0)
    net = UNet(1000, (1, 28, 28)).to(DEVICE)
    ddpm = DDPM(DEVICE)
    last = name in ("channels_last", "fused", "bf16")
    fmt = torch.channels_last if last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=(name in ("fused", "reduce_overhead")) or None)
    if name in ("compile", "compile_frozen"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = name == "compile_frozen"
    if name == "reduce_overhead":
        model = torch.compile(net, mode="reduce-overhead")
    else:
        model = torch.compile(net) if name in ("compile", "compile_frozen") else net
    device_type = "cuda" if DEVICE.startswith("cuda") else "cpu"

    def autocast():
        if name == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(x):
        with autocast():
            return ddpm.train_step(model, opt, x).item()

    out = {"train": []}
    for batch in (128, 512):
        x = (torch.rand(batch, 1, 28, 28, device=DEVICE) * 2 - 1).contiguous(memory_format=fmt)
        for _ in range(2):
            step(x)
        s = timed(lambda: step(x), repeats)
        out["train"].append([batch, s, batch / s])
        print(f"{name}: train step at batch {batch}: {s:.3f} s ({batch / s:.0f} images/s)", flush=True)
    x = torch.randn(81, 1, 28, 28, device=DEVICE).contiguous(memory_format=fmt)
    t = torch.full((81,), 500, device=DEVICE)
    with torch.no_grad(), autocast():
        for _ in range(3):
            model(x, t)
        out["forward81_sec"] = timed(lambda: model(x, t), max(repeats, 5))
        # The demo's reverse loop: 50 timed steps (forward + update), scaled to 1000 like ddpm's.
        xs = x.clone()
        sync()
        t0 = time.perf_counter()
        for i in range(50):
            xs = ddpm.sample_backward_step(model, xs, 999 - i)
        sync()
        out["sample_ddpm_sec"] = (time.perf_counter() - t0) / 50 * 1000
    print(f"{name}: forward at batch 81: {out['forward81_sec'] * 1e3:.1f} ms", flush=True)
    return out


def bench_epoch(data_dir, steps):
    """The demo's input pipeline: torchvision MNIST, ToTensor, DataLoader(batch 512, shuffle)."""
    try:
        import torchvision
        from torchvision import transforms
    except ImportError:
        print("torchvision is not installed: no epoch baseline", flush=True)
        return None
    root = tempfile.mkdtemp()
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = os.path.join(data_dir, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(raw, f))
        else:
            with gzip.open(src + ".gz") as g, open(os.path.join(raw, f), "wb") as o:
                o.write(g.read())
    tf = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: (x - 0.5) * 2)])
    ds = torchvision.datasets.MNIST(root, train=True, transform=tf, download=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=512, shuffle=True)
    torch.manual_seed(0)
    net = UNet(1000, (1, 28, 28)).to(DEVICE)
    ddpm = DDPM(DEVICE)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        ddpm.train_step(net, opt, x.to(DEVICE))
        n += 1
        if n == steps:
            break
    per_step = (time.perf_counter() - t0) / n
    shutil.rmtree(root)
    total = per_step * len(loader)
    print(f"demo pipeline: one epoch {total:.1f} s (from {n} steps)", flush=True)
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epoch-steps", type=int, default=20)
    ap.add_argument("--variants", default="eager,channels_last,compile")
    ap.add_argument("--json", required=True)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    torch.set_num_threads(a.threads)
    result = {"threads": a.threads, "torch": torch.__version__, "device": DEVICE, "variants": {}}
    result["epoch_sec"] = bench_epoch(a.data, a.epoch_steps) if a.epoch_steps > 0 else None
    # High-water mark of training on MNIST alone (the demo's pipeline), before the variants.
    result["train_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for v in a.variants.split(","):
        if v == "bf16" and not bf16_supported():
            print("bf16: this CPU's oneDNN does not run bfloat16: skipped", flush=True)
            continue
        result["variants"][v] = bench_variant(v, a.repeats)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
