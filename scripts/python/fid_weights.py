"""Converts pytorch-fid's FID Inception weights (pt_inception-2015-12-05-6726825d.pth, from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)
to safetensors for `ddpm eval --metric fid --inception PATH`, recording the source file's
SHA-256 in the metadata (ddpm checks that it is the official file's).

usage: fid_weights.py IN.pth OUT.safetensors
"""

import hashlib
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    state = torch.load(src, map_location="cpu", weights_only=True)
    tensors = {k: v.contiguous() for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()}
    save_file(tensors, dst, metadata={"source_sha256": sha, "source": src.rsplit("/", 1)[-1]})
    ok = "the official file" if sha.startswith("6726825d") else "NOT the official file (ddpm will refuse it)"
    print(f"{dst}: {len(tensors)} tensors; source SHA-256 {sha} ({ok})")


if __name__ == "__main__":
    main()
