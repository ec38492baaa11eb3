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


# --- prefill: many queries per request, causal / sliding-window masks ------------------------------

def visible_keys(qo_len: int, kv_len: int, causal: bool, window_left: int, device=None) -> torch.Tensor:
    """[qo_len, kv_len] bool: which keys query i of a request sees. Query i sits at position
    kv_len - qo_len + i of the sequence (its "diagonal"); causal keeps keys j <= diagonal, a
    window of w >= 0 keeps keys j >= diagonal - w (with or without causal)."""
    diag = torch.arange(qo_len, device=device)[:, None] + (kv_len - qo_len)
    j = torch.arange(kv_len, device=device)[None, :]
    visible = torch.ones(qo_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= diag
    if window_left is not None and window_left >= 0:
        visible &= j >= diag - window_left
    return visible


def _request_logits(q, k, v, causal, k_scale, v_scale, sm_scale, logits_soft_cap, window_left):
    """(q64 [n, Hk, g, D], k64 and v64 scaled [m, Hk, D], the logits s [Hk, g, n, m] with hidden keys
    at -inf, visible [n, m], the logits scale) of one request, in float64."""
    n, hq, d = q.shape
    m, hk = k.shape[0], k.shape[1]
    scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    q64 = q.to(torch.float64).reshape(n, hk, hq // hk, d)
    k64 = k.to(torch.float64) * k_scale
    v64 = v.to(torch.float64) * v_scale
    s = torch.einsum("nkgd,mkd->kgnm", q64, k64) * scale
    if logits_soft_cap:
        s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
    visible = visible_keys(n, m, causal, window_left, q.device)
    s = s.masked_fill(~visible, float("-inf"))  # replaces, so a NaN logit of a hidden key vanishes
    return q64, k64, v64, s, visible, scale


def attention_reference(q, k, v, causal=False, k_scale=1.0, v_scale=1.0, sm_scale=None, logits_soft_cap=None,
                        window_left=-1):
    """One request: q [n, Hq, D], k/v [m, Hk, D] (any dtype, upcast exactly) -> (out [n, Hq, D]
    float64, lse [n, Hq] float64, base 2). q head h uses KV head h // (Hq / Hk).

    Logits s = q.(k * k_scale) * sm_scale (default 1/sqrt(D)), then c * tanh(s / c) with a soft cap
    c; the output is softmax(s) . (v * v_scale) over the keys visible_keys() keeps. A key that is
    not visible does not take part at all here: a NaN in its K or V leaves the row finite, while a
    NaN in a visible K poisons the row and one in a visible V poisons that dim of the row. (The
    kernels, like FlashInfer's, mask a hidden key's K but still multiply its zero probability by
    its V inside a tile: a NaN V at a hidden key of a processed tile poisons that dim. The tests
    place V NaNs at visible keys only.)"""
    n, hq, d = q.shape
    q64, k64, v64, s, visible, _ = _request_logits(q, k, v, causal, k_scale, v_scale, sm_scale, logits_soft_cap,
                                                   window_left)
    lse_e = torch.logsumexp(s, dim=-1)  # [Hk, g, n]
    p = torch.exp(s - lse_e[..., None])
    v_nan = torch.isnan(v64)
    out = torch.einsum("kgnm,mkd->nkgd", p, v64.masked_fill(v_nan, 0.0))
    if v_nan.any():  # 0 * NaN would poison rows that do not see the token; only visible ones are
        hit = torch.einsum("nm,mkd->nkd", visible.to(torch.float64), v_nan.to(torch.float64)) > 0
        out = out.masked_fill(hit[:, :, None, :], float("nan"))
    lse = (lse_e / math.log(2.0)).permute(2, 0, 1)
    return out.reshape(n, hq, d), lse.reshape(n, hq)


def prefill_reference(q, k_cache, v_cache, qo_indptr, kv_indptr, indices, last_page_len, layout="NHD",
                      k_scale=1.0, v_scale=1.0, sm_scale=None, logits_soft_cap=None, window_left=-1, causal=False):
    """Paged batch prefill: q [total_qo, Hq, D] cut by qo_indptr, the KV of request b in pages
    indices[kv_indptr[b]:kv_indptr[b+1]] of a 4-D cache (NHD or HND), its last page holding
    last_page_len[b] tokens. Returns (out [total_qo, Hq, D] float64, lse [total_qo, Hq] float64,
    base 2)."""
    page_size = k_cache.shape[1] if layout == "NHD" else k_cache.shape[2]
    qo, kvp = qo_indptr.cpu().tolist(), kv_indptr.cpu().tolist()
    last = last_page_len.cpu().tolist()
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float64, device=q.device)
    for b in range(len(qo) - 1):
        kv_len = (kvp[b + 1] - kvp[b] - 1) * page_size + last[b]
        pages = indices[kvp[b]:kvp[b + 1]]
        k = gather_request(k_cache, pages, kv_len, layout)
        v = gather_request(v_cache, pages, kv_len, layout)
        out[qo[b]:qo[b + 1]], lse[qo[b]:qo[b + 1]] = attention_reference(
            q[qo[b]:qo[b + 1]], k, v, causal, k_scale, v_scale, sm_scale, logits_soft_cap, window_left)
    return out, lse


def ragged_reference(q, k, v, qo_indptr, kv_indptr, k_scale=1.0, v_scale=1.0, sm_scale=None, logits_soft_cap=None,
                     window_left=-1, causal=False):
    """Ragged batch prefill: q [total_qo, Hq, D] cut by qo_indptr, k/v [total_kv, Hk, D] cut by
    kv_indptr. Returns (out [total_qo, Hq, D] float64, lse [total_qo, Hq] float64, base 2)."""
    qo, kvp = qo_indptr.cpu().tolist(), kv_indptr.cpu().tolist()
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float64, device=q.device)
    for b in range(len(qo) - 1):
        out[qo[b]:qo[b + 1]], lse[qo[b]:qo[b + 1]] = attention_reference(
            q[qo[b]:qo[b + 1]], k[kvp[b]:kvp[b + 1]], v[kvp[b]:kvp[b + 1]], causal, k_scale, v_scale, sm_scale,
            logits_soft_cap, window_left)
    return out, lse


