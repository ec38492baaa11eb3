"""Whether the grid's quantisation costs the B4 x 32/32 x d128 rows: S = 4096 against 4224.

At S = 4096 the Ampere path's 4096 CTAs (128 rows) fill 15.5 waves of 264 resident CTAs, and the
Hopper family's three-consumer units (192 rows) give each head a unit of 64 rows (one consumer
busy of three; its last unit until ea28819, its first since); at S = 4224 (33 x 128 = 22 x 192)
neither happens, with the same number of Hopper units. So TFLOP/s at 4224 above 4096's measures those losses. Rotated rounds, ragged K/V, as
rotated_prefill times them.

--heads 31,32,33 at one S instead: the Ampere path's units then fill 15.0, 15.5 and 16.0 waves with
the same rows and keys each (--seqs 4096 --heads 31,32,33).

usage: python bench/probe_seq.py [--rounds 2] [--reps 20] [--seqs 4096,4224] [--heads 32] [--out probe.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402
from bench_prefill import BATCH, attention_flops, git_commit  # noqa: E402
from flashinfer_gen import BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402

HEAD_DIM = 128
CONFIGS = (("sm80", "bf16", None), ("sm80", "bf16/e4m3", "hardware"), ("sm90", "bf16", None), ("sm90", "e4m3", None))
DTYPES = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seqs", default="4096,4224")
    ap.add_argument("--heads", default="32", help="q = KV heads, comma separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",")]
    head_counts = [int(h) for h in args.heads.split(",")]
    gen = torch.Generator().manual_seed(0)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    data = {}
    for seq in seqs:
        for heads in head_counts:
            q, k, v = (torch.randn(BATCH * seq, heads, HEAD_DIM, generator=gen).to(torch.bfloat16).cuda() for _ in range(3))
            e4 = tuple(t.to(torch.float8_e4m3fn) for t in (q, k, v))
            data[seq, heads] = {"bf16": (q, k, v), "e4m3": e4, "bf16/e4m3": (q,) + e4[1:]}
    cases = [(seq, heads, c) for seq in seqs for heads in head_counts for c in CONFIGS]
    rows = []
    for rnd in range(args.rounds):
        order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
        for causal in (False, True):
            for seq, heads, (family, dtype, conversion) in order:
                q_name, _, kv_name = dtype.partition("/")
                q_c, k_c, v_c = data[seq, heads][dtype]
                out = torch.empty(q_c.shape, dtype=torch.bfloat16, device="cuda")
                indptr = torch.arange(0, BATCH * seq + 1, seq, dtype=torch.int32, device="cuda")
                w = BatchPrefillWithRaggedKVCacheWrapper(workspace, backend=family, fp8_conversion=conversion)
                w.plan(indptr, indptr, heads, heads, HEAD_DIM, causal=causal, q_data_type=DTYPES[q_name],
                       kv_data_type=DTYPES[kv_name or q_name], o_data_type=torch.bfloat16)
                us = time_graph(lambda: w.run(q_c, k_c, v_c, out=out), args.reps, flush)
                tflops = attention_flops(BATCH, heads, HEAD_DIM, seq, seq, causal) / us / 1e6
                rows.append(dict(round=rnd, causal=causal, seq=seq, heads=heads, family=family, dtype=dtype,
                                 instance=w.module.key.name, time_us=round(us, 2), tflops=round(tflops, 1)))
                print(f"round {rnd} {'causal' if causal else 'full  '} S {seq} H {heads} {family} {dtype:<10} "
                      f"{us:9.1f} us {tflops:7.1f} TFLOP/s", flush=True)
    shapes = [(s, h) for s in seqs for h in head_counts]
    print(f"\nmedians (TFLOP/s) and {shapes[-1]} against {shapes[0]} (S, heads):")
    for causal in (False, True):
        for family, dtype, _ in CONFIGS:
            med = {(s, h): statistics.median(r["tflops"] for r in rows if (r["causal"], r["seq"], r["heads"],
                                                                           r["family"], r["dtype"])
                                             == (causal, s, h, family, dtype)) for s, h in shapes}
            print(f"  {'causal' if causal else 'full  '} {family} {dtype:<10} " +
                  "  ".join(f"S {s} H {h}: {t:6.1f}" for (s, h), t in med.items()) +
                  (f"  ratio {med[shapes[-1]] / med[shapes[0]]:.3f}" if len(shapes) > 1 else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), commit=git_commit(),
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
