#!/usr/bin/env bash
# Training quality beside PyTorch's: trains the demo recipe (MNIST, demo UNet, batch 512,
# Adam 1e-3) with `ddpm train` and with the PyTorch demo loop (scripts/python/train_demo.py)
# for the same number of epochs and seeds, then scores every final model with the same
# `ddpm eval` (DDIM-50, eta 1, N samples against the test split): ddpm's raw weights, ddpm's
# EMA weights and PyTorch's raw weights. Not a test: a 10-epoch pair takes about 25 minutes on
# 2 cores.
#
#   scripts/quality.sh [--epochs E] [--seeds "0 1"] [--n N] [--out DIR] [--set key=value ...]
#
# --set overrides go to `ddpm train` only (e.g. --set streams=1). Results: DIR/results.jsonl
# (one line per model) and DIR/report.md (the table, with the mean and range over seeds).
# Finished runs are kept, so an interrupted comparison continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

epochs=10 seeds="0 1" n=500 out=quality sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --n) n="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "quality.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh --data mnist
cargo build --release --quiet
bin=target/release/ddpm
mkdir -p "$out"
common=(--config options.yml --set device=cpu --set dataset.download=false)

# score NAME WHAT CHECKPOINT [--set ...]: one line of results.jsonl.
score() {
  local name="$1" what="$2" ckpt="$3"; shift 3
  "$bin" eval "${common[@]}" --checkpoint "$ckpt" -n "$n" --steps 50 --json "$out/$name.$what.json" "$@" >/dev/null
  .venv/bin/python -c 'import json,sys; r=json.load(open(sys.argv[1])); r.update(model=sys.argv[2], weights=sys.argv[3], seed=int(sys.argv[4]), epochs=int(sys.argv[5])); print(json.dumps(r))' \
    "$out/$name.$what.json" "${name%-*}" "$what" "${name##*-}" "$epochs" >> "$out/results.jsonl"
}

for s in $seeds; do
  if [ ! -f "$out/ddpm-$s.done" ]; then
    rm -rf "$out/ddpm-$s"
    echo "[quality] ddpm train, seed $s, $epochs epochs" >&2
    "$bin" train "${common[@]}" --set seed="$s" --set train.n_epochs="$epochs" --set train.grid_samples=0 \
      --set train.run_dir="$out/ddpm-$s" "${sets[@]+"${sets[@]}"}" > "$out/ddpm-$s.log" 2>&1
    score "ddpm-$s" raw "$out/ddpm-$s/checkpoints/latest.safetensors" --set sample.ema=false
    score "ddpm-$s" ema "$out/ddpm-$s/checkpoints/latest.safetensors"
    touch "$out/ddpm-$s.done"
  fi
  if [ ! -f "$out/pytorch-$s.done" ]; then
    echo "[quality] PyTorch demo loop, seed $s, $epochs epochs" >&2
    .venv/bin/python scripts/python/train_demo.py --data data/mnist --seed "$s" --epochs "$epochs" \
      --out "$out/pytorch-$s.safetensors" > "$out/pytorch-$s.log" 2>&1
    score "pytorch-$s" raw "$out/pytorch-$s.safetensors"
    touch "$out/pytorch-$s.done"
  fi
done

.venv/bin/python - "$out" <<'EOF' | tee "$out/report.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/results.jsonl")]
groups = {}
for r in rows:
    groups.setdefault((r["model"], r["weights"]), []).append(r)
print("| model | weights | seeds | Frechet distance per seed | mean | range |")
print("|---|---|---|---|---|---|")
for (m, w), rs in sorted(groups.items()):
    rs.sort(key=lambda r: r["seed"])
    fd = [r["frechet_distance"] for r in rs]
    per = ", ".join(f"{r['seed']}: {r['frechet_distance']:.1f}" for r in rs)
    print(f"| {m} | {w} | {len(rs)} | {per} | {statistics.mean(fd):.1f} | {min(fd):.1f}-{max(fd):.1f} |")
real = rows[0]["frechet_distance_real"] if rows else float("nan")
print(f"\nreal vs real: {real:.2f}; N = {rows[0]['n'] if rows else '?'}, DDIM-50, eta from options.yml")
EOF
