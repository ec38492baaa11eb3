"""Prefill bars timed in rotated rounds (d128 unless --head-dim, B4 S4096, 32/32 heads unless --kv-heads): Hopper against cuDNN, Ampere path against flash.

bench_prefill times each row once, in a fixed order (the SDPA peers first). The card's clock falls
under sustained load and recovers in lighter stretches, so a fixed order favours some rows: on the
H100 a first run of this script in a fixed order had the non-causal configuration that ran first
fastest, by up to 8% (causal showed no such order).
Here every configuration is timed as bench_prefill times it (CUDA-graph replays, L2 flushed,
median of --reps), once a round, round r starting at configuration r (mod their number), so that
no configuration always runs first or last; the table gives the median over the rounds and the
ratio of the medians, and the SM clock (nvidia-smi) is read after each timing. Same values for
every configuration: q, K and V random normal, as ragged tensors, as paged caches (pages of 16 or
128 slots, in random order as in a pool, or in order: page p of request b at index b * pages + p,
so that page 128 in order is ragged's memory), in e4m3 (q too: the FP8 tiles' rows), and as dense
[B, H, S, D] tensors for cuDNN.

Sets (--set): "bars" (default), the rows issue 12's bars compare: bf16 ragged and paged 16 against
cuDNN, and q/k/v e4m3 against bf16; "fp8", the FP8 tiles' rows alone (q/k/v e4m3, and bf16 q with
an e4m3 cache, ragged and paged 16), for A/B runs of FP8 changes; "wide", the rows of both with
cuDNN; "layout": bf16 ragged and paged 16 / 128, random and in
order, and cuDNN; "sm80", issue 11's rows on the Ampere path (backend="sm80"): bf16 ragged and
paged 16, a bf16 q on an e4m3 cache with each conversion ("bf16/e4m3@software"), and torch SDPA's
flash backend, the peer its bf16 bar names; "sm80e5m2", the same for an e5m2 cache (the software
routine ragged and paged 16, `cvt` paged 16); "sm80codes", the caches whose codes the warps upcast
(e4m3 with `cvt`, e5m2 with the software routine); "peers", our rows of both families beside
FlashInfer's FA2 and FA3 backends (bench/peer_flashinfer.py: it runs where FlashInfer can be
imported, on the device from the modules `run_device.sh peers` carries) and both SDPA peers, each
row's output checked once against a float32 SDPA of the same (dequantized) values, so that a
miscalled peer shows. $FIG_TREE selects the library's tree, as in bench_prefill.

usage: python bench/rotated_prefill.py [--set bars|fp8|wide|layout|sm80|sm80e5m2|sm80codes|peers] [--reps 20]
       [--rounds 5] [--head-dim 128] [--kv-heads 32] [--chunked | --batch 4 --seq 4096] [--only LABEL]
       [--out rotated.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_decode import L2_FLUSH_BYTES, time_graph  # noqa: E402  (puts the tree on sys.path)
from bench_prefill import (BATCH, CHUNK_BATCH, CHUNK_KV, CHUNK_QO, SEQ, attention_flops,  # noqa: E402
                           git_commit)
from flashinfer_gen import BatchPrefillWithPagedKVCacheWrapper, BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402

HEADS = 32
# (layout, page size, page order, q/k/v dtype name[@FP8 conversion][, library]); layout "cudnn" /
# "flash": the torch SDPA backend on dense bf16; library: our wrappers' backend= ("sm80", "sm90"; by
# default BACKEND's for the set) or "flashinfer-fa2" / "flashinfer-fa3"
SETS = {
    "bars": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"), ("ragged", None, None, "e4m3"),
             ("paged", 16, "random", "e4m3"), ("cudnn", None, None, "bf16")),
    "fp8": (("ragged", None, None, "e4m3"), ("paged", 16, "random", "e4m3"), ("ragged", None, None, "bf16/e4m3"),
            ("paged", 16, "random", "bf16/e4m3")),
    "wide": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"), ("ragged", None, None, "e4m3"),
             ("paged", 16, "random", "e4m3"), ("ragged", None, None, "bf16/e4m3"), ("paged", 16, "random", "bf16/e4m3"),
             ("cudnn", None, None, "bf16")),
    "layout": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"), ("paged", 16, "in order", "bf16"),
               ("paged", 128, "random", "bf16"), ("paged", 128, "in order", "bf16"), ("cudnn", None, None, "bf16")),
    "sm80": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"),
             ("ragged", None, None, "bf16/e4m3@hardware"), ("paged", 16, "random", "bf16/e4m3@hardware"),
             ("ragged", None, None, "bf16/e4m3@software"), ("paged", 16, "random", "bf16/e4m3@software"),
             ("flash", None, None, "bf16")),
    "sm80e5m2": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"),
                 ("ragged", None, None, "bf16/e5m2@software"), ("paged", 16, "random", "bf16/e5m2@software"),
                 ("paged", 16, "random", "bf16/e5m2@hardware"), ("flash", None, None, "bf16")),
    "sm80codes": (("ragged", None, None, "bf16"), ("paged", 16, "random", "bf16"),
                  ("ragged", None, None, "bf16/e4m3@hardware"), ("paged", 16, "random", "bf16/e4m3@hardware"),
                  ("ragged", None, None, "bf16/e5m2@software"), ("paged", 16, "random", "bf16/e5m2@software"),
                  ("flash", None, None, "bf16")),
    "peers": (("ragged", None, None, "bf16", "sm90"), ("paged", 16, "random", "bf16", "sm90"),
              ("ragged", None, None, "e4m3", "sm90"), ("paged", 16, "random", "e4m3", "sm90"),
              ("paged", 16, "random", "bf16/e4m3", "sm90"),
              ("ragged", None, None, "bf16", "sm80"), ("paged", 16, "random", "bf16", "sm80"),
              ("paged", 16, "random", "bf16/e4m3@hardware", "sm80"), ("paged", 16, "random", "bf16/e4m3@software", "sm80"),
              ("ragged", None, None, "bf16", "flashinfer-fa2"), ("paged", 16, "random", "bf16", "flashinfer-fa2"),
              ("paged", 16, "random", "bf16/e4m3", "flashinfer-fa2"),
              ("ragged", None, None, "bf16", "flashinfer-fa3"), ("paged", 16, "random", "bf16", "flashinfer-fa3"),
              ("paged", 16, "random", "e4m3", "flashinfer-fa3"),
              ("cudnn", None, None, "bf16"), ("flash", None, None, "bf16")),
}
# The peers set's ratios, (row, peer row) as indices into SETS["peers"]: ours over FlashInfer's row
# of the same kind, ours and FlashInfer's over SDPA. (4, 14) is the serving case: our bf16 q is
# quantised inside the timed kernel, FA3's e4m3 q was quantised before it.
PEER_PAIRS = ((0, 12), (1, 13), (3, 14), (4, 14), (0, 15), (1, 15), (5, 9), (6, 10), (7, 11), (8, 11), (5, 16), (6, 16),
              (12, 15), (9, 16))
BACKEND = {"sm80": "sm80", "sm80e5m2": "sm80", "sm80codes": "sm80"}  # the wrappers' backend= for a set; "sm90" for the others
# a name "q/kv" names q's and the cache's apart
DTYPES = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def sm_clock_mhz() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-i",
                              str(torch.cuda.current_device())], capture_output=True, text=True, timeout=10)
        return int(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def label(config) -> str:
    layout, page, order, dtype = config[:4]
    library = f"{config[4]} " if len(config) > 4 else ""
    return f"{library}{layout}{page or ''}{' ' + order if order else ''} {dtype}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SETS), default="bars")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--kv-heads", type=int, default=HEADS,
                    help="KV heads (GQA below 32; the SDPA peers get them repeated, so they read 32 / kv-heads "
                         "times the K/V bytes, for the same FLOPs)")
    ap.add_argument("--chunked", action="store_true",
                    help="bench_prefill's chunked step instead of B4 S4096: 16 requests of 512 new tokens on 8192 "
                         "keys, causal (bottom-right) only, without the SDPA rows")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"requests (default {BATCH}; not with --chunked)")
    ap.add_argument("--seq", type=int, default=SEQ,
                    help=f"queries and keys per request (default {SEQ}; a multiple of 128, every page size's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, metavar="LABEL",
                    help="the set's rows whose label starts with LABEL alone, or with a trailing $ the row labelled "
                         "LABEL (e.g. for one Nsight Compute profile)")
    args = ap.parse_args(argv)
    head_dim, kv_heads = args.head_dim, args.kv_heads
    if kv_heads < 1 or HEADS % kv_heads:
        ap.error(f"--kv-heads must divide the {HEADS} q heads")
    if args.seq < 128 or args.seq % 128 or args.batch < 1:
        ap.error("--seq must be a positive multiple of 128 and --batch positive")

    def chosen(c):  # --only: a label's start, or with a trailing $ the whole label
        return (args.only is None or (label(c) == args.only[:-1] if args.only.endswith("$")
                                      else label(c).startswith(args.only)))
    configs = tuple(c for c in SETS[args.set] if chosen(c) and not (args.chunked and c[0] in ("cudnn", "flash")))
    if not configs:
        sys.exit(f"no row of set {args.set} is labelled {args.only!r}...")
    gen = torch.Generator().manual_seed(0)
    # requests x (queries, keys) each; the chunked step's queries are the last of their keys
    batch, sq, skv = (CHUNK_BATCH, CHUNK_QO, CHUNK_KV) if args.chunked else (args.batch, args.seq, args.seq)
    tokens, kv_tokens = batch * sq, batch * skv
    causal_modes = (True,) if args.chunked else (False, True)
    # [tokens, heads, d] each, bf16 and their e4m3 codes (K and V in e5m2 too)
    q, k, v = (torch.randn(n, heads, head_dim, generator=gen).to(torch.bfloat16).cuda()
               for n, heads in ((tokens, HEADS), (kv_tokens, kv_heads), (kv_tokens, kv_heads)))
    values = {"bf16": (q, k, v), "e4m3": tuple(t.to(torch.float8_e4m3fn) for t in (q, k, v))}
    values["bf16/e4m3"] = (q,) + values["e4m3"][1:]
    values["bf16/e5m2"] = (q,) + tuple(t.to(torch.float8_e5m2) for t in (k, v))
    def dense_heads(t):  # [tokens, h, D] -> [B, 32, S, D], each KV head repeated for its group of q heads
        return t.view(batch, -1, t.shape[1], head_dim).transpose(1, 2).repeat_interleave(HEADS // t.shape[1], dim=1)
    dense = [dense_heads(t).contiguous() for t in (q, k, v)]
    out = torch.empty_like(q)
    qo_indptr = torch.arange(0, tokens + 1, sq, dtype=torch.int32, device="cuda")
    kv_indptr = torch.arange(0, kv_tokens + 1, skv, dtype=torch.int32, device="cuda")
    # the bottom-right causal mask of the reference (query i of a request sees keys <= skv - sq + i)
    causal_mask = (torch.arange(skv, device="cuda")[None, :] <= torch.arange(sq, device="cuda")[:, None] + skv - sq)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    flush = torch.ones(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    flashinfer = None
    if any(len(c) > 4 and c[4].startswith("flashinfer-") for c in configs):
        import peer_flashinfer
        flashinfer, why = peer_flashinfer.load()
        if flashinfer is None:
            sys.exit(why)
        fi_workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows, errors, references = [], {}, {}

    def build(config, causal):
        """(fn, instance name, output): one call of the row, and its output [tokens, 32, D] after a call."""
        layout, page, order, dtype_conv = config[:4]
        library = config[4] if len(config) > 4 else BACKEND.get(args.set, "sm90")
        dtype_name, _, conversion = dtype_conv.partition("@")
        q_name, _, kv_name = dtype_name.partition("/")
        q_c, k_c, v_c = values[dtype_name]
        plan_types = dict(q_data_type=DTYPES[q_name], kv_data_type=DTYPES[kv_name or q_name],
                          o_data_type=torch.bfloat16)
        if layout in ("cudnn", "flash"):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            sdpa = SDPBackend.CUDNN_ATTENTION if layout == "cudnn" else SDPBackend.FLASH_ATTENTION
            result = {}

            def fn():
                with sdpa_kernel(sdpa):
                    result["out"] = torch.nn.functional.scaled_dot_product_attention(*dense, is_causal=causal)
            return fn, f"torch SDPA {layout}", lambda: result["out"].transpose(1, 2).reshape(tokens, HEADS, head_dim)
        if library.startswith("flashinfer-"):
            w = peer_flashinfer.wrapper(flashinfer, layout, library.split("-", 1)[1], fi_workspace)
            name = f"flashinfer {flashinfer.__version__} {library.split('-', 1)[1]}"
        else:
            wrapper = BatchPrefillWithRaggedKVCacheWrapper if layout == "ragged" else BatchPrefillWithPagedKVCacheWrapper
            w = wrapper(workspace, backend=library, fp8_conversion=conversion or None)
            name = None
        if layout == "ragged":
            w.plan(qo_indptr, kv_indptr, HEADS, kv_heads, head_dim, causal=causal, **plan_types)
            fn = lambda: w.run(q_c, k_c, v_c, out=out)  # noqa: E731
        else:
            pages = kv_tokens // page  # the keys per request are a multiple of every page size
            # slot s of page i holds token i * page + s, so "in order" is ragged's memory
            cache = (k_c.view(pages, page, kv_heads, head_dim), v_c.view(pages, page, kv_heads, head_dim))
            if order == "random":
                perm = torch.randperm(pages, generator=gen)
                cache = tuple(c[perm.cuda()].contiguous() for c in cache)  # page perm[j] moved to index j
                indices = torch.argsort(perm).to(torch.int32)   # the request's page i is at argsort[i]
            else:
                indices = torch.arange(pages, dtype=torch.int32)
            w.plan(qo_indptr, torch.arange(0, pages + 1, skv // page, dtype=torch.int32, device="cuda"),
                   indices.cuda(), torch.full((batch,), page, dtype=torch.int32, device="cuda"),
                   HEADS, kv_heads, head_dim, page, causal=causal, **plan_types)
            fn = lambda: w.run(q_c, cache, out=out)  # noqa: E731
        return fn, name or w.module.key.name, lambda: out

    if args.set == "peers":
        # Each row once, before the timed rounds (the float32 references' work stays out of them):
        # its output against a float32 SDPA of the values it was given, so that a miscalled peer
        # shows. One relative L2 error per row; NaN stays NaN.
        for causal in causal_modes:
            for config in configs:
                fn, _, output = build(config, causal)
                out.fill_(float("nan"))
                fn()
                dtype_name = config[3].partition("@")[0]
                if (causal, dtype_name) not in references:
                    qkv = [dense_heads(t.float()) for t in values[dtype_name]]
                    references[(causal, dtype_name)] = torch.nn.functional.scaled_dot_product_attention(
                        *qkv, attn_mask=causal_mask if causal else None).transpose(1, 2).reshape(tokens, HEADS, head_dim)
                ref = references[(causal, dtype_name)]
                errors[(causal, config)] = ((output().float() - ref).norm() / ref.norm()).item()
        references.clear()
    for rnd in range(args.rounds):
        for causal in causal_modes:
            for config in configs[rnd % len(configs):] + configs[:rnd % len(configs)]:
                layout, page, order, dtype_conv = config[:4]
                fn, name, _ = build(config, causal)
                us = time_graph(fn, args.reps, flush)
                tflops = attention_flops(batch, HEADS, head_dim, sq, skv, causal) / us / 1e6
                clock = sm_clock_mhz()
                library = "torch" if layout in ("cudnn", "flash") else (
                    config[4] if len(config) > 4 else BACKEND.get(args.set, "sm90"))
                rows.append(dict(round=rnd, causal=causal, layout=layout, page_size=page, order=order,
                                 dtype=dtype_conv, library=library, config=list(config), instance=name,
                                 time_us=round(us, 2), tflops=round(tflops, 1), sm_clock_mhz_after=clock))
                print(f"round {rnd} {'causal' if causal else 'full  '} {label(config):<40} {us:9.1f} us "
                      f"{tflops:7.1f} TFLOP/s  SM clock after {clock} MHz", flush=True)
                fn = None
    medians = {}
    print("\nmedian over the rounds (TFLOP/s):")
    for causal in causal_modes:
        for config in configs:
            got = sorted(r["tflops"] for r in rows if (r["causal"], tuple(r["config"])) == (causal, config))
            medians[(causal, config)] = statistics.median(got)
            print(f"  {'causal' if causal else 'full  '} {label(config):<40} {statistics.median(got):7.1f}  "
                  f"(min {got[0]:.1f}, max {got[-1]:.1f})"
                  + (f"  rel. error {errors[(causal, config)]:.2e}" if (causal, config) in errors else "")
                  # a peer called wrongly is far off; FP8 rows are 2-4% off, 16-bit ones 0.2%
                  + ("  SUSPECT" if not errors.get((causal, config), 0.0) <= 0.1 else ""))
    ratios = {}
    if args.set == "peers" and args.only is None:  # PEER_PAIRS' ratios
        for causal in causal_modes:
            c = "causal" if causal else "full"
            for ours, theirs in PEER_PAIRS:
                a, b = SETS["peers"][ours], SETS["peers"][theirs]
                if a not in configs or b not in configs:  # --chunked has no SDPA rows
                    continue
                ratios[f"{c} {label(a)} / {label(b)}"] = medians[(causal, a)] / medians[(causal, b)]
    # The bar sets end with their peer and start with bf16 ragged and paged 16; the rows between
    # are each compared with the bf16 row of their layout.
    peer = {"bars": "cudnn", "sm80": "flash", "sm80e5m2": "flash", "sm80codes": "flash"}.get(args.set)
    if peer and args.only is None and not args.chunked:
        bf16_of = {config[0]: config for config in configs[:2]}
        for causal in (False, True):
            c = "causal" if causal else "full"
            for config in configs[:2]:
                ratios[f"{c} ours {label(config)} / {peer}"] = medians[(causal, config)] / medians[(causal, configs[-1])]
            for config in configs[2:-1]:
                b16 = bf16_of[config[0]]
                ratios[f"{c} ours {label(config)} / {label(b16)}"] = medians[(causal, config)] / medians[(causal, b16)]
    if ratios:
        print("ratios of the medians:")
        for key, value in ratios.items():
            print(f"  {key:<90} {value:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), commit=git_commit(),
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), set=args.set, reps=args.reps,
            rounds=args.rounds, head_dim=head_dim, heads=HEADS, kv_heads=kv_heads, batch=batch, qo_len=sq, kv_len=skv, medians=[dict(causal=c, config=list(cfg), tflops=t) for (c, cfg), t in medians.items()],
            ratios={k: round(x, 3) for k, x in ratios.items()},
            rel_errors=[dict(causal=c, config=list(cfg), rel_error=e) for (c, cfg), e in errors.items()],
            peer_versions=dict(flashinfer=flashinfer.__version__) if flashinfer else {}, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
