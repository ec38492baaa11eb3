"""Batch prefill benchmark: flashinfer_gen (one kernel family per run: --family sm80, the mma.sync
path, or sm90, the Hopper WGMMA path; paged and ragged KV) vs torch SDPA (flash and cuDNN backends,
dense bf16), same run, same shapes.

Shapes (issue 11, item 5):
  square   B=4 requests x S=4096 (qo_len = kv_len = 4096), heads 32/32 and 32/8, head dim 64/128/256,
           paged (page 16, pages scattered randomly over the pool) and ragged (contiguous), causal off/on,
           KV bf16 / e4m3 / e5m2, FP8 with each conversion the device's arch runs ("hardware" and
           "software" on sm_89+/sm_90, "software" only on sm_80/86). q bf16; with --family sm90 also q
           e4m3 (codes of N(0, 1), q_scale 1, output bf16) on each FP8 cache: q/k/v all in FP8.
  chunked  16 requests x 512 new tokens whose KV is the last 512 of an 8192-token KV (qo_len 512,
           kv_len 8192, causal aligned bottom-right as in FlashInfer), 32/8 heads, d128, page 16,
           KV bf16 and e4m3 (each conversion). Peers get an explicit bottom-right causal mask (dense
           bool) where the backend accepts one; the flash backend also gets torch's
           causal_lower_right bias (its native bottom-right causal kernel), run only when torch says
           flash can take the shape, so the row is flash's. Refusals are recorded with their error.
FLOPs: 4*B*Hq*Sq*Skv*D non-causal; causal counts each query against the keys it sees:
4*B*Hq*D*sum_i (Skv - Sq + i + 1). TFLOP/s = FLOPs / time. Timing is bench_decode.time_graph: median
of CUDA-event timed CUDA-graph replays after warm-up, L2 flushed by reading 256 MB before each.
A combination our registry has not built is recorded with its InstanceNotBuiltError (set
FLASHINFER_GEN_JIT=1 to build it on first use instead). Writes bench/results/prefill-<family>-<gpu>.json.

usage: python bench/bench_prefill.py [--family sm80|sm90] [--pages 16,64] [--quick] [--head-dim 64,128,256]
                                     [--reps 20] [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

HQ = 32
HEADS = ((32, 32), (32, 8))
HEAD_DIMS = (64, 128, 256)
PAGE = 16
BATCH, SEQ = 4, 4096
CHUNK_BATCH, CHUNK_QO, CHUNK_KV, CHUNK_HEADS, CHUNK_D = 16, 512, 8192, (32, 8), 128
KV_NAMES = ("bf16", "e4m3", "e5m2")
QUICK_KV_NAMES = ("bf16", "e4m3")
FAMILY = "sm80"  # the family measured (--family): sm80 = the mma.sync path on any arch, sm90 = WGMMA
METHOD = ("median of CUDA-event timed CUDA-graph replays (bench_decode.time_graph), L2 flushed (by a 256 MB "
          "read) before each; FLOPs 4*B*Hq*D*sum_i(keys seen by query i)")


def parse_args(argv=None) -> argparse.Namespace:
    head, _, rest = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(description=head, epilog=rest,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="d128 (or --head-dim), 32/32 heads, page16 + ragged, non-causal + causal, KV bf16 + e4m3 "
                         "(each conversion), the SDPA peers; no 32/8, no e5m2, no chunked shape")
    ap.add_argument("--head-dim", nargs="+", default=None, metavar="D",
                    help="head dims, comma or space separated (default 64,128,256; --quick: 128)")
    ap.add_argument("--reps", type=int, default=20, help="timed replays per configuration (median)")
    ap.add_argument("--out", default=None, help="default bench/results/prefill-<family>-<gpu>.json")
    ap.add_argument("--family", choices=("sm80", "sm90"), default="sm80",
                    help="the kernel family (the wrappers' backend=): sm80 mma.sync, sm90 Hopper WGMMA")
    ap.add_argument("--pages", default=str(PAGE), help="page sizes of the paged rows, comma separated (default 16)")
    ap.add_argument("--soft-cap", type=float, default=None, metavar="CAP",
                    help="our rows with logits_soft_cap=CAP (the soft-cap variant, e.g. Gemma-2's 50); the SDPA "
                         "peers, which have no soft-cap, run as without it")
    ap.add_argument("--unit-order", choices=("plan", "round_robin", "blocks"), default="plan",
                    help="the persistent CTAs' unit lists: plan()'s own, or one of bench/probe_unit_order.py's "
                         "orders in its place (an A/B of the schedule; recorded in the JSON)")
    args = ap.parse_args(argv)
    args.pages = [int(x) for x in args.pages.split(",") if x]
    if args.head_dim is None:
        args.head_dim = [128] if args.quick else list(HEAD_DIMS)
    else:
        args.head_dim = [int(x) for part in args.head_dim for x in part.split(",") if x]
    return args


def attention_flops(batch: int, hq: int, d: int, sq: int, skv: int, causal: bool) -> int:
    """Q.K^T and P.V, 2 FLOPs per multiply-add each; causal bottom-right: query i sees skv - sq + i + 1 keys."""
    if not causal:
        return 4 * batch * hq * sq * skv * d
    seen = sq * (skv - sq) + sq * (sq + 1) // 2
    return 4 * batch * hq * d * seen


def error_string(e: BaseException, caught=()) -> str:
    """The exception's first line, plus the reasons torch gave as warnings (SDPA's 'No available kernel'
    says nothing by itself)."""
    msg = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    reasons = [re.sub(r"\s*\(Triggered internally at [^)]*\)", "", str(w.message).splitlines()[0])[:160]
               for w in caught if str(w.message).strip()]
    if reasons:
        msg += " | " + " | ".join(dict.fromkeys(reasons))[:600]
    return msg


class Bench:
    def __init__(self, args):
        import torch

        import bench_decode  # sys.path[0] is bench/; it puts the tree (or $FIG_TREE) on sys.path
        from generator.arches import arch_for_capability

        self.torch = torch
        self.time_graph = bench_decode.time_graph
        self.reps = args.reps
        self.pages = args.pages
        self.soft_cap = args.soft_cap
        self.flush = torch.ones(bench_decode.L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
        self.workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        arch = arch_for_capability(torch.cuda.get_device_capability())
        self.conversions = arch.conversions if arch is not None else ("hardware", "software")
        self.dtypes = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
        self.rows = []
        print(f"{'shape':<8} {'layout':<7} {'q/kv':<10} {'conv':<9} {'c':>1} {'D':>4} {'Hq/Hk':>6} {'us':>10} "
              f"{'TFLOP/s':>8}  instance / error", flush=True)

    # ---- helpers -------------------------------------------------------------------------------
    def randn(self, shape, dtype):
        """Random normal values in `dtype`, made in slices along dim 0 to bound the bf16 temporary."""
        torch = self.torch
        t = torch.empty(shape, dtype=dtype, device="cuda")
        step = max(1, (1 << 26) // max(1, t[0].numel()))
        for i in range(0, shape[0], step):
            t[i:i + step] = torch.randn(t[i:i + step].shape, device="cuda", dtype=torch.bfloat16).to(dtype)
        return t

    def record(self, row: dict) -> None:
        self.rows.append(row)
        shape = "chunked" if row["shape"] == "chunked" else f"B{row['batch']}S{row['seq']}"
        layout = row["layout"] + (str(row["page_size"]) if row["page_size"] else "")
        who = row.get("instance") if row["family"] == FAMILY else f"torch {row['backend']}" + (
            f" [{row['mask']}]" if row.get("mask") else "")
        tail = f"{who}  ERROR {row['error']}" if row.get("error") else who
        us = f"{row['time_us']:>10.1f}" if row.get("time_us") else f"{'-':>10}"
        tf = f"{row['tflops']:>8.1f}" if row.get("tflops") else f"{'-':>8}"
        dtypes = row["q_dtype"] + "/" + row["kv_dtype"]
        print(f"{shape:<8} {layout:<7} {dtypes:<10} {row['conversion']:<9} {int(row['causal']):>1} "
              f"{row['head_dim']:>4} {row['num_qo_heads']:>3}/{row['num_kv_heads']:<2} {us} {tf}  {tail}", flush=True)

    @staticmethod
    def base_row(shape, batch, qo_len, kv_len, hq, hk, d, causal) -> dict:
        return dict(shape=shape, batch=batch, seq=qo_len if shape == "square" else None, qo_len=qo_len,
                    kv_len=kv_len, num_qo_heads=hq, num_kv_heads=hk, head_dim=d, causal=causal, q_dtype="bf16",
                    flops=attention_flops(batch, hq, d, qo_len, kv_len, causal))

    def timed(self, row: dict, fn) -> dict:
        us = self.time_graph(fn, self.reps, self.flush)
        row.update(time_us=round(us, 2), tflops=round(row["flops"] / us / 1e6, 2))
        return row

    # ---- ours ----------------------------------------------------------------------------------
    def bench_ours(self, shape, batch, qo_len, kv_len, hq, hk, d, causal_set, kv_names, layouts, fp8_q=False):
        """Every (kv dtype, layout, causal, conversion) of one shape on the same q and KV tensors;
        fp8_q: also q in e4m3 (its codes: q's bf16 values rounded) on each FP8 cache."""
        torch = self.torch
        qo_indptr = torch.arange(0, batch * qo_len + 1, qo_len, dtype=torch.int32, device="cuda")
        kv_indptr = torch.arange(0, batch * kv_len + 1, kv_len, dtype=torch.int32, device="cuda")
        q16 = self.randn((batch * qo_len, hq, d), torch.bfloat16)
        qs = {"bf16": q16, "e4m3": q16.to(torch.float8_e4m3fn) if fp8_q else None}
        out = torch.empty_like(q16)
        for kv_name in kv_names:
            dtype = self.dtypes[kv_name]
            convs = ("none",) if kv_name == "bf16" else self.conversions
            for layout, page in [(lay, p) for lay in layouts for p in (self.pages if lay == "paged" else (None,))]:
                if layout == "paged":
                    pages_per = -(-kv_len // page)
                    num_pages = batch * pages_per
                    page_indptr = torch.arange(0, num_pages + 1, pages_per, dtype=torch.int32, device="cuda")
                    page_indices = torch.randperm(num_pages, dtype=torch.int32).cuda()  # scattered, as in a pool
                    last = torch.full((batch,), kv_len - (pages_per - 1) * page, dtype=torch.int32, device="cuda")
                    kv = (self.randn((num_pages, page, hk, d), dtype), self.randn((num_pages, page, hk, d), dtype))
                else:
                    kv = (self.randn((batch * kv_len, hk, d), dtype), self.randn((batch * kv_len, hk, d), dtype))
                q_names = ("bf16", "e4m3") if fp8_q and kv_name != "bf16" else ("bf16",)
                for causal, conv, q_name in [(c, v, n) for c in causal_set for v in convs for n in q_names]:
                    q = qs[q_name]
                    row = dict(family=FAMILY, kv_dtype=kv_name, conversion=conv, layout=layout,
                               page_size=page,
                               **self.base_row(shape, batch, qo_len, kv_len, hq, hk, d, causal))
                    row["q_dtype"] = q_name
                    row["soft_cap"] = self.soft_cap
                    fp8_conversion = None if conv == "none" else conv
                    try:
                        from flashinfer_gen import (BatchPrefillWithPagedKVCacheWrapper,
                                                    BatchPrefillWithRaggedKVCacheWrapper)
                        if layout == "paged":
                            w = BatchPrefillWithPagedKVCacheWrapper(self.workspace, kv_layout="NHD",
                                                                    fp8_conversion=fp8_conversion, backend=FAMILY)
                            w.plan(qo_indptr, page_indptr, page_indices, last, hq, hk, d, page, causal=causal,
                                   logits_soft_cap=self.soft_cap, q_data_type=q.dtype, kv_data_type=dtype,
                                   o_data_type=torch.bfloat16)
                            fn = lambda w=w: w.run(q, kv, out=out)  # noqa: E731
                        else:
                            w = BatchPrefillWithRaggedKVCacheWrapper(self.workspace, kv_layout="NHD",
                                                                     fp8_conversion=fp8_conversion, backend=FAMILY)
                            w.plan(qo_indptr, kv_indptr, hq, hk, d, causal=causal, logits_soft_cap=self.soft_cap,
                                   q_data_type=q.dtype, kv_data_type=dtype, o_data_type=torch.bfloat16)
                            fn = lambda w=w: w.run(q, kv[0], kv[1], out=out)  # noqa: E731
                        row["instance"] = w.module.key.name
                        self.timed(row, fn)
                    except Exception as e:  # not built, refused, or failed: recorded, not hidden
                        row.setdefault("instance", None)
                        row.update(time_us=None, tflops=None, error=error_string(e))
                    self.record(row)
                    w = fn = None
                kv = None
                torch.cuda.empty_cache()
        del q16, qs, out
        torch.cuda.empty_cache()

    # ---- peers ---------------------------------------------------------------------------------
    def bench_sdpa(self, shape, batch, qo_len, kv_len, hq, hk, d, causal_set):
        """torch SDPA on dense bf16 [B, H, S, D]; GQA through enable_gqa. Square shapes use is_causal
        (top-left = bottom-right there); the chunked shape a bottom-right mask (see the module doc)."""
        torch = self.torch
        F = torch.nn.functional
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q = torch.randn(batch, hq, qo_len, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(batch, hk, kv_len, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(batch, hk, kv_len, d, dtype=torch.bfloat16, device="cuda")
        gqa = dict(enable_gqa=True) if hq != hk else {}
        bottom_right = None
        if qo_len != kv_len:
            i = torch.arange(qo_len, device="cuda")[:, None]
            j = torch.arange(kv_len, device="cuda")[None, :]
            bottom_right = j <= (kv_len - qo_len) + i  # True = attends
        for causal in causal_set:
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                variants = []  # (mask label, fn, runnable-check)
                if not causal:
                    variants.append((None, lambda: F.scaled_dot_product_attention(q, k, v, **gqa), None))
                elif bottom_right is None:
                    variants.append((None, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa),
                                     None))
                else:
                    variants.append(("dense_bool_bottom_right",
                                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right, **gqa),
                                     None))
                    if name == "flash":
                        # CausalBias bypasses sdpa_kernel's selection: it calls flash directly when torch
                        # says flash can run the shape, else falls back to other kernels. Only time it
                        # when flash is the one that will run.
                        variants.append(("causal_lower_right", self._lower_right_fn(q, k, v, qo_len, kv_len, gqa),
                                         lambda: self._flash_can_run(q, k, v, gqa)))
                for mask, fn, check in variants:
                    row = dict(family="peer", library="torch", backend=name, kv_dtype="bf16", conversion="none",
                               layout="dense", page_size=None, **self.base_row(shape, batch, qo_len, kv_len, hq,
                                                                                   hk, d, causal))
                    if mask:
                        row["mask"] = mask
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        try:
                            if check is not None and not check():
                                raise RuntimeError("torch.backends.cuda.can_use_flash_attention is False for this "
                                                   "shape (CausalBias would run another kernel)")
                            with sdpa_kernel([backend]):
                                fn()
                                self.timed(row, fn)
                        except Exception as e:  # a backend that refuses a shape is recorded, not hidden
                            row.update(time_us=None, tflops=None, error=error_string(e, caught))
                    self.record(row)
        del q, k, v, bottom_right
        torch.cuda.empty_cache()

    def _lower_right_fn(self, q, k, v, qo_len, kv_len, gqa):
        from torch.nn.attention.bias import causal_lower_right
        bias = causal_lower_right(qo_len, kv_len)
        return lambda: self.torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, **gqa)

    def _flash_can_run(self, q, k, v, gqa) -> bool:
        from torch.backends.cuda import SDPAParams, can_use_flash_attention
        return bool(can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, bool(gqa)), True))

    # ---- summary -------------------------------------------------------------------------------
    def summary(self) -> dict:
        """The issue's two ratios at d128 32/32 non-causal B4 S4096, paged16 (TFLOP/s ratios, > 1 = faster)."""
        def find(**kw):
            for r in self.rows:
                if r["shape"] == "square" and r["head_dim"] == 128 and r["num_qo_heads"] == 32 and \
                        r["num_kv_heads"] == 32 and not r["causal"] and all(r.get(a) == b for a, b in kw.items()):
                    return r.get("tflops")
            return None

        ours_bf16 = find(family=FAMILY, layout="paged", page_size=PAGE, kv_dtype="bf16", q_dtype="bf16")
        ours_ragged = find(family=FAMILY, layout="ragged", kv_dtype="bf16", q_dtype="bf16")
        q8_ragged = find(family=FAMILY, layout="ragged", kv_dtype="e4m3", q_dtype="e4m3")
        flash = find(family="peer", backend="flash")
        cudnn = find(family="peer", backend="cudnn")
        ratio = lambda a, b: round(a / b, 3) if a and b else None  # noqa: E731
        out = dict(ours_bf16_paged16_tflops=ours_bf16, ours_bf16_ragged_tflops=ours_ragged, torch_flash_tflops=flash,
                   torch_cudnn_tflops=cudnn, ours_bf16_paged16_over_torch_flash=ratio(ours_bf16, flash),
                   ours_bf16_ragged_over_torch_cudnn=ratio(ours_ragged, cudnn),
                   ours_bf16_paged16_over_ragged=ratio(ours_bf16, ours_ragged),
                   ours_q_e4m3_kv_e4m3_ragged_tflops=q8_ragged,
                   ours_q_e4m3_kv_e4m3_over_bf16_ragged=ratio(q8_ragged, ours_ragged))
        for conv in self.conversions:
            e4m3 = find(family=FAMILY, layout="paged", page_size=PAGE, kv_dtype="e4m3", conversion=conv, q_dtype="bf16")
            out[f"ours_e4m3_{conv}_paged16_tflops"] = e4m3
            out[f"ours_e4m3_{conv}_over_ours_bf16_paged16"] = round(e4m3 / ours_bf16, 3) if e4m3 and ours_bf16 else None
        return out


