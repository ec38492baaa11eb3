"""Batch prefill on the Hopper path (sm_90a: WGMMA, warp-specialized): its key space, its
constants and its C ABI, which it shares with the Ampere-path prefill (`kind_prefill.ABI`): the
same plan(), work list and parameters, so a wrapper switches family by switching instance.

The CTA is one producer warpgroup and consumers(key) consumer warpgroups of CONSUMER_ROWS packed
query rows each. The numbers the host and the kernel share (rows per CTA, keys per tile) are defined
here only.

FP8 caches (e4m3, e5m2) run on FP8 WGMMA tiles (conversion "hardware": the consumers quantise a
16-bit q per packed row and P to e4m3 with `cvt`; K and V are read as stored, V transposed in
shared memory by the producer). q may also come as e4m3 (its per-tensor q_scale folded into the
logits scale, as k_scale is), with the output dtype in the key (o_dtype f16 or bf16).
"""
from __future__ import annotations


from .arches import ARCH_BY_NAME, Arch
from .keys import (CXX_ELEMENT, FP8_DTYPES, KV_BYTES, O_DTYPES, Q_DTYPES, InstanceKey, KindSpec,
                   tuning_overrides)
from .kind_decode import CXX_LOGITS, VARIANTS
from . import kind_prefill

CONSUMERS = 2
CONSUMER_ROWS = 64            # one 64-row WGMMA per consumer warpgroup
# Up to WIDE_MAX_HEAD_DIM the CTA takes a third consumer warpgroup (512 threads, 128 registers a
# thread at launch): each scheduler then has three consumer warps to switch between where the
# softmax and the GEMM waits leave one idle. A consumer then has 152-160 registers: at head dim 64
# O, S and P (32 + 64 + 32) fit; at 128 O and S take 128 of them, so 16-bit P goes over S's
# registers (p_in_s: the mainloop waits for P V before the next Q K^T) and FP8 P V runs a
# 64-column chunk of O at a time (the mainloop's kOChunk); 16-bit at 192, O (96) and the 64-key
# tiles' S (32) the same 128, P over S. H100, B4 S4096 32/32, against two consumers in the same
# run: d64 bf16 ragged / paged 16 / paged 64 non-causal 447-451 TFLOP/s against 373-379, causal
# 384-388 against 328-334; d128 in the README ("Three consumer warpgroups at head dim 128"); d192
# bf16 (f2aaab3, two rotated rounds) 611-630 against 510-560 non-causal, 547-586 against 458-479
# causal. Tiles of 64 keys at d128 (S and P small enough) lost: 526-533 against 576-596 (H200;
# 80-key tiles 342, 96-key ones serialised WGMMAs). FP8 tiles past 128 keep two (fp8_large_o).
WIDE_CONSUMERS = 3
WIDE_MAX_HEAD_DIM = {False: 192, True: 128}  # by FP8 tiles
# setmaxnreg counts (producer, consumer), keyed by (FP8 tiles, three consumers). They add up to at
# most the launch allocation (65536 / threads a thread, 8-aligned) times the warpgroups.
#  - 16-bit, two consumers (head dim 256 only since 51c8ccc): the producer's cp.async gather keeps
#    few values; the consumers at head dim 128 used up to R220 when they were two.
#  - 16-bit, three: 32 + 3 x 160 = 512.
#  - FP8, two: the producer also transposes V (8 x 8-byte blocks in registers) and spilled at 56
#    (at 64 once it looped over work units); the consumers' P is half as wide.
#  - FP8, three: 56 + 3 x 152 = 512. The consumers spilled at 144; the producer at 56 spilled 12
#    bytes when it looped over work units, so these CTAs are not persistent (persistent()).
#    With the soft-cap the consumers spilled 200 bytes at 152, so those instances keep two
#    (wide()); with an e4m3 q they spilled 8 bytes until O's rescale went into P V's adds (the
#    mainloop's kFoldRescale).
REGISTERS = {
    (False, False): (56, 224),
    (False, True): (32, 160),
    (True, False): (72, 216),
    (True, True): (56, 152),
}
WIDE_ACCUMULATOR_REGISTERS = 128  # of a three-consumer 16-bit consumer's 160: O, S and P (else P over S)
FP8_O_CHUNK = 64  # columns of O per FP8 P V with three consumers (o_chunk())
# ... and past WIDE_MAX_HEAD_DIM[True] (fp8_large_o: two consumers at 216 registers), by head dim:
#  - 256, beside O's 128 registers: 32. With 64, ptxas sinks each chunk's fp32 adds below the next
#    chunk's WGMMA, two fragments at once, and the consumers spilled 336 bytes (320 at 240).
#  - 192, beside O's 96: 96, two chunks. With 32, 48 or 64 columns (six, four or three chunks)
#    the consumers spilled 16 bytes, a loop-carried value reloaded every tile (local ptxas).
FP8_LARGE_O_CHUNK = {192: 96, 256: 32}
# Persistent CTAs (prefill_sm90_kernel.cuh) up to this head dim: at 192 and 256, O takes 96 and 128
# of the consumers' registers and the loop's state over work units spilled them. (Nor with three
# FP8 consumers: REGISTERS.)
PERSISTENT_MAX_HEAD_DIM = 128
# 16-bit operands in 128-byte swizzled atoms of 64 elements along the head dim, 8-bit ones of 128
# (of 64 at head dims 64 and 192: the 64-byte swizzle, below). Every one has FP8 tiles too.
HEAD_DIMS = (64, 128, 192, 256)
KV_DTYPES = ("f16", "bf16") + FP8_DTYPES
FP8_Q_DTYPES = ("e4m3",)      # q given in FP8 (the FP8 WGMMA's A operand takes e4m3 or e5m2; e4m3 is asked for)
# 16-bit keys per stage, preferred first: powers of two, which TMA can box (tma_paged_kv.cuh: boxes
# of a power of two keys, 8 or more, that divides the page size and the tile). At head dim 192,
# where two stages of 128 exceed the shared memory, 96-key tiles had fit, but TMA cannot box them,
# so the producer gathered every tile with cp.async: 64-key TMA tiles (then two consumers, 4 K /
# 3 V stages) ran 1.40-1.57x as fast non-causal and 1.36-1.45x causal (H100, bf16 B4 S4096 32/32,
# ragged and pages of 16 and 64, two rotated rounds at 05723b5: 509-547 against 347-371 TFLOP/s,
# cuDNN 682-715).
TILE_KEYS = (128, 64)
# FP8 keys per stage, preferred first: the V transpose (prefill_sm90_transpose.cuh) writes rows of
# 128 or 64 keys, one swizzle row. Past WIDE_MAX_HEAD_DIM[True] (fp8_large_o) 64 only: at 256 two stages
# of 128 exceed the shared memory, and at 192, where they fit, S's 64 registers beside O's 96
# spilled 112 bytes at 216 registers.
FP8_TILE_KEYS = (128, 64)
FP8_LARGE_O_TILE_KEYS = (64,)
# FP8 tiles at every head dim. At 64 and 128 three consumer warpgroups (wide()), whose O, S and P
# V's per-tile fragment fit their 152 registers; at 64 the rows of Q, K and V are 64 bytes, on the
# 64-byte swizzle (tma_paged_kv.cuh, kv_swizzle_bytes), and at 192 three 64-byte atoms a row. At
# 192 and 256 two (fp8_large_o), with 64-key tiles (S 32 registers; transposed V in 64-byte rows),
# P V by chunks of O (o_chunk) next to O's 96 or 128 registers, and the item's mask bounds read
# from shared memory per tile (mask_in_smem).
FP8_STAGES_VT = 2             # transposed-V stages (stages_vt)
MAX_STAGES = 4
# Tuning hook for bench/ only: "k16=2,v16=3,k8=4,v8=4,vt8=3" overrides the ring depths below (K, V
# of a 16-bit cache; K, V as landed and transposed V of an FP8 one) for the generator; the kernel
# static_asserts that the shared memory still fits. "n16=64" / "n8=64" make block_n try only that
# many keys per tile (one of TILE_KEYS / FP8_TILE_KEYS; the register and shared-memory tests still
# apply). Build each setting into a cache of its own.
TUNE_ENV = "FIG_PREFILL_SM90_TUNE"