# --- FP8 tiles (the Hopper family with an FP8 cache): q quantised per row, P in e4m3 -------------------

E4M3_MAX = 448.0


def quantize_q_rows(q: torch.Tensor) -> torch.Tensor:
    """q as the FP8-tile kernels read it (prefill_sm90_q.cuh, PrefillSm90Q::load), dequantised: per (token,
    head) row, inv = 448 / amax in fp32, at most 2^126 (1 for an all-zero row), codes = satfinite RNE of q * inv in
    e4m3, step = 1 / inv in fp32; returns codes * step in float64. Bit-exact with the kernel: the
    same IEEE fp32 operations in the same order."""
    x = q.float()
    amax = x.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, (torch.full_like(amax, E4M3_MAX) / amax).clamp(max=2.0 ** 126), torch.ones_like(amax))
    codes = (x * inv).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    step = torch.ones_like(inv) / inv
    return codes.to(torch.float64) * step.to(torch.float64)


def fp8_tile_bounds(q, k, v, causal=False, k_scale=1.0, v_scale=1.0, sm_scale=None, logits_soft_cap=None,
                    window_left=-1):
    """What bounds an FP8-tile kernel's error against attention_reference on the same (quantised) q
    and K/V, per output element of one request (q [n, Hq, D], k/v [m, Hk, D]):
      abs_pv [n, Hq, D]   sum_j p_j |v_j|      (P's e4m3 rounding: each p_j off by <= 2^-4 p_j)
      rms_pv [n, Hq, D]   sqrt(sum_j p_j^2 v_j^2)  (the same errors taken as independent)
      abs_v  [n, Hq, D]   sum_j |v_j| over visible keys (P's subnormal codes: <= 2^-10 / 2^8 each)
      logit  [n, Hq]      max_j sum_d |q_d k_jd| * scale * log2(e): the logits' scale, for the
                          accumulation error of FP8 WGMMA (about 14 bits, DeepSeek-V3 3.3.2)
    p is the float64 softmax of the logits as attention_reference has them."""
    n, hq, d = q.shape
    group = hq // k.shape[1]
    q64, k64, v64, s, visible, scale = _request_logits(q, k, v, causal, k_scale, v_scale, sm_scale, logits_soft_cap,
                                                       window_left)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row that sees no key: 0
    abs_pv = torch.einsum("kgnm,mkd->nkgd", p, v64.abs()).reshape(n, hq, d)
    rms_pv = torch.einsum("kgnm,mkd->nkgd", p * p, v64 * v64).sqrt().reshape(n, hq, d)
    abs_v = torch.einsum("nm,mkd->nkd", visible.to(torch.float64), v64.abs()).repeat_interleave(group, dim=1)
    mag = torch.einsum("nkgd,mkd->kgnm", q64.abs(), k64.abs()) * abs(scale) / math.log(2.0)
    logit = mag.masked_fill(~visible, 0.0).amax(-1).permute(2, 0, 1).reshape(n, hq)  # m >= 1 (prefill)
    return abs_pv, rms_pv, abs_v, logit
