"""FlashInfer's single-request calls on contiguous K/V, through the batch kernels: a decode over
one page that holds the whole sequence, and a prefill through the ragged wrapper. Each call
plans (host work) and runs; a serving loop should hold a batch wrapper instead. The wrappers and
their workspace are kept per device and layout, so repeated calls allocate nothing new; calls
on several streams at once would share them, so use batch wrappers there."""
from __future__ import annotations

import torch

from .decode import BatchDecodeWithPagedKVCacheWrapper
from .prefill import BatchPrefillWithRaggedKVCacheWrapper
from .validation import KV_LAYOUTS, fail, require_tensor

WORKSPACE_BYTES = 64 << 20
_wrappers: dict = {}


def _wrapper(kind, device: torch.device, layout: str, **options):
    """options: the prefill wrapper's keyword-only ones (fp8_tiles)."""
    key = (kind, device, layout, tuple(sorted(options.items())))
    if key not in _wrappers:
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        _wrappers[key] = (kind(workspace, layout) if kind is BatchDecodeWithPagedKVCacheWrapper
                          else kind(workspace, **options))
    return _wrappers[key]


def _kv(k, v, kv_layout: str):
    require_tensor(k, "k")
    require_tensor(v, "v")
    if kv_layout not in KV_LAYOUTS:
        fail(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    if k.dim() != 3 or v.shape != k.shape:
        fail(f"k and v must be [kv_len, num_kv_heads, head_dim] (NHD) or [num_kv_heads, kv_len, head_dim] (HND) "
             f"of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    kv_len, hk = (k.shape[0], k.shape[1]) if kv_layout == "NHD" else (k.shape[1], k.shape[0])
    if kv_len < 1:
        fail("k and v hold no tokens")
    return kv_len, hk


def single_decode_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layout: str = "NHD",
                                pos_encoding_mode: str = "NONE", use_tensor_cores: bool = False,
                                q_scale: float | None = None, k_scale: float | None = None,
                                v_scale: float | None = None, window_left: int = -1,
                                logits_soft_cap: float | None = None, sm_scale: float | None = None,
                                rope_scale: float | None = None, rope_theta: float | None = None,
                                return_lse: bool = False):
    """q: [num_qo_heads, head_dim]; k, v: one request's keys and values. Returns out
    [num_qo_heads, head_dim] (and lse [num_qo_heads], base 2, with return_lse)."""
    require_tensor(q, "q")
    if q.dim() != 2:
        fail(f"q must be [num_qo_heads, head_dim], got shape {tuple(q.shape)}")
    kv_len, hk = _kv(k, v, kv_layout)
    w = _wrapper(BatchDecodeWithPagedKVCacheWrapper, q.device, kv_layout)
    one = torch.zeros(1, dtype=torch.int32, device=q.device)
    # the whole sequence is one page: [1, kv_len, hk, d] (NHD) or [1, hk, kv_len, d] (HND)
    w.plan(torch.tensor([0, 1], dtype=torch.int32), one, torch.tensor([kv_len], dtype=torch.int32), q.shape[0], hk,
           q.shape[1], kv_len, pos_encoding_mode=pos_encoding_mode, window_left=window_left,
           logits_soft_cap=logits_soft_cap, q_data_type=q.dtype, kv_data_type=k.dtype, sm_scale=sm_scale,
           rope_scale=rope_scale, rope_theta=rope_theta)
    result = w.run(q.unsqueeze(0), (k.unsqueeze(0), v.unsqueeze(0)), q_scale=q_scale, k_scale=k_scale,
                   v_scale=v_scale, return_lse=return_lse)
    if return_lse:
        return result[0][0], result[1][0]
    return result[0]


def single_prefill_with_kv_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, custom_mask=None,
                                 packed_custom_mask=None, causal: bool = False, kv_layout: str = "NHD",
                                 pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
                                 sm_scale: float | None = None, window_left: int = -1,
                                 logits_soft_cap: float | None = None, rope_scale: float | None = None,
                                 rope_theta: float | None = None, return_lse: bool = False, *,
                                 q_scale: float | None = None, k_scale: float | None = None,
                                 v_scale: float | None = None, o_data_type=None, fp8_tiles: bool = True):
    """q: [qo_len, num_qo_heads, head_dim]; k, v: one request's keys and values. Returns out of q's
    shape (q's dtype; an e4m3 q writes o_data_type, bfloat16 by default) and, with return_lse, lse
    [qo_len, num_qo_heads], base 2. Causal aligns to the end of the keys. fp8_tiles=False keeps a
    16-bit q in 16 bits with an FP8 K/V (the batch prefill wrappers' argument)."""
    require_tensor(q, "q")
    if q.dim() != 3:
        fail(f"q must be [qo_len, num_qo_heads, head_dim], got shape {tuple(q.shape)}")
    kv_len, hk = _kv(k, v, kv_layout)
    if kv_layout == "HND":  # the ragged kernel reads [tokens, heads, dim] through strides: a view
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    if not isinstance(fp8_tiles, bool):
        fail(f"fp8_tiles must be a bool, got {fp8_tiles!r}")
    w = _wrapper(BatchPrefillWithRaggedKVCacheWrapper, q.device, "NHD", fp8_tiles=fp8_tiles)
    w.plan(torch.tensor([0, q.shape[0]], dtype=torch.int32), torch.tensor([0, kv_len], dtype=torch.int32), q.shape[1],
           hk, q.shape[2], custom_mask=custom_mask, packed_custom_mask=packed_custom_mask, causal=causal,
           pos_encoding_mode=pos_encoding_mode, use_fp16_qk_reduction=use_fp16_qk_reduction, window_left=window_left,
           logits_soft_cap=logits_soft_cap, sm_scale=sm_scale, rope_scale=rope_scale, rope_theta=rope_theta,
           q_data_type=q.dtype, kv_data_type=k.dtype, o_data_type=o_data_type)
    return w.run(q, k, v, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, return_lse=return_lse)