def _tune() -> dict:
    return tuning_overrides(TUNE_ENV, ("k16", "v16", "k8", "v8", "vt8", "n16", "n8"))
# Registers a two-consumer thread spends on O (D / 2) and S (N / 2) fp32 accumulators, at most;
# the rest of its REGISTERS count holds P, Q/K/V descriptors, addresses and the softmax state.
ACCUMULATOR_REGISTERS = 192


def wide(key: InstanceKey) -> bool:
    """Whether the CTA has WIDE_CONSUMERS consumer warpgroups: tiles up to WIDE_MAX_HEAD_DIM, but
    FP8 ones only without the soft-cap (REGISTERS says why)."""
    if fp8_tiles(key) and key.variant != "default":
        return False
    return key.head_dim <= WIDE_MAX_HEAD_DIM[fp8_tiles(key)]


def consumers(key: InstanceKey) -> int:
    return WIDE_CONSUMERS if wide(key) else CONSUMERS


def registers(key: InstanceKey) -> tuple[int, int]:
    """(producer, consumer) setmaxnreg counts."""
    return REGISTERS[fp8_tiles(key), wide(key)]


def p_in_s(key: InstanceKey) -> bool:
    """Whether a wide consumer's 16-bit P goes over S's registers: O (D / 2 fp32 a thread), S
    (N / 2) and P (N / 4 bf16 pairs) past WIDE_ACCUMULATOR_REGISTERS."""
    return wide(key) and not fp8_tiles(key) and key.head_dim // 2 + 3 * block_n(key) // 4 > WIDE_ACCUMULATOR_REGISTERS


