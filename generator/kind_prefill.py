"""Batch prefill (Ampere path, mma.sync): its key space, its constants and its C ABI.

Queries are ragged by qo_indptr; keys come from the paged cache, or from contiguous K/V (the
ragged wrapper), which the runtime describes to the same kernel as one page per request. The
numbers the host and the kernel share (rows per CTA, keys per tile) are defined here only.
"""
from __future__ import annotations

from . import abi
from .arches import ARCH_BY_NAME, Arch
from .keys import (CONVERSIONS, CXX_ELEMENT, KV_DTYPES, Q_DTYPES, InstanceKey, KindSpec, kv_element_type,
                   tuning_overrides)
from .kind_decode import CXX_LOGITS, VARIANTS


WARPS = 4                    # warps per CTA where a warp owns two m16 tiles (head dims up to 128)
WIDE_WARPS = 8               # where it owns one, when that buys a larger key tile (warps())
THREAD_REGISTERS = 255       # what a thread of the mainloop takes (prefill_mainloop_sm80.cuh)
HEAD_DIMS = (64, 80, 96, 128, 192, 256)
WORK_ITEM_BYTES = 32         # the CTA's work item (PrefillRows, 8 ints) ahead of the mainloop's storage
STORAGE_ALIGN = 128          # the mainloop's storage starts on a 128-byte line (alignas in prefill_mainloop_sm80.cuh)
ROW_PADDING = 16             # bytes after each shared K/V row ldmatrix reads that is not XOR-swizzled (row_padding)
# Tuning hook for bench/ only: "m_tiles=1,block_n=32" overrides the tile shape below, for the
# generator and the runtime's schedule alike (set it for both); "codes=0" turns fp8_from_codes off.
TUNE_ENV = "FIG_PREFILL_TUNE"


def _tune() -> dict:
    return tuning_overrides(TUNE_ENV, ("m_tiles", "block_n", "stages", "warps", "codes"))


def m_tiles(head_dim: int) -> int:
    """m16 tiles of packed query rows per warp. Two (FA2's 32 rows a warp) let each K/V fragment
    read from shared memory feed two mma; from head dim 192 on, O alone would take 2 x D / 2
    registers a thread, so one."""
    return _tune().get("m_tiles", 2 if head_dim <= 128 else 1)


def _block_m(head_dim: int, warps: int) -> int:
    return warps * 16 * m_tiles(head_dim)


def block_m(key: InstanceKey) -> int:
    """Packed query rows (token x q head of a KV head's group) per CTA."""
    return _block_m(key.head_dim, warps(key))


def row_padding(head_dim: int, fp8: bool, from_codes: bool = False) -> int:
    """Bytes after each shared K/V row that the warps read with ldmatrix: 16-bit rows (2 x D bytes),
    or where the warps read FP8 codes themselves (fp8_from_codes) the ring's rows of codes (D bytes).
    None where those rows are copied from the cache and a row is a whole number of 128-byte lines,
    which are XOR-swizzled instead, so that eight threads copying 128 bytes of a row write one
    line (smem_rows.cuh); else ROW_PADDING, an odd number of 16-byte chunks a row. An FP8 cache's
    16-bit tile is written by the upcast, and with the swizzle's per-step addresses its two-m-tile
    instances spilled (88-104 bytes at head dim 128)."""
    data = head_dim if from_codes else 2 * head_dim
    copied = not fp8 or from_codes
    return 0 if copied and data % 128 == 0 else ROW_PADDING


# The FP8 (cache dtype, conversion) pairs whose upcast in registers is two instructions a word of
# four codes and has no special code to replay: `cvt` (two F2FP), and e5m2's software routine
# (two byte permutes: e5m2 is the upper byte of an fp16). The e4m3 software routine takes nine
# with its NaN test (fp8_convert.cuh), which fp8_from_codes() would have all four warps repeat.
CODES_UPCAST_IN_TWO = frozenset({("e4m3", "hardware"), ("e5m2", "hardware"), ("e5m2", "software")})
# Head dims where a warp owns two m16 tiles (one conversion feeds two mma) and the codes path
# measured faster than the CTA's upcast (README, "The codes path for e5m2's software routine, and
# at head dim 64" and "FP8 codes upcast by the warps"; H100, rotated A/B): 128, whose rows of codes
# are whole 128-byte lines that the ring XOR-swizzles for ldmatrix, and 64, whose rows it pads
# (row_padding). At 96 (padded too) it measured -2% to +2%, so 96 keeps the CTA's upcast; 80
# cannot (each ldmatrix takes 32 keys of K or 32 dims of V).
CODES_HEAD_DIMS = frozenset({64, 128})


