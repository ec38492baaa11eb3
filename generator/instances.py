"""The instance space as data.

One frozen key per kernel instance. Everything else — the rendered ``.cu`` files, the CMake
source list, the runtime registry — is derived from a list of these keys, so there is no second
copy of the table to drift. Combinations that make no sense are refused by named predicates
that say why.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Iterable, Sequence

KINDS = ("decode",)
Q_DTYPES = ("f16", "bf16")
KV_DTYPES = ("f16", "bf16", "e4m3", "e5m2")
FP8_DTYPES = ("e4m3", "e5m2")
HEAD_DIMS = (64, 128, 256)
ARCHS = ("sm80", "sm90a")
CONVERSIONS = ("none", "hardware", "software")
VARIANTS = ("default", "softcap")

# nvcc target per arch. sm80 SASS also runs on sm_86/sm_89 (same major version); sm_90 needs
# its own SASS, which is why the Ampere-path kernel is built a second time as sm90a code.
GENCODE = {
    "sm80": "-gencode=arch=compute_80,code=sm_80",
    "sm90a": "-gencode=arch=compute_90a,code=sm_90a",
}
# Arch with an FP8 convert instruction (cvt.*.e4m3x2 / e5m2x2 needs sm_89+).
ARCH_HAS_FP8_CVT = {"sm80": False, "sm90a": True}

# C++ spellings used by the template (types and constants only).
CXX_Q_ELEMENT = {"f16": "cute::half_t", "bf16": "cute::bfloat16_t"}
CXX_FP8_FORMAT = {"e4m3": "fig::Fp8Format::kE4M3", "e5m2": "fig::Fp8Format::kE5M2"}
CXX_CONVERSION = {"hardware": "fig::Conversion::kHardware", "software": "fig::Conversion::kSoftware"}
CXX_LOGITS = {"default": "fig::PlainLogits", "softcap": "fig::SoftCapLogits"}
KV_BYTES = {"f16": 2, "bf16": 2, "e4m3": 1, "e5m2": 1}


@dataclasses.dataclass(frozen=True, order=True)
class InstanceKey:
    kind: str
    q_dtype: str
    kv_dtype: str
    head_dim: int
    arch: str
    conversion: str
    variant: str = "default"

    @property
    def name(self) -> str:
        return (f"{self.kind}_q{self.q_dtype}_kv{self.kv_dtype}_d{self.head_dim}_{self.arch}"
                f"_{self.conversion}_{self.variant}")

    @property
    def filename(self) -> str:
        return f"{self.name}.cu"

    @property
    def is_fp8(self) -> bool:
        return self.kv_dtype in FP8_DTYPES

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InstanceKey":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


# --- validity: each predicate returns None when fine, else the reason -------------------------

def _axis_values(key: InstanceKey) -> str | None:
    axes = {"kind": KINDS, "q_dtype": Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS,
            "arch": ARCHS, "conversion": CONVERSIONS, "variant": VARIANTS}
    for field, allowed in axes.items():
        if getattr(key, field) not in allowed:
            return f"{field}={getattr(key, field)!r} is not one of {list(allowed)}"
    return None


def _kv16_matches_q(key: InstanceKey) -> str | None:
    if not key.is_fp8 and key.kv_dtype != key.q_dtype:
        return (f"a 16-bit KV cache must have the q dtype ({key.q_dtype}); "
                f"got kv {key.kv_dtype}: convert the cache or use an FP8 cache")
    return None


def _conversion_matches_kv(key: InstanceKey) -> str | None:
    if key.is_fp8 and key.conversion == "none":
        return "an FP8 KV cache needs conversion 'hardware' or 'software'"
    if not key.is_fp8 and key.conversion != "none":
        return f"a {key.kv_dtype} KV cache is not converted; conversion must be 'none'"
    return None


def _hardware_conversion_needs_cvt(key: InstanceKey) -> str | None:
    if key.conversion == "hardware" and not ARCH_HAS_FP8_CVT[key.arch]:
        return f"{key.arch} has no FP8 convert instruction (sm_89+); use conversion 'software'"
    return None


PREDICATES: tuple[Callable[[InstanceKey], str | None], ...] = (
    _axis_values, _kv16_matches_q, _conversion_matches_kv, _hardware_conversion_needs_cvt)


def why_invalid(key: InstanceKey) -> str | None:
    for predicate in PREDICATES:
        reason = predicate(key)
        if reason is not None:
            return reason
    return None


class InvalidInstance(ValueError):
    pass


def check(key: InstanceKey) -> InstanceKey:
    reason = why_invalid(key)
    if reason is not None:
        raise InvalidInstance(f"{key.name}: {reason}")
    return key


# --- derived constants ---------------------------------------------------------------------

# Shared memory per SM and per CTA (bytes) by arch; a CTA also reserves 1 KB for the system.
SMEM_PER_SM = {"sm80": 164 * 1024, "sm90a": 228 * 1024}
SMEM_PER_CTA_MAX = {"sm80": 163 * 1024, "sm90a": 227 * 1024}
SMEM_RESERVED_PER_CTA = 1024
DECODE_WARPS = 4
STEP_TOKENS = 16
# Little's law: ~3 TB/s x ~2.5 us loaded latency / (132 SMs x 8 warps) ~ 7 KB per warp at least;
# the tuning sweep (bench/tune_decode.py, notes in issue #3) measured 24 KB best on the H100.
BYTES_IN_FLIGHT_PER_WARP = 24 * 1024
MIN_CTAS_FOR_LATENCY = 2  # a lone CTA (4 warps) cannot hide the softmax and conversion latency
REGISTERS_PER_SM = 65536
REGISTER_OVERHEAD = 100  # addresses, softmax state, converted fragments (ptxas -v: 188 uncapped, fp8 d128)
# Tuning hook for bench/tune_decode.py only: "stages=4,min_ctas=3" overrides the derived constants.
TUNE_ENV = "FIG_DECODE_TUNE"


def step_bytes_per_warp(kv_dtype: str, head_dim: int) -> int:
    """K and V bytes of one 16-token step of one KV head."""
    return 2 * STEP_TOKENS * head_dim * KV_BYTES[kv_dtype]


def has_replay_path(kv_dtype: str, conversion: str) -> bool:
    """The software e4m3 routine keeps a second, exact copy of the step loop for NaN codes."""
    return kv_dtype == "e4m3" and conversion == "software"


def pipeline_stages(kv_dtype: str, head_dim: int, arch: str, conversion: str = "none") -> int:
    """cp.async steps a warp keeps in flight: enough bytes to cover the loaded memory latency,
    at least 2 (double buffering), at most 8, and few enough that two CTAs share an SM where
    the step is small enough to allow it (sm80 has 164 KB, not 228).

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
    fits_two = (SMEM_PER_SM[arch] // MIN_CTAS_FOR_LATENCY - SMEM_RESERVED_PER_CTA) // (DECODE_WARPS * step)
    return max(2, min(stages, fits_two))


def decode_smem_bytes(kv_dtype: str, head_dim: int, arch: str, conversion: str = "none") -> int:
    return DECODE_WARPS * pipeline_stages(kv_dtype, head_dim, arch, conversion) * step_bytes_per_warp(kv_dtype, head_dim)


def min_ctas_per_sm(kv_dtype: str, head_dim: int, arch: str, conversion: str = "none") -> int:
    """CTAs per SM the register cap is set for: as many as shared memory allows, unless the
    registers a lane needs (O: D/4, Q: D/8, one step of K or V words read back) would not fit."""
    smem = decode_smem_bytes(kv_dtype, head_dim, arch, conversion)
    by_smem = SMEM_PER_SM[arch] // (smem + SMEM_RESERVED_PER_CTA)
    step_words = head_dim * KV_BYTES[kv_dtype] // 4
    regs = head_dim // 4 + head_dim // 8 + step_words + REGISTER_OVERHEAD
    by_regs = REGISTERS_PER_SM // (DECODE_WARPS * 32 * regs)
    return max(1, min(4, by_smem, by_regs))


def _tuning_overrides() -> dict:
    text = os.environ.get(TUNE_ENV, "")
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def template_context(key: InstanceKey) -> dict:
    check(key)
    tune = _tuning_overrides()
    if decode_smem_bytes(key.kv_dtype, key.head_dim, key.arch, key.conversion) > SMEM_PER_CTA_MAX[key.arch] \
            and "stages" not in tune:
        raise InvalidInstance(f"{key.name}: the copy pipeline needs more shared memory than {key.arch} has")
    if key.is_fp8:
        kv_type = f"fig::KvFp8<{CXX_FP8_FORMAT[key.kv_dtype]}, {CXX_CONVERSION[key.conversion]}>"
    else:
        kv_type = f"fig::Kv16<{CXX_Q_ELEMENT[key.kv_dtype]}>"
    return {
        "name": key.name,
        "description": (f"{key.kind}, q {key.q_dtype}, kv {key.kv_dtype}, head dim {key.head_dim}, "
                        f"{key.arch}, conversion {key.conversion}, variant {key.variant}"),
        "q_element": CXX_Q_ELEMENT[key.q_dtype],
        "kv_type": kv_type,
        "head_dim": key.head_dim,
        "stages": tune.get("stages", pipeline_stages(key.kv_dtype, key.head_dim, key.arch, key.conversion)),
        "min_ctas_per_sm": tune.get("min_ctas", min_ctas_per_sm(key.kv_dtype, key.head_dim, key.arch, key.conversion)),
        "logits": CXX_LOGITS[key.variant],
    }


# --- selections ----------------------------------------------------------------------------

def conversions_for(kv_dtype: str, arch: str) -> tuple[str, ...]:
    if kv_dtype not in FP8_DTYPES:
        return ("none",)
    return ("hardware", "software") if ARCH_HAS_FP8_CVT[arch] else ("software",)


def enumerate_instances(kinds: Sequence[str] = KINDS, q_dtypes: Sequence[str] = Q_DTYPES,
                        kv_dtypes: Sequence[str] | None = None, head_dims: Sequence[int] = HEAD_DIMS,
                        archs: Sequence[str] = ARCHS, conversions: Sequence[str] | None = None,
                        variants: Sequence[str] = ("default",)) -> list[InstanceKey]:
    """Every valid key in the product of the selected axes.

    kv_dtypes=None means "the q dtype, e4m3 and e5m2" for each q dtype; conversions=None means
    every conversion the arch supports.
    """
    keys = set()
    for kind, q, d, arch, variant in itertools.product(kinds, q_dtypes, head_dims, archs, variants):
        kvs = kv_dtypes if kv_dtypes is not None else (q, "e4m3", "e5m2")
        for kv in kvs:
            convs = conversions if conversions is not None else conversions_for(kv, arch)
            for conv in convs:
                key = InstanceKey(kind, q, kv, int(d), arch, conv, variant)
                if why_invalid(key) is None:
                    keys.add(key)
    return sorted(keys)


def default_instances(archs: Iterable[str]) -> list[InstanceKey]:
    """The default build: head dim 128, fp16/bf16 q, kv = q dtype / e4m3 / e5m2."""
    return enumerate_instances(head_dims=(128,), archs=tuple(archs))
