"""A quick correctness pass of the Hopper prefill family on a handful of shapes (the full matrix
is tests/test_prefill_sm90_gpu.py), for device sessions that iterate on the kernel: prints one
line per case and exits non-zero on any failure. Uses the tests' helpers and tolerances."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_prefill_gpu import check_paged, check_ragged  # noqa: E402

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