def fp8_from_codes(key: InstanceKey) -> bool:
    """Whether the warps read K's and V's FP8 codes straight from the copy ring with ldmatrix and
    upcast them in registers (prefill_mainloop_sm80.cuh), so that the CTA upcasts nothing into
    16-bit tiles and a tile needs one barrier. Measured (README, "FP8 codes upcast by the warps"
    and the section above it) and so taken where the upcast is two instructions a word
    (CODES_UPCAST_IN_TWO; V's one byte permute more with `cvt`), which all four warps repeat, at
    the head dims of CODES_HEAD_DIMS."""
    if _tune().get("codes", 1) == 0:  # bench/ only: the CTA's upcast instead, for an A/B
        return False
    return ((key.kv_dtype, key.conversion) in CODES_UPCAST_IN_TWO and key.head_dim in CODES_HEAD_DIMS
            and m_tiles(key.head_dim) == 2)


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def _smem_bytes(head_dim: int, fp8: bool, n: int, stages: int, warps: int, from_codes: bool = False) -> int:
    """The work item, then, from the next 128-byte line, the mainloop's shared storage
    (prefill_mainloop_sm80.cuh), reused by the epilogue's fp32 staging of the CTA's output rows
    and their LSE; the kernel static_asserts the same size. Mainloop: the copy ring of `stages`
    K and V tiles (16-bit rows of 2 x D + row_padding bytes; FP8 rows as stored, plus the 16-bit
    K and V tiles the CTA upcasts them into, unless the warps read the codes: fp8_from_codes, whose
    rows of D bytes row_padding pads too), Q's
    fragments (16 bytes per lane per m-tile and k-step), the ring's row offsets (8 bytes per key)
    and each packed row's key bounds (8 bytes)."""
    d, bm = head_dim, _block_m(head_dim, warps)
    mma_row = (d if from_codes else 2 * d) + row_padding(d, fp8, from_codes)  # the rows ldmatrix reads
    copy_row = d if fp8 and not from_codes else mma_row
    upcast_tiles = 2 if fp8 and not from_codes else 0
    mainloop = (upcast_tiles * n * mma_row + stages * 2 * n * copy_row + warps * m_tiles(d) * 32 * (d // 16) * 16
                + stages * n * 8 + bm * 8)
    return _round_up(WORK_ITEM_BYTES, STORAGE_ALIGN) + _round_up(max(mainloop, bm * (d + 1) * 4), STORAGE_ALIGN)


def _ctas_per_sm(smem: int, arch: Arch, warps: int) -> int:
    """CTAs of `warps` warps and `smem` bytes that share an SM, at most 2: by shared memory, and by
    registers at the 255 a thread that two m16 tiles of O and 64 keys of S fill (so two CTAs of
    WIDE_WARPS never do)."""
    by_smem = arch.smem_per_sm // (smem + arch.smem_reserved_per_block)
    by_registers = arch.registers_per_sm // (warps * 32 * THREAD_REGISTERS)
    return max(1, min(2, by_smem, by_registers))


def _two_ctas_fit(smem: int, arch: Arch, warps: int) -> bool:
    return _ctas_per_sm(smem, arch, warps) == 2


def spills_at_64_keys(key: InstanceKey) -> bool:
    """Where two m-tiles of 64 keys spilled (ptxas -warn-spills over every instance): the e4m3
    software routine's exact pass with the soft-cap's transform (12 bytes, head dim 96, sm_90a),
    or at head dim 96 on sm_80 (8 bytes); and a 16-bit cache's swizzled rows at head dim 128
    where two CTAs of 64-key tiles do not fit an SM (the 100 KB parts, sm_86 and sm_89: 104
    bytes; the padded rows had not fit 64 keys there at all). Those start at 32 keys."""
    if m_tiles(key.head_dim) != 2:
        return False
    if not key.is_fp8 and row_padding(key.head_dim, False) == 0:
        return not _two_ctas_fit(_smem_bytes(key.head_dim, False, 64, 2, WARPS), ARCH_BY_NAME[key.arch], WARPS)
    if (key.kv_dtype, key.conversion) != ("e4m3", "software"):
        return False
    return key.variant == "softcap" or key.head_dim == 96


def _block_n(key: InstanceKey, warps: int) -> int:
    """Keys per shared tile for CTAs of `warps` warps: the largest of the candidates with which two
    CTAs of two stages share an SM of the key's arch; where none does, the largest that fits one
    CTA. S takes m_tiles x kBlockN / 2 registers a thread next to O's m_tiles x D / 2, which fills
    the 255 at two m-tiles of 64 keys: where that spilled (spills_at_64_keys) the candidates start
    at 32; the builder refuses any spilling build."""
    arch = ARCH_BY_NAME[key.arch]
    candidates = (32, 16) if spills_at_64_keys(key) else (64, 32, 16)
    sizes = {n: _smem_bytes(key.head_dim, key.is_fp8, n, 2, warps, fp8_from_codes(key)) for n in candidates}
    for n in candidates:
        if _two_ctas_fit(sizes[n], arch, warps):
            return n
    for n in candidates:
        if sizes[n] <= arch.smem_per_block:
            return n
    return candidates[-1]


def warps(key: InstanceKey) -> int:
    """Warps per CTA. Where a warp owns two m16 tiles (head dims up to 128), WARPS: 128 rows, two
    CTAs an SM. Where it owns one (O alone takes D / 2 registers a thread), WIDE_WARPS if that CTA,
    one an SM, gets a larger key tile than two CTAs of WARPS (the K/V tile is then shared by 128
    rows instead of 64): at head dim 256 on the H100, 64-key tiles against 32 took bf16 from 259 to
    291-296 TFLOP/s and e4m3 from 222 to 255-262, while 8 warps with the same 32-key tile lost
    (243-249): with two warps a scheduler either way, the CTA's shape is chosen by its key tile."""
    if "warps" in _tune():
        return _tune()["warps"]
    if m_tiles(key.head_dim) != 1:
        return WARPS
    return WIDE_WARPS if _block_n(key, WIDE_WARPS) > _block_n(key, WARPS) else WARPS


def block_n(key: InstanceKey) -> int:
    """Keys per shared tile (_block_n for the key's CTA shape, warps())."""
    if "block_n" in _tune():
        return _tune()["block_n"]
    return _block_n(key, warps(key))


def smem_bytes(key: InstanceKey, stages: int) -> int:
    return _smem_bytes(key.head_dim, key.is_fp8, block_n(key), stages, warps(key), fp8_from_codes(key))


def pipeline_stages(key: InstanceKey, arch: Arch) -> int:
    """Up to 4 tiles in flight where two CTAs of that size still share an SM, else 2 (0: none fits)."""
    if "stages" in _tune():
        return _tune()["stages"]
    for stages in (4, 3, 2):
        if _two_ctas_fit(smem_bytes(key, stages), arch, warps(key)):
            return stages
    return 2 if smem_bytes(key, 2) <= arch.smem_per_block else 0


def tiles_fit(key: InstanceKey) -> str | None:
    if pipeline_stages(key, ARCH_BY_NAME[key.arch]) == 0:
        return f"two K/V tiles of head dim {key.head_dim} do not fit the {key.arch} shared memory"
    return None


def cuts_last_wave(key: InstanceKey) -> bool:
    """Whether plan() may cut a grid's short last wave into split-KV pieces (prefill.py,
    cut_last_wave): for CTAs of WARPS warps two an SM, the shape measured (H200, head dim 128;
    README, "The grid's short last wave"). Not where one CTA holds an SM (CTAs of WIDE_WARPS, or
    where two do not fit), which was not measured, and whose setup a short piece pays as the
    Hopper family's does."""
    arch = ARCH_BY_NAME[key.arch]
    return warps(key) == WARPS and _two_ctas_fit(smem_bytes(key, pipeline_stages(key, arch)), arch, WARPS)


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
        "block_n": block_n(key),
        "stages": stages,
        "warps": warps(key),
        "min_ctas_per_sm": _ctas_per_sm(smem, arch, warps(key)),
        "smem_bytes": smem,
        "smem_per_block": arch.smem_per_block,
        "row_padding": row_padding(key.head_dim, key.is_fp8, fp8_from_codes(key)),
        "fp8_from_codes": "true" if fp8_from_codes(key) else "false",
    }


