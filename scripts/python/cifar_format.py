"""Writes a CIFAR-10-shaped data set in the official binary format (cifar-10-batches-bin/:
data_batch_1..5.bin, test_batch.bin, batches.meta.txt) from random blocky pictures, for timing
and end-to-end checks where CIFAR-10 itself is not at hand (a FID of these numbers means nothing).

usage: cifar_format.py ROOT N_TRAIN [--seed S]   (the test batch gets min(N_TRAIN, 10000) images)
"""

import argparse
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("n_train", type=int)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.n_train < 5:
        ap.error("N_TRAIN must be at least 5 (one image per training file)")
    rng = np.random.default_rng(a.seed)
    d = os.path.join(a.root, "cifar-10-batches-bin")
    os.makedirs(d, exist_ok=True)
    per = [a.n_train // 5 + (i < a.n_train % 5) for i in range(5)]
    files = [(f"data_batch_{i + 1}.bin", n) for i, n in enumerate(per)] + [("test_batch.bin", min(a.n_train, 10000))]
    for name, n in files:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        # 8x8 random colours blown up to 32x32: pictures with some structure for the networks.
        img = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8).repeat(4, axis=2).repeat(4, axis=3)
        np.concatenate([labels[:, None], img.reshape(n, -1)], axis=1).tofile(os.path.join(d, name))
    with open(os.path.join(d, "batches.meta.txt"), "w") as f:
        f.write("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    print(f"wrote {a.n_train} training and {files[-1][1]} test images to {d}")


if __name__ == "__main__":
    main()
