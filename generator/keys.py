"""The instance key, the dtype facts every kind shares, and what a kernel kind is (`KindSpec`).

A kind is data: its template, its C ABI, the values each key field may take, the predicates that
refuse combinations (each says why), the constants it renders into its template and its default
build selection. The renderer, the CLI, the registry and the error messages are derived from the
specs in `instances.KINDS`; adding a kind adds a spec, its headers and its template.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from .abi import KindAbi
from .arches import ARCH_BY_NAME, ARCH_NAMES

Q_DTYPES = ("f16", "bf16")
KV_DTYPES = ("f16", "bf16", "e4m3", "e5m2")
FP8_DTYPES = ("e4m3", "e5m2")
# The output's dtype: "same" as a 16-bit q's; an FP8 q (a kind whose axes allow one) names it.
O_DTYPES = ("same", "f16", "bf16")
CONVERSIONS = ("none", "hardware", "software")
KV_BYTES = {"f16": 2, "bf16": 2, "e4m3": 1, "e5m2": 1}

# C++ spellings the templates receive (types only).
CXX_ELEMENT = {"f16": "cute::half_t", "bf16": "cute::bfloat16_t", "e4m3": "cute::float_e4m3_t",
               "e5m2": "cute::float_e5m2_t"}
CXX_FP8_FORMAT = {"e4m3": "fig::Fp8Format::kE4M3", "e5m2": "fig::Fp8Format::kE5M2"}
CXX_CONVERSION = {"hardware": "fig::Conversion::kHardware", "software": "fig::Conversion::kSoftware"}


@dataclasses.dataclass(frozen=True, order=True)
class InstanceKey:
    kind: str
    q_dtype: str
    kv_dtype: str
    head_dim: int
    arch: str
    conversion: str
    variant: str = "default"
    o_dtype: str = "same"

    @property
    def name(self) -> str:
        out = "" if self.o_dtype == "same" else f"_o{self.o_dtype}"
        return (f"{self.kind}_q{self.q_dtype}_kv{self.kv_dtype}_d{self.head_dim}_{self.arch}"
                f"_{self.conversion}_{self.variant}{out}")

    @property
    def filename(self) -> str:
        return f"{self.name}.cu"

    @property
    def is_fp8(self) -> bool:
        return self.kv_dtype in FP8_DTYPES

    @property
    def out_dtype(self) -> str:
        """The output's dtype (a 16-bit one)."""
        return self.q_dtype if self.o_dtype == "same" else self.o_dtype

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """The key in words (rendered into each source); o_dtype only where it is not "same", so
        that the sources, and so the built libraries, of keys from before the field stay current."""
        return ", ".join(f"{f} {getattr(self, f)}" for f in KEY_FIELDS if f != "o_dtype" or self.o_dtype != "same")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InstanceKey":
        """A key from a manifest entry. A field added after the entry was written takes its
        default; an entry missing a field without one, or naming a field this version does not
        know, raises ValueError (the registry then treats it as not built)."""
        unknown = set(d) - set(KEY_FIELDS)
        if unknown:
            raise ValueError(f"manifest key has fields this version does not know: {sorted(unknown)}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                values[f.name] = d[f.name]
            elif f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            else:
                raise ValueError(f"manifest key lacks the field {f.name!r}")
        return cls(**values)


KEY_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceKey))


def tuning_overrides(env: str, names: tuple[str, ...]) -> dict[str, int]:
    """A kind's bench-only tuning hook: the environment variable `env` as "name=int,..." with
    each name one of `names` (anything else is an error that says so, not a silent default)."""
    text = os.environ.get(env, "")
    out = {}
    for item in (i for i in text.split(",") if i):
        name, eq, value = item.partition("=")
        if not eq or name not in names or not value.lstrip("-").isdigit():
            raise ValueError(f"{env}={text!r}: {item!r} is not name=integer with name one of {list(names)}")
        out[name] = int(value)
    return out
