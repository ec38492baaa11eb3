"""Paged decode benchmark: flashinfer_gen vs torch SDPA (cuDNN) on a dense bf16 cache, same run.

Shapes: batch {1,16,64,256} x kv length {512,4096,32768}, 32 q heads, 8 KV heads, head dim 128,
page size 16, q bf16; KV bf16, e4m3 and e5m2 (hardware conversion) and FP8 with the software
(sm_80) conversion forced. Each timing is the median of CUDA-event timings of CUDA-graph replays,
with L2 flushed before each replay by *reading* a 256 MB buffer (so small shapes are not served
from L2, and no dirty lines are left whose write-back would compete with the timed kernel). TB/s counts the K
and V bytes read once. Writes bench/results/decode-<gpu>.json.

usage: python bench/bench_decode.py [--quick] [--head-dim D] [--out PATH]
An A/B against another checkout (an older commit): FIG_TREE=<its folder> with its own
FLASHINFER_GEN_CACHE times that checkout's kernels with this script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("FIG_TREE") or str(Path(__file__).resolve().parent.parent))
from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper  # noqa: E402

HQ, HK, D, PAGE = 32, 8, 128, 16
BATCHES = (1, 16, 64, 256)
KV_LENS = (512, 4096, 32768)
KV_CONFIGS = [  # (name, torch dtype, conversion)
    ("bf16", torch.bfloat16, "none"),
    ("e4m3", torch.float8_e4m3fn, "hardware"),
    ("e4m3", torch.float8_e4m3fn, "software"),
    ("e5m2", torch.float8_e5m2, "hardware"),
    ("e5m2", torch.float8_e5m2, "software"),
]
L2_FLUSH_BYTES = 256 << 20


def sweep_setup(doc: str | None = None):
    """What every timing script starts with: its --out/--reps arguments, the L2-flush buffer and
    a decode workspace."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    return args, flush, workspace


def time_graph(fn, reps: int, flush: torch.Tensor) -> float:
    """Median microseconds of `fn` captured in a CUDA graph, L2 flushed before each replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(10):  # warm-up: clocks up, module and graph loaded
        graph.replay()
    times = []
    for _ in range(reps):
        flush.sum(dtype=torch.float32)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1000.0)
    times.sort()
    return times[len(times) // 2]


def random_cache(num_pages: int, dtype: torch.dtype) -> torch.Tensor:
    """[num_pages, PAGE, HK, D] random normal values in `dtype`, made in slices to bound memory."""
    cache = torch.empty(num_pages, PAGE, HK, D, dtype=dtype, device="cuda")
    step = 1 << 16
    for i in range(0, num_pages, step):
        cache[i:i + step] = torch.randn(cache[i:i + step].shape, device="cuda", dtype=torch.bfloat16).to(dtype)
    return cache


def bench_ours(batch: int, kv_len: int, dtype, conversion, reps, flush, workspace):
    pages_per = math.ceil(kv_len / PAGE)
    num_pages = batch * pages_per
    indptr = torch.arange(0, num_pages + 1, pages_per, dtype=torch.int32)
    indices = torch.randperm(num_pages, dtype=torch.int32)  # scattered pages, as in a real pool
    last = torch.full((batch,), kv_len - (pages_per - 1) * PAGE, dtype=torch.int32)
    k = random_cache(num_pages, dtype)
    v = random_cache(num_pages, dtype)
    q = torch.randn(batch, HQ, D, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(q)
    conv = None if conversion == "none" else conversion
    w = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", fp8_conversion=conv)
    w.plan(indptr.cuda(), indices.cuda(), last.cuda(), HQ, HK, D, PAGE, q_data_type=torch.bfloat16,
           kv_data_type=dtype)
    us = time_graph(lambda: w.run(q, (k, v), k_scale=1.0, v_scale=1.0, out=out), reps, flush)
    sched = w._plan["schedule"]
    del k, v
    torch.cuda.empty_cache()
    return us, w.module.key.name, sched.request.size


def bench_sdpa(batch: int, kv_len: int, reps, flush):
    """torch SDPA on a dense bf16 cache [B, HK, L, D], GQA through enable_gqa; cuDNN backend first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, HK, kv_len, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(batch, HK, kv_len, D, dtype=torch.bfloat16, device="cuda")
    result = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
                fn()
                result[name] = time_graph(fn, reps, flush)
        except Exception as e:  # a backend that refuses this shape is reported, not hidden
            result[name] = None
            result[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    del q, k, v
    torch.cuda.empty_cache()
    return result


def main() -> int:
    global D
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 64 x 4096 and batch 1 x 32768 only")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--head-dim", type=int, default=D)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    D = args.head_dim
    gpu = torch.cuda.get_device_name()
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    shapes = [(64, 4096), (1, 32768)] if args.quick else [(b, l) for b in BATCHES for l in KV_LENS]
    rows = []
    print(f"{'kv':<5} {'conv':<9} {'B':>4} {'L':>6} {'us':>9} {'TB/s':>6} {'sdpa us':>9} {'sdpa TB/s':>9} {'CTAs':>6}")
    for batch, kv_len in shapes:
        peer = bench_sdpa(batch, kv_len, args.reps, flush)
        bf16_bytes = 2 * batch * kv_len * HK * D * 2
        for name, dtype, conversion in KV_CONFIGS:
            us, instance, n_work = bench_ours(batch, kv_len, dtype, conversion, args.reps, flush, workspace)
            nbytes = 2 * batch * kv_len * HK * D * torch.empty((), dtype=dtype).element_size()
            row = dict(kv_dtype=name, conversion=conversion, batch=batch, kv_len=kv_len, time_us=round(us, 2),
                       tbps=round(nbytes / us / 1e6, 3), bytes=nbytes, instance=instance, work_items=n_work,
                       peer_sdpa_cudnn_bf16_us=peer.get("cudnn"), peer_sdpa_flash_bf16_us=peer.get("flash"),
                       peer_sdpa_cudnn_bf16_tbps=round(bf16_bytes / peer["cudnn"] / 1e6, 3) if peer.get("cudnn") else None,
                       peer_errors={k: v for k, v in peer.items() if k.endswith("_error")} or None)
            rows.append(row)
            sd = peer.get("cudnn")
            print(f"{name:<5} {conversion:<9} {batch:>4} {kv_len:>6} {us:>9.1f} {row['tbps']:>6.2f} "
                  f"{(sd or float('nan')):>9.1f} {(row['peer_sdpa_cudnn_bf16_tbps'] or float('nan')):>9.2f} {n_work:>6}",
                  flush=True)
    commit = os.environ.get("FIG_COMMIT")  # the device's copy of the tree may have no .git
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip() or None
        except OSError:
            commit = None
    result = dict(device=gpu, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  commit=commit, tree=os.environ.get("FIG_TREE"), torch=torch.__version__, heads=dict(qo=HQ, kv=HK), head_dim=D, page_size=PAGE,
                  q_dtype="bf16", method="median of CUDA-event timed CUDA-graph replays, L2 flushed (by a 256 MB read) before each",
                  rows=rows)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"decode-{gpu.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
