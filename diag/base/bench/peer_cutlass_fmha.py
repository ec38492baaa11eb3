"""Peer for the Hopper prefill (issue 12): CUTLASS's own FMHA example (`examples/88_hopper_fmha` of the
nvidia-cutlass wheel), built with this machine's nvcc for sm_90a and run on the same shapes as
bench_prefill.py (B4 H32 S4096 d128, contiguous; non-causal and causal), fp16 and e4m3.

Flags as the example's CMake uses them plus -DNDEBUG: without it CUTLASS's asserts sit inside the
wgmma pipeline and ptxas serialises it (warning C7510), which costs about a fifth. The example
times its own kernels (CUDA events over --iterations runs) and prints TFLOPS per kernel variant;
the rows here are those lines, parsed. Builds go to $FLASHINFER_GEN_CACHE/peers (never the tree).
Writes bench/results/peer-cutlass88-<gpu>.json.

The two builds take 2-4 minutes each (run side by side); where the CUDA toolkit lacks the curand
headers the example includes, FIG_PEER_INCLUDES=<dir>[:<dir>] adds include dirs (the
nvidia-curand wheel's nvidia/cu13/include has them).

usage: python bench/peer_cutlass_fmha.py [--build-only] [--iterations 20] [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator import toolchain  # noqa: E402

SHAPE = dict(b=4, h=32, q=4096, k=4096, d=128)
VARIANTS = {"fp16": ["--use_fast_math"], "e4m3": ["-DFP8"]}  # as examples/88_hopper_fmha/CMakeLists.txt
LINE = re.compile(r"^\s*\[(?:OK|--|FAIL)\]\s*\]?\s*(?P<name>.+?)\s*:\s*(?P<tflops>[0-9.]+) TFLOPS/s")


def cutlass_source() -> Path:
    import cutlass_library
    return Path(cutlass_library.__file__).parent / "source"


def build(variant: str, out_dir: Path) -> tuple[Path, float, str]:
    src = cutlass_source()
    exe = out_dir / f"88_hopper_fmha_{variant}"
    # extra include dirs (e.g. curand headers from the nvidia-curand wheel where the toolkit lacks them)
    extra = [f"-I{d}" for d in os.environ.get("FIG_PEER_INCLUDES", "").split(":") if d]
    cmd = [toolchain.find_nvcc(), "-O3", "-std=c++17", "-DNDEBUG", "--expt-relaxed-constexpr", "-arch=sm_90a",
           *VARIANTS[variant], f"-I{src / 'include'}", f"-I{src / 'tools/util/include'}",
           f"-I{src / 'examples/common'}", *extra, str(src / "examples/88_hopper_fmha/88_hopper_fmha.cu"), "-o",
           str(exe)]
    t0 = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"building {exe.name} failed:\n{run.stderr[-3000:]}")
    warnings = sorted(set(re.findall(r"C75\d\d", run.stderr)))  # ptxas: wgmma serialised (C7510, C7512, ...)
    return exe, time.monotonic() - t0, ",".join(warnings)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    ap.add_argument("--build-only", action="store_true", help="build the two binaries and stop (no GPU needed)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out_dir = Path(os.environ.get("FLASHINFER_GEN_CACHE", Path.home() / ".cache" / "flashinfer_gen")) / "peers"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, builds = [], {}
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(VARIANTS)) as pool:  # one nvcc each, side by side (each takes minutes)
        built = dict(zip(VARIANTS, pool.map(lambda v: build(v, out_dir), VARIANTS)))
    for variant, (exe, seconds, warnings) in built.items():
        builds[variant] = dict(seconds=round(seconds, 1), ptxas_serialisation_warnings=warnings or None)
        print(f"built {exe.name} in {seconds:.0f} s{'; ptxas ' + warnings if warnings else ''}", flush=True)
    for variant, (exe, _, _) in built.items():
        if args.build_only:
            continue
        for mask in ("no", "causal"):
            flags = [f"--{k}={v}" for k, v in SHAPE.items()] + [f"--mask={mask}", f"--iterations={args.iterations}"]
            run = subprocess.run([str(exe), *flags], capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"{exe.name} {' '.join(flags)} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
            for line in run.stdout.splitlines():
                m = LINE.match(line)
                if m:
                    row = dict(library="cutlass-88", kernel=m["name"], dtype=variant, causal=mask == "causal",
                               tflops=float(m["tflops"]), **SHAPE)
                    rows.append(row)
                    print(f"{variant:<5} {mask:<6} {row['tflops']:>8.1f} TFLOP/s  {row['kernel']}", flush=True)
    if args.build_only:
        return
    import torch
    name = torch.cuda.get_device_name().replace(" ", "_")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"peer-cutlass88-{name}.json"
    out.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), commit=commit,
                                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                   nvcc=toolchain.current().get("nvcc") if hasattr(toolchain, "current") else None,
                                   builds=builds, method="the example's own CUDA-event timing, --iterations runs",
                                   rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
