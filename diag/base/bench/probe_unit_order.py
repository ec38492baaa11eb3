"""How much the persistent Hopper prefill depends on the order of its work units: the chunked
step of bench_prefill (16 requests x 512 new tokens against 8192 keys, page 16 in random page
order, 32/8 heads, causal, bf16, d128) with plan()'s unit lists (prefill.cta_unit_lists) replaced:
  default      plan()'s own: KV heads in L2-sized sections, longest unit first, dealt in a snake
  round_robin  units in item order (items fastest, then KV heads), unit k to CTA k % ctas: the
               order a grid of one CTA per unit runs in
  blocks       the same order cut into consecutive runs, one run per CTA
Timing: bench_decode.time_graph (median of 30 CUDA-graph replays, L2 flushed before each).
FIG_TREE: the checkout to import flashinfer_gen from (default: this one), so that two trees can
be compared on one machine (each with a FLASHINFER_GEN_CACHE of its own).
Usage: FIG_TREE=<checkout> python bench/probe_unit_order.py
(Run on the H100 on 2026-11-27 as diag/chunked2.py, the same logic in one function per order:
bench/results/logs/probe-unit-order-c6948e5-*.)
"""
import os
import sys

import numpy as np
import torch

tree = os.environ.get("FIG_TREE") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, tree)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import time_graph  # noqa: E402
from bench_prefill import CHUNK_BATCH, CHUNK_D, CHUNK_HEADS, CHUNK_KV, CHUNK_QO, PAGE, attention_flops  # noqa: E402
import flashinfer_gen.prefill as P  # noqa: E402
from flashinfer_gen import BatchPrefillWithPagedKVCacheWrapper  # noqa: E402


def _lists(cta: np.ndarray, units: np.ndarray, ctas: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(cta, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cta, minlength=ctas))])
    return indptr.astype(np.int32), units[order].astype(np.int32)


def round_robin(kv_begin, kv_end, kv_heads, ctas, tile_keys, stride, heads_per_section=None, item_weight=None):
    items = kv_begin.size
    u = np.arange(items * kv_heads)
    return _lists(u % ctas, (u % items) + (u // items) * stride, ctas)


def blocks(kv_begin, kv_end, kv_heads, ctas, tile_keys, stride, heads_per_section=None, item_weight=None):
    items = kv_begin.size
    n = items * kv_heads
    u = np.arange(n)
    return _lists((u * ctas) // n, (u % items) + (u // items) * stride, ctas)


def main() -> None:
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.empty(64 << 20, dtype=torch.float32, device="cuda")
    torch.manual_seed(0)
    dt, (H, HK), D, page, B, QO, KV = torch.bfloat16, CHUNK_HEADS, CHUNK_D, PAGE, CHUNK_BATCH, CHUNK_QO, CHUNK_KV
    q = torch.randn(B * QO, H, D, dtype=dt, device="cuda")
    out = torch.empty_like(q)
    per = KV // page
    n = B * per
    idx = torch.randperm(n, dtype=torch.int32).cuda()
    kv = (torch.randn(n, page, HK, D, device="cuda").to(dt), torch.randn(n, page, HK, D, device="cuda").to(dt))
    qo = torch.arange(0, B * QO + 1, QO, dtype=torch.int32, device="cuda")
    pind = torch.arange(0, n + 1, per, dtype=torch.int32, device="cuda")
    last = torch.full((B,), page, dtype=torch.int32, device="cuda")
    flops = attention_flops(B, H, D, QO, KV, causal=True)
    for name, lists in (("default", P.cta_unit_lists), ("round_robin", round_robin), ("blocks", blocks)):
        P.cta_unit_lists = lists
        w = BatchPrefillWithPagedKVCacheWrapper(ws, kv_layout="NHD", backend="sm90")
        w.plan(qo, pind, idx, last, H, HK, D, page, causal=True, q_data_type=dt, kv_data_type=dt, o_data_type=dt)
        us = time_graph(lambda: w.run(q, kv, out=out), 30, flush)
        print(f"{os.path.basename(tree):5s} chunked {name:12s} {us:8.1f} us {flops / us / 1e6:6.1f} TF", flush=True)


if __name__ == "__main__":
    main()
