"""Checks ddpm's two Adam paths against torch.optim.Adam / torch.optim.AdamW.

Each input file (written by the test `optimizer::both_adam_paths_follow_torch_optim`) holds one
optimizer setting (`cfg.lr`, `cfg.weight_decay`, `cfg.decoupled`), the starting parameters
`p0.<name>`, the gradient of every step `grad.<step>.<name>` (a parameter with no entry at a step
got no gradient: PyTorch's `param.grad = None`), and the parameters and moments that ddpm's
fused and per-tensor paths reached after every step: `<path>.<step>.param.<name>`,
`<path>.<step>.exp_avg.<name>`, `<path>.<step>.exp_avg_sq.<name>`, path `fused` or `loop`.

For every step s and each ddpm path, PyTorch starts from that path's state after step s - 1
(the parameters, both moments and the step count; the given `p0` at s = 1), takes step s with
the same gradients, and its parameters and moments are compared with ddpm's after step s. It
does so with the single-tensor implementation (`foreach=False`) and with the fused kernel
(`fused=True`). Starting every step from ddpm's own state keeps rounding from compounding, so
what is left is float32 rounding of one step of the same formula, a few units in the last place,
at every step count of the bias correction.

usage: adam_reference.py FILE... [--tol 1e-6]
Prints the largest difference per setting, path and reference; exit status 1 when one exceeds
--tol.
"""

import argparse
import sys

import torch
from safetensors.torch import load_file


def one_step(t, names, path, s, ref, cfg):
    """PyTorch's step s from ddpm's state after step s - 1; returns {(what, name): tensor}."""
    lr, wd, decoupled = cfg
    prev = (lambda w, n: t[f"p0.{n}"]) if s == 1 else (lambda w, n: t[f"{path}.{s - 1}.{w}.{n}"])
    params = [torch.nn.Parameter(prev("param", n).clone()) for n in names]
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    kw = {"foreach": False} if ref == "foreach=False" else {"fused": True}
    opt = kind(params, lr=lr, weight_decay=wd, **kw)
    for n, p in zip(names, params):
        if s > 1 and f"{path}.{s - 1}.exp_avg.{n}" in t:
            opt.state[p] = {
                "step": torch.tensor(float(s - 1)),
                "exp_avg": prev("exp_avg", n).clone(),
                "exp_avg_sq": prev("exp_avg_sq", n).clone(),
            }
        g = t.get(f"grad.{s}.{n}")
        p.grad = None if g is None else g.clone()
    opt.step()
    out = {}
    for n, p in zip(names, params):
        out[("param", n)] = p.detach()
        st = opt.state.get(p)
        for m in ("exp_avg", "exp_avg_sq"):
            # A parameter that never had a gradient has no state in PyTorch: zeros in ddpm.
            out[(m, n)] = st[m] if st else torch.zeros_like(p)
    return out


def check(file, tol):
    t = load_file(file)
    cfg = (t["cfg.lr"].item(), t["cfg.weight_decay"].item(), bool(t["cfg.decoupled"].item()))
    names = sorted(k[len("p0."):] for k in t if k.startswith("p0."))
    steps = sorted({int(k.split(".")[1]) for k in t if k.startswith("grad.")})
    failed = False
    for path in ("fused", "loop"):
        for ref in ("foreach=False", "fused=True"):
            worst = (-1.0, None)
            for s in steps:
                for (what, n), theirs in one_step(t, names, path, s, ref, cfg).items():
                    d = (t[f"{path}.{s}.{what}.{n}"] - theirs).abs().max().item()
                    if d > worst[0]:
                        worst = (d, f"step {s}, {what} of {n}")
            bad = worst[0] > tol
            failed |= bad
            name = ("AdamW" if cfg[2] else "Adam") + f" lr={cfg[0]:g} weight_decay={cfg[1]:g}"
            print(f"{name}: ddpm {path} vs torch {ref}: max diff {worst[0]:.3e} ({worst[1]}){'  > tol' if bad else ''}")
    return failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--tol", type=float, default=1e-6)
    a = ap.parse_args()
    torch.set_num_threads(1)
    failed = False
    for f in a.files:
        failed |= check(f, a.tol)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
