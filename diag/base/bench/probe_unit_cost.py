"""What a Hopper prefill work unit costs by its rows (a probe for plan()'s unit cost model).

Non-causal bf16, 32/32 heads, head dim 128, B requests of qo_len queries each on 2048 keys of a
paged cache (page 16) whose page table is the same for every request, so that K and V (32 MB)
stay in L2 as a long prompt's do (each request reading K/V of its own, once, measured HBM's
bandwidth instead: 0.91x at 64 rows, H100). With qo_len 64, 128 or 192 every work unit is one
item of that many rows (one, two or three of the CTA's consumer warpgroups with rows), all units
equally long in keys, B x 32 units over the persistent grid. The time per unit row count,
against 192 rows at the same B, is the relative cost of a unit with fewer rows (the other
warpgroups only free its tiles). Timed as bench_prefill times (CUDA-graph replays, L2 flushed
before each, median), in rotated rounds.

usage: python bench/probe_unit_cost.py [--batch 84] [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402  (puts the tree on sys.path)
from flashinfer_gen import BatchPrefillWithPagedKVCacheWrapper  # noqa: E402

HEADS, HEAD_DIM, KV_LEN, PAGE = 32, 128, 2048, 16


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=84)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    b = args.batch
    pages = KV_LEN // PAGE
    cache = tuple(torch.randn(pages, PAGE, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    page_indptr = torch.arange(0, b * pages + 1, pages, dtype=torch.int32, device="cuda")
    page_indices = torch.randperm(pages, dtype=torch.int32).repeat(b).cuda()  # every request: the same pages
    last = torch.full((b,), PAGE, dtype=torch.int32, device="cuda")
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    lengths = (192, 128, 64)
    times = {n: [] for n in lengths}
    for rnd in range(args.rounds):
        for qo_len in lengths[rnd % 3:] + lengths[:rnd % 3]:
            q = torch.randn(b * qo_len, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
            out = torch.empty_like(q)
            w = BatchPrefillWithPagedKVCacheWrapper(workspace, backend="sm90")
            w.plan(torch.arange(0, b * qo_len + 1, qo_len, dtype=torch.int32, device="cuda"), page_indptr,
                   page_indices, last, HEADS, HEADS, HEAD_DIM, PAGE, causal=False, q_data_type=torch.bfloat16,
                   kv_data_type=torch.bfloat16)
            assert w._plan["schedule"].request.size == b, "one item a request"
            us = time_graph(lambda: w.run(q, cache, out=out), args.reps, flush)
            times[qo_len].append(us)
            print(f"round {rnd} qo {qo_len:3d}: {us:8.1f} us ({b * HEADS} units)", flush=True)
    med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    for n in lengths:
        print(f"qo {n:3d} rows a unit: median {med[n]:8.1f} us, {med[n] / med[192]:.3f} of 192 rows")


if __name__ == "__main__":
    main()
