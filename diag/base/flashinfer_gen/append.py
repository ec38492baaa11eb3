"""FlashInfer's append API: write new K/V rows into a paged cache (quantising to FP8 with
k_scale / v_scale where the cache is FP8), and the helper that turns ragged append lengths into
per-token (request, position) pairs. Both are graph-capturable: nothing here synchronises with
the GPU or allocates beyond the helper's outputs."""
from __future__ import annotations

import numpy as np
import torch

from generator.abi import fill
from generator.kind_append import PARAMS
from generator.kind_prefill import HEAD_DIMS

from .common import check_kv_alignment, launch, lookup
from .validation import (DTYPE_NAMES, KV_LAYOUTS, check_cuda_tensor, check_scalar, fail, kv_strides, require_tensor,
                         split_paged_kv)

FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def _int32_vector(x, what: str, device: torch.device, length: int | None = None) -> torch.Tensor:
    require_tensor(x, what)
    check_cuda_tensor(x, what, device)
    if x.dtype != torch.int32 or x.dim() != 1 or not x.is_contiguous():
        fail(f"{what} must be a contiguous 1-D int32 tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if length is not None and x.numel() != length:
        fail(f"{what} has {x.numel()} entries, expected {length}")
    return x


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int):
    """(batch_indices, positions), each [nnz] int32 on the device of append_indptr: token i of the
    append belongs to request b with append_indptr[b] <= i < append_indptr[b + 1], at position
    seq_lens[b] - (append_indptr[b + 1] - append_indptr[b]) + (i - append_indptr[b]), i.e. the
    new tokens are the last ones of a sequence whose length after the append is seq_lens[b]."""
    require_tensor(append_indptr, "append_indptr")
    require_tensor(seq_lens, "seq_lens")
    device = append_indptr.device
    if not append_indptr.is_cuda:
        fail(f"append_indptr must be on a CUDA device, got {device}")
    for x, what in ((append_indptr, "append_indptr"), (seq_lens, "seq_lens")):
        check_cuda_tensor(x, what, device)
        if x.dtype not in (torch.int32, torch.int64) or x.dim() != 1:
            fail(f"{what} must be a 1-D int32 or int64 tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if append_indptr.numel() != seq_lens.numel() + 1:
        fail(f"append_indptr has {append_indptr.numel()} entries, expected len(seq_lens) + 1 = {seq_lens.numel() + 1}")
    if not isinstance(nnz, int) or isinstance(nnz, bool) or nnz < 0:
        fail(f"nnz must be a non-negative int (append_indptr[-1]), got {nnz!r}")
    indptr = append_indptr.to(torch.int64)
    counts = indptr[1:] - indptr[:-1]
    batch = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts, output_size=nnz)
    first_position = seq_lens.to(torch.int64) - counts
    positions = torch.arange(nnz, device=device) - indptr[batch] + first_position[batch]
    return batch.to(torch.int32), positions.to(torch.int32)


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                          positions: torch.Tensor, paged_kv_cache, kv_indices: torch.Tensor, kv_indptr: torch.Tensor,
                          kv_last_page_len: torch.Tensor, kv_layout: str = "NHD", k_scale: float | None = None,
                          v_scale: float | None = None, fp8_conversion: str | None = None,
                          jit: bool | None = None, _eager: bool = False) -> None:
    """Writes append_key/append_value ([nnz, num_kv_heads, head_dim], fp16 or bf16) into the
    paged cache at (batch_indices[i], positions[i]) through the page table (kv_indptr,
    kv_indices). A 16-bit cache must have the rows' dtype and takes them unchanged; an FP8
    cache (e4m3 / e5m2) stores satfinite round-to-nearest-even of x * fp32(1 / scale), NaN kept,
    with k_scale / v_scale the dequantisation scales the attention calls take. Tokens whose
    request, position or page lies outside the page table or the cache are skipped on the
    device (checking their values here would need a sync). kv_last_page_len is accepted for
    FlashInfer's signature and checked for shape only. Under torch.compile the call is the custom
    op flashinfer_gen::append_paged_kv_cache (ops.py), which mutates the cache."""
    if not _eager and torch.compiler.is_compiling():
        from .ops import append_op
        combined = not isinstance(paged_kv_cache, (tuple, list))
        k_cache, v_cache = (paged_kv_cache, None) if combined else (paged_kv_cache[0], paged_kv_cache[1])
        return append_op(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr,
                         kv_last_page_len, kv_layout, None if k_scale is None else float(k_scale),
                         None if v_scale is None else float(v_scale), fp8_conversion, jit)
    require_tensor(append_key, "append_key")
    require_tensor(append_value, "append_value")
    device = append_key.device
    if not append_key.is_cuda:
        fail(f"append_key must be on a CUDA device, got {device}")
    check_cuda_tensor(append_key, "append_key", device)
    check_cuda_tensor(append_value, "append_value", device)
    if append_key.dtype not in (torch.float16, torch.bfloat16):
        fail(f"append_key must be float16 or bfloat16, got {append_key.dtype}")
    if append_key.dim() != 3:
        fail(f"append_key must be [nnz, num_kv_heads, head_dim], got shape {tuple(append_key.shape)}")
    if (append_value.shape != append_key.shape or append_value.stride() != append_key.stride()
            or append_value.dtype != append_key.dtype):
        fail(f"append_value must match append_key in shape, strides and dtype: {tuple(append_key.shape)} "
             f"{append_key.stride()} {append_key.dtype} vs {tuple(append_value.shape)} {append_value.stride()} "
             f"{append_value.dtype}")
    nnz, hk, d = append_key.shape
    if d not in HEAD_DIMS:
        fail(f"head_dim {d} is not supported; supported head dims: {list(HEAD_DIMS)}")
    for t, what in ((append_key, "append_key"), (append_value, "append_value")):
        if t.data_ptr() % 16 or any((s * 2) % 16 for s in t.stride()[:2]):
            fail(f"{what} rows must be 16-byte aligned (data pointer and strides), got strides {t.stride()}")
    if kv_layout not in KV_LAYOUTS:
        fail(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    k, v = split_paged_kv(paged_kv_cache, kv_layout)
    for t, what in ((k, "k cache"), (v, "v cache")):
        check_cuda_tensor(t, what, device)
    page_size = k.shape[1] if kv_layout == "NHD" else k.shape[2]
    strides = kv_strides(k, kv_layout, page_size, hk, d)
    check_kv_alignment(k, v, strides)
    _int32_vector(batch_indices, "batch_indices", device, nnz)
    _int32_vector(positions, "positions", device, nnz)
    _int32_vector(kv_indices, "kv_indices", device)
    _int32_vector(kv_indptr, "kv_indptr", device)
    batch = kv_indptr.numel() - 1
    if batch < 1:
        fail(f"kv_indptr must have batch + 1 >= 2 entries, got {kv_indptr.numel()}")
    _int32_vector(kv_last_page_len, "kv_last_page_len", device, batch)
    if k.dtype in FP8_CACHE_DTYPES:
        ks, vs = check_scalar(k_scale, "k_scale", positive=True), check_scalar(v_scale, "v_scale", positive=True)
    elif k.dtype == append_key.dtype:
        if k_scale is not None or v_scale is not None:
            fail(f"k_scale / v_scale quantise into an FP8 cache; this cache is {k.dtype} (rows are copied as they are)")
        ks = vs = 1.0
    else:
        fail(f"a {k.dtype} cache takes {k.dtype} rows (got {append_key.dtype}); an FP8 cache takes either")
    module = lookup("append", device, DTYPE_NAMES[append_key.dtype], DTYPE_NAMES[k.dtype], d, 0.0, fp8_conversion, jit)
    params = fill(
        PARAMS, key=append_key.data_ptr(), value=append_value.data_ptr(), stride_row=append_key.stride(0),
        stride_head=append_key.stride(1), batch_indices=batch_indices.data_ptr(), positions=positions.data_ptr(),
        nnz=nnz, batch=batch, num_pages=k.shape[0], num_indices=kv_indices.numel(),
        kv=dict(k_cache=k.data_ptr(), v_cache=v.data_ptr(), stride_page=strides[0], stride_slot=strides[1],
                stride_head=strides[2], indptr=kv_indptr.data_ptr(), indices=kv_indices.data_ptr(),
                page_size=page_size, num_kv_heads=hk),
        # the reciprocal in fp32, as the reference computes it: x * fp32(1 / scale)
        k_inv_scale=float(np.float32(1.0) / np.float32(ks)), v_inv_scale=float(np.float32(1.0) / np.float32(vs)))
    launch(module, params, device)
