"""Plots bench/results/prefill-<family>-<gpu>.json (either kernel family): TFLOP/s per configuration
(shape, heads, causal) of one head dim (128 where the file has it, else the file's smallest),
flashinfer_gen per layout / KV format / conversion beside the torch SDPA peers (flash, cuDNN; dense
bf16) of the same run, and below it the speed-up over SDPA flash. A configuration that was refused or
not built is marked with a red x at zero.

usage: python bench/plot_prefill.py bench/results/prefill-sm80-NVIDIA_H100_80GB_HBM3.json [out.png]
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEAD_DIM = 128  # plotted where the file has it
PEER_COLORS = {"flash": "black", "cudnn": "dimgray"}


def group_key(r):
    return (r["shape"] != "square", r["num_qo_heads"], -r["num_kv_heads"], r["causal"])


def group_label(key, rows):
    r = next(r for r in rows if group_key(r) == key)
    shape = f"B{r['batch']} S{r['seq']}" if r["shape"] == "square" else \
        f"chunked B{r['batch']}\nqo {r['qo_len']} kv {r['kv_len']}"
    return f"{shape}\n{r['num_qo_heads']}/{r['num_kv_heads']} heads\n{'causal' if r['causal'] else 'non-causal'}"


def series_key(r):
    if r["family"] == "peer":
        return (1, r["backend"], "", "")
    return (0, r["layout"], r["kv_dtype"] != "bf16", r["kv_dtype"], r["conversion"], r.get("page_size") or 0,
            r.get("q_dtype", "bf16"))


def series_label(s):
    if s[0] == 1:
        return f"torch SDPA {s[1]}, dense bf16"
    layout, kv, conv, page, q = s[1], s[3], s[4], s[5], s[6]
    name = f"paged{page}" if layout == "paged" else layout
    dtypes = kv if q == "bf16" else f"q {q} / kv {kv}"
    return f"flashinfer_gen {name} {dtypes}" + ("" if conv == "none" else f" ({conv})")


def best(rows, gk, sk):
    """TFLOP/s of a (group, series) cell: the best of its rows (the chunked flash peer has a dense-mask
    row and a causal_lower_right row); None when every row was refused, missing when there is no row."""
    cell = [r for r in rows if group_key(r) == gk and series_key(r) == sk]
    if not cell:
        return "missing"
    vals = [r["tflops"] for r in cell if r.get("tflops")]
    return max(vals) if vals else None


def main(path: str, png: str | None = None) -> None:
    data = json.loads(Path(path).read_text())
    head_dims = {r["head_dim"] for r in data["rows"]}
    if not head_dims:
        sys.exit(f"{path}: no rows")
    head_dim = HEAD_DIM if HEAD_DIM in head_dims else min(head_dims)
    rows = [r for r in data["rows"] if r["head_dim"] == head_dim]
    groups = sorted({group_key(r) for r in rows})
    series = sorted({series_key(r) for r in rows}, key=lambda s: tuple(str(x) for x in s))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(13, 2.6 * len(groups)), 9), sharex=True,
                                  gridspec_kw=dict(height_ratios=(2, 1)))
    width = 0.8 / len(series)
    refused_drawn = False
    flash = {g: best(rows, g, (1, "flash", "", "")) for g in groups}
    for i, s in enumerate(series):
        xs = [x + i * width for x in range(len(groups))]
        vals = [best(rows, g, s) for g in groups]
        color = PEER_COLORS.get(s[1]) if s[0] == 1 else None
        hatch = "//" if s[0] == 0 and s[1] == "ragged" else None
        bars = ax.bar(xs, [v if isinstance(v, (int, float)) else 0 for v in vals], width, color=color, hatch=hatch,
                      label=series_label(s))
        for x, v in zip(xs, vals):
            if v is None:
                ax.plot(x, 0, marker="x", color="red", markersize=7,
                        label=None if refused_drawn else "refused / not built")
                refused_drawn = True
        color = bars.patches[0].get_facecolor()
        ratios = [v / flash[g] if isinstance(v, (int, float)) and isinstance(flash[g], (int, float)) else 0
                  for g, v in zip(groups, vals)]
        ax2.bar(xs, ratios, width, color=color, hatch=hatch)
    ax.set_ylabel("TFLOP/s (causal: FLOPs of the keys each query sees)")
    ax2.axhline(1.0, color="black", linewidth=1)
    ax2.set_ylabel("speed-up over SDPA flash\n(dense bf16)")
    ax2.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], [group_label(g, rows) for g in groups])
    ax.set_title(f"Batch prefill ({data.get('family', 'sm80')} family), d{head_dim}, q bf16 unless named — "
                 f"{data['device']}, "
                 f"commit {data['commit']}, "
                 f"{data['date'][:10]}, torch {data['torch']}")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    top = max([r["tflops"] for r in rows if r.get("tflops")] or [1.0])
    ax.set_ylim(0, top * 1.45)  # room for the legend
    out = Path(png) if png else Path(path).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