WORK = abi.Struct("FigPrefillWork", (
    abi.Field("request", "const int32_t*", "[num_items]"),
    abi.Field("row_begin", "const int32_t*", "[num_items]: first packed query row (token x group + head); "
              "below 0 in a request's partial first tile (its rows from 0 on)"),
    abi.Field("kv_begin", "const int32_t*", "[num_items]: keys [kv_begin, kv_end) of the request"),
    abi.Field("kv_end", "const int32_t*", "[num_items]"),
    abi.Field("partial", "const int32_t*", "[num_items]: a split item's (pieces > 1) slot of token 0's piece, which may be below 0; -1 where not split"),
    abi.Field("pieces", "const int32_t*", "[num_items]: 1 writes the output, else the item's split pieces (slot of token t = partial + t x pieces)"),
    abi.Field("num_items", "int32_t", "work items in the arrays (a CUDA-graph plan's capacity)"),
    abi.Field("live_items", "const int32_t*", "[1]: work items in use this plan (<= num_items); later ones are skipped"),
    abi.Field("ctas", "int32_t", "persistent instances: the grid (> 0), each CTA walking its units; others: 0, one CTA per unit"),
    abi.Field("cta_indptr", "const int32_t*", "[ctas + 1]: CTA c's units are cta_units[cta_indptr[c] .. cta_indptr[c + 1]) (persistent only)"),
    abi.Field("cta_units", "const int32_t*", "[units]: unit = item + kv_head x num_items by L2 section of KV heads; persistent: each CTA's, longest first within a section; else CTA b's is cta_units[b], b < live_items x num_kv_heads, the cheapest units last"),
), "Prefill work list from plan(): per item and KV head, a CTA or a persistent CTA's turn.")

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
    predicates=(tiles_fit,),
    context=template_context,
    tiles=lambda key: (block_m(key), block_n(key)),
    cut_last_wave=cuts_last_wave,
)
