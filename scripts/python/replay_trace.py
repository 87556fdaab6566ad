"""Replays a training trajectory recorded by `ddpm train` (with DDPM_TRACE_DIR set) in PyTorch.

Two comparisons, both with the demo UNet and torch.optim.Adam on the same batches (by dataset
index, read from the IDX files), the same t and the same noise:

1. One step from the same state: at every step k where ddpm saved its state after step k-1 (or
   k = 1), PyTorch loads that state (weights and Adam's moments), takes step k and compares the
   loss, the gradients and the update with ddpm's. No rounding is carried over from earlier
   steps, so these must agree to float tolerance at step 1 as at step 1000; a difference names
   the step and the tensor. This is the check that fails when the arithmetic of the training
   step differs (loss, schedule, data scaling, Adam).
2. The free-running trajectory: PyTorch starts from ddpm's initial weights and takes every step
   itself. Float rounding makes any two implementations drift apart (training is chaotic), so the
   drift is printed beside the drift between two PyTorch runs that differ only in memory format
   (contiguous vs channels-last), the yardstick of "rounding only".

Exit status 1 when a one-step comparison exceeds its tolerance, or when the free-running drift
at the last recorded step exceeds --drift-factor times the PyTorch-vs-PyTorch drift (earlier
steps are printed only: in the first steps the yardstick itself varies by orders of magnitude
with the few weights whose gradient is near zero and whose first Adam step flips sign).

usage: replay_trace.py TRACE_DIR DATA_DIR [--lr 1e-3] [--json OUT]
"""

import argparse
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_unet import DDPM, UNet, read_idx_images  # noqa: E402


def rel(a, b):
    """||a - b|| / ||b|| (0 when both are 0)."""
    d = (a.double() - b.double()).norm().item()
    n = b.double().norm().item()
    return d / n if n > 0 else (0.0 if d == 0 else float("inf"))


def build_net(state, shape):
    levels = len([k for k in state if k.startswith("downs.") and k.endswith(".weight")])
    chans = [state[f"encoders.{i}.1.conv2.weight"].shape[0] for i in range(levels)]
    chans.append(state["mid.1.conv2.weight"].shape[0])
    residual = any(k.endswith("residual_conv.weight") for k in state)
    pe = state["pe.embedding.weight"]
    net = UNet(pe.shape[0], shape, chans, pe.shape[1], residual)
    net.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True)
    return net


