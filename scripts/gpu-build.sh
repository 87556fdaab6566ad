#!/usr/bin/env bash
# Builds here a ddpm binary for a GPU machine that has another libtorch (its Python's torch) and
# no Rust toolchain or network, and stages what scripts/gpu-check.sh needs there into gpu/:
#   gpu/ddpm           the binary, linked against torch==$TORCH_VERSION (default 2.11.0)
#   gpu/data/mnist/    MNIST's four .gz files
#   gpu/py/            pytorch-fid's Python package (for random FID-Inception weights)
#   gpu/BUILD          what was built, from which commit, against which libtorch
# Copy gpu/ along with the checkout (it is ignored by git; about 20 MiB) and run
# scripts/gpu-check.sh there.
#
# How: tch 0.26 wants libtorch 2.13. The torch wheel of the target version is downloaded (no
# dependencies) and unpacked; torch-sys 0.26 is copied and the generated wrappers of the few ATen
# ops that version lacks or declares differently are stubbed (ddpm calls none of them); the
# project is built against both in a separate folder (.gpu-build/, ignored), so the regular
# build and Cargo.lock stay untouched.
#   scripts/gpu-build.sh            TORCH_VERSION=2.11.0 scripts/gpu-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
version="${TORCH_VERSION:-2.11.0}"
work="$root/.gpu-build"
stage="$root/gpu"
log() { echo "[gpu-build] $*" >&2; }

scripts/setup.sh --data mnist
py="$root/.venv/bin/python"
mkdir -p "$work/wheel"

# 1. The target's libtorch: headers and libraries of the torch wheel.
torch_dir="$work/torch-$version"
if [ ! -f "$torch_dir/torch/lib/libtorch_cpu.so" ]; then
  log "downloading torch==$version (no dependencies)"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "torch==$version" -d "$work/wheel"
  wheel="$(ls "$work"/wheel/torch-"$version"-*.whl | head -1)"
  log "unpacking $(basename "$wheel")"
  rm -rf "$torch_dir"
  "$py" - "$wheel" "$torch_dir" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/", "torch/share/", "torch/version.py"))]
    z.extractall(dest, names)
PY
fi

# The NCCL backend needs the CUDA runtime and NCCL headers of the nvidia-* packages, which the wheel
# above comes without. ProcessGroupNCCL's layout depends on the NCCL version its headers declare, so
# the NCCL headers are those of the exact nvidia-nccl version this torch pins (downloaded); the CUDA
# runtime headers are those of the project's own torch (the same CUDA major version).
nvidia="$(dirname "$(readlink -f .libtorch)")/nvidia"
wheel="$(ls "$work"/wheel/torch-"$version"-*.whl | head -1)"
nccl_pin="$("$py" - "$wheel" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    m = re.search(r"^Requires-Dist: (nvidia-nccl-cu\d+==[\w.]+)", z.read(meta).decode(), re.M)
print(m.group(1) if m else "")
PY
)"
rm -rf "$torch_dir/nvidia"
if [ -n "$nccl_pin" ] && { [ -d "$nvidia/cu13/include" ] || [ -d "$nvidia/cuda_runtime/include" ]; }; then
  if [ ! -f "$work/$nccl_pin/nvidia/nccl/include/nccl.h" ]; then
    log "downloading the NCCL headers of $nccl_pin"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: "$nccl_pin" -d "$work/wheel"
    "$py" - "$(ls "$work"/wheel/"$(echo "${nccl_pin%%==*}" | tr - _)"-"${nccl_pin##*==}"-*.whl | head -1)" "$work/$nccl_pin" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("nvidia/nccl/include/")])
PY
  fi
  mkdir -p "$torch_dir/nvidia"
  ln -sfn "$work/$nccl_pin/nvidia/nccl" "$torch_dir/nvidia/nccl"
  for d in "$nvidia"/*/; do
    [ -f "$d/include/cuda_runtime_api.h" ] && ln -sfn "${d%/}" "$torch_dir/nvidia/$(basename "$d")"
  done
else
  log "no CUDA runtime headers beside the project's torch ($nvidia) or no NCCL pin: building without the NCCL backend"
fi

# 2. torch-sys 0.26 with the wrappers of ops missing from this libtorch stubbed.
registry_src="$(ls -d "$HOME"/.cargo/registry/src/*/torch-sys-0.26.0 2>/dev/null | head -1)"
if [ -z "$registry_src" ]; then
  cargo fetch --quiet
  registry_src="$(ls -d "$HOME"/.cargo/registry/src/*/torch-sys-0.26.0 | head -1)"
