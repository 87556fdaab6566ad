"""The teaching demo's training loop in PyTorch, as the quality baseline for `ddpm train`: MNIST
through a shuffling DataLoader (batch 512), the demo UNet, t ~ U{0..n_steps-1}, eps ~ N(0, 1),
MSE, torch.optim.Adam at 1e-3. Writes the final raw weights as safetensors, which `ddpm sample`
and `ddpm eval --checkpoint` read (the network is taken from the config).

usage: train_demo.py --data DIR --out WEIGHTS.safetensors [--seed S] [--epochs E] [--threads N]
                     [--keep-epochs K] [--channels-last]

--channels-last runs the convolutions in the channels-last memory format (same arithmetic up to
float rounding; faster on some CPUs). --keep-epochs K also writes the raw weights at the end of each of the last K epochs, beside OUT
as OUT-stem.epoch-NNNN.safetensors (as `ddpm train` keeps its last epochs).
"""

import argparse
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_unet import DDPM, UNet, read_idx_images  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--keep-epochs", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    # ToTensor, then the demo's (x - 0.5) * 2.
    xs = (read_idx_images(a.data).float() / 255 - 0.5) * 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs), batch_size=a.batch_size, shuffle=True)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    net = UNet(1000, tuple(xs.shape[1:])).to(memory_format=fmt)
    ddpm = DDPM("cpu")
    opt = torch.optim.Adam(net.parameters(), a.lr)
    for epoch in range(a.epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        for (x,) in loader:
            x = x.contiguous(memory_format=fmt)
            loss = ddpm.train_step(net, opt, x)
            total += loss.item() * x.shape[0]
            n += x.shape[0]
        print(f"epoch {epoch + 1}/{a.epochs}: loss {total / n:.5f}, {time.perf_counter() - t0:.1f} s", flush=True)
        if a.epochs - epoch <= a.keep_epochs:
            stem = a.out[: -len(".safetensors")] if a.out.endswith(".safetensors") else a.out
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f"{stem}.epoch-{epoch + 1:04d}.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
