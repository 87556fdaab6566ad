"""FID-Inception weights at random (pytorch-fid's own network, He-initialised), in the official
parameter names, as safetensors: what timing and parity checks need where the real weights
(pt_inception-2015-12-05-6726825d.pth) cannot be downloaded. ddpm accepts them only with
--inception-any-weights, and a FID computed with them is comparable with nothing.

usage: fid_random_weights.py OUT.safetensors [--seed S]   (needs torch, torchvision, pytorch-fid)
"""

import argparse

import torch
from safetensors.torch import save_file
import pytorch_fid.inception as fi


def build(seed=0, random_bn=False):
    """pytorch-fid's FID Inception network (torchvision's Inception3 with pytorch-fid's FID
    blocks and the 1008-way classifier) with He-initialised convolutions; `random_bn` also draws
    the batch-norm statistics and affine parameters at random."""
    torch.manual_seed(seed)
    net = fi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    # pytorch-fid's FID blocks in place of torchvision's, as fid_inception_v3() builds them.
    net.Mixed_5b = fi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fi.FIDInceptionE_1(1280)
    net.Mixed_7c = fi.FIDInceptionE_2(2048)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif random_bn and isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    net = build(a.seed)
    state = {k: v.contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    save_file(state, a.out)
    print(f"wrote {len(state)} tensors to {a.out}")


if __name__ == "__main__":
    main()
