"""Whether the grid's quantisation costs the B4 x 32/32 x d128 rows: S = 4096 against 4224.

At S = 4096 the Ampere path's 4096 CTAs (128 rows) fill 15.5 waves of 264 resident CTAs, and the
Hopper family's three-consumer units (192 rows) end each head with a unit of 64 rows (one consumer
busy of three); at S = 4224 (33 x 128 = 22 x 192) neither happens, with the same number of Hopper
units. So TFLOP/s at 4224 above 4096's measures those losses. Rotated rounds, ragged K/V, as
rotated_prefill times them.

usage: python bench/probe_seq.py [--rounds 2] [--reps 20] [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402
from bench_prefill import BATCH, attention_flops, git_commit  # noqa: E402
from flashinfer_gen import BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402

HEADS, HEAD_DIM = 32, 128
CONFIGS = (("sm80", "bf16", None), ("sm80", "bf16/e4m3", "hardware"), ("sm90", "bf16", None), ("sm90", "e4m3", None))
DTYPES = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seqs", default="4096,4224")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",")]
    gen = torch.Generator().manual_seed(0)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    data = {}
    for seq in seqs:
        q, k, v = (torch.randn(BATCH * seq, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16).cuda() for _ in range(3))
        e4 = tuple(t.to(torch.float8_e4m3fn) for t in (q, k, v))
        data[seq] = {"bf16": (q, k, v), "e4m3": e4, "bf16/e4m3": (q,) + e4[1:]}
    cases = [(seq, c) for seq in seqs for c in CONFIGS]
    rows = []
    for rnd in range(args.rounds):
        order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
        for causal in (False, True):
            for seq, (family, dtype, conversion) in order:
                q_name, _, kv_name = dtype.partition("/")
                q_c, k_c, v_c = data[seq][dtype]
                out = torch.empty(q_c.shape, dtype=torch.bfloat16, device="cuda")
                indptr = torch.arange(0, BATCH * seq + 1, seq, dtype=torch.int32, device="cuda")
                w = BatchPrefillWithRaggedKVCacheWrapper(workspace, backend=family, fp8_conversion=conversion)
                w.plan(indptr, indptr, HEADS, HEADS, HEAD_DIM, causal=causal, q_data_type=DTYPES[q_name],
                       kv_data_type=DTYPES[kv_name or q_name], o_data_type=torch.bfloat16)
                us = time_graph(lambda: w.run(q_c, k_c, v_c, out=out), args.reps, flush)
                tflops = attention_flops(BATCH, HEADS, HEAD_DIM, seq, seq, causal) / us / 1e6
                rows.append(dict(round=rnd, causal=causal, seq=seq, family=family, dtype=dtype, instance=w.module.key.name,
                                 time_us=round(us, 2), tflops=round(tflops, 1)))
                print(f"round {rnd} {'causal' if causal else 'full  '} S {seq} {family} {dtype:<10} {us:9.1f} us "
                      f"{tflops:7.1f} TFLOP/s", flush=True)
    print("\nmedians (TFLOP/s) and S = 4224 against 4096:")
    for causal in (False, True):
        for family, dtype, _ in CONFIGS:
            med = {s: statistics.median(r["tflops"] for r in rows if (r["causal"], r["seq"], r["family"], r["dtype"])
                                        == (causal, s, family, dtype)) for s in seqs}
            print(f"  {'causal' if causal else 'full  '} {family} {dtype:<10} " +
                  "  ".join(f"S {s}: {t:6.1f}" for s, t in med.items()) +
                  (f"  ratio {med[seqs[-1]] / med[seqs[0]]:.3f}" if len(seqs) > 1 else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), commit=git_commit(),
                                                  rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
