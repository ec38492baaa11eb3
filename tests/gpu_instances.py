"""The instances the GPU tests run, for the visible GPU's arch, and a builder for the missing ones."""
from __future__ import annotations

import os
import sys
import time

from generator import enumerate_instances
from generator.instances import KINDS
from generator.arches import arch_for_capability

# (selection) -> every valid key of it on the test arch. test_unbuilt_instance_names_the_fix (decode
# and prefill) relies on soft-cap at head dim 64 staying out of this list; the prefill soft-cap tests
# use head dim 128.
SELECTIONS = (
    {"kind": ("decode",), "head_dim": (64, 128, 256), "variant": ("default",)},
    {"kind": ("decode",), "head_dim": (128,), "variant": ("softcap",)},
    {"kind": ("prefill",), "head_dim": (64, 128, 256), "variant": ("default",)},
    {"kind": ("prefill",), "head_dim": (128,), "variant": ("softcap",)},
    # the other prefill head dims (tiles, fragments and the merge off powers of two), q bf16
    {"kind": ("prefill",), "head_dim": (80, 96, 192), "variant": ("default",), "q_dtype": ("bf16",)},
    {"kind": ("append",), "head_dim": (64, 128, 256)},
    # the Hopper family (sm_90a only: nothing on other arches; an e4m3 q with both output dtypes);
    # soft-cap at head dim 128 (an e4m3 q: one cache and output dtype) and, 16-bit, at 192
    {"kind": ("prefill_sm90",), "head_dim": (64, 128, 192, 256), "variant": ("default",)},
    {"kind": ("prefill_sm90",), "head_dim": (128,), "variant": ("softcap",), "q_dtype": ("f16", "bf16")},
    {"kind": ("prefill_sm90",), "head_dim": (192,), "variant": ("softcap",), "q_dtype": ("f16", "bf16"),
     "kv_dtype": ("f16", "bf16")},
    {"kind": ("prefill_sm90",), "head_dim": (128,), "variant": ("softcap",), "q_dtype": ("e4m3",),
     "kv_dtype": ("e4m3",), "o_dtype": ("bf16",)},
    # FP8 tiles with the soft-cap at head dims 64 (persistent two-consumer CTAs on 64-byte rows), 192
    # (three 64-byte atoms a row, 64-key tiles) and 256 (64-key tiles): a bf16 q and an e4m3 cache
    # only, so that f16 / e5m2 there stays unbuilt for the tests above
    {"kind": ("prefill_sm90",), "head_dim": (64, 192, 256), "variant": ("softcap",), "q_dtype": ("bf16",),
     "kv_dtype": ("e4m3",)},
)


def visible_arch() -> str:
    import torch
    arch = arch_for_capability(torch.cuda.get_device_capability())
    if arch is None:
        raise RuntimeError(f"no flashinfer_gen arch serves {torch.cuda.get_device_name()}")
    return arch.name


def kv_cases() -> list:
    """(q dtype, kv dtype, fp8 conversion) for the GPU tests: every pair, with each conversion the
    visible GPU's arch runs (the software one alone where there is no GPU: the tests skip there)."""
    import torch
    from generator.arches import ARCH_BY_NAME
    conversions = ARCH_BY_NAME[visible_arch()].conversions if torch.cuda.is_available() else ("software",)
    cases = []
    for q in (torch.float16, torch.bfloat16):
        cases.append((q, q, None))
        cases += [(q, kv, conv) for kv in (torch.float8_e4m3fn, torch.float8_e5m2) for conv in conversions]
    return cases


def required_keys(arch: str) -> list:
    keys = set()
    for selection in SELECTIONS:
        kinds = tuple(k for k in selection["kind"] if k in KINDS)
        if kinds:  # a kind not in the generator yet builds nothing: its own tests fail, the others run
            keys.update(enumerate_instances({**selection, "kind": kinds, "arch": (arch,)}))
    return sorted(keys)


def ensure_built() -> list:
    from flashinfer_gen.builder import build
    from flashinfer_gen.registry import default_registry
    keys = required_keys(visible_arch())
    missing = sorted(set(keys) - set(default_registry().built_keys()))
    if missing:
        print(f"\nbuilding the {len(missing)} instances the GPU tests need ({len(keys)} in all) ...", flush=True)
        t0 = time.monotonic()
        build(missing, jobs=os.cpu_count(), echo=lambda msg: (sys.stdout.write(msg), sys.stdout.flush()))
        print(f"built in {time.monotonic() - t0:.0f} s", flush=True)
    return keys
