"""Float64 reference for paged decode, computed from the *same* dequantised KV values the kernel
reads (the cache's own codes, upcast exactly, times k_scale / v_scale)."""
from __future__ import annotations

import math

import torch


def gather_request(cache: torch.Tensor, pages: torch.Tensor, kv_len: int, layout: str) -> torch.Tensor:
    """[kv_len, kv_heads, head_dim] float64 rows of one request from a 4-D paged cache."""
    blocks = cache[pages.long()].to(torch.float64)
    if layout == "HND":
        blocks = blocks.transpose(1, 2)
    return blocks.reshape(-1, blocks.shape[-2], blocks.shape[-1])[:kv_len]


def decode_reference(q, k_cache, v_cache, indptr, indices, last_page_len, layout="NHD", k_scale=1.0, v_scale=1.0,
                     sm_scale=None, logits_soft_cap=None, window_left=-1):
    """Returns (out [batch, Hq, D] float64, lse [batch, Hq] float64, base 2)."""
    batch, hq, d = q.shape
    page_size = k_cache.shape[1] if layout == "NHD" else k_cache.shape[2]
    hk = k_cache.shape[2] if layout == "NHD" else k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    indptr, last_page_len = indptr.cpu().tolist(), last_page_len.cpu().tolist()
    out = torch.empty(batch, hq, d, dtype=torch.float64, device=q.device)
    lse = torch.empty(batch, hq, dtype=torch.float64, device=q.device)
    for b in range(batch):
        n_pages = indptr[b + 1] - indptr[b]
        kv_len = (n_pages - 1) * page_size + last_page_len[b]
        pages = indices[indptr[b]:indptr[b + 1]]
        k = gather_request(k_cache, pages, kv_len, layout) * k_scale
        v = gather_request(v_cache, pages, kv_len, layout) * v_scale
        group = hq // hk
        k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        s = torch.einsum("hd,lhd->hl", q[b].to(torch.float64), k) * scale
        if logits_soft_cap:
            s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
        if window_left >= 0:
            pos = torch.arange(kv_len, device=q.device)
            s = s.masked_fill(pos[None, :] < kv_len - 1 - window_left, float("-inf"))
        lse_e = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse_e[:, None])
        out[b] = torch.einsum("hl,lhd->hd", p, v)
        lse[b] = lse_e / math.log(2.0)
    return out, lse


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; NaN or Inf anywhere gives inf, so it never passes."""
    out64 = out.to(torch.float64)
    if not torch.isfinite(out64).all():
        return float("inf")
    return float(torch.linalg.vector_norm(out64 - ref) / torch.linalg.vector_norm(ref))
