"""Host cost of run(): CPU microseconds per eager call, mean over 1000 calls with no sync in between
(per_call_us: in chunks of 100, a sync after each outside the timing, so the launch queue never
fills and the figure is the host's; the median of 5 such rounds, after 2 s of warm-up), for decode (B64, 32/8 heads, head dim 128, page 16) and
paged prefill (64 requests of 16 tokens), bf16 and e4m3 caches, with `out` allocated by run()
and passed in. Each row also gives the 1000 calls timed straight through (us_per_call_unchunked:
where the GPU work per call is the longer, this is the GPU's pace) and the GPU time per call back
to back (gpu_us_per_call). FlashInfer's wrappers are timed the same way where it is installed.
Two more rows pass one of 32 caches in turn, as an engine's layers do, and `breakdown` splits one
call into its Python side, the launch and the C entry (where_it_goes).

usage: python bench/bench_host.py [--calls 1000] [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import flashinfer_gen  # noqa: E402

B, HQ, HK, D, PAGE, KV_LEN, QO = 64, 32, 8, 128, 16, 16, 16
LAYERS = 32
CHUNK = 100  # calls between syncs: well below the launch queue's depth
REPEATS = 5


def per_call_us(fn, calls: int, chunk: int = CHUNK, repeats: int = REPEATS) -> float:
    """CPU microseconds per call: the median over `repeats` rounds of the mean of `calls` calls,
    made in chunks of `chunk`, each chunk timed alone and followed by a sync outside the timing,
    so the launch queue never fills and a call's GPU work, even where longer than its host cost,
    never holds the host up (no sync between the calls)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(repeats):
        host = 0.0
        for first in range(0, calls, chunk):
            n = min(chunk, calls - first)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            host += time.perf_counter() - t0
            torch.cuda.synchronize()
        rounds.append(host / calls * 1e6)
    return statistics.median(rounds)


def warm_up_host(seconds: float = 2.0) -> None:
    """Keeps the CPU busy with torch launches first: the rows measured first otherwise pay for the
    core's clock ramping up (seen as the first rows of a run coming out slower than later,
    heavier ones)."""
    x = torch.zeros(1, device="cuda")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(CHUNK):
            x.add_(1)
        torch.cuda.synchronize()


