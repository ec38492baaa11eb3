"""A quick correctness pass of the Ampere-path prefill family at head dim 128 (--head-dim D for another; the full matrix is
tests/test_prefill_gpu.py), for device sessions that try tile settings (FIG_PREFILL_TUNE, with
FLASHINFER_GEN_JIT=1 and a cache of their own): paged and ragged, bf16 / fp16 / FP8 caches with
both conversions, causal, window, soft-cap, scales, a long request. Prints one line per case and
exits non-zero on any failure; the tests' helpers and tolerances."""
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_prefill_gpu import check_paged, check_ragged  # noqa: E402

HEAD_DIM = int(sys.argv[2]) if sys.argv[1:2] == ["--head-dim"] else 128
E4M3 = torch.float8_e4m3fn
CASES = [
    (torch.bfloat16, torch.bfloat16, None, "NHD", 16, 4, [1, 64, 300, 129], [1, 1000, 300, 256], dict(causal=True, seed=1)),
    (torch.bfloat16, torch.bfloat16, None, "HND", 1, 1, [77, 5, 513], [640, 9, 513], dict(causal=False, seed=2)),
    (torch.bfloat16, torch.bfloat16, None, "NHD", 16, 4, [16], [32768], dict(hk=8, causal=True, seed=3)),
    (torch.float16, torch.float16, None, "NHD", 32, 7, [100, 3, 600], [1000, 50, 600], dict(causal=True, soft_cap=30.0, k_scale=0.5, v_scale=2.0, seed=4)),
    (torch.bfloat16, torch.bfloat16, None, "NHD", 16, 1, [300, 64], [700, 64], dict(causal=True, window_left=50, seed=5)),
    (torch.bfloat16, E4M3, "hardware", "NHD", 16, 4, [1, 64, 300, 129], [1, 1000, 300, 256], dict(causal=True, k_scale=0.5, v_scale=2.0, seed=6)),
    (torch.float16, E4M3, "hardware", "HND", 1, 7, [7, 300, 64], [7, 999, 128], dict(causal=False, soft_cap=30.0, seed=9)),
    (torch.bfloat16, torch.float8_e5m2, "hardware", "NHD", 32, 1, [1, 64, 300, 7], [1000, 129, 300, 7], dict(causal=True, window_left=70, seed=10)),
    (torch.bfloat16, torch.float8_e5m2, "software", "NHD", 16, 4, [7, 300, 64], [7, 999, 128], dict(causal=True, seed=8)),
    (torch.bfloat16, E4M3, "software", "HND", 32, 8, [1, 64, 300, 7], [1000, 129, 300, 7], dict(causal=False, seed=7)),
]


ws = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
failed = 0
for qd, kd, conv, layout, page, group, qo, kv, opts in CASES:
    try:
        w, _ = check_paged(qd, kd, conv, HEAD_DIM, layout, page, group, qo, kv, ws, **opts)
        check_ragged(qd, kd, conv, HEAD_DIM, group, qo, kv, ws, **{k: v for k, v in opts.items() if k != "combined"})
        print("ok  ", w.module.key.name, layout, page, group, qo, kv, opts, flush=True)
    except Exception as e:
        failed += 1
        print("FAIL", layout, page, group, qo, kv, opts, str(e)[:400], flush=True)
sys.exit(1 if failed else 0)
