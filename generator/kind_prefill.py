"""Batch prefill (Ampere path, mma.sync): its key space, its constants and its C ABI.

Queries are ragged by qo_indptr; keys come from the paged cache, or from contiguous K/V (the
ragged wrapper), which the runtime describes to the same kernel as one page per request. The
numbers the host and the kernel share (rows per CTA, keys per tile) are defined here only.
"""
from __future__ import annotations

from . import abi
from .arches import ARCH_BY_NAME, Arch
from .keys import CONVERSIONS, CXX_ELEMENT, KV_BYTES, KV_DTYPES, Q_DTYPES, InstanceKey, KindSpec, kv_element_type
from .kind_decode import CXX_LOGITS, VARIANTS

import os

WARPS = 4
HEAD_DIMS = (64, 80, 96, 128, 192, 256)
ROW_PADDING = 16             # bytes after each shared K/V row (bank spread, prefill_mainloop_sm80.cuh)
# Tuning hook for bench/ only: "m_tiles=1,block_n=32" overrides the tile shape below, for the
# generator and the runtime's schedule alike (set it for both).
TUNE_ENV = "FIG_PREFILL_TUNE"


def _tune() -> dict:
    text = os.environ.get(TUNE_ENV, "")
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def m_tiles(head_dim: int) -> int:
    """m16 tiles of packed query rows per warp. Two would let each K/V fragment read from shared
    memory feed two mma (FA2's 32 rows a warp), but with 64-key tiles ptxas spilled from head dim
    64 on (100-440 bytes), and 16-key tiles pay an O rescale per 16 keys: one tile a warp is
    the default until a variant measures faster (bench/tune_prefill.sh)."""
    return _tune().get("m_tiles", 1)


def block_m(head_dim: int) -> int:
    """Packed query rows (token x q head of a KV head's group) per CTA."""
    return WARPS * 16 * m_tiles(head_dim)


def block_n(head_dim: int, kv_dtype: str = "f16", conversion: str = "none", variant: str = "default") -> int:
    """Keys per shared tile: 64; 16 from head dim 192 on, where O's accumulators (4 registers per
    n-tile of 8 dims) leave S and the loads so little room that ptxas spilled at 32 (e4m3
    software, head dim 256: up to 112 bytes of stack); 32 for the e4m3 software routine with
    soft-cap (its exact replay and tanh spilled 8 bytes at 64 on sm_80 and sm_86)."""
    if "block_n" in _tune():
        return _tune()["block_n"]
    if head_dim >= 192:
        return 16
    return 32 if (kv_dtype, conversion, variant) == ("e4m3", "software", "softcap") else 64


def key_block_n(key: InstanceKey) -> int:
    return block_n(key.head_dim, key.kv_dtype, key.conversion, key.variant)


