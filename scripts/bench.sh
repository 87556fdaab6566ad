#!/usr/bin/env bash
# Side-by-side speed comparison on this machine: `ddpm bench` and the same network and loop in
# PyTorch (eager, channels-last, torch.compile) at the same thread count, then the ratios.
#   scripts/bench.sh [THREADS]      (default: all cores)
# Results: bench/rust.json, bench/pytorch.json, bench/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
scripts/setup.sh --data mnist
if ! .venv/bin/python -c 'import torchvision' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torchvision==0.28.0" --no-deps && .venv/bin/python -m pip install --quiet --disable-pip-version-check pillow
fi
cargo build --release --quiet
mkdir -p bench
target/release/ddpm bench --config options.yml --set device=cpu --set threads="$threads" \
  --set dataset.download=false --json bench/rust.json
.venv/bin/python scripts/python/bench_pytorch.py --threads "$threads" --data data/mnist --json bench/pytorch.json
.venv/bin/python scripts/python/bench_report.py bench/rust.json bench/pytorch.json | tee bench/report.md
