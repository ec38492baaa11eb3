"""Where contiguous K/V loses to a paged cache on the Hopper family (a probe, not the benchmark).

The same bf16 K/V rows (B4 S4096, 32/32 heads, head dim 128, from bench_prefill's shape) attended
as the ragged wrapper's contiguous tensors and as paged caches of 16 and 128 slots, with the pages
in random order (as in a pool) and in order (page p of request b at index b * pages + p, so that
page 128 in order is ragged's memory, read through boxes of the same 128 rows), and torch SDPA's
cuDNN backend on the same values as dense [B, H, S, D] tensors. Each configuration is timed as
bench_prefill times it (CUDA-graph replays, L2 flushed, median); round r starts at configuration
r (mod their number), so that no configuration always runs first or last, and the SM clock
(nvidia-smi) is read after each timing: the card's clock falls under sustained load, so a fixed
order favours whatever runs first. $FIG_TREE selects the library's tree, as in bench_prefill.

usage: python bench/probe_kv_layout.py [--reps 20] [--rounds 2] [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402  (puts the tree on sys.path)
from bench_prefill import BATCH, SEQ, attention_flops  # noqa: E402
from flashinfer_gen import BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402

HEADS, HEAD_DIM = 32, 128
CONFIGS = (("ragged", None, None), ("paged", 16, "random"), ("paged", 16, "in order"), ("paged", 128, "random"),
           ("paged", 128, "in order"), ("cudnn", None, None))


def sm_clock_mhz() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-i",
                              str(torch.cuda.current_device())], capture_output=True, text=True, timeout=10)
        return int(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    tokens = BATCH * SEQ
    k = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16).cuda()
    v = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16).cuda()
    q = torch.randn(tokens, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16).cuda()
    out = torch.empty_like(q)
    qo_indptr = torch.arange(0, tokens + 1, SEQ, dtype=torch.int32, device="cuda")
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    dense = [t.view(BATCH, SEQ, HEADS, HEAD_DIM).transpose(1, 2).contiguous() for t in (q, k, v)]  # [B, H, S, D]
    rows = []
    for rnd in range(args.rounds):
        for causal in (False, True):
            for layout, page, order in CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]:
                if layout == "cudnn":
                    from torch.nn.attention import SDPBackend, sdpa_kernel

                    def fn(causal=causal):
                        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                            torch.nn.functional.scaled_dot_product_attention(*dense, is_causal=causal)
                    w, name = None, "torch SDPA cudnn"
                elif layout == "ragged":
                    w = BatchPrefillWithRaggedKVCacheWrapper(workspace, backend="sm90")
                    w.plan(qo_indptr, qo_indptr, HEADS, HEADS, HEAD_DIM, causal=causal, q_data_type=torch.bfloat16,
                           kv_data_type=torch.bfloat16)
                    fn = lambda w=w: w.run(q, k, v, out=out)  # noqa: E731
                    name = w.module.key.name
                else:
                    pages = tokens // page  # SEQ is a multiple of both page sizes
                    # slot s of page i holds token i * page + s, so "in order" is ragged's memory
                    cache = (k.view(pages, page, HEADS, HEAD_DIM), v.view(pages, page, HEADS, HEAD_DIM))
                    if order == "random":
                        perm = torch.randperm(pages, generator=gen)
                        cache = tuple(c[perm].contiguous() for c in cache)  # page perm[j] moved to index j
                        indices = torch.argsort(perm).to(torch.int32)   # the request's page i is at argsort[i]
                    else:
                        indices = torch.arange(pages, dtype=torch.int32)
                    per = SEQ // page
                    w = BatchPrefillWithPagedKVCacheWrapper(workspace, backend="sm90")
                    w.plan(qo_indptr, torch.arange(0, pages + 1, per, dtype=torch.int32, device="cuda"),
                           indices.cuda(), torch.full((BATCH,), page, dtype=torch.int32, device="cuda"),
                           HEADS, HEADS, HEAD_DIM, page, causal=causal, q_data_type=torch.bfloat16,
                           kv_data_type=torch.bfloat16)
                    fn = lambda w=w, cache=cache: w.run(q, cache, out=out)  # noqa: E731
                    name = w.module.key.name
                us = time_graph(fn, args.reps, flush)
                tflops = attention_flops(BATCH, HEADS, HEAD_DIM, SEQ, SEQ, causal) / us / 1e6
                clock = sm_clock_mhz()
                row = dict(round=rnd, causal=causal, layout=layout, page_size=page, order=order,
                           instance=name, time_us=round(us, 2), tflops=round(tflops, 1),
                           sm_clock_mhz_after=clock)
                rows.append(row)
                print(f"round {rnd} {'causal' if causal else 'full  '} {layout:<6} {str(page or ''):>4} "
                      f"{order or '':<9} {us:9.1f} us {tflops:7.1f} TFLOP/s  SM clock after {clock} MHz", flush=True)
                w = fn = None
    print("\nmedian over rounds (TFLOP/s):")
    for causal in (False, True):
        for layout, page, order in CONFIGS:
            got = sorted(r["tflops"] for r in rows if (r["causal"], r["layout"], r["page_size"], r["order"]) ==
                         (causal, layout, page, order))
            print(f"  {'causal' if causal else 'full  '} {layout:<6} {str(page or ''):>4} {order or '':<9} "
                  f"{got[len(got) // 2]:7.1f}  (min {got[0]:.1f}, max {got[-1]:.1f})")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
