"""One prefill launch to profile: B4 x S4096 (qo = kv), 32/32 heads, head dim 128, paged 16
(scattered pages), non-causal, q bf16; the KV dtype and conversion from the command line. Run under
Nsight Compute by `bash bench/run_device.sh ncu` (which passes --clock-control none and the
sections); the script itself launches the kernel twice (warm-up, then the profiled launch).

usage: python bench/ncu_prefill.py {bf16|e4m3|e5m2} [hardware|software] [--causal] [--backend sm80|sm90]
                                  [--q e4m3]
--q e4m3 (an FP8 cache, the sm90 family): q given in e4m3 (its bf16 values rounded; q_scale 1, output
bf16), as bench_prefill's "q e4m3" rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import flashinfer_gen  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def main(argv: list[str]) -> None:
    kv_name = argv[0]
    conversion = argv[1] if len(argv) > 1 and not argv[1].startswith("--") else None
    causal = "--causal" in argv
    backend = argv[argv.index("--backend") + 1] if "--backend" in argv else "auto"
    q_name = argv[argv.index("--q") + 1] if "--q" in argv else "bf16"
    batch, seq, hq, hk, d, page = 4, 4096, 32, 32, 128, 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    pages_per_req = seq // page
    num_pages = batch * pages_per_req
    k = torch.randn(num_pages, page, hk, d, device="cuda", generator=gen).to(DTYPES[kv_name])
    v = torch.randn(num_pages, page, hk, d, device="cuda", generator=gen).to(DTYPES[kv_name])
    indices = torch.randperm(num_pages, device="cuda", generator=gen).to(torch.int32)
    kv_indptr = torch.arange(0, num_pages + 1, pages_per_req, device="cuda", dtype=torch.int32)
    last = torch.full((batch,), page, device="cuda", dtype=torch.int32)
    qo_indptr = torch.arange(0, batch * seq + 1, seq, device="cuda", dtype=torch.int32)
    q = torch.randn(batch * seq, hq, d, device="cuda", generator=gen).to(torch.bfloat16).to(DTYPES[q_name])
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"),
                                                           fp8_conversion=conversion, jit=True, backend=backend)
    w.plan(qo_indptr, kv_indptr, indices, last, hq, hk, d, page, causal=causal, q_data_type=q.dtype,
           kv_data_type=DTYPES[kv_name], o_data_type=torch.bfloat16)
    for _ in range(2):
        w.run(q, (k, v))
    torch.cuda.synchronize()
    print(f"profiled {w.module.key.name}: {w._plan['schedule'].request.size} work items")


if __name__ == "__main__":
    main(sys.argv[1:])