def o_chunk(key: InstanceKey) -> int:
    """Columns of O per FP8 P V (the mainloop's kOChunk; each chunk's product goes to a fragment
    of its own and joins O in fp32): with three consumers 64, a 32-register fragment next to O
    and S (REGISTERS: 152); at head dim 256, where O alone takes 128 of two consumers' 216, 32;
    at 192, O 96 of them, 96; else the whole head dim. 16-bit tiles chain P V into O: the head dim."""
    if not fp8_tiles(key):
        return key.head_dim
    if fp8_large_o(key):
        return FP8_LARGE_O_CHUNK[key.head_dim]
    return FP8_O_CHUNK if wide(key) else key.head_dim


def mask_in_smem(key: InstanceKey) -> bool:
    """Whether the consumers read the item's mask bounds shared by every row (hi_min, lo_max) from
    shared memory per tile instead of holding them in registers across the loop: 16-bit tiles with
    P over S, and FP8 tiles at head dims 192 and 256 (fp8_large_o), where held they spilled 4
    (bf16 q) and 12 bytes (e4m3 q) at 256."""
    return p_in_s(key) or fp8_large_o(key)


def fp8_large_o(key: InstanceKey) -> bool:
    """FP8 tiles past WIDE_MAX_HEAD_DIM[True] (head dims 192, 256): two consumers with O taking 96 or 128
    of their 216 registers, so 64-key tiles (block_n), P V by narrow chunks (o_chunk) and the mask
    bounds in shared memory, in a slot of their own beside the q scales (mask_in_smem)."""
    return fp8_tiles(key) and key.head_dim > WIDE_MAX_HEAD_DIM[True]


def block_m(key: InstanceKey) -> int:
    return consumers(key) * CONSUMER_ROWS


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def fp8_tiles(key: InstanceKey) -> bool:
    return key.kv_dtype in FP8_DTYPES


