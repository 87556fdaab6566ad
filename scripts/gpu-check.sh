#!/usr/bin/env bash
# The GPU check: runs on a machine with an NVIDIA GPU and a Python with torch (no Rust needed),
# from the checkout, with the folder scripts/gpu-build.sh staged (gpu/). It measures, on cuda:0,
#   - the demo network on MNIST (ddpm bench: train steps at batch 128 and 512, one epoch, 81
#     samples with DDPM over all 1000 steps and with DDIM-50),
#   - the DDPM paper's UNet at batch 128 in fp32 and in bf16 (50 timed steps each, losses checked
#     finite, the autocast dtype logged),
#   - the same demo network and loop in PyTorch (the machine's own torch: eager, channels-last,
#     torch.compile),
#   - a one-process data-parallel training step through NCCL,
#   - CUDA graphs: the training and sampling rows again with train.cuda_graphs=false and
#     sample.cuda_graphs=false, 81 samples of the NCCL run's checkpoint drawn with and without
#     graphs (DDPM-1000, DPM-Solver++-20) compared, and 125 steps of ddpm train (an epoch and its
#     short last batch) with graphs, without, and without again, their weights compared,
#   - ddpm eval --metric fid -n 10000 on a CIFAR-10-shaped run (random CIFAR-format pictures, 20
#     training steps, random FID-Inception weights: the time, not the number, is the point),
#   - peak GPU memory (nvidia-smi, sampled every 250 ms),
# and writes the table to OUT/gpu-check.md (and stdout), with every log beside it.
#
#   scripts/gpu-check.sh [--stage DIR] [--out DIR] [--dry-run]
#
# --dry-run checks the arguments and the files the check uses and prints what it would run,
# without a GPU (CI runs it). A real run took 273-293 s on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: scripts/gpu-check.sh [--stage DIR] [--out DIR] [--dry-run]" >&2; exit 2; }
stage=gpu
out=""
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --stage) [ $# -ge 2 ] || usage; stage="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1'" >&2; usage ;;
  esac
done
out="${out:-$stage/out}"

# What the check uses from the checkout.
missing=0
for f in options.yml configs/cifar10-ddpm-paper.yml scripts/python/bench_pytorch.py scripts/python/demo_unet.py \
  scripts/python/gpu_report.py scripts/python/cifar_format.py scripts/python/fid_random_weights.py; do
  [ -f "$f" ] || { echo "gpu-check: $f is missing from the checkout" >&2; missing=1; }
done
[ "$missing" = 0 ] || exit 1
bin="$stage/ddpm"
[ -x "$bin" ] || bin="target/release/ddpm"
data="$stage/data"
[ -d "$data/mnist" ] || data="data"
py="${PYTHON:-python3}"

steps=(
  "ddpm bench, demo network, MNIST: $bin bench --config options.yml --set device=cuda:0 --set dataset.root=$data --batches 128,512 --epoch-steps 118"
  "ddpm bench, paper UNet fp32: $bin bench --config configs/cifar10-ddpm-paper.yml --set device=cuda:0 --batches 128 --repeats 50 --epoch-steps 0 --no-sampling"
  "ddpm bench, paper UNet bf16: (the same) --set train.precision=bf16"
  "PyTorch: $py scripts/python/bench_pytorch.py --device cuda --data $data/mnist --epoch-steps 118"
  "NCCL: WORLD_SIZE=1 DDPM_DIST_BACKEND=nccl $bin train --config options.yml --max-steps 5"
  "CUDA graphs off: $bin bench --config options.yml --set device=cuda:0 --set train.cuda_graphs=false --set sample.cuda_graphs=false --batches 128,512 --epoch-steps 0"
  "CUDA graphs on/off, same samples: $bin sample --checkpoint (the NCCL run's) --sampler ddpm|dpm-solver++ --save-tensor ..."
  "CUDA graphs on/off/off, training: $bin train --config options.yml --max-steps 125 --set train.cuda_graphs=true|false|false"
  "FID timing: $py scripts/python/cifar_format.py; $bin train (cifar10, 20 steps); $bin eval --metric fid -n 10000"
)
if [ "$dry" = 1 ]; then
  echo "gpu-check (dry run): results would go to $out/gpu-check.md"
  if [ -x "$bin" ]; then echo "binary: $bin"; else echo "binary: $bin is not built yet (scripts/gpu-build.sh stages $stage/ddpm)"; fi
  if [ -d "$data/mnist" ]; then echo "MNIST: $data/mnist"; else echo "MNIST: not found under $stage/data or data (scripts/gpu-build.sh stages it)"; fi
  printf '  %s\n' "${steps[@]}"
  exit 0
fi

[ -x "$bin" ] || { echo "gpu-check: no ddpm binary ($stage/ddpm or target/release/ddpm): run scripts/gpu-build.sh" >&2; exit 1; }
[ -d "$data/mnist" ] || { echo "gpu-check: no MNIST under $data: run scripts/gpu-build.sh" >&2; exit 1; }
torch_lib="$("$py" -c 'import os, torch; assert torch.cuda.is_available(), "CUDA is not available to torch"; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" ||
  { echo "gpu-check: $py has no torch with CUDA" >&2; exit 1; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
started=$(date +%s)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  cat "$stage/BUILD" 2>/dev/null || echo "binary: $bin"
} > "$out/machine.txt" 2>&1
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$out/gpu-memory.log" 2>/dev/null &
poller=$!
trap 'kill $poller 2>/dev/null || true' EXIT

# The whole check stops within GPU_CHECK_SECONDS (default 560, to fit one 10-minute call): a
# step gets its own limit or what is left, and steps past the deadline are skipped, as are the
# steps named in GPU_CHECK_SKIP (comma-separated: ddpm-demo, ddpm-unet-fp32, ddpm-unet-bf16,
# pytorch, nccl, ddpm-demo-nographs, graphs-equal, train-graphs, fid-10k).
deadline=$(( started + ${GPU_CHECK_SECONDS:-560} ))
run() { # run NAME SECONDS CMD...: logs to OUT/NAME.log, never stops the check
  local name="$1" secs="$2"; shift 2
  local t0=$(date +%s)
  local left=$(( deadline - t0 ))
  if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
    echo "$name: skipped (GPU_CHECK_SKIP)" | tee -a "$out/status.txt" >&2
    return
  fi
  if [ "$left" -lt 10 ]; then
    echo "$name: skipped (the check's time is up)" | tee -a "$out/status.txt" >&2
    return
  fi
  [ "$secs" -le "$left" ] || secs=$left
  if timeout "$secs" "$@" > "$out/$name.log" 2>&1; then rc=0; else rc=$?; fi
  echo "$name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$out/status.txt" >&2
}
run ddpm-demo 150 "$bin" bench --config options.yml --set device=cuda:0 --set dataset.root="$data" \
  --set dataset.download=false --batches 128,512 --epoch-steps 118 --json "$out/ddpm-demo.json"
run ddpm-unet-fp32 80 "$bin" bench --config configs/cifar10-ddpm-paper.yml --set device=cuda:0 --batches 128 \
  --repeats 50 --epoch-steps 0 --no-sampling --json "$out/ddpm-unet-fp32.json"
run ddpm-unet-bf16 80 "$bin" bench --config configs/cifar10-ddpm-paper.yml --set device=cuda:0 --batches 128 \
  --repeats 50 --epoch-steps 0 --no-sampling --set train.precision=bf16 --json "$out/ddpm-unet-bf16.json"
run pytorch 240 "$py" scripts/python/bench_pytorch.py --device cuda --threads "$(nproc)" --data "$data/mnist" \
  --epoch-steps 118 --variants eager,channels_last,compile,reduce_overhead --json "$out/pytorch.json"
run nccl 60 env WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29561 DDPM_DIST_BACKEND=nccl \
  "$bin" train --config options.yml --set device=cuda:0 --set dataset.root="$data" --set dataset.download=false \
  --set train.run_dir="$out/nccl-run" --set train.grid_samples=0 --max-steps 5
run ddpm-demo-nographs 60 "$bin" bench --config options.yml --set device=cuda:0 --set dataset.root="$data" \
  --set dataset.download=false --batches 128,512 --epoch-steps 0 --repeats 10 --set sample.cuda_graphs=false \
  --set train.cuda_graphs=false --json "$out/ddpm-demo-nographs.json"
ckpt="$out/nccl-run/checkpoints/latest.safetensors"
graphs_equal() {
  for sampler in ddpm dpm-solver++; do
    for g in true false; do
      local t0=$(date +%s%N)
      "$bin" sample --config options.yml --checkpoint "$ckpt" --set device=cuda:0 --sampler "$sampler" -n 81 \
        --set sample.cuda_graphs=$g --out "$out/graphs-$sampler-$g.png" --save-tensor "$out/graphs-$sampler-$g.safetensors"
      echo "sample $sampler cuda_graphs=$g: $(( ($(date +%s%N) - t0) / 1000000 )) ms (whole command)"
    done
    "$py" -c 'import sys; from safetensors.torch import load_file as l
a, b = l(sys.argv[1])["samples"], l(sys.argv[2])["samples"]
print(f"{sys.argv[3]}: graphs vs no graphs, max |difference| {(a - b).abs().max().item():.3g}")' \
      "$out/graphs-$sampler-true.safetensors" "$out/graphs-$sampler-false.safetensors" "$sampler"
  done
}
export bin out py stage ckpt
export -f graphs_equal
run graphs-equal 60 bash -c graphs_equal
train_graphs() {
  local g runs=()
  for g in true false false2; do
    local dir="$out/train-graphs-$g"
    runs+=("$dir/checkpoints/latest")
    "$bin" train --config options.yml --set device=cuda:0 --set dataset.root="$data" --set dataset.download=false \
      --set train.run_dir="$dir" --set train.grid_samples=0 --set train.cuda_graphs="${g%2}" --max-steps 125 \
      2>&1 | grep -E "CUDA graphs|epoch 1/|error" | sed "s/^/train cuda_graphs=$g: /"
  done
  "$py" - "${runs[@]}" <<'PY'
import sys
from safetensors.torch import load_file
def diff(a, b):
    x, y = load_file(a), load_file(b)
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x if k in y and x[k].is_floating_point())
on, off, again = sys.argv[1:4]
for what, ext in (("weights", ".safetensors"), ("EMA", ".ema.safetensors")):
    print(f"training {what} after 125 steps: graphs vs no graphs max |difference| {diff(on + ext, off + ext):.3g}, "
          f"no graphs twice {diff(off + ext, again + ext):.3g}")
PY
}
export data
export -f train_graphs
run train-graphs 90 bash -c train_graphs
fid_timing() {
  local cifar=(--set device=cuda:0 --set dataset.name=cifar10 --set dataset.root="$out/fid-data" \
    --set dataset.download=false --set train.run_dir="$out/fid-run")
  "$py" scripts/python/cifar_format.py "$out/fid-data" 10000
  PYTHONPATH="$stage/py" "$py" scripts/python/fid_random_weights.py "$out/fid-weights.safetensors"
  "$bin" train --config options.yml "${cifar[@]}" --set train.grid_samples=0 --max-steps 20
  local TIMEFORMAT="eval: %R s wall"
  time "$bin" eval --config options.yml "${cifar[@]}" --metric fid \
    -n 10000 --set sample.batch_size=1000 --inception "$out/fid-weights.safetensors" --inception-any-weights \
    --json "$out/fid-10k.json"
}
export -f fid_timing
run fid-10k 240 bash -c fid_timing
kill $poller 2>/dev/null || true
echo "total: $(( $(date +%s) - started )) s" >> "$out/status.txt"
"$py" scripts/python/gpu_report.py "$out" | tee "$out/gpu-check.md"
