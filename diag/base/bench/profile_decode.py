"""One decode launch per (kv dtype, conversion, shape), for a profiler to attribute.

Plans and runs each configuration once after a warm-up run (module load, first-touch), with a
cudaProfilerStart/Stop window around the measured run, so that
  ncu --profile-from-start off --clock-control none -k regex:'decode|merge' python bench/profile_decode.py
reports exactly one decode (and merge) kernel per configuration. Shapes follow bench_decode.py.

usage: python bench/profile_decode.py [--configs bf16:none,e4m3:hardware,e4m3:software] [--shapes 64x4096,1x32768]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper  # noqa: E402

HQ, HK, D, PAGE = 32, 8, 128, 16
DTYPES = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="bf16:none,e4m3:hardware,e4m3:software")
    ap.add_argument("--shapes", default="64x4096,1x32768")
    args = ap.parse_args()
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for shape in args.shapes.split(","):
        batch, kv_len = map(int, shape.split("x"))
        pages_per = math.ceil(kv_len / PAGE)
        num_pages = batch * pages_per
        indptr = torch.arange(0, num_pages + 1, pages_per, dtype=torch.int32, device="cuda")
        indices = torch.randperm(num_pages, dtype=torch.int32).cuda()
        last = torch.full((batch,), kv_len - (pages_per - 1) * PAGE, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, HQ, D, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(q)
        for config in args.configs.split(","):
            name, conversion = config.split(":")
            dtype = DTYPES[name]
            k = torch.randn(num_pages, PAGE, HK, D, device="cuda", dtype=torch.bfloat16).to(dtype)
            v = torch.randn(num_pages, PAGE, HK, D, device="cuda", dtype=torch.bfloat16).to(dtype)
            w = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD",
                                                   fp8_conversion=None if conversion == "none" else conversion)
            w.plan(indptr, indices, last, HQ, HK, D, PAGE, q_data_type=torch.bfloat16, kv_data_type=dtype)
            w.run(q, (k, v), out=out)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            w.run(q, (k, v), out=out)
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            sched = w._plan["schedule"]
            print(f"{name}:{conversion} B{batch} L{kv_len}: {w.module.key.name}, {sched.request.size} work items, "
                  f"{sched.merge_request.size} merges, {2 * k.numel() * k.element_size() / 1e6:.1f} MB of KV",
                  flush=True)
            del k, v
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
