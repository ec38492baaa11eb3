"""Append benchmark: 1M appended tokens x 8 KV heads x head dim 128 into a paged cache (page 16,
pages in random order), K and V, source bf16, cache bf16 / e4m3 / e5m2 (each FP8 encoder the
device's arch runs). GB/s counts the bytes the kernel must move: the source rows read and the
cache rows written (K and V), plus the 8 bytes of (request, position) per token. Peers in the
same run: a device-to-device copy (torch copy_ of a 512 MB buffer: read + written bytes / time),
the ceiling for any append, and the same quantised append done with torch ops (index_put of
clamp(x * 1/scale).to(fp8) into the flattened cache). Median of CUDA-event timed CUDA-graph
replays (bench_decode.time_graph). Writes bench/results/append-<gpu>.json.

usage: python bench/bench_append.py [--tokens 1048576] [--reps 20] [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402  (puts the tree on sys.path)

import flashinfer_gen  # noqa: E402
from generator.arches import arch_for_capability  # noqa: E402

HK, D, PAGE = 8, 128, 16
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    n = args.tokens
    dev = torch.device("cuda")
    flush = torch.ones(bench_decode.L2_FLUSH_BYTES // 4, dtype=torch.float32, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    # one request per 4096 tokens, each appended whole (a prefill's K/V)
    seq = 4096
    batch = n // seq
    pages_per = seq // PAGE
    num_pages = batch * pages_per
    indices = torch.randperm(num_pages, device=dev, generator=gen).to(torch.int32)
    indptr = torch.arange(0, num_pages + 1, pages_per, device=dev, dtype=torch.int32)
    last = torch.full((batch,), PAGE, device=dev, dtype=torch.int32)
    append_indptr = torch.arange(0, n + 1, seq, device=dev, dtype=torch.int32)
    b_idx, pos = flashinfer_gen.get_batch_indices_positions(append_indptr, torch.full((batch,), seq, device=dev,
                                                                                       dtype=torch.int32), n)
    key = torch.randn(n, HK, D, device=dev, generator=gen).to(torch.bfloat16)
    value = torch.randn(n, HK, D, device=dev, generator=gen).to(torch.bfloat16)
    arch = arch_for_capability(torch.cuda.get_device_capability())
    rows = []

    def record(row):
        rows.append(row)
        print(f"{row['what']:<44} {row['time_us']:>9.1f} us {row['gbps']:>8.1f} GB/s", flush=True)

    # copy bandwidth: the ceiling
    src = torch.empty(256 << 20, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(src)
    us = bench_decode.time_graph(lambda: dst.copy_(src), args.reps, flush)
    record(dict(what="torch copy_ (512 MB)", library="torch", time_us=us, bytes=2 * src.numel() * 2,
                gbps=2 * src.numel() * 2 / us / 1e3))
    del src, dst
    for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        k_cache = torch.zeros(num_pages, PAGE, HK, D, device=dev, dtype=cache_dtype)
        v_cache = torch.zeros_like(k_cache)
        fp8 = cache_dtype in FP8_MAX
        moved = 2 * n * HK * D * (2 + k_cache.element_size()) + 8 * n
        for conv in (arch.conversions if fp8 else (None,)):
            scales = dict(k_scale=0.5, v_scale=2.0) if fp8 else {}
            fn = lambda conv=conv, scales=scales: flashinfer_gen.append_paged_kv_cache(  # noqa: E731
                key, value, b_idx, pos, (k_cache, v_cache), indices, indptr, last, fp8_conversion=conv,
                jit=True, **scales)
            us = bench_decode.time_graph(fn, args.reps, flush)
            record(dict(what=f"flashinfer_gen bf16 -> {str(cache_dtype)[6:]} ({conv or 'copy'})", library="flashinfer_gen",
                        cache_dtype=str(cache_dtype)[6:], conversion=conv or "none", time_us=us, bytes=moved,
                        gbps=moved / us / 1e3))
        # the same with torch ops: the slot of each token, then one index_put per tensor
        page = indices[(indptr[b_idx.long()] + pos // PAGE).long()].long()
        flat_slot = page * PAGE + (pos % PAGE).long()
        kf, vf = k_cache.view(-1, HK, D), v_cache.view(-1, HK, D)
        inv_k, inv_v = torch.tensor(2.0, device=dev), torch.tensor(0.5, device=dev)
        if fp8:
            m = FP8_MAX[cache_dtype]
            kb, vb = kf.view(torch.uint8), vf.view(torch.uint8)  # index_put on the codes' bytes
            fn = lambda: (  # noqa: E731
                kb.index_put_((flat_slot,), (key.float() * inv_k).clamp(-m, m).to(cache_dtype).view(torch.uint8)),
                vb.index_put_((flat_slot,), (value.float() * inv_v).clamp(-m, m).to(cache_dtype).view(torch.uint8)))
        else:
            fn = lambda: (kf.index_put_((flat_slot,), key), vf.index_put_((flat_slot,), value))  # noqa: E731
        us = bench_decode.time_graph(fn, args.reps, flush)
        record(dict(what=f"torch index_put bf16 -> {str(cache_dtype)[6:]}", library="torch",
                    cache_dtype=str(cache_dtype)[6:], time_us=us, bytes=moved, gbps=moved / us / 1e3))
        del k_cache, v_cache, kf, vf
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip() or None
    name = torch.cuda.get_device_name().replace(" ", "_")
    out = Path(args.out) if args.out else root / "bench" / "results" / f"append-{name}.json"
    out.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), commit=commit,
                                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                   torch=torch.__version__, tokens=n, num_kv_heads=HK, head_dim=D, page_size=PAGE,
                                   method="median of CUDA-event timed CUDA-graph replays, L2 flushed before each",
                                   rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