fi
rm -rf "$work/torch-sys"
cp -r "$registry_src" "$work/torch-sys"
"$py" - "$work/torch-sys/libtch/torch_api_generated.cpp" <<'PY'
import re, sys
# ATen ops that torch 2.11 lacks or declares differently (measured: these 15 fail to compile).
missing = re.compile(r"^\w[\w\s\*]* (atg__philox_\w+|atg__upsample_lanczos2d_aa\w*|"
                     r"atg__flash_attention_forward_no_dropout_inplace|"
                     r"atg__scaled_dot_product_attention_math_for_mps)\(.*\{$")
path = sys.argv[1]
lines = open(path).read().split("\n")
out, i, stubbed = [], 0, []
while i < len(lines):
    m = missing.match(lines[i])
    if not m:
        out.append(lines[i]); i += 1; continue
    out.append(lines[i])
    out.append('  PROTECT(throw std::runtime_error("%s is not available in this libtorch version");)' % m.group(1))
    i += 1
    while lines[i] != "}":
        i += 1
    out.append("}"); i += 1
    stubbed.append(m.group(1))
open(path, "w").write("\n".join(out))
print(f"[gpu-build] stubbed {len(stubbed)} wrappers: {', '.join(stubbed)}", file=sys.stderr)
PY

# 3. A copy of the project that uses both, built into its own target folder.
proj="$work/project"
rm -rf "$proj"
mkdir -p "$proj"
cp -r Cargo.toml Cargo.lock build.rs src csrc .cargo "$proj/"
ln -sfn "$torch_dir/torch" "$proj/.libtorch"
printf '\n[patch.crates-io]\ntorch-sys = { path = "%s" }\n' "$work/torch-sys" >> "$proj/Cargo.toml"
log "building against torch $version (a few minutes the first time)"
(cd "$proj" && LIBTORCH_BYPASS_VERSION_CHECK=1 CARGO_TARGET_DIR="$work/target" \
  cargo build --release --quiet --bin ddpm)

# 4. The staged folder.
rm -rf "$stage"
mkdir -p "$stage/data/mnist"
cp "$work/target/release/ddpm" "$stage/ddpm"
strip "$stage/ddpm" 2>/dev/null || true
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ -f "data/mnist/$f.gz" ]; then
    cp "data/mnist/$f.gz" "$stage/data/mnist/"
  else
    gzip -c "data/mnist/$f" > "$stage/data/mnist/$f.gz"
  fi
done
# pytorch-fid (pure Python; the GPU machine's Python has torch and torchvision) for the FID
# timing's random Inception weights.
fid_pkg="$("$py" -c 'import os, pytorch_fid; print(os.path.dirname(pytorch_fid.__file__))')"
mkdir -p "$stage/py"
cp -r "$fid_pkg" "$stage/py/"
rm -rf "$stage/py/pytorch_fid/__pycache__"
{
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "libtorch: torch==$version (wheel $(ls "$work"/wheel/torch-"$version"-*.whl | xargs -n1 basename | head -1))"
  echo "built: $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m)"
} > "$stage/BUILD"
size="$(du -sh "$stage" | cut -f1)"
log "staged $stage ($size): $(ls "$stage" | tr '\n' ' ')"
