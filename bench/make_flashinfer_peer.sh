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
# Usage: bash bench/make_flashinfer_peer.sh   (about 10 minutes on 2 cores; FIG_FLASHINFER_VERSION)
set -euo pipefail
version=${FIG_FLASHINFER_VERSION:-0.7.2.post1}
tvm_ffi=0.1.15.post2
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.peers/flashinfer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$dest" && mkdir -p "$dest/modules"
get() { python -m pip download -q --no-deps --only-binary=:all: -d "$work/dl" "$@"; }
get flashinfer-python==$version
get apache-tvm-ffi==$tvm_ffi nvidia-ml-py tqdm nvidia-curand          # for this machine's Python
get apache-tvm-ffi==$tvm_ffi --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d "$dest"
python -m pip install -q --no-deps --target "$work/site" "$work"/dl/*.whl
# FlashInfer's Hopper headers include CUTLASS's tensor_fill.h and so curand_kernel.h, which a
# CUDA install without cuRAND lacks: the wheel's headers alone, so that no other header is shadowed.
mkdir -p "$work/curand" && cp "$work"/site/nvidia/*/include/curand*.h "$work/curand/"
# The modules link with -lcudart -lcuda; on a machine without a driver, a stub that names
# libcuda.so.1 (the device's driver resolves it) and this toolkit's cudart.
mkdir -p "$work/lib" && : >"$work/empty.c" && cc -shared -Wl,-soname,libcuda.so.1 -o "$work/lib/libcuda.so" "$work/empty.c"
cudart=$(dirname "$(command -v nvcc)")/../lib; [ -e "$cudart/libcudart.so" ] || cudart=$(dirname "$(readlink -f "$(command -v nvcc)")")/../lib
for d in "$cudart" /usr/local/cuda/lib64 /usr/local/cuda-*/lib; do
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
du -sh "$dest"/* "$dest/modules"
