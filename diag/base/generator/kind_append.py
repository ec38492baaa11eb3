"""Append (and quantise) new K/V rows into a paged cache: its key space, its constants and its C ABI.

The key's q_dtype is the dtype of the appended K/V (what the model produced), kv_dtype the cache's.
A 16-bit cache takes the rows as they are (same dtype); an FP8 cache stores the saturating
round-to-nearest-even code of x * (1 / scale), with the fp32 reciprocal computed once on the host
(fp8_encode.cuh). conversion picks the encoder: the sm_89+ `cvt.rn.satfinite` ("hardware") or the
bit-exact integer routine ("software", the sm_80 path).
"""
from __future__ import annotations

from . import abi
from .keys import CONVERSIONS, CXX_ELEMENT, CXX_CONVERSION, CXX_FP8_FORMAT, KV_DTYPES, Q_DTYPES, InstanceKey, KindSpec
from .kind_prefill import HEAD_DIMS

ELEMENTS_PER_THREAD = 8   # one 16-byte load of the source row per thread
THREADS = 256


def cache_encoding(key: InstanceKey) -> str:
    """The C++ encoder type of fp8_encode.cuh for this key."""
    if key.is_fp8:
        return f"fig::Fp8Encoder<{CXX_FP8_FORMAT[key.kv_dtype]}, {CXX_CONVERSION[key.conversion]}>"
    return "fig::CopyEncoder"


def rows_are_chunks(key: InstanceKey) -> str | None:
    if key.head_dim % ELEMENTS_PER_THREAD:
        return f"head_dim {key.head_dim} is not a multiple of the {ELEMENTS_PER_THREAD} elements a thread moves"
    return None


def template_context(key: InstanceKey) -> dict:
    return {
        "src_element": CXX_ELEMENT[key.q_dtype],
        "encoder": cache_encoding(key),
        "head_dim": key.head_dim,
        "elements_per_thread": ELEMENTS_PER_THREAD,
        "threads": THREADS,
    }


PARAMS = abi.Struct("FigAppendParams", (
    abi.Field("key", "const void*", "[nnz, num_kv_heads, head_dim] in the source dtype, head dim contiguous"),
    abi.Field("value", "const void*", "same shape and strides as key"),
    abi.Field("stride_row", "int64_t", "elements between appended tokens"),
    abi.Field("stride_head", "int64_t"),
    abi.Field("batch_indices", "const int32_t*", "[nnz]: the request token i belongs to"),
    abi.Field("positions", "const int32_t*", "[nnz]: its position in that request's sequence"),
    abi.Field("nnz", "int32_t"),
    abi.Field("batch", "int32_t", "requests in the page table; a token naming another is skipped"),
    abi.Field("num_pages", "int32_t", "pages of the cache; a page index outside [0, num_pages) is skipped"),
    abi.Field("num_indices", "int32_t", "entries of kv.indices; a page-table slot at or past it is skipped"),
    abi.Field("kv", abi.PAGED_KV, "the cache written, and its page table"),
    abi.Field("k_inv_scale", "float", "fp32 1 / k_scale (FP8 caches; 1 otherwise)"),
    abi.Field("v_inv_scale", "float"),
), "Everything one append launch reads.")

ABI = abi.KindAbi("append", PARAMS, (PARAMS,), (
    abi.Function("run", "int", (("const FigAppendParams*", "params"), ("void*", "stream")),
                 "Writes the nnz tokens' K and V rows into their pages; a cudaError_t value."),
))

SPEC = KindSpec(
    name="append",
    template="append.cu.j2",
    summary="append (and quantise to FP8) new K/V rows into a paged cache",
    abi=ABI,
    axes={"q_dtype": Q_DTYPES, "kv_dtype": KV_DTYPES, "head_dim": HEAD_DIMS, "conversion": CONVERSIONS},
    defaults={"head_dim": (128,)},
    predicates=(rows_are_chunks,),
    context=template_context,
)
