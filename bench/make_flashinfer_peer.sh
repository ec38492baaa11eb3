#!/usr/bin/env bash
# Prepares .peers/flashinfer/ on this CPU machine (nvcc, no GPU) for `run_device.sh peers`: the
# device has no FlashInfer, no network, and compiling FlashInfer's JIT modules there would cost
# device time. What it holds (bench/peer_flashinfer.py says how it is used):
#   flashinfer-<version>.tar.xz  the flashinfer-python package less the sources nobody compiles
#                                there (CUTLASS, CCCL, spdlog, and every csrc file but the batch
#                                prefill ones and the templates, which it still renders)
#   apache_tvm_ffi-*-cp312-*.whl the module loader FlashInfer needs, for the device's Python 3.12
#   modules/*.so                 the batch prefill modules of bench/peer_flashinfer.py's MODULES,
#                                built for sm_90a by FlashInfer's own JIT build
# Usage: bash bench/make_flashinfer_peer.sh   (about 13 minutes on 2 cores; FIG_FLASHINFER_VERSION, CUDA_HOME)
set -euo pipefail
version=${FIG_FLASHINFER_VERSION:-0.7.2.post1}
tvm_ffi=0.1.15.post2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -c "import torch, ninja" || { echo "needs torch (any build) and ninja in this Python"; exit 1; }
# FlashInfer's build takes the toolkit from CUDA_HOME (or from where `nvcc` is, which may be a
# wrapper script): the toolkit nvcc itself reports.
export CUDA_HOME=${CUDA_HOME:-$(cd "$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd)}
cuda_major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
dest=$work/peer && mkdir -p "$dest/modules"
get() { python -m pip download -q --no-deps --only-binary=:all: -d "$work/dl" "$@"; }
get flashinfer-python==$version
# for this machine's Python; cuRAND's headers for this toolkit's major version
get apache-tvm-ffi==$tvm_ffi nvidia-ml-py tqdm "$([ "$cuda_major" = 12 ] && echo nvidia-curand-cu12 || echo nvidia-curand)"
python -m pip download -q --no-deps --only-binary=:all: -d "$dest" apache-tvm-ffi==$tvm_ffi \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64   # for the device's Python 3.12
python -m pip install -q --no-deps --target "$work/site" "$work"/dl/*.whl
# FlashInfer's Hopper headers include CUTLASS's tensor_fill.h and so curand_kernel.h, which a
# CUDA install without cuRAND lacks: the wheel's headers alone, so that no other header is shadowed.
mkdir -p "$work/curand" && cp "$work"/site/nvidia/*/include/curand*.h "$work/curand/"
# The modules link with -lcudart -lcuda. On a machine without a driver: a stub that names
# libcuda.so.1 (the device's driver resolves it); cudart is the toolkit's (lib64, or lib).
mkdir -p "$work/lib" && : >"$work/empty.c" && cc -shared -Wl,-soname,libcuda.so.1 -o "$work/lib/libcuda.so" "$work/empty.c"
for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib"; do
  [ -e "$d/libcudart.so" ] && { ln -sf "$(readlink -f "$d/libcudart.so")" "$work/lib/libcudart.so"; break; }
done
PYTHONPATH=$work/site FLASHINFER_WORKSPACE_BASE=$work/ws FLASHINFER_CUDA_ARCH_LIST=9.0a MAX_JOBS=$(nproc) \
  FLASHINFER_EXTRA_CUDAFLAGS="-isystem $work/curand" FLASHINFER_EXTRA_LDFLAGS="-L$work/lib" \
  python "$root/bench/peer_flashinfer.py" --prebuild "$dest/modules"
pkg=$work/site/flashinfer
rm -rf "$pkg/data/cutlass" "$pkg/data/cccl" "$pkg/data/spdlog"
find "$pkg/data/csrc" -mindepth 1 -maxdepth 1 ! -name 'batch_prefill*' ! -name '*.jinja' -exec rm -rf {} +
find "$pkg" -name __pycache__ -type d -prune -exec rm -rf {} +
tar cJf "$dest/flashinfer-$version.tar.xz" -C "$work/site" flashinfer
# only a complete folder replaces the one there
rm -rf "$root/.peers/flashinfer" && mkdir -p "$root/.peers" && mv "$dest" "$root/.peers/flashinfer"
du -sh "$root/.peers/flashinfer"/* "$root/.peers/flashinfer/modules"
