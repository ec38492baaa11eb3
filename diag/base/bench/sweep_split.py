"""Split-KV granularity sweep: the same shapes with every request cut into k equal pieces
(k = 1 is no split), against plan()'s own choice, timed as bench_decode.py times (CUDA-graph
replays, L2 flushed before each). Used to calibrate choose_chunk()'s makespan model.

usage: python bench/sweep_split.py [--out sweep.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402
from flashinfer_gen import decode  # noqa: E402

SHAPES = {(64, 4096): (1, 2, 3, 4, 6, 8), (16, 4096): (2, 4, 6, 8, 12, 16), (1, 32768): (33, 49, 66, 99, 132),
          (256, 4096): (1, 2, 3)}
CONFIGS = [("e4m3", torch.float8_e4m3fn, "hardware"), ("e4m3", torch.float8_e4m3fn, "software"),
           ("bf16", torch.bfloat16, "none")]


def main() -> int:
    args, flush, workspace = bench_decode.sweep_setup(__doc__)
    auto = decode.choose_chunk
    rows = []
    print(f"{'kv':<5} {'conv':<9} {'B':>4} {'L':>6} {'pieces':>7} {'us':>8} {'TB/s':>6}")
    for (batch, kv_len), ks in SHAPES.items():
        for name, dtype, conversion in CONFIGS:
            for k in ("auto",) + ks:
                if k == "auto":
                    decode.choose_chunk = auto
                else:
                    chunk = None if k == 1 else -(-(-(-kv_len // k)) // 16) * 16
                    decode.choose_chunk = lambda *a, c=chunk: c  # noqa: E731
                us, _, n_work = bench_decode.bench_ours(batch, kv_len, dtype, conversion, args.reps, flush, workspace)
                nbytes = 2 * batch * kv_len * bench_decode.HK * bench_decode.D * torch.empty((), dtype=dtype).element_size()
                row = dict(kv_dtype=name, conversion=conversion, batch=batch, kv_len=kv_len, pieces=k,
                           work_items=n_work, time_us=round(us, 2), tbps=round(nbytes / us / 1e6, 3))
                rows.append(row)
                print(f"{name:<5} {conversion:<9} {batch:>4} {kv_len:>6} {str(k) + '/' + str(n_work):>7} {us:>8.1f} "
                      f"{row['tbps']:>6.2f}", flush=True)
    decode.choose_chunk = auto
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
