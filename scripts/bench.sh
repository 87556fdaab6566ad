#!/usr/bin/env bash
# Side-by-side speed comparison on this machine: `ddpm bench` and the same network and loop in
# PyTorch (eager, channels-last, fused Adam, torch.compile, torch.compile with freezing, and bf16
# autocast where the CPU runs bf16) at the same thread count, then the ratios.
#   scripts/bench.sh [THREADS]      (default: all cores)
# Results: bench/rust.json (and bench/rust-bf16.json), bench/pytorch.json, bench/report.md.
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
bf16=()
if .venv/bin/python -c 'import sys, torch; sys.exit(0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1)' 2>/dev/null; then
  target/release/ddpm bench --config options.yml --set device=cpu --set threads="$threads" --set dataset.download=false \
    --set train.precision=bf16 --set sample.precision=bf16 --epoch-steps 0 --json bench/rust-bf16.json
  bf16=(bench/rust-bf16.json)
else
  rm -f bench/rust-bf16.json
fi
.venv/bin/python scripts/python/bench_pytorch.py --threads "$threads" --data data/mnist --json bench/pytorch.json \
  --variants eager,channels_last,fused,compile,compile_frozen,bf16
.venv/bin/python scripts/python/bench_report.py bench/rust.json bench/pytorch.json "${bf16[@]}" | tee bench/report.md
