"""FlashInfer as a peer measured in the same run as ours (bench/rotated_prefill.py --set peers).

The device machine has neither FlashInfer nor a network, and FlashInfer compiles each kernel
variant on its first call (JIT, 6-100 s a variant on the device's 16 cores). So
bench/make_flashinfer_peer.sh prepares .peers/flashinfer/ on the CPU machine: the flashinfer-python
package (its Python files, and of its sources only the templates that name the modules), the
apache-tvm-ffi wheel it loads its modules with, and the modules the rows below need, compiled for
sm_90a by FlashInfer's own JIT build (its flags, its nvcc). `run_device.sh peers` unpacks them and
sets FIG_FLASHINFER_MODULES; load() then makes FlashInfer load each module from there instead of
building it, and a module that is not there is an error naming it, never a silent build.

Rows (the configurations rotated_prefill's "peers" set names with library "flashinfer-fa2" /
"flashinfer-fa3", d128, bf16 output): the FA2 backend (mma.sync) with bf16 q on a bf16 or e4m3 KV
cache, ragged and paged; the FA3 backend (sm_90a, TMA + WGMMA) in bf16, and in e4m3 q/k/v on the
paged cache (its ragged FP8 call raised a TypeError on 0.7.2.post1, shared/DEVICE_BASELINE.md).

usage: python bench/peer_flashinfer.py --prebuild DIR   (CPU machine: compile the modules into DIR)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

HEAD_DIM = 128
# (backend, q dtype, KV dtype) of every module the peers set uses; output bf16, int32 indices
MODULES = (("fa2", torch.bfloat16, torch.bfloat16), ("fa2", torch.bfloat16, torch.float8_e4m3fn),
           ("fa3", torch.bfloat16, torch.bfloat16), ("fa3", torch.float8_e4m3fn, torch.float8_e4m3fn))


def _module_args(q_dtype, kv_dtype):
    # the argument tuple FlashInfer's plan() passes for these dtypes (get_module_args in its
    # prefill.py): o dtype, index dtype, head dims, no pos. encoding / window / soft-cap / fp16 QK
    return (q_dtype, kv_dtype, torch.bfloat16, torch.int32, HEAD_DIM, HEAD_DIM, 0, False, False, False)


def _specs(backend, q_dtype, kv_dtype):
    from flashinfer import prefill
    from flashinfer.jit.attention import modules
    args = _module_args(q_dtype, kv_dtype)
    if backend == "fa2":  # a primary module (plan, ragged and paged runs) and a lazily loaded paged one
        return [prefill._gen_batch_prefill_primary_module(backend, *args),
                prefill._gen_batch_prefill_independent_paged_module(backend, *args)]
    return [modules.gen_batch_prefill_module(backend, *args)]


def load():
    """(flashinfer, None), or (None, why it cannot run here)."""
    try:
        import flashinfer
        from flashinfer.jit import core
    except Exception as e:  # not installed, or a dependency missing
        return None, f"flashinfer not importable: {type(e).__name__}: {e}"
    modules_dir = os.environ.get("FIG_FLASHINFER_MODULES")
    if modules_dir:
        def load_prebuilt(spec):
            path = Path(modules_dir) / f"{spec.name}.so"
            if not path.exists():
                raise FileNotFoundError(f"FlashInfer module {spec.name} was not prebuilt into {modules_dir} "
                                        "(bench/make_flashinfer_peer.sh)")
            return spec.load(path)
        core.JitSpecNvcc.build_and_load = load_prebuilt
    return flashinfer, None


def prebuild(dest: Path) -> None:
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
    dest.mkdir(parents=True, exist_ok=True)
    for backend, q_dtype, kv_dtype in MODULES:
        for spec in _specs(backend, q_dtype, kv_dtype):
            print(f"building {spec.name}", flush=True)
            spec.build()
            shutil.copy2(spec.jit_library_path, dest / f"{spec.name}.so")


def wrapper(flashinfer, layout: str, backend: str, workspace: torch.Tensor):
    cls = (flashinfer.BatchPrefillWithRaggedKVCacheWrapper if layout == "ragged"
           else flashinfer.BatchPrefillWithPagedKVCacheWrapper)
    return cls(workspace, kv_layout="NHD", backend=backend)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prebuild", type=Path, required=True)
    args = ap.parse_args(argv)
    prebuild(args.prebuild)


if __name__ == "__main__":
    sys.exit(main())
