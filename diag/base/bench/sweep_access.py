"""Access-pattern sweep: the batch 64 x 4096 and batch 1 x 32768 decode with the page table
random (as in bench_decode.py) or in order, NHD or HND, page size 16 or 64: separates what the
DRAM access pattern costs from what the kernel costs. Timed as bench_decode.py times.

usage: python bench/sweep_access.py [--out access.json]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402
from bench_decode import D, HK, HQ, time_graph  # noqa: E402
from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper  # noqa: E402

CONFIGS = [("e4m3", torch.float8_e4m3fn, "hardware"), ("bf16", torch.bfloat16, "none")]


def run(batch, kv_len, dtype, conversion, layout, page, ordered, reps, flush, workspace):
    pages_per = math.ceil(kv_len / page)
    num_pages = batch * pages_per
    indptr = torch.arange(0, num_pages + 1, pages_per, dtype=torch.int32)
    indices = torch.arange(num_pages, dtype=torch.int32) if ordered else torch.randperm(num_pages, dtype=torch.int32)
    last = torch.full((batch,), kv_len - (pages_per - 1) * page, dtype=torch.int32)
    shape = (num_pages, page, HK, D) if layout == "NHD" else (num_pages, HK, page, D)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16).to(dtype)
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16).to(dtype)
    q = torch.randn(batch, HQ, D, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(q)
    w = BatchDecodeWithPagedKVCacheWrapper(workspace, layout, fp8_conversion=None if conversion == "none" else conversion)
    w.plan(indptr.cuda(), indices.cuda(), last.cuda(), HQ, HK, D, page, q_data_type=torch.bfloat16, kv_data_type=dtype)
    us = time_graph(lambda: w.run(q, (k, v), out=out), reps, flush)
    nbytes = 2 * k.numel() * k.element_size()
    del k, v
    torch.cuda.empty_cache()
    return us, nbytes


def main() -> int:
    args, flush, workspace = bench_decode.sweep_setup(__doc__)
    rows = []
    for batch, kv_len in ((64, 4096), (1, 32768)):
        for name, dtype, conversion in CONFIGS:
            for layout, page, ordered in (("NHD", 16, False), ("NHD", 16, True), ("HND", 16, False),
                                          ("HND", 16, True), ("NHD", 64, False), ("HND", 64, False)):
                us, nbytes = run(batch, kv_len, dtype, conversion, layout, page, ordered, args.reps, flush, workspace)
                rows.append(dict(kv_dtype=name, conversion=conversion, batch=batch, kv_len=kv_len, layout=layout,
                                 page_size=page, pages="ordered" if ordered else "random", time_us=round(us, 2),
                                 tbps=round(nbytes / us / 1e6, 3)))
                print(f"{name:<5} B{batch:<3} L{kv_len:<6} {layout} page {page:<3} {rows[-1]['pages']:<8} "
                      f"{us:8.1f} us {rows[-1]['tbps']:6.2f} TB/s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
