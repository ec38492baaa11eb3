"""The plain C ABI between the host and every generated library, written once.

A kind's parameters are a struct of reusable sub-structs (query, paged KV, output, split-KV
merge, scales) plus its own work list. From this one spec come both the C headers the kernels
include (rendered into the build cache by render.py) and the ctypes mirror the runtime passes
(`ctypes_struct`), so a reordered or renamed field changes both sides at once. The ABI version of
a kind is a checksum of its header text: a library built from another spec is refused on load.

Exports of every library: fig_kind(), fig_instance_name(). Exports of a library of kind K:
fig_K_abi_version(), fig_K_params_size(), and the kind's own entry points.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import zlib

COMMON_HEADER = "fig_abi_common.h"

# C spelling -> ctypes type. Pointers to device memory are opaque addresses on the host.
_CTYPES = {
    "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "float": ctypes.c_float, "int": ctypes.c_int,
    "const void*": ctypes.c_void_p, "void*": ctypes.c_void_p, "const int32_t*": ctypes.c_void_p,
    "const uint8_t*": ctypes.c_void_p, "float*": ctypes.c_void_p, "const float*": ctypes.c_void_p,
    "const char*": ctypes.c_char_p,
    "int*": ctypes.POINTER(ctypes.c_int),
}


# Specs are module-level constants: compared and hashed by identity, so the ctypes cache is a
# pointer lookup on every run(), not a hash of the whole nested spec.
@dataclasses.dataclass(frozen=True, eq=False)
class Struct:
    name: str
    fields: tuple["Field", ...]
    comment: str


@dataclasses.dataclass(frozen=True, eq=False)
class Field:
    name: str
    ctype: "str | Struct"
    comment: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Function:
    name: str                          # without the fig_<kind>_ prefix
    restype: str
    args: tuple[tuple[str, str], ...]  # (C type, name)
    comment: str
    returns_status: bool = True        # the int result is a cudaError_t value


# --- sub-structs shared by the kinds ----------------------------------------------------------

QUERY = Struct("FigQuery", (
    Field("data", "const void*", "[rows, num_heads, head_dim] in the q dtype, head dim contiguous"),
    Field("stride_row", "int64_t", "elements between rows (a decode request, a prefill token)"),
    Field("stride_head", "int64_t"),
), "Queries.")

PAGED_KV = Struct("FigPagedKv", (
    Field("k_cache", "const void*", "element pointers plus element strides, so NHD, HND and the"),
    Field("v_cache", "const void*", "combined [pages, 2, ...] tensor are the same kernel"),
    Field("stride_page", "int64_t"),
    Field("stride_slot", "int64_t"),
    Field("stride_head", "int64_t"),
    Field("indptr", "const int32_t*", "[batch + 1]: pages of request b are indices[indptr[b] .. indptr[b+1])"),
    Field("indices", "const int32_t*", "[indptr[batch]]"),
    Field("page_size", "int32_t"),
    Field("num_kv_heads", "int32_t"),
), "A paged KV cache and its page table (CSR over requests).")

OUTPUT = Struct("FigOutput", (
    Field("data", "void*", "[rows, num_heads, head_dim] in the q dtype"),
    Field("stride_row", "int64_t"),
    Field("stride_head", "int64_t"),
    Field("lse", "float*", "[rows, num_heads] fp32, base-2 log-sum-exp, or NULL"),
    Field("num_heads", "int32_t"),
), "The attention output.")

SPLIT_MERGE = Struct("FigSplitMerge", (
    Field("row", "const int32_t*", "[num_items]: the output row merge item i writes"),
    Field("indptr", "const int32_t*", "[num_items + 1]: item i combines partial slots [indptr[i], indptr[i+1])"),
    Field("num_items", "int32_t", "the grid: merge items launched (a CUDA-graph plan's capacity)"),
    Field("live_items", "const int32_t*", "[1]: merge items in use this plan (<= num_items); later blocks exit"),
    Field("partial_out", "float*", "[num_partial, num_heads, head_dim] fp32, already divided by the row sum"),
    Field("partial_lse", "float*", "[num_partial, num_heads], base 2"),
), "Split-KV: rows whose keys were cut into pieces, and the pieces' partial results.")

SCALES = Struct("FigScales", (
    Field("sm_scale", "float", "applied to q.k before soft-cap"),
    Field("k_scale", "float", "dequantisation scale of K, folded into the logits scale"),
    Field("v_scale", "float", "dequantisation scale of V, applied to the output"),
    Field("logits_soft_cap", "float", "<= 0: off"),
    Field("q_scale_device", "const float*", "NULL, or a float on the device multiplying the logits; > 0 (else NaN out)"),
    Field("k_scale_device", "const float*", "NULL, or a float on the device multiplying the logits; > 0 (else NaN out)"),
    Field("v_scale_device", "const float*", "NULL, or a float on the device multiplying the output"),
), "Scalars of the attention variant. The *_device ones are read at each launch (a captured graph follows them).")

COMMON_STRUCTS = (QUERY, PAGED_KV, OUTPUT, SPLIT_MERGE, SCALES)
COMMON_FUNCTIONS = (
    Function("kind", "const char*", (), "The kernel kind this library serves.", returns_status=False),
    Function("instance_name", "const char*", (), "The instance key's name.", returns_status=False),
)


@dataclasses.dataclass(frozen=True)
class KindAbi:
    kind: str
    params: Struct
    structs: tuple[Struct, ...]  # the kind's own sub-structs, params last
    functions: tuple[Function, ...]

    @property
    def header(self) -> str:
        return f"fig_abi_{self.kind}.h"

    @property
    def version_macro(self) -> str:
        return f"FIG_{self.kind.upper()}_ABI_VERSION"

    def symbol(self, fn: Function) -> str:
        return f"fig_{fn.name}" if fn in COMMON_FUNCTIONS else f"fig_{self.kind}_{fn.name}"

    @property
    def all_functions(self) -> tuple[Function, ...]:
        own = (Function("abi_version", "int", (), f"{self.version_macro}, checked by the loader.", False),
               Function("params_size", "int", (), f"sizeof({self.params.name}), checked by the loader.", False))
        return COMMON_FUNCTIONS + own + self.functions

    @property
    def version(self) -> int:
        """Checksum of the C text both sides are made from (common structs included)."""
        return zlib.crc32((common_header() + _kind_body(self)).encode())


# --- C rendering ------------------------------------------------------------------------------

def _c_struct(s: Struct) -> str:
    lines = [f"// {s.comment}", f"typedef struct {s.name} {{"]
    for f in s.fields:
        ctype = f.ctype.name if isinstance(f.ctype, Struct) else f.ctype
        comment = f"  // {f.comment}" if f.comment else ""
        lines.append(f"  {ctype} {f.name};{comment}")
    lines.append(f"}} {s.name};")
    return "\n".join(lines) + "\n"


def _c_decl(symbol: str, fn: Function) -> str:
    args = ", ".join(f"{t} {n}" for t, n in fn.args) or "void"
    return f"// {fn.comment}\n{fn.restype} {symbol}({args});\n"


_PROLOGUE = "// Generated by generator/abi.py -- do not edit.\n#pragma once\n#include <stdint.h>\n\n"


@functools.lru_cache(maxsize=None)
def common_header() -> str:
    body = "\n".join(_c_struct(s) for s in COMMON_STRUCTS)
    decls = "".join(_c_decl(f"fig_{fn.name}", fn) for fn in COMMON_FUNCTIONS)
    return (_PROLOGUE + "// Libraries are built with hidden visibility; only FIG_EXPORT entry points are visible.\n"
            '#define FIG_EXPORT extern "C" __attribute__((visibility("default")))\n\n'
            + body + '\n#ifdef __cplusplus\nextern "C" {\n#endif\n' + decls + "#ifdef __cplusplus\n}\n#endif\n")


def _kind_body(abi: KindAbi) -> str:
    body = "\n".join(_c_struct(s) for s in abi.structs)
    decls = "".join(_c_decl(abi.symbol(fn), fn) for fn in abi.all_functions if fn not in COMMON_FUNCTIONS)
    return body + '\n#ifdef __cplusplus\nextern "C" {\n#endif\n' + decls + "#ifdef __cplusplus\n}\n#endif\n"


def kind_header(abi: KindAbi) -> str:
    return (_PROLOGUE + f'#include "{COMMON_HEADER}"\n\n#define {abi.version_macro} {abi.version}u\n\n'
            + _kind_body(abi))


# --- ctypes mirror ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def ctypes_struct(s: Struct) -> type:
    fields = [(f.name, ctypes_struct(f.ctype) if isinstance(f.ctype, Struct) else _CTYPES[f.ctype])
              for f in s.fields]
    return type(s.name, (ctypes.Structure,), {"_fields_": fields})


def fill(s: Struct, **values) -> ctypes.Structure:
    """An instance of the ctypes mirror of `s` with every field given: a missing or unknown field
    is an error rather than a silent zero. Nested structs are given as dicts."""
    names = [f.name for f in s.fields]
    if set(values) != set(names):
        raise TypeError(f"{s.name}: missing {sorted(set(names) - set(values))}, "
                        f"unknown {sorted(set(values) - set(names))}")
    args = {}
    for f in s.fields:
        v = values[f.name]
        args[f.name] = fill(f.ctype, **v) if isinstance(f.ctype, Struct) else v
    return ctypes_struct(s)(**args)


def declare(lib: ctypes.CDLL, abi: KindAbi, functions=None) -> dict[str, tuple]:
    """Sets restype/argtypes of `functions` (default: every export of `abi`) on `lib`; returns
    {name without the fig_<kind>_ prefix: (ctypes function, spec)}."""
    table = {}
    for fn in abi.all_functions if functions is None else functions:
        cfunc = getattr(lib, abi.symbol(fn))
        cfunc.restype = _CTYPES[fn.restype]
        cfunc.argtypes = [ctypes.POINTER(ctypes_struct(abi.params)) if t == f"const {abi.params.name}*" else _CTYPES[t]
                          for t, _ in fn.args]
        table[fn.name] = (cfunc, fn)
    return table