def gpu_us(fn, calls: int = CHUNK) -> float:
    """GPU microseconds per call, back to back (CUDA events around `calls` calls): where this
    is above the host's figure, a loop of calls runs at the GPU's pace, not the host's."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def where_it_goes(indptr, indices, last, num_pages, calls: int) -> list:
    """Where the microseconds of one bf16 run() (out given) go: the whole call, the call with the
    launch replaced by nothing (the Python side), the launch alone (stream lookup + the C entry),
    the C entry alone (its driver calls and the kernel launch), and for scale torch.empty of out
    and a one-element torch kernel launch."""
    from flashinfer_gen import common
    cache = torch.randn(num_pages, 2, PAGE, HK, D, device="cuda").to(torch.bfloat16)
    ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    q = torch.randn(B, HQ, D, dtype=torch.bfloat16, device="cuda")
    qp = torch.randn(B * QO, HQ, D, dtype=torch.bfloat16, device="cuda")
    qo_indptr = torch.arange(0, B * QO + 1, QO, dtype=torch.int32, device="cuda")
    wrappers = []
    dec = flashinfer_gen.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
    dec.plan(indptr, indices, last, HQ, HK, D, PAGE, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    wrappers.append(("decode", dec, q))
    for backend in ("sm90", "sm80"):
        pre = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend=backend)
        try:
            pre.plan(qo_indptr, indptr, indices, last, HQ, HK, D, PAGE, causal=True, q_data_type=torch.bfloat16,
                     kv_data_type=torch.bfloat16)
        except (flashinfer_gen.ArgumentError, flashinfer_gen.InstanceNotBuiltError) as e:  # not built, or not this arch
            print(f"breakdown: prefill {backend}: {e}")
            continue
        wrappers.append((f"prefill {backend}", pre, qp))
    rows = []
    for what, w, qq in wrappers:
        out = torch.empty_like(qq)
        w.run(qq, cache, out=out)
        plan = w._plan
        device = plan["device"]
        stream = torch.cuda.current_stream().cuda_stream
        launch = common.launch
        entry, ref = plan["entry"]
        parts = {"run()": lambda: w.run(qq, cache, out=out),
                 "launch alone": lambda: launch(plan["module"], plan["params"], device),
                 "C entry alone": lambda: entry(ref, stream)}
        result = {k: per_call_us(fn, calls) for k, fn in parts.items()}
        plan["entry"] = (lambda *args: 0, ref)  # the entry point's call made a no-op
        try:
            result["run() without the C entry"] = per_call_us(lambda: w.run(qq, cache, out=out), calls)
        finally:
            plan["entry"] = (entry, ref)
        result["torch.empty(out)"] = per_call_us(lambda: torch.empty_like(qq), calls)
        one = torch.zeros(1, device="cuda")
        result["torch one-element add_"] = per_call_us(lambda: one.add_(1), calls)
        for k, us in result.items():
            print(f"breakdown {what:12} {k:26} {us:7.2f} us/call", flush=True)
            rows.append(dict(call=what, part=k, us_per_call=round(us, 2), instance=w.module.key.name))
    return rows


def layout():
    pages = -(-KV_LEN // PAGE)
    indptr = torch.arange(0, B * pages + 1, pages, dtype=torch.int32, device="cuda")
    indices = torch.randperm(B * pages, dtype=torch.int32).cuda()
    last = torch.full((B,), KV_LEN - (pages - 1) * PAGE, dtype=torch.int32, device="cuda")
    return indptr, indices, last, B * pages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    libs = {"flashinfer_gen": flashinfer_gen}
    try:
        import flashinfer
        libs["flashinfer"] = flashinfer
    except ImportError:
        pass
    indptr, indices, last, num_pages = layout()
    warm_up_host()
    rows = []
    for name, lib in libs.items():
        for kv_name, kv_dtype in (("bf16", torch.bfloat16), ("e4m3", torch.float8_e4m3fn)):
            cache = torch.randn(num_pages, 2, PAGE, HK, D, device="cuda").to(kv_dtype)
            ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
            dec = lib.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
            dec.plan(indptr, indices, last, HQ, HK, D, PAGE, q_data_type=torch.bfloat16, kv_data_type=kv_dtype)
            q = torch.randn(B, HQ, D, dtype=torch.bfloat16, device="cuda")
            out = torch.empty_like(q)
            pre = lib.BatchPrefillWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"),
                                                           "NHD")
            qo_indptr = torch.arange(0, B * QO + 1, QO, dtype=torch.int32, device="cuda")
            pre.plan(qo_indptr, indptr, indices, last, HQ, HK, D, PAGE, causal=True, q_data_type=torch.bfloat16,
                     kv_data_type=kv_dtype)
            qp = torch.randn(B * QO, HQ, D, dtype=torch.bfloat16, device="cuda")
            outp = torch.empty_like(qp)
            scales = dict(k_scale=0.5, v_scale=2.0) if kv_name == "e4m3" else {}
            cases = (("decode", "allocated", lambda: dec.run(q, cache, **scales)),
                     ("decode", "given", lambda: dec.run(q, cache, out=out, **scales)),
                     ("prefill", "allocated", lambda: pre.run(qp, cache, **scales)),
                     ("prefill", "given", lambda: pre.run(qp, cache, out=outp, **scales)))
            if name == "flashinfer_gen" and kv_name == "bf16":
                # an engine's step: one cache per layer, in turn (the memo of checks and of TMA maps per cache)
                layers = [torch.randn_like(cache) for _ in range(LAYERS)]
                turn = iter(range(1 << 62))
                cases += (("decode", f"given, {LAYERS} caches in turn",
                           lambda: dec.run(q, layers[next(turn) % LAYERS], out=out)),
                          ("prefill", f"given, {LAYERS} caches in turn",
                           lambda: pre.run(qp, layers[next(turn) % LAYERS], out=outp)),
                          # an engine re-plans once per step (not per layer): its host cost, same layout
                          ("decode", "plan() (not run)",
                           lambda: dec.plan(indptr, indices, last, HQ, HK, D, PAGE, q_data_type=torch.bfloat16,
                                            kv_data_type=kv_dtype)),
                          ("prefill", "plan() (not run)",
                           lambda: pre.plan(qo_indptr, indptr, indices, last, HQ, HK, D, PAGE, causal=True,
                                            q_data_type=torch.bfloat16, kv_data_type=kv_dtype)))
            for kind, out_mode, fn in cases:
                calls = args.calls if "plan" not in out_mode else max(1, args.calls // 10)  # ~1 ms each
                us, straight, gpu = per_call_us(fn, calls), per_call_us(fn, calls, calls), gpu_us(fn, min(calls, CHUNK))
                rows.append(dict(library=name, kind=kind, kv_dtype=kv_name, out=out_mode, us_per_call=round(us, 2),
                                 us_per_call_unchunked=round(straight, 2), gpu_us_per_call=round(gpu, 2),
                                 instance=getattr(getattr(dec if kind == "decode" else pre, "module", None), "key",
                                                  None).name if name == "flashinfer_gen" else None))
                print(f"{name:15} {kind:8} {kv_name:5} out {out_mode:9} {us:7.2f} us/call (straight {straight:6.2f}, "
                      f"GPU {gpu:6.2f})", flush=True)
    breakdown = where_it_goes(indptr, indices, last, num_pages, args.calls)
    gpu = torch.cuda.get_device_name()
    result = dict(device=gpu, commit=os.environ.get("FIG_COMMIT"), torch=torch.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  calls=args.calls, batch=B, heads=[HQ, HK], head_dim=D, page_size=PAGE, kv_len=KV_LEN,
                  prefill_qo_len=QO, rows=rows, breakdown=breakdown,
                  note=None if "flashinfer" in libs else "FlashInfer is not installed on this machine")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"host-{gpu.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