def smem_bytes(key: InstanceKey, stages: int) -> int:
    """K and V tiles of every stage, Q's fragments (16 bytes per lane per m-tile and k-step) and the
    stages' row offsets (8 bytes per key), reused by the epilogue's fp32 staging of the CTA's
    output rows and their LSE. The kernel static_asserts the same size."""
    d, n = key.head_dim, key_block_n(key)
    ring = (stages * 2 * n * (d * KV_BYTES[key.kv_dtype] + ROW_PADDING) + WARPS * m_tiles(d) * 32 * (d // 16) * 16
            + stages * n * 8)
    return max(ring, block_m(d) * (d + 1) * 4)


def pipeline_stages(key: InstanceKey, arch: Arch) -> int:
    """3 tiles in flight where two CTAs of that size still share an SM, else 2 (0: none fits)."""
    if "stages" in _tune():
        return _tune()["stages"]
    for stages in (3, 2):
        if 2 * (smem_bytes(key, stages) + arch.smem_reserved_per_block) <= arch.smem_per_sm:
            return stages
    return 2 if smem_bytes(key, 2) <= arch.smem_per_block else 0


def fp8_rows_are_words(key: InstanceKey) -> str | None:
    if key.is_fp8 and (key.head_dim // 8) % 4:
        return f"an FP8 V row gives each lane head_dim / 8 = {key.head_dim // 8} codes, not whole words; head dim 80 needs a 16-bit cache"
    return None


def tiles_fit(key: InstanceKey) -> str | None:
    if pipeline_stages(key, ARCH_BY_NAME[key.arch]) == 0:
        return f"two K/V tiles of head dim {key.head_dim} do not fit the {key.arch} shared memory"
    return None


def template_context(key: InstanceKey) -> dict:
    arch = ARCH_BY_NAME[key.arch]
    stages = pipeline_stages(key, arch)
    smem = smem_bytes(key, stages)
    return {
        "q_element": CXX_ELEMENT[key.q_dtype],
        "kv_type": kv_element_type(key),
        "logits": CXX_LOGITS[key.variant],
        "head_dim": key.head_dim,
        "m_tiles": m_tiles(key.head_dim),
        "block_n": key_block_n(key),
        "stages": stages,
        "warps": WARPS,
        "min_ctas_per_sm": max(1, min(2, arch.smem_per_sm // (smem + arch.smem_reserved_per_block))),
        "smem_bytes": smem,
        "smem_per_block": arch.smem_per_block,
    }


WORK = abi.Struct("FigPrefillWork", (
    abi.Field("request", "const int32_t*", "[num_items]"),
    abi.Field("row_begin", "const int32_t*", "[num_items]: first packed query row (token x group + head)"),
    abi.Field("kv_begin", "const int32_t*", "[num_items]: keys [kv_begin, kv_end) of the request"),
    abi.Field("kv_end", "const int32_t*", "[num_items]"),
    abi.Field("partial", "const int32_t*", "[num_items]: -1 writes the output, else slot base + piece"),
    abi.Field("pieces", "const int32_t*", "[num_items]: split pieces of the request (slot of token t = partial + t x pieces)"),
    abi.Field("num_items", "int32_t"),
), "Prefill work list from plan(): one CTA per item and KV head.")

PARAMS = abi.Struct("FigPrefillParams", (
    abi.Field("q", abi.QUERY, "rows = query tokens"),
    abi.Field("kv", abi.PAGED_KV, "ragged K/V: one page per request, page_size 2^30"),
    abi.Field("qo_indptr", "const int32_t*", "[batch + 1]: query tokens of request b"),
    abi.Field("kv_len", "const int32_t*", "[batch]: keys of request b"),
    abi.Field("work", WORK),
    abi.Field("merge", abi.SPLIT_MERGE, "rows = query tokens"),
    abi.Field("out", abi.OUTPUT, "rows = query tokens"),
    abi.Field("scales", abi.SCALES),
    abi.Field("causal", "int32_t", "query i of a request sees keys <= kv_len - qo_len + i"),
    abi.Field("window_left", "int32_t", ">= 0: and keys >= that bound - window_left; -1: no window"),
), "Everything one prefill launch reads.")

ABI = abi.KindAbi("prefill", PARAMS, (WORK, PARAMS), (
    abi.Function("run", "int", (("const FigPrefillParams*", "params"), ("void*", "stream")),
                 "Launches prefill (+ the split-KV merge where plan() split a request); a cudaError_t value."),
    abi.Function("occupancy", "int", (("int*", "ctas_per_sm"), ("int*", "num_sms")),
                 "CTAs of the prefill kernel that fit one SM, and the SM count, of the current device."),
))

SPEC = KindSpec(
    name="prefill",
    template="prefill.cu.j2",
    summary="batch prefill, ragged queries against a paged or contiguous KV cache (mma.sync)",
    abi=ABI,
    axes={"q_dtype": Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS, "conversion": CONVERSIONS,
          "variant": VARIANTS},
    defaults={"head_dim": (128,), "variant": ("default",)},
    predicates=(fp8_rows_are_words, tiles_fit),
    context=template_context,
)
