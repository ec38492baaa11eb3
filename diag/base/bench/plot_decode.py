"""Plots bench/results/decode-<gpu>.json: effective bandwidth per shape and KV format, with the
torch SDPA (cuDNN, dense bf16) peer of the same run and the device's copy bandwidth.

usage: python bench/plot_decode.py bench/results/decode-NVIDIA_H100_80GB_HBM3.json
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COPY_TBPS = 2.98  # device-to-device copy on the same H100 (shared/DEVICE_BASELINE.md)


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    rows = data["rows"]
    shapes = sorted({(r["batch"], r["kv_len"]) for r in rows})
    labels = [f"B{b}\nL{l}" for b, l in shapes]
    series = sorted({(r["kv_dtype"], r["conversion"]) for r in rows}, key=lambda s: (s[0] != "bf16", s))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(13, 9), sharex=True)
    width = 0.8 / (len(series) + 1)
    for i, (kv, conv) in enumerate(series):
        vals = [next(r["tbps"] for r in rows if (r["batch"], r["kv_len"], r["kv_dtype"], r["conversion"]) == (b, l, kv, conv))
                for b, l in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], vals, width, label=f"flashinfer_gen {kv} ({conv})")
    peer = [next(r["peer_sdpa_cudnn_bf16_tbps"] for r in rows if (r["batch"], r["kv_len"]) == s) or 0 for s in shapes]
    ax.bar([x + len(series) * width for x in range(len(shapes))], peer, width, color="black", label="torch SDPA cuDNN, dense bf16")
    ax.axhline(COPY_TBPS, color="gray", linestyle="--", linewidth=1, label=f"D2D copy {COPY_TBPS} TB/s")
    ax.set_ylabel("K+V bytes read / time (TB/s)")
    # time of the dense bf16 cuDNN peer over ours: > 1 means faster than the peer
    for i, (kv, conv) in enumerate(series):
        vals = [next((r["peer_sdpa_cudnn_bf16_us"] or 0) / r["time_us"] for r in rows
                     if (r["batch"], r["kv_len"], r["kv_dtype"], r["conversion"]) == (b, l, kv, conv)) for b, l in shapes]
        ax2.bar([x + i * width for x in range(len(shapes))], vals, width)
    ax2.axhline(1.0, color="black", linewidth=1)
    ax2.set_ylabel("speed-up over SDPA cuDNN (dense bf16)")
    ax2.set_xticks([x + 0.4 for x in range(len(shapes))], labels)
    ax.set_title(f"Paged decode, Hq32 Hk8 d128 page 16, q bf16 — {data['device']}, commit {data['commit']}, {data['date'][:10]}")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    ax.set_ylim(0, 3.4)
    out = Path(path).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
