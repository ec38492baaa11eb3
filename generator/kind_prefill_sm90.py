"""Batch prefill on the Hopper path (sm_90a: WGMMA, warp-specialized): its key space, its
constants and its C ABI, which it shares with the Ampere-path prefill (`kind_prefill.ABI`): the
same plan(), work list and parameters, so a wrapper switches family by switching instance.

The CTA is one producer warpgroup and CONSUMERS consumer warpgroups of CONSUMER_ROWS packed query
rows each. The numbers the host and the kernel share (rows per CTA, keys per tile) are defined
here only.
"""
from __future__ import annotations

from .arches import ARCH_BY_NAME, Arch
from .keys import CXX_ELEMENT, Q_DTYPES, InstanceKey, KindSpec
from .kind_decode import CXX_LOGITS, VARIANTS
from . import kind_prefill
from .kind_prefill import WORK_ITEM_BYTES

CONSUMERS = 2
CONSUMER_ROWS = 64            # one 64-row WGMMA per consumer warpgroup
# setmaxnreg: the producer's cp.async gather keeps few values; the consumers get the rest of the
# CTA's launch allocation, 168 a thread at 384 threads, so the three warpgroups' counts (multiples
# of 8) add up to at most 3 x 168 = 504. The consumers at head dim 128 use up to R220.
PRODUCER_REGISTERS = 56
CONSUMER_REGISTERS = 224
# 16-bit operands in 128-byte swizzled atoms of 64 elements along the head dim.
HEAD_DIMS = (64, 128, 192, 256)
KV_DTYPES = ("f16", "bf16")   # FP8 tiles are not built yet (issue 12, milestone 3)
TILE_KEYS = (128, 96, 64)     # candidates for keys per stage, preferred first
MAX_STAGES = 4
# Registers a consumer thread spends on O (D / 2) and S (N / 2) fp32 accumulators, at most; the
# rest of CONSUMER_REGISTERS holds P, Q/K/V descriptors, addresses and the softmax state.
ACCUMULATOR_REGISTERS = 192


def block_m(key: InstanceKey) -> int:
    return CONSUMERS * CONSUMER_ROWS


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _smem_bytes(head_dim: int, n: int, stages_k: int, stages_v: int) -> int:
    """sizeof(PrefillSm90Smem::Storage) (prefill_sm90_smem.cuh): Q, then a 1024-aligned union of
    the K and V rings with the epilogue's fp32 rows and LSE, then the gather's row addresses (one
    slot more than K stages), the mbarriers (full and empty, per K and per V stage), the work
    item, all rounded to the storage's 1024-byte alignment."""
    q = block_m(None) * head_dim * 2
    ring = _align(stages_k * n * head_dim * 2, 1024) + _align(stages_v * n * head_dim * 2, 1024)
    epilogue = block_m(None) * (head_dim + 1) * 4
    tail = (stages_k + 1) * n * 8 + 2 * (stages_k + stages_v) * 8 + WORK_ITEM_BYTES
    return _align(q + _align(max(ring, epilogue), 1024) + tail, 1024)


def block_n(key: InstanceKey) -> int:
    """The largest candidate whose accumulators fit the consumer's registers and of which two
    stages fit the arch's shared memory (one CTA per SM)."""
    arch = ARCH_BY_NAME[key.arch]
    for n in TILE_KEYS:
        if (key.head_dim + n) // 2 <= ACCUMULATOR_REGISTERS and _smem_bytes(key.head_dim, n, 2, 2) <= arch.smem_per_block:
            return n
    return 0


def pipeline_stages(key: InstanceKey, arch: Arch) -> tuple[int, int]:
    """(K stages, V stages): K first, as many as fit up to MAX_STAGES next to two of V (the
    consumers wait on K a GEMM earlier than on V: prefill_sm90_load.cuh), then V up to K's.
    (0, 0): not even two each fit."""
    n = block_n(key)
    fits = lambda sk, sv: n and _smem_bytes(key.head_dim, n, sk, sv) <= arch.smem_per_block  # noqa: E731
    k = next((s for s in range(MAX_STAGES, 1, -1) if fits(s, 2)), 0)
    v = next((s for s in range(k, 1, -1) if fits(k, s)), 0)
    return (k, v) if k and v else (0, 0)


def smem_bytes(key: InstanceKey) -> int:
    return _smem_bytes(key.head_dim, block_n(key), *pipeline_stages(key, ARCH_BY_NAME[key.arch]))


def tiles_fit(key: InstanceKey) -> str | None:
    if pipeline_stages(key, ARCH_BY_NAME[key.arch]) == (0, 0):
        return f"two K/V stages of head dim {key.head_dim} do not fit the {key.arch} shared memory"
    return None


def template_context(key: InstanceKey) -> dict:
    arch = ARCH_BY_NAME[key.arch]
    return {
        "q_element": CXX_ELEMENT[key.q_dtype],
        "logits": CXX_LOGITS[key.variant],
        "head_dim": key.head_dim,
        "block_n": block_n(key),
        "stages_k": pipeline_stages(key, arch)[0],
        "stages_v": pipeline_stages(key, arch)[1],
        "consumers": CONSUMERS,
        "consumer_rows": CONSUMER_ROWS,
        "producer_registers": PRODUCER_REGISTERS,
        "consumer_registers": CONSUMER_REGISTERS,
        "smem_bytes": smem_bytes(key),
        "smem_per_block": arch.smem_per_block,
    }


SPEC = KindSpec(
    name="prefill_sm90",
    template="prefill_sm90.cu.j2",
    summary="batch prefill on Hopper (sm_90a): a TMA / cp.async producer warpgroup, WGMMA consumer warpgroups",
    abi=kind_prefill.ABI,
    axes={"q_dtype": Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS, "conversion": ("none",),
          "variant": VARIANTS},
    defaults={"head_dim": (128,), "variant": ("default",)},
    predicates=(tiles_fit,),
    context=template_context,
    tiles=lambda key: (block_m(key), block_n(key)),
)
