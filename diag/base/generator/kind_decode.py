"""Paged batch decode (Ampere path, mma.sync): its key space, its constants and its C ABI.

The numbers that both the host and the kernel use are defined here and only here: the template
receives them as constants (the kernel static_asserts that its structs agree), and the runtime
imports them for its schedule.
"""
from __future__ import annotations


from . import abi
from .arches import ARCH_BY_NAME, Arch
from .keys import (CONVERSIONS, CXX_ELEMENT, KV_BYTES, KV_DTYPES, Q_DTYPES, InstanceKey, KindSpec, kv_element_type,
                   tuning_overrides)

WARPS = 4              # warps per CTA; each owns one warp tile or one slice of a tile's tokens
STEP_TOKENS = 16       # tokens per warp step: the k of the P.V mma (m16n8k16)
ROWS_PER_TILE = 8      # q heads per warp tile: rows 0..7 of the m16 tile (see mma_sm80.cuh)
HEAD_DIMS = (64, 128, 256)
VARIANTS = ("default", "softcap")
CXX_LOGITS = {"default": "fig::PlainLogits", "softcap": "fig::SoftCapLogits"}

# Little's law: ~3 TB/s x ~2.5 us loaded latency / (132 SMs x 8 warps) ~ 7 KB per warp at least;
# the tuning sweep (bench/tune_decode.py, notes in issue #3) measured 24 KB best on the H100.
BYTES_IN_FLIGHT_PER_WARP = 24 * 1024
MIN_CTAS_FOR_LATENCY = 2  # a lone CTA (4 warps) cannot hide the softmax and conversion latency
REGISTER_OVERHEAD = 100  # addresses, softmax state, converted fragments (ptxas -v: 188 uncapped, fp8 d128)
# Tuning hook for bench/tune_decode.py only: "stages=4,min_ctas=3" overrides the derived constants.
TUNE_ENV = "FIG_DECODE_TUNE"
TUNE_NAMES = ("stages", "min_ctas")


def step_bytes_per_warp(kv_dtype: str, head_dim: int) -> int:
    """K and V bytes of one step of one KV head."""
    return 2 * STEP_TOKENS * head_dim * KV_BYTES[kv_dtype]


def has_replay_path(kv_dtype: str, conversion: str) -> bool:
    """The software e4m3 routine keeps a second, exact copy of the step loop for NaN codes."""
    return kv_dtype == "e4m3" and conversion == "software"


