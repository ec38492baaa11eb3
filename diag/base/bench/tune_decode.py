"""Tuning sweep for the decode pipeline constants (stages, CTAs per SM register cap).

Builds each variant of a few instances into its own cache root (in parallel), then times them
on the shapes that matter for the issue's targets. Results go to stdout and a JSON file; the
winners become the generator's derived defaults (generator/kind_decode.py), not a table.

usage: python bench/tune_decode.py --out tune.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

VARIANTS = {  # (kv dtype, conversion) -> tuning strings; "" = the generator's default
    ("bf16", "none"): ["", "stages=2,min_ctas=2", "stages=4,min_ctas=2"],
    ("e4m3", "hardware"): ["", "stages=3,min_ctas=2", "stages=4,min_ctas=2", "stages=3,min_ctas=3",
                           "stages=2,min_ctas=4"],
    ("e4m3", "software"): ["", "stages=2,min_ctas=2", "stages=4,min_ctas=2", "stages=3,min_ctas=3"],
}
SHAPES = [(64, 4096, "NHD"), (1, 32768, "NHD"), (16, 4096, "NHD")]


def root_for(kv: str, conv: str, tune: str) -> Path:
    return REPO / ".fig_tune" / f"{kv}-{conv}-{tune.replace(',', '_').replace('=', '') or 'default'}"


def build_all(jobs: int) -> None:
    procs = []
    for (kv, conv), tunes in VARIANTS.items():
        for tune in tunes:
            env = dict(os.environ, FLASHINFER_GEN_CACHE=str(root_for(kv, conv, tune)), FIG_DECODE_TUNE=tune)
            cmd = [sys.executable, "-m", "flashinfer_gen.cli", "build", "--arch", "sm90a", "--head-dim", "128",
                   "--q-dtype", "bf16", "--kv-dtype", kv, "--conversion", conv, "--jobs", "2"]
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(err.decode()[-2000:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tune.json")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    build_all(jobs=16)
    import bench_decode as bd
    from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper
    from flashinfer_gen.common import resident_ctas
    flush = torch.ones(bd.L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dtypes = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn}
    rows = []
    for batch, kv_len, layout in SHAPES:
        pages_per = -(-kv_len // bd.PAGE)
        n = batch * pages_per
        indptr = torch.arange(0, n + 1, pages_per, dtype=torch.int32, device="cuda")
        indices = torch.randperm(n, dtype=torch.int32).cuda()
        last = torch.full((batch,), kv_len - (pages_per - 1) * bd.PAGE, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, bd.HQ, bd.D, dtype=torch.bfloat16, device="cuda")
        out = torch.empty_like(q)
        for (kv, conv), tunes in VARIANTS.items():
            shape = (n, bd.PAGE, bd.HK, bd.D) if layout == "NHD" else (n, bd.HK, bd.PAGE, bd.D)
            k = torch.randn(shape, device="cuda", dtype=torch.bfloat16).to(dtypes[kv])
            v = torch.randn(shape, device="cuda", dtype=torch.bfloat16).to(dtypes[kv])
            for tune in tunes:
                os.environ["FLASHINFER_GEN_CACHE"] = str(root_for(kv, conv, tune))
                os.environ["FIG_DECODE_TUNE"] = tune
                w = BatchDecodeWithPagedKVCacheWrapper(ws, layout, fp8_conversion=None if conv == "none" else conv)
                w.plan(indptr, indices, last, bd.HQ, bd.HK, bd.D, bd.PAGE, q_data_type=torch.bfloat16,
                       kv_data_type=dtypes[kv])
                us = bd.time_graph(lambda: w.run(q, (k, v), out=out), args.reps, flush)
                nbytes = k.numel() * k.element_size() * 2 * kv_len / (pages_per * bd.PAGE)
                occ = (resident_ctas(w.module, q.device) // torch.cuda.get_device_properties(q.device).multi_processor_count,)
                row = dict(kv=kv, conv=conv, tune=tune or "default", batch=batch, kv_len=kv_len, layout=layout,
                           us=round(us, 1), tbps=round(nbytes / us / 1e6, 3), ctas_per_sm=occ[0])
                rows.append(row)
                print(f"{kv:<5} {conv:<9} {row['tune']:<22} B{batch:<4} L{kv_len:<6} {layout} "
                      f"{us:8.1f} us {row['tbps']:6.2f} TB/s  {occ[0]} CTA/SM", flush=True)
            del k, v
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