def stages_vt(key: InstanceKey) -> int:
    """Stages of transposed V (FP8 only; the consumers read them as the K-major B operand). Three
    measured no faster than two (H100, 638f081), though with two the consumers waited on the
    transpose in 9.5% of ncu's stall samples (48cb667)."""
    return _tune().get("vt8", FP8_STAGES_VT) if fp8_tiles(key) else 0


def _smem_bytes(key: InstanceKey, n: int, stages_k: int, stages_v: int) -> int:
    """sizeof(PrefillSm90Smem::Storage) (prefill_sm90_smem.cuh): Q (as the GEMM reads it: e4m3
    with an FP8 cache), then the 1024-aligned K, V (and transposed V) rings, then the gather's row
    addresses (one slot more than K stages), the mbarriers (full and empty, per K, V and
    transposed-V stage, at least one of the last), the per-row q scales (a union with each
    consumer warp's mask bounds, which take less), each consumer's unit tile count, the FP8 tiles'
    mask bounds (each consumer warp's where mask_in_smem, else one slot), all rounded to the
    storage's 1024-byte alignment."""
    head_dim, kv_bytes = key.head_dim, KV_BYTES[key.kv_dtype]
    q = block_m(key) * head_dim * kv_bytes  # Q is quantised to e4m3 with an FP8 cache
    tile = n * head_dim * kv_bytes
    ring = _align(stages_k * tile, 1024) + _align(stages_v * tile, 1024) + _align(stages_vt(key) * tile, 1024)
    barriers = 2 * (stages_k + stages_v + max(stages_vt(key), 1)) * 8
    fp8_mask_keys = (consumers(key) if fp8_large_o(key) else 1) * 4 * 8
    tail = (stages_k + 1) * n * 8 + barriers + block_m(key) * 4 + consumers(key) * 4 + fp8_mask_keys
    return _align(q + ring + tail, 1024)


def block_n(key: InstanceKey) -> int:
    """The largest candidate whose accumulators fit the consumer's registers and of which two
    stages fit the arch's shared memory (one CTA per SM)."""
    arch = ARCH_BY_NAME[key.arch]
    candidates = (FP8_LARGE_O_TILE_KEYS if fp8_large_o(key) else FP8_TILE_KEYS) if fp8_tiles(key) else TILE_KEYS
    forced = _tune().get("n8" if fp8_tiles(key) else "n16")
    if forced is not None:
        if forced not in (FP8_TILE_KEYS if fp8_tiles(key) else TILE_KEYS):
            raise ValueError(f"{TUNE_ENV}: keys per tile {forced} is not one of the candidates")
        candidates = (forced,)
    for n in candidates:
        if (key.head_dim + n) // 2 <= ACCUMULATOR_REGISTERS and _smem_bytes(key, n, 2, 2) <= arch.smem_per_block:
            return n
    return 0


def pipeline_stages(key: InstanceKey, arch: Arch) -> tuple[int, int]:
    """(K stages, V stages): K first, as many as fit up to MAX_STAGES next to two of V (the
    consumers wait on K a GEMM earlier than on V: prefill_sm90_load.cuh), then V up to K's.
    (0, 0): not even two each fit. Measured against V first (K 2, V 3 at d128, H100, 638f081,
    `bench/results/prefill-tune-sm90-rings-*`): no faster, ragged bf16 5% slower, though ncu's stall
    samples at 48cb667 had the consumers and the producer each waiting on V in 16-18% of them."""
    n = block_n(key)
    fits = lambda sk, sv: n and _smem_bytes(key, n, sk, sv) <= arch.smem_per_block  # noqa: E731
    k = next((s for s in range(MAX_STAGES, 1, -1) if fits(s, 2)), 0)
    v = next((s for s in range(k, 1, -1) if fits(k, s)), 0)
    tune, dtype = _tune(), "8" if fp8_tiles(key) else "16"
    k, v = tune.get("k" + dtype, k), tune.get("v" + dtype, v)
    return (k, v) if n and k and v else (0, 0)


def smem_bytes(key: InstanceKey) -> int:
    return _smem_bytes(key, block_n(key), *pipeline_stages(key, ARCH_BY_NAME[key.arch]))


