"""A quick correctness pass of the Hopper prefill family on a handful of shapes (the full matrix
is tests/test_prefill_sm90_gpu.py), for device sessions that iterate on the kernel: prints one
line per case and exits non-zero on any failure. Uses the tests' helpers and tolerances.
--fp8: the FP8 tiles' cases instead (an e4m3 cache with a bf16 q and with an e4m3 one: paged,
ragged, split, exact sums, the long request's mean at each FP8 head dim), from test_prefill_sm90_gpu.py."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_prefill_gpu import check_paged, check_ragged  # noqa: E402
import test_prefill_sm90_gpu as sm90  # noqa: E402

E4M3 = torch.float8_e4m3fn
FP8_CASES = [  # check_fp8's arguments and options
    ((torch.bfloat16, E4M3, "NHD", 16, 4, [1, 64, 300, 129], [1, 1000, 300, 256]), dict(causal=True, seed=1)),
    ((torch.bfloat16, E4M3, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17]),
     dict(ragged=True, k_scale=0.75, v_scale=1.5, seed=2)),
    ((torch.bfloat16, E4M3, "NHD", 16, 4, [16], [32768]), dict(hk=8, causal=True, k_scale=0.5, v_scale=2.0, seed=3)),
    ((torch.bfloat16, E4M3, "HND", 32, 8, [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]),
     dict(causal=True, window_left=40, seed=4)),
    ((torch.bfloat16, E4M3, "NHD", 16, 4, [1, 64, 300, 7], [1000, 129, 300, 7]),
     dict(causal=True, k_scale=0.5, v_scale=2.0, seed=5, exact_sums=True)),
    ((E4M3, E4M3, "HND", 32, 8, [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]), dict(causal=True, q_scale=0.5, seed=6)),
    ((E4M3, E4M3, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17]),
     dict(ragged=True, q_scale=0.25, o_dtype=torch.float16, seed=7)),
    ((E4M3, E4M3, "NHD", 16, 4, [16], [32768]), dict(hk=8, q_scale=0.125, v_scale=2.0, seed=8)),
    ((E4M3, E4M3, "NHD", 16, 4, [1, 64, 300, 7], [1000, 129, 300, 7]),
     dict(causal=True, q_scale=0.5, seed=9, exact_sums=True)),
]


def main_fp8(ws) -> int:
    failed = 0
    runs = [(f"check_fp8{args[:2]} {args[2:]} {opts}", lambda a=args, o=opts: sm90.check_fp8(*a[:7], ws, **o))
            for args, opts in FP8_CASES]
    runs += [(f"test_fp8_long_request_keeps_its_mean d{d}", lambda d=d: sm90.test_fp8_long_request_keeps_its_mean(d, ws))
             for d in sm90.FP8_HEAD_DIMS]
    for what, fn in runs:
        try:
            fn()
            print("ok  ", what, flush=True)
        except Exception as e:  # every case runs; the exit status says whether any failed
            failed += 1
            print("FAIL", what, str(e)[:400], flush=True)
    return 1 if failed else 0

CASES = [  # (q/kv dtype, head dim, layout, page size, group, qo lens, kv lens, options)
    (torch.bfloat16, 128, "NHD", 16, 1, [64], [64], dict(causal=False)),
    (torch.bfloat16, 128, "NHD", 16, 4, [1, 64, 300, 129], [1, 1000, 300, 256], dict(causal=True)),
    (torch.float16, 64, "HND", 1, 7, [77, 5], [640, 9], dict(causal=False)),
    (torch.bfloat16, 256, "NHD", 32, 8, [33, 200], [99, 700], dict(causal=True, window_left=50)),
    (torch.float16, 192, "NHD", 64, 2, [100], [1000], dict(causal=True)),
    (torch.float16, 128, "NHD", 16, 4, [100, 3], [1000, 50], dict(causal=True, soft_cap=30.0, k_scale=0.5, v_scale=2.0)),
    (torch.bfloat16, 128, "NHD", 16, 4, [16], [32768], dict(hk=8, causal=True)),
]


def main() -> int:
    ws = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    if "--fp8" in sys.argv[1:]:
        return main_fp8(ws)
    failed = 0
    for dtype, d, layout, page, group, qo, kv, opts in CASES:
        try:
            w, _ = check_paged(dtype, dtype, None, d, layout, page, group, qo, kv, ws, backend="sm90", **opts)
            check_ragged(dtype, dtype, None, d, group, qo, kv, ws, backend="sm90", **opts)
            print("ok  ", w.module.key.name, layout, page, group, qo, kv, opts, flush=True)
        except Exception as e:  # every case runs; the exit status says whether any failed
            failed += 1
            print("FAIL", d, layout, page, group, qo, kv, opts, str(e)[:300], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