def q_fragment_in_smem(head_dim: int) -> bool:
    """Whether a warp keeps Q's mma fragment in shared memory instead of registers. An mma.sync
    takes A and C/D as register quads, the unused rows 8..15 included, so Q holds 4 registers per
    k-step and O 4 per n-tile: 3 D / 4 in all. At head dim 256 that is 192 of 255 and ptxas
    spilled (up to 1 KB per thread, e4m3 software); with Q in shared memory nothing spills."""
    return 4 * (head_dim // 16 + head_dim // 8) > 128


def q_smem_bytes(head_dim: int) -> int:
    """Q's fragment of every warp, 16 bytes per lane per two k-steps."""
    return WARPS * 32 * (head_dim // 32) * 16 if q_fragment_in_smem(head_dim) else 0


def max_stages(kv_dtype: str, head_dim: int, arch: Arch) -> int:
    """Steps whose copies fit one CTA's shared memory at all (0: the instance cannot exist)."""
    return (arch.smem_per_block - q_smem_bytes(head_dim)) // (WARPS * step_bytes_per_warp(kv_dtype, head_dim))


def pipeline_stages(kv_dtype: str, head_dim: int, arch: Arch, conversion: str = "none") -> int:
    """cp.async steps a warp keeps in flight: enough bytes to cover the loaded memory latency,
    2 (double buffering) to 8, and few enough that two CTAs share an SM where the step is small
    enough to allow it. The one exception is a 100 KB part with a 16-bit head-dim-256 step: it
    leaves room for one stage, whose latency the CTA's other three warps then hide.

    The step loop is unrolled by the stage count, which lets the compiler overlap consecutive
    steps (a rolled loop measured 10-15% slower on the H100). The e4m3 software body is about
    twice as long and exists twice (fast path and exact replay), so it takes half the stages to
    keep the unrolled loop in the instruction cache (tune_decode.py on the H100, batch 64 x 4096:
    3 stages 224 us, 6 stages 250 us at d9e55df; after the V-copy fix of 94a5346, 2 / 3 / 4
    stages 196 / 199 / 202 us, within the sweep's noise, and the hardware instance's 6 stages
    205 us against 210 us for 3 or 4: bench/results/decode-tune-94a5346-*.json)."""
    step = step_bytes_per_warp(kv_dtype, head_dim)
    stages = max(2, min(8, BYTES_IN_FLIGHT_PER_WARP // step))
    if has_replay_path(kv_dtype, conversion):
        stages = max(2, stages // 2)
    fits_two = ((arch.smem_per_sm // MIN_CTAS_FOR_LATENCY - arch.smem_reserved_per_block - q_smem_bytes(head_dim))
                // (WARPS * step))
    return min(max(2, min(stages, fits_two)), max_stages(kv_dtype, head_dim, arch))


def smem_bytes(kv_dtype: str, head_dim: int, arch: Arch, conversion: str = "none", stages: int | None = None) -> int:
    """Dynamic shared memory of one CTA: the copy ring (and Q's fragment where it lives there),
    reused by the epilogue's merge buffer (fp32 O of every warp tile row plus its max and sum).
    The kernel static_asserts that its SharedStorage structs have exactly this size."""
    stages = pipeline_stages(kv_dtype, head_dim, arch, conversion) if stages is None else stages
    ring = WARPS * stages * step_bytes_per_warp(kv_dtype, head_dim) + q_smem_bytes(head_dim)
    merge = WARPS * ROWS_PER_TILE * (head_dim + 2) * 4
    return max(ring, merge)


def min_ctas_per_sm(kv_dtype: str, head_dim: int, arch: Arch, conversion: str = "none",
                    stages: int | None = None) -> int:
    """CTAs per SM the register cap is set for: as many as shared memory allows, unless the
    registers a lane needs (O: D/4, Q: D/8 (an estimate kept where Q lives in shared memory),
    one step of K or V words read back) would not fit."""
    by_smem = arch.smem_per_sm // (smem_bytes(kv_dtype, head_dim, arch, conversion, stages) + arch.smem_reserved_per_block)
    step_words = head_dim * KV_BYTES[kv_dtype] // 4
    regs = head_dim // 4 + head_dim // 8 + step_words + REGISTER_OVERHEAD
    by_regs = arch.registers_per_sm // (WARPS * 32 * regs)
    return max(1, min(4, by_smem, by_regs))


def _tuning_overrides() -> dict:
    return tuning_overrides(TUNE_ENV, TUNE_NAMES)


def copy_ring_fits(key: InstanceKey) -> str | None:
    arch = ARCH_BY_NAME[key.arch]
    if max_stages(key.kv_dtype, key.head_dim, arch) < 1:
        need = WARPS * step_bytes_per_warp(key.kv_dtype, key.head_dim)
        return f"one copy step needs {need} bytes of shared memory; {key.arch} gives a CTA {arch.smem_per_block}"
    return None


def template_context(key: InstanceKey) -> dict:
    arch = ARCH_BY_NAME[key.arch]
    tune = _tuning_overrides()
    stages = tune.get("stages", pipeline_stages(key.kv_dtype, key.head_dim, arch, key.conversion))
    return {
        "q_element": CXX_ELEMENT[key.q_dtype],
        "kv_type": kv_element_type(key),
        "logits": CXX_LOGITS[key.variant],
        "head_dim": key.head_dim,
        "stages": stages,
        "warps": WARPS,
        "step_tokens": STEP_TOKENS,
        "rows_per_tile": ROWS_PER_TILE,
        "q_in_smem": "true" if q_fragment_in_smem(key.head_dim) else "false",
        "min_ctas_per_sm": tune.get("min_ctas", min_ctas_per_sm(key.kv_dtype, key.head_dim, arch, key.conversion,
                                                                stages)),
        "smem_bytes": smem_bytes(key.kv_dtype, key.head_dim, arch, key.conversion, stages),
        "smem_per_block": arch.smem_per_block,
    }


WORK = abi.Struct("FigDecodeWork", (
    abi.Field("request", "const int32_t*", "[num_items]: one entry per CTA column"),
    abi.Field("begin", "const int32_t*", "[num_items]: token range [begin, end) of the request"),
    abi.Field("end", "const int32_t*", "[num_items]"),
    abi.Field("partial", "const int32_t*", "[num_items]: -1 writes the output directly, else a partial slot"),
    abi.Field("num_items", "int32_t", "the grid: work items launched (a CUDA-graph plan's capacity)"),
    abi.Field("live_items", "const int32_t*", "[1]: work items in use this plan (<= num_items); later CTAs exit"),
), "Decode work list from plan(): a request's token range, split-KV pieces included.")

PARAMS = abi.Struct("FigDecodeParams", (
    abi.Field("q", abi.QUERY, "rows = requests"),
    abi.Field("kv", abi.PAGED_KV),
    abi.Field("work", WORK),
    abi.Field("merge", abi.SPLIT_MERGE, "rows = requests"),
    abi.Field("out", abi.OUTPUT, "rows = requests"),
    abi.Field("scales", abi.SCALES),
), "Everything one decode launch reads.")

ABI = abi.KindAbi("decode", PARAMS, (WORK, PARAMS), (
    abi.Function("run", "int", (("const FigDecodeParams*", "params"), ("void*", "stream")),
                 "Launches decode (+ the split-KV merge where plan() split a request); a cudaError_t value."),
    abi.Function("occupancy", "int", (("int*", "ctas_per_sm"), ("int*", "num_sms")),
                 "CTAs of the decode kernel that fit one SM, and the SM count, of the current device."),
    abi.Function("ctas_per_work_item", "int", (("int", "num_qo_heads"), ("int", "num_kv_heads")),
                 "CTAs per work item (KV heads x row groups), so plan() sizes its schedule exactly.",
                 returns_status=False),
    abi.Function("convert_kv", "int", (("const uint8_t*", "codes"), ("float*", "out"), ("int", "n"),
                                       ("void*", "stream")),
                 "Test hook: n FP8 codes through the instance's own KV conversion, as fp32 with the routine's "
                 "bias undone; cudaErrorNotSupported for 16-bit KV."),
))

SPEC = KindSpec(
    name="decode",
    template="decode.cu.j2",
    summary="paged batch decode, one query token per request (mma.sync)",
    abi=ABI,
    axes={"q_dtype": Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS, "conversion": CONVERSIONS,
          "variant": VARIANTS},
    defaults={"head_dim": (128,), "variant": ("default",)},
    predicates=(copy_ring_fits,),
    context=template_context,
)