def persistent(key: InstanceKey) -> bool:
    """Whether the instance's CTAs are persistent (plan() then lists each CTA's units): not past
    PERSISTENT_MAX_HEAD_DIM, nor with three FP8 consumers, whose producer's 56 registers did not
    hold the loop over work units (REGISTERS)."""
    return key.head_dim <= PERSISTENT_MAX_HEAD_DIM and not (fp8_tiles(key) and wide(key))


# A persistent CTA's work unit whose consumer warpgroups do not all have rows (an item's last,
# partial row tile) costs less than a full one, though its idle consumers still wait for each of
# its tiles and the others' serial tiles leave the tensor cores part idle: with three consumers,
# 64 and 128 of 192 rows took 0.646 and 0.802 of the time (bench/probe_unit_cost.py, d128 bf16,
# H100, 14891fa), so each consumer without rows saves IDLE_CONSUMER_SAVING of a unit.
IDLE_CONSUMER_SAVING = 0.175


def unit_cost(key: InstanceKey) -> tuple[int, tuple[float, ...]] | None:
    """(CONSUMER_ROWS, the relative cost of a unit with 1 .. consumers(key) consumers given rows),
    for plan()'s dealing of the units to persistent CTAs (prefill.py, cta_unit_lists); None (units
    of equal keys cost the same) where it was not measured: two consumers."""
    c = consumers(key)
    if c != WIDE_CONSUMERS:
        return None
    return CONSUMER_ROWS, tuple(1.0 - IDLE_CONSUMER_SAVING * (c - a) for a in range(1, c + 1))


def tiles_fit(key: InstanceKey) -> str | None:
    if pipeline_stages(key, ARCH_BY_NAME[key.arch]) == (0, 0):
        return f"two K/V stages of head dim {key.head_dim} do not fit the {key.arch} shared memory"
    return None


def template_context(key: InstanceKey) -> dict:
    arch = ARCH_BY_NAME[key.arch]
    return {
        "q_element": CXX_ELEMENT[key.q_dtype],
        "o_element": CXX_ELEMENT[key.out_dtype],
        "kv_element": CXX_ELEMENT[key.kv_dtype],
        "logits": CXX_LOGITS[key.variant],
        "head_dim": key.head_dim,
        "block_n": block_n(key),
        "stages_k": pipeline_stages(key, arch)[0],
        "stages_v": pipeline_stages(key, arch)[1],
        "stages_vt": stages_vt(key),
        "consumers": consumers(key),
        "consumer_rows": CONSUMER_ROWS,
        "producer_registers": registers(key)[0],
        "consumer_registers": registers(key)[1],
        "smem_bytes": smem_bytes(key),
        "smem_per_block": arch.smem_per_block,
        "persistent": "true" if persistent(key) else "false",
        "p_in_s": "true" if p_in_s(key) else "false",
        "mask_in_smem": "true" if mask_in_smem(key) else "false",
        "o_chunk": o_chunk(key),
    }


SPEC = KindSpec(
    name="prefill_sm90",
    template="prefill_sm90.cu.j2",
    summary="batch prefill on Hopper (sm_90a): a TMA / cp.async producer warpgroup, WGMMA consumer warpgroups",
    abi=kind_prefill.ABI,
    axes={"q_dtype": Q_DTYPES + FP8_Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS,
          "conversion": ("none", "hardware"), "variant": VARIANTS, "o_dtype": O_DTYPES},
    # an FP8 q (and its output dtypes) is built on request (flashinfer-gen build --q-dtype e4m3, or jit)
    defaults={"head_dim": (128,), "variant": ("default",), "q_dtype": Q_DTYPES},
    predicates=(tiles_fit,),
    context=template_context,
    tiles=lambda key: (block_m(key), block_n(key)),
    persistent=persistent,
    unit_cost=unit_cost,
    # no cut of a short last wave for its grids (head dims 192 and 256, one CTA an SM): measured
    # mixed at 256 (README, "The grid's short last wave")
    cut_last_wave=None,
)
