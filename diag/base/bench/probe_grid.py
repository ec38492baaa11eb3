"""Where the Hopper prefill's limit sits: its TFLOP/s with the persistent grid capped at fewer CTAs
(prefill.MAX_PERSISTENT_CTAS), and paged K/V laid out NHD against HND.

If each SM were held back by its own schedule (the consumers' GEMM / softmax pace, load latency
its rings see), a CTA's speed would not depend on how many others run: TFLOP/s would fall in
proportion to the CTAs. A limit the SMs share (L2 or the fabric behind it) shows as each CTA
running faster when fewer run. NHD pages put a head's rows 256 bytes apart of every token's
other heads (TMA boxes of 128-byte rows strided by H x 256 bytes); HND pages keep a head's rows
of a page contiguous.

Shape: B4 x S4096, 32/32 heads, d128, non-causal (the issue's), bf16 q, bf16 and e4m3 K/V.
Timing: bench_decode.time_graph (median of CUDA-graph replays, L2 flushed before each).
Usage: FIG_COMMIT=<sha> python bench/probe_grid.py [--out results.json]
"""
import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402  (puts the tree on sys.path)
from flashinfer_gen import (BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper,  # noqa: E402
                            prefill)

B, S, H, D, PAGE = 4, 4096, 32, 128, 64
FLOPS = 4 * B * H * S * S * D


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    flush = torch.ones(bench_decode.L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    q = torch.randn(B * S, H, D, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(q)
    qo_indptr = torch.arange(B + 1, dtype=torch.int32) * S
    rows = []

    def record(**row):
        row["tflops"] = FLOPS / row["time_us"] / 1e6
        if row.get("ctas"):
            row["tflops_per_132_ctas"] = row["tflops"] / row["ctas"] * sms
        rows.append(row)
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        k = torch.randn(B * S, H, D, dtype=torch.bfloat16, device="cuda").to(kv_dtype)
        v = torch.randn(B * S, H, D, dtype=torch.bfloat16, device="cuda").to(kv_dtype)
        for cap in (None, 99, 66, 33, 16):
            prefill.MAX_PERSISTENT_CTAS = cap
            w = BatchPrefillWithRaggedKVCacheWrapper(ws, kv_layout="NHD", backend="sm90")
            w.plan(qo_indptr, qo_indptr, H, H, D, causal=False, q_data_type=q.dtype, kv_data_type=kv_dtype,
                   o_data_type=torch.bfloat16)
            t = bench_decode.time_graph(lambda w=w: w.run(q, k, v, out=out), args.reps, flush)
            record(probe="grid", layout="ragged", kv_dtype=str(kv_dtype).split(".")[-1],
                   ctas=int(w._plan["params"].work.ctas), time_us=t)
        prefill.MAX_PERSISTENT_CTAS = None
        pages_per = S // PAGE
        perm = torch.randperm(B * pages_per, device="cuda").to(torch.int32)
        page_indptr = torch.arange(B + 1, dtype=torch.int32) * pages_per
        last = torch.full((B,), PAGE, dtype=torch.int32)
        for layout in ("NHD", "HND"):
            shape = (B * pages_per, PAGE, H, D) if layout == "NHD" else (B * pages_per, H, PAGE, D)
            kc = torch.randn(shape, dtype=torch.bfloat16, device="cuda").to(kv_dtype)
            vc = torch.randn(shape, dtype=torch.bfloat16, device="cuda").to(kv_dtype)
            w = BatchPrefillWithPagedKVCacheWrapper(ws, kv_layout=layout, backend="sm90")
            w.plan(qo_indptr, page_indptr, perm, last, H, H, D, PAGE, causal=False, q_data_type=q.dtype,
                   kv_data_type=kv_dtype, o_data_type=torch.bfloat16)
            t = bench_decode.time_graph(lambda w=w: w.run(q, (kc, vc), out=out), args.reps, flush)
            record(probe="layout", layout=f"paged{PAGE}_{layout}", kv_dtype=str(kv_dtype).split(".")[-1],
                   ctas=int(w._plan["params"].work.ctas), time_us=t)
            del kc, vc
        del k, v
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            commit=os.environ.get("FIG_COMMIT"),  # the device copy of .git can be stale
            shape=dict(batch=B, seq=S, heads=H, head_dim=D, page=PAGE, causal=False),
            method="median of CUDA-graph replays, L2 flushed before each (bench_decode.time_graph)",
            rows=rows), indent=1))


if __name__ == "__main__":
    main()
