"""A short decode and a short causal prefill on the visible GPU: random paged caches, bf16 and FP8,
checked against the float64 reference and timed with CUDA events."""
from __future__ import annotations

import torch

from .decode import BatchDecodeWithPagedKVCacheWrapper
from .prefill import BatchPrefillWithPagedKVCacheWrapper
from .reference import decode_reference, prefill_reference, relative_error


def run_demo() -> int:
    if not torch.cuda.is_available():
        print("demo: no CUDA device visible; skipping the GPU demo")
        return 0
    torch.manual_seed(0)
    dev = torch.device("cuda")
    batch, hq, hk, d, page = 8, 32, 8, 128, 16
    kv_lens = torch.randint(1, 2048, (batch,))
    pages_per = (kv_lens + page - 1) // page
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages_per.cumsum(0)]).to(torch.int32)
    num_pages = int(indptr[-1]) + 7
    indices = torch.randperm(num_pages)[: int(indptr[-1])].to(torch.int32)
    last = (kv_lens - (pages_per - 1) * page).to(torch.int32)
    q = torch.randn(batch, hq, d, dtype=torch.bfloat16, device=dev)
    ws = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
    print(f"demo on {torch.cuda.get_device_name()}: batch {batch}, {hq}/{hk} heads, head dim {d}, page {page}")
    # prefill: each request's last qo_len tokens are new (causal), up to 256 of them
    qo_lens = torch.minimum(kv_lens, torch.randint(1, 257, (batch,)))
    qo_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), qo_lens.cumsum(0)]).to(torch.int32)
    q_prefill = torch.randn(int(qo_indptr[-1]), hq, d, dtype=torch.bfloat16, device=dev)
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        k = torch.randn(num_pages, page, hk, d, device=dev).to(kv_dtype)
        v = torch.randn(num_pages, page, hk, d, device=dev).to(kv_dtype)
        w = BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
        w.plan(indptr, indices, last, hq, hk, d, page, q_data_type=torch.bfloat16, kv_data_type=kv_dtype)
        out = w.run(q, (k, v), k_scale=0.5, v_scale=2.0)
        ref, _ = decode_reference(q, k, v, indptr.to(dev), indices.to(dev), last, "NHD", 0.5, 2.0)
        p = BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        p.plan(qo_indptr, indptr, indices, last, hq, hk, d, page, causal=True, q_data_type=torch.bfloat16,
               kv_data_type=kv_dtype)
        out_p = p.run(q_prefill, (k, v), k_scale=0.5, v_scale=2.0)
        ref_p, _ = prefill_reference(q_prefill, k, v, qo_indptr, indptr.to(dev), indices.to(dev), last, "NHD", 0.5,
                                     2.0, causal=True)
        print(f"  kv {str(kv_dtype).replace('torch.', ''):<14} instance {p.module.key.name}: "
              f"rel. error {relative_error(out_p, ref_p):.2e} ({int(qo_indptr[-1])} query tokens, causal)")
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            w.run(q, (k, v), k_scale=0.5, v_scale=2.0, out=out)
        start.record()
        for _ in range(20):
            w.run(q, (k, v), k_scale=0.5, v_scale=2.0, out=out)
        stop.record()
        torch.cuda.synchronize()
        print(f"  kv {str(kv_dtype).replace('torch.', ''):<14} instance {w.module.key.name}: "
              f"rel. error {relative_error(out, ref):.2e}, "
              f"{start.elapsed_time(stop) / 20 * 1000:.1f} us per eager call (bench/ has the kernel timings)")
    return 0