def git_commit() -> str | None:
    commit = os.environ.get("FIG_COMMIT")  # the device's copy of the tree may have no .git
    if commit:
        return commit
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    global FAMILY
    args = parse_args(argv)
    FAMILY = args.family
    import torch

    gpu = torch.cuda.get_device_name()
    b = Bench(args)
    if args.unit_order != "plan":  # after Bench, which put the tree on sys.path
        import flashinfer_gen.prefill
        import probe_unit_order
        flashinfer_gen.prefill.cta_unit_lists = getattr(probe_unit_order, args.unit_order)
    heads = ((32, 32),) if args.quick else HEADS
    kv_names = QUICK_KV_NAMES if args.quick else KV_NAMES
    if args.family == "sm90":  # FP8 caches run on its FP8 tiles, conversion "hardware" (q and P to e4m3)
        b.conversions = ("hardware",)
    for hq, hk in heads:
        for d in args.head_dim:
            b.bench_sdpa("square", BATCH, SEQ, SEQ, hq, hk, d, (False, True))
            b.bench_ours("square", BATCH, SEQ, SEQ, hq, hk, d, (False, True), kv_names, ("paged", "ragged"),
                         fp8_q=args.family == "sm90")
    if not args.quick and CHUNK_D in args.head_dim:
        hq, hk = CHUNK_HEADS
        b.bench_sdpa("chunked", CHUNK_BATCH, CHUNK_QO, CHUNK_KV, hq, hk, CHUNK_D, (True,))
        b.bench_ours("chunked", CHUNK_BATCH, CHUNK_QO, CHUNK_KV, hq, hk, CHUNK_D, (True,),
                     tuple(n for n in ("bf16", "e4m3") if n in kv_names), ("paged",))
    summary = b.summary()
    result = dict(device=gpu, capability=list(torch.cuda.get_device_capability()),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  commit=git_commit(), tree=os.environ.get("FIG_TREE"), torch=torch.__version__, method=METHOD,
                  reps=args.reps, quick=args.quick, family=FAMILY, pages=args.pages, conversions=list(b.conversions),
                  unit_order=args.unit_order, soft_cap=args.soft_cap,
                  summary=summary, rows=b.rows)
    out = Path(args.out) if args.out else \
        Path(__file__).parent / "results" / f"prefill-{FAMILY}-{gpu.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\nd128 32/32 non-causal B4 S4096, page 16 (TFLOP/s ratios, > 1 = faster):")
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"  ours bf16 / torch SDPA flash: {fmt(summary['ours_bf16_paged16_over_torch_flash'])}"
          f"  ({summary['ours_bf16_paged16_tflops']} vs {summary['torch_flash_tflops']} TFLOP/s)")
    for conv in b.conversions:
        print(f"  ours e4m3 ({conv}) / ours bf16: {fmt(summary[f'ours_e4m3_{conv}_over_ours_bf16_paged16'])}"
              f"  ({summary[f'ours_e4m3_{conv}_paged16_tflops']} TFLOP/s)")
    n_err = sum(1 for r in b.rows if r.get("error"))
    print(f"{len(b.rows)} rows ({n_err} with an error); wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