Predicate = Callable[[InstanceKey], "str | None"]


@dataclasses.dataclass(frozen=True, eq=False)
class KindSpec:
    name: str
    template: str                                  # the .cu.j2 file in templates/
    summary: str                                   # one line for the CLI's help
    abi: KindAbi
    axes: Mapping[str, tuple]                      # allowed values of every key field but kind and arch
    defaults: Mapping[str, tuple]                  # the default build; an absent field takes every value
    predicates: tuple[Predicate, ...]              # the kind's own refusals, after the shared ones
    context: Callable[[InstanceKey], dict]         # the constants its template renders
    tiles: Callable[[InstanceKey], tuple[int, int]] | None = None  # (rows, keys) per CTA tile, where plan() needs them
    persistent: Callable[[InstanceKey], bool] | None = None  # CTAs walk plan()'s per-CTA unit lists (work.ctas)
    # (rows a CTA's row group takes, a persistent unit's relative cost by how many row groups have
    # rows), or None for the instance: its units cost by their keys alone
    unit_cost: Callable[[InstanceKey], tuple[int, tuple[float, ...]] | None] | None = None
    # whether plan() may cut the items of a grid's short last wave into split-KV pieces
    # (prefill.py, cut_last_wave); never for persistent instances
    cut_last_wave: Callable[[InstanceKey], bool] | None = None

    def allowed(self, field: str) -> tuple:
        if field == "kind":
            return (self.name,)
        if field == "arch":
            return tuple(a for a in ARCH_NAMES if self.name in ARCH_BY_NAME[a].kinds)
        if field not in self.axes:  # a key field this kind does not vary: its default only
            default = next(f.default for f in dataclasses.fields(InstanceKey) if f.name == field)
            return () if default is dataclasses.MISSING else (default,)
        return self.axes[field]


# --- predicates every kind shares: None when fine, else the reason -----------------------------

def kv16_matches_q(key: InstanceKey) -> str | None:
    if not key.is_fp8 and key.kv_dtype != key.q_dtype:
        return (f"a 16-bit KV cache must have the q dtype ({key.q_dtype}); "
                f"got kv {key.kv_dtype}: convert the cache or use an FP8 cache")
    return None


def o_dtype_matches_q(key: InstanceKey) -> str | None:
    if key.q_dtype in FP8_DTYPES and key.o_dtype == "same":
        return "an FP8 q writes a 16-bit output: o_dtype must be 'f16' or 'bf16'"
    if key.q_dtype not in FP8_DTYPES and key.o_dtype != "same":
        return f"a {key.q_dtype} q writes its own dtype: o_dtype must be 'same', got {key.o_dtype!r}"
    return None


def conversion_matches_kv(key: InstanceKey) -> str | None:
    if key.is_fp8 and key.conversion == "none":
        return "an FP8 KV cache needs conversion 'hardware' or 'software'"
    if not key.is_fp8 and key.conversion != "none":
        return f"a {key.kv_dtype} KV cache is not converted; conversion must be 'none'"
    return None


def hardware_conversion_needs_cvt(key: InstanceKey) -> str | None:
    if key.conversion == "hardware" and not ARCH_BY_NAME[key.arch].has_fp8_cvt:
        return f"{key.arch} has no FP8 convert instruction (sm_89+); use conversion 'software'"
    return None


def kv_element_type(key: InstanceKey) -> str:
    """The C++ KV element kind of kv_types.cuh for this key."""
    if key.is_fp8:
        return f"fig::KvFp8<{CXX_FP8_FORMAT[key.kv_dtype]}, {CXX_CONVERSION[key.conversion]}>"
    return f"fig::Kv16<{CXX_ELEMENT[key.kv_dtype]}>"


SHARED_PREDICATES: tuple[Predicate, ...] = (kv16_matches_q, o_dtype_matches_q, conversion_matches_kv,
                                            hardware_conversion_needs_cvt)
