"""Loads a ddpm checkpoint in PyTorch, rebuilds the demo UNet from its metadata, checks that the
state_dict loads strictly, and compares the network's output with the one ddpm computed.

usage: check_parity.py CHECKPOINT IO   (IO: safetensors with x, t and ddpm's output y)"""

import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_unet import UNet  # noqa: E402

ckpt, io = sys.argv[1], sys.argv[2]
with safe_open(ckpt, "pt") as f:
    meta = f.metadata()
net_cfg = json.loads(meta["network"])
n_steps = json.loads(meta["ddpm"])["n_steps"]
shape = tuple(json.loads(meta["image_shape"]))
net = UNet(n_steps, shape, net_cfg["channels"], net_cfg["pe_dim"], net_cfg["residual"])
net.load_state_dict(load_file(ckpt), strict=True)
data = load_file(io)
with torch.no_grad():
    y = net(data["x"], data["t"])
print("keys", len(net.state_dict()))
print("max_abs_diff", (y - data["y"]).abs().max().item())
