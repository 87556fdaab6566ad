"""Would a frozen sampling network pay on this CPU? Times the demo UNet's denoising forward at
batch 81 (channels-last, no grad) as it is and with every UnetBlock's convolutions rebuilt the
way inductor's CPU freezing rebuilds them: weights pre-packed in oneDNN's blocked layout
(mkldnn_reorder_conv2d_weight), conv1 + ReLU fused, conv2 + residual add + ReLU fused
(mkldnn._convolution_pointwise and its binary form). Prints the largest output difference and
both medians.

usage: freeze_probe.py [--threads N] [--repeats R] [--plain-weights]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_unet import UNet, UnetBlock  # noqa: E402


def median_time(f, repeats):
    for _ in range(3):
        f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--plain-weights", action="store_true", help="fuse without pre-packing the weights")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = UNet(1000, (1, 28, 28)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(81, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    t = torch.full((81,), 500)
    mk = torch.ops.mkldnn

    def pack(conv, size):
        if a.plain_weights:
            return conv.weight
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.to_mkldnn(), conv.padding, conv.stride, conv.dilation, conv.groups, size)

    def frozen_forward(self, x):
        size = list(x.shape)
        if getattr(self, "_packed", None) is None or self._packed[0] != size:
            rc = self.residual_conv if isinstance(getattr(self, "residual_conv", None), torch.nn.Conv2d) else None
            self._packed = (size, pack(self.conv1, size), pack(self.conv2, [size[0], self.conv1.out_channels] + size[2:]),
                            pack(rc, size) if rc is not None else None)
        _, w1, w2, wr = self._packed
        c1, c2 = self.conv1, self.conv2
        h = mk._convolution_pointwise(self.ln(x), w1, c1.bias, c1.padding, c1.stride, c1.dilation, 1, "relu", [], "")
        r = x if wr is None else mk._convolution_pointwise(
            x, wr, self.residual_conv.bias, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        return mk._convolution_pointwise.binary(
            h, r, w2, c2.bias, c2.padding, c2.stride, c2.dilation, 1, "add", 1.0, "relu", [], "")

    with torch.no_grad():
        ref = net(x, t)
        plain = median_time(lambda: net(x, t), a.repeats)
        UnetBlock.forward = frozen_forward
        diff = (net(x, t) - ref).abs().max().item()
        frozen = median_time(lambda: net(x, t), a.repeats)
    print(f"threads {a.threads}: max |difference| {diff:.2g}; forward at batch 81: "
          f"{plain * 1e3:.2f} ms as it is, {frozen * 1e3:.2f} ms frozen ({plain / frozen:.2f}x)")


if __name__ == "__main__":
    main()