class Replay:
    def __init__(self, trace, images, lr):
        self.trace, self.images, self.lr = trace, images, lr
        init = sorted(glob.glob(os.path.join(trace, "init-*.safetensors")))
        if not init:
            sys.exit(f"{trace}: no init-*.safetensors (was ddpm train run with DDPM_TRACE_DIR?)")
        self.start = int(os.path.basename(init[0])[5:11])
        self.init = load_file(init[0])
        self.ddpm = DDPM("cpu", self.init["pe.embedding.weight"].shape[0])

    def path(self, kind, step):
        return os.path.join(self.trace, f"{kind}-{step:06d}.safetensors")

    def steps(self):
        k = self.start + 1
        while os.path.exists(self.path("inputs", k)):
            yield k
            k += 1

    def after(self, step):
        return load_file(self.path("after", step))

    def state_before(self, step):
        """(weights, Adam state by name, Adam step) ddpm had before `step`, or None."""
        if step == self.start + 1:
            return self.init, None, 0
        prev = self.after(step - 1)
        weights = {k[7:]: v for k, v in prev.items() if k.startswith("weight.")}
        if not weights:
            return None
        moments = {k: v for k, v in prev.items() if k.startswith("exp_avg")}
        return weights, moments, int(prev["adam_step"].item())

    def loss(self, net, step, fmt=torch.contiguous_format):
        inp = load_file(self.path("inputs", step))
        x0 = self.images[inp["idx"]].float() / 127.5 - 1
        noise = inp["noise"].contiguous()
        return self.ddpm.loss(net, x0.contiguous(memory_format=fmt), inp["t"], noise)

    def one_step(self, step):
        before = self.state_before(step)
        if before is None:
            return None
        weights, moments, adam_step = before
        net = build_net(weights, tuple(self.images.shape[1:]))
        opt = torch.optim.Adam(net.parameters(), self.lr)
        if moments:
            for name, p in net.named_parameters():
                if p.requires_grad:
                    opt.state[p] = {
                        "step": torch.tensor(float(adam_step)),
                        "exp_avg": moments[f"exp_avg.{name}"].contiguous().clone(),
                        "exp_avg_sq": moments[f"exp_avg_sq.{name}"].contiguous().clone(),
                    }
        w0 = {k: v.detach().clone() for k, v in net.state_dict().items()}
        loss = self.loss(net, step)
        opt.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        opt.step()
        after = self.after(step)
        if not any(k.startswith("weight.") for k in after):
            return None
        upd = {n: rel(after[f"weight.{n}"] - w0[n], p.detach() - w0[n]) for n, p in net.named_parameters() if n in grads}
        grd = {n: rel(after[f"grad.{n}"], g) for n, g in grads.items()}
        wu, wg = max(upd, key=upd.get), max(grd, key=grd.get)
        return {
            "step": step,
            "loss_torch": loss.item(),
            "loss_ddpm": after["loss"].item(),
            "loss_rel": abs(loss.item() - after["loss"].item()) / abs(loss.item()),
            "grad_rel": grd[wg],
            "grad_worst": wg,
            "update_rel": upd[wu],
            "update_worst": wu,
        }

    def free_running(self):
        """Drift of PyTorch's own trajectory from ddpm's, and of a channels-last PyTorch run
        from the contiguous one, at every step where ddpm saved its weights."""
        shape = tuple(self.images.shape[1:])
        runs = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            net = build_net(self.init, shape).to(memory_format=fmt)
            runs.append((net, torch.optim.Adam(net.parameters(), self.lr), fmt))
        rows = []
        for step in self.steps():
            for net, opt, fmt in runs:
                loss = self.loss(net, step, fmt)
                opt.zero_grad()
                loss.backward()
                opt.step()
            after = self.after(step)
            ddpm_w = {k[7:]: v for k, v in after.items() if k.startswith("weight.")}
            if not ddpm_w:
                continue
            a, b = runs[0][0].state_dict(), runs[1][0].state_dict()
            trainable = [n for n, p in runs[0][0].named_parameters() if p.requires_grad]
            drift = max(rel(ddpm_w[n], a[n]) for n in trainable)
            ref = max(rel(b[n], a[n]) for n in trainable)
            rows.append({"step": step, "drift_ddpm_vs_torch": drift, "drift_torch_vs_torch": ref})
        return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("data", help="folder with train-images-idx3-ubyte[.gz]")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--loss-tol", type=float, default=1e-4)
    ap.add_argument("--grad-tol", type=float, default=1e-2)
    ap.add_argument("--update-tol", type=float, default=3e-2)
    ap.add_argument("--drift-factor", type=float, default=3.0)
    ap.add_argument("--no-free-running", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = Replay(a.trace, read_idx_images(a.data), a.lr)
    failures = []
    checks = []
    for step in r.steps():
        c = r.one_step(step)
        if c is None:
            continue
        checks.append(c)
        bad = c["loss_rel"] > a.loss_tol or c["grad_rel"] > a.grad_tol or c["update_rel"] > a.update_tol
        print(
            f"one step from ddpm's state, step {step:5d}: loss {c['loss_ddpm']:.6f} vs {c['loss_torch']:.6f} "
            f"(rel {c['loss_rel']:.1e}); gradients rel {c['grad_rel']:.1e} ({c['grad_worst']}); "
            f"update rel {c['update_rel']:.1e} ({c['update_worst']}){'  <-- DIFFERS' if bad else ''}",
            flush=True,
        )
        if bad:
            failures.append(f"step {step}")
    if not checks:
        sys.exit(f"{a.trace}: no step with ddpm's state before and after it (see DDPM_TRACE_WEIGHTS)")
    drift = [] if a.no_free_running else r.free_running()
    for i, d in enumerate(drift):
        last = i == len(drift) - 1
        bad = last and d["drift_ddpm_vs_torch"] > a.drift_factor * d["drift_torch_vs_torch"] + 1e-6
        print(
            f"free-running, step {d['step']:5d}: weights drift ddpm vs PyTorch {d['drift_ddpm_vs_torch']:.2e}, "
            f"PyTorch contiguous vs channels-last {d['drift_torch_vs_torch']:.2e}{'  <-- DIFFERS' if bad else ''}",
            flush=True,
        )
        if bad:
            failures.append(f"free-running step {d['step']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"one_step": checks, "free_running": drift}, f, indent=1)
    if failures:
        print("trajectories differ beyond float tolerance at: " + ", ".join(failures))
        sys.exit(1)
    print(f"trajectories agree: {len(checks)} one-step checks, {len(drift)} free-running checks")


if __name__ == "__main__":
    main()
