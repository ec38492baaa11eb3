"""Two checks of the Hopper family's FP8 tiles that the test suite's shapes do not reach (a
measurement, printed; exit 1 only on a non-finite output):

1. O's accumulation across tiles. FP8 WGMMA keeps about 14 bits while it adds (DeepSeek-V3,
   3.3.2): chained into O's accumulator for every tile of an unsplit request (kv_len / 32 k32
   instructions, as up to 023716c), O drifted 39% low here; since 8e54979 each tile's P V has a
   fragment of its own, added to O in fp32. A long request whose V has a non-zero mean per channel
   is where a truncation would add up: 16 requests x 128 queries on 32768 keys (32/8 heads, d128,
   e4m3, ragged: 64 work items x 8 KV heads, so plan() does not split them), V = N(0, 1) + 3. The
   mean signed error also carries P's e4m3 rounding, which is biased low for p spread over a
   binade (tests/test_prefill_sm90_gpu.py's long-request test removes it). Printed: the relative L2
   error and the mean signed relative error of O against the float64 reference on q quantised as
   the kernel does, for the first and last request; the Ampere path (q in 16 bits, K/V upcast) on
   the same data beside it.
2. A q row of tiny values (1e-38, bf16 holds it): its quantisation factor would overflow without
   the cap at 2^126; the output must be finite and match the reference.

usage: FLASHINFER_GEN_JIT=1 python bench/check_fp8_accumulation.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flashinfer_gen import BatchPrefillWithRaggedKVCacheWrapper  # noqa: E402
from flashinfer_gen.reference import attention_reference, quantize_q_rows, relative_error  # noqa: E402


def run(backend, q, k, v, qo_indptr, kv_indptr, hq, hk, d, ws):
    w = BatchPrefillWithRaggedKVCacheWrapper(ws, backend=backend)
    w.plan(qo_indptr, kv_indptr, hq, hk, d, causal=False, q_data_type=q.dtype, kv_data_type=k.dtype)
    out = w.run(q, k, v)
    torch.cuda.synchronize()
    return w, out


def main() -> int:
    ok = True
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, qo, kv, hq, hk, d = 16, 128, 32768, 32, 8, 128
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    q = torch.randn(batch * qo, hq, d, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(batch * kv, hk, d, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    v = (torch.randn(batch * kv, hk, d, device="cuda", generator=gen) + 3.0).to(torch.float8_e4m3fn)
    qo_indptr = torch.arange(0, batch * qo + 1, qo, dtype=torch.int32, device="cuda")
    kv_indptr = torch.arange(0, batch * kv + 1, kv, dtype=torch.int32, device="cuda")
    for backend in ("sm90", "fa2"):
        w, out = run(backend, q, k, v, qo_indptr, kv_indptr, hq, hk, d, ws)
        ok &= bool(torch.isfinite(out).all())
        print(f"{w.module.key.name}: {w._plan['schedule'].request.size} items, "
              f"{w._plan['schedule'].num_partial} split-KV partial slots")
        for b in (0, batch - 1):
            qs, ks = slice(b * qo, (b + 1) * qo), slice(b * kv, (b + 1) * kv)
            q_ref = quantize_q_rows(q[qs]) if backend == "sm90" else q[qs]
            ref, _ = attention_reference(q_ref, k[ks], v[ks])
            bias = float(((out[qs].double() - ref) / ref).mean())
            print(f"  request {b} ({kv} keys, V mean 3): rel. L2 error {relative_error(out[qs], ref):.2e}, "
                  f"mean signed rel. error {bias:+.2e}")
    # 2. a row of tiny q values
    q2 = torch.randn(3 * 16, 8, d, device="cuda", generator=gen).to(torch.bfloat16)
    q2[5, 3] = torch.full((d,), 1e-38).to(torch.bfloat16)
    k2 = torch.randn(3 * 40, 2, d, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    v2 = torch.randn(3 * 40, 2, d, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    w, out2 = run("sm90", q2, k2, v2, torch.arange(0, 49, 16, dtype=torch.int32, device="cuda"),
                  torch.arange(0, 121, 40, dtype=torch.int32, device="cuda"), 8, 2, d, ws)
    finite = bool(torch.isfinite(out2).all())
    ok &= finite
    ref2, _ = attention_reference(quantize_q_rows(q2[:16]), k2[:40], v2[:40])
    print(f"tiny q row (1e-38): finite {finite}, row error {relative_error(out2[5, 3], ref2[5, 3]):.2e}, "
          f"request rel. error {relative_error(out2[:16], ref2):.2e}")
    print("all finite" if ok else "NON-FINITE OUTPUT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
