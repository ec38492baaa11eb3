"""The cut of a grid's short last wave (flashinfer_gen.prefill.cut_last_wave) on and off, per
instance and shape: what plan() chose (resident CTAs, units, items cut and pieces) and the time of
each form, in rotated rounds on one machine (CUDA graphs, L2 flushed, median of --reps). Ragged
K/V, non-causal and causal, q heads 32. Every kind is let take the cut here (its KindSpec may
refuse it in plan()); plan() takes none for a causal batch, so the causal rows are whole in both
forms (the earlier rule's causal cuts are in bench/results/logs/tail-cut/).

usage: python bench/probe_tail.py [--family sm80] [--head-dim 128] [--rounds 3] [--reps 20] [--shapes 1x1536x32,...]
       [--out probe.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402  (puts the tree on sys.path)
from bench_prefill import attention_flops, git_commit  # noqa: E402
import flashinfer_gen.prefill as prefill  # noqa: E402
from generator.instances import KINDS  # noqa: E402
from flashinfer_gen import BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402

HEADS = 32
# (requests, tokens each, KV heads)
SHAPES = ((1, 1024, 32), (1, 1536, 32), (1, 2048, 32), (2, 1536, 32), (1, 3072, 8), (4, 4096, 32))
# (cache, fp8_conversion) per family: the Hopper family's FP8 tiles quantise a bf16 q
DTYPES = {"sm80": (("bf16", None), ("e4m3", "hardware"), ("e4m3", "software")),
          "sm90": (("bf16", None), ("e4m3", None))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("sm80", "sm90"), default="sm80")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default=None, metavar="BxSxHK,...",
                    help="requests x tokens each x KV heads, comma separated (default: SHAPES)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    d = args.head_dim
    gen = torch.Generator().manual_seed(0)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    # the kinds' own choice aside (KindSpec.cut_last_wave): this measures the cut wherever the model takes it
    for kind in ("prefill", "prefill_sm90"):
        KINDS[kind] = dataclasses.replace(KINDS[kind], cut_last_wave=lambda key: True)
    cut = prefill.cut_last_wave
    rows = []
    shapes = SHAPES if args.shapes is None else tuple(tuple(int(x) for x in s.split("x")) for s in args.shapes.split(","))
    for batch, seq, kv_heads in shapes:
        tokens = batch * seq
        q = torch.randn(tokens, HEADS, d, generator=gen).to(torch.bfloat16).cuda()
        k, v = (torch.randn(tokens, kv_heads, d, generator=gen).to(torch.bfloat16).cuda() for _ in range(2))
        indptr = torch.arange(0, tokens + 1, seq, dtype=torch.int32, device="cuda")
        out = torch.empty_like(q)
        for kv_name, conv in DTYPES[args.family]:
            kc, vc = (k, v) if kv_name == "bf16" else (k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn))
            for causal in (False, True):
                forms = {}
                for form in ("cut", "whole"):
                    prefill.cut_last_wave = cut if form == "cut" else (lambda *a: (cut(*a)[0][:0], 1))
                    w = BatchPrefillWithRaggedKVCacheWrapper(workspace, backend=args.family, fp8_conversion=conv)
                    w.plan(indptr, indptr, HEADS, kv_heads, d, causal=causal, q_data_type=torch.bfloat16,
                           kv_data_type=kc.dtype)
                    s = w._plan["schedule"]
                    forms[form] = (w, dict(items=int(s.request.size), split_items=int((s.pieces > 1).sum()),
                                           pieces=int(s.pieces.max()), merge_rows=int(s.merge_row.size)))
                prefill.cut_last_wave = cut
                times = {form: [] for form in forms}
                for rnd in range(args.rounds):
                    for form in (("cut", "whole") if rnd % 2 == 0 else ("whole", "cut")):
                        w = forms[form][0]
                        times[form].append(time_graph(lambda: w.run(q, kc, vc, out=out), args.reps, flush))
                resident = prefill.resident_ctas(forms["cut"][0]._plan["module"], q.device)
                flops = attention_flops(batch, HEADS, d, seq, seq, causal)
                row = dict(batch=batch, seq=seq, kv_heads=kv_heads, kv_dtype=kv_name, conversion=conv, causal=causal,
                           resident=resident, instance=forms["cut"][0].module.key.name, **forms["cut"][1],
                           time_us={f: round(statistics.median(t), 2) for f, t in times.items()},
                           tflops={f: round(flops / statistics.median(t) / 1e6, 1) for f, t in times.items()})
                row["cut_over_whole"] = round(row["time_us"]["whole"] / row["time_us"]["cut"], 3)
                rows.append(row)
                print(f"B{batch} S{seq} hk{kv_heads} {kv_name}@{conv} {'causal' if causal else 'full  '} resident "
                      f"{resident} items {row['items']} split {row['split_items']} x{row['pieces']}: cut "
                      f"{row['tflops']['cut']} whole {row['tflops']['whole']} TFLOP/s ({row['cut_over_whole']}x)",
                      flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), commit=git_commit(), family=args.family, head_dim=d,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), rounds=args.rounds,
            reps=args.reps, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
