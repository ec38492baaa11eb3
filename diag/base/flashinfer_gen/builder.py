"""Build driver: generate -> CMake configure -> ninja, into the build cache.

The cache root is $FLASHINFER_GEN_CACHE or ~/.cache/flashinfer_gen. Layout:
  generated/  rendered .cu files, manifest.json, instances.cmake
  cmake/      the CMake binary dir (ninja files, objects)
  lib/        libfig_<instance>_<source hash>.so
A file lock serialises builds, so two processes asking for the same instance on demand do
not collide; the second finds the library built when it gets the lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from generator import InstanceKey, toolchain
from generator.arches import FALLBACK_ARCHES, arch_for_capability, capability_error
from generator.render import generate

ENV_CACHE = "FLASHINFER_GEN_CACHE"


def cache_root() -> Path:
    root = os.environ.get(ENV_CACHE)
    return Path(root).expanduser().resolve() if root else Path.home() / ".cache" / "flashinfer_gen"


def generated_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "generated"


def library_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "lib"


def cmake_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "cmake"


def cutlass_include_dir() -> Path:
    include = toolchain.cutlass_include_dir()
    if include is None:
        raise RuntimeError("the nvidia-cutlass wheel is needed for the CuTe headers: pip install nvidia-cutlass")
    return include


def nvcc_path() -> str:
    nvcc = toolchain.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (PATH, $CUDACXX, $CUDA_HOME/bin, /usr/local/cuda/bin); "
                           "building instances needs the CUDA toolkit")
    return nvcc


@contextlib.contextmanager
def build_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclasses.dataclass
class BuildReport:
    built: list[str]                 # instance names whose library exists after the build
    seconds: dict[str, float]        # compile+link seconds per instance rebuilt in this run
    wall_seconds: float
    library_bytes: dict[str, int]


def _tool(name: str) -> str:
    # Prefer the binaries next to this interpreter (pip's cmake / ninja), then PATH.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found; pip install {name}")
    return found


_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


def _progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _ninja_times(build_dir: Path) -> dict[str, float]:
    """Seconds per target in .ninja_log (removed before each build, so: this build)."""
    log = build_dir / ".ninja_log"
    per_target: dict[str, float] = {}
    if not log.exists():
        return per_target
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or line.startswith("#"):
            continue
        start, end, output = int(parts[0]), int(parts[1]), parts[3]
        match = re.search(r"CMakeFiles/([^/]+)\.dir/", output) or re.search(r"libfig_(.+)_[0-9a-f]{16}\.so$", output)
        if not match:
            continue
        target = match.group(1)
        per_target[target] = per_target.get(target, 0.0) + (end - start) / 1000.0
    return per_target


# ptxas warnings no shipped instance may have: -warn-spills' reports ("Registers are spilled to local
# memory in function ..."), and those that say WGMMAs were serialised (C7510: an instruction the
# asynchronous pipeline cannot cross, C7512: accumulators that cross a function boundary, ...),
# which cost a Hopper kernel a fifth of its speed while its answers stay right.
_REFUSED_PTXAS = re.compile(r"spilled|\(C751\d\)|wgmma\.mma_async instructions are serialized")


def spill_warnings(lines: Iterable[str]) -> list[str]:
    """The refused ptxas warnings (_REFUSED_PTXAS) among a build's output lines."""
    return [line.strip() for line in lines if "ptxas" in line and _REFUSED_PTXAS.search(line)]


def build(keys: Iterable[InstanceKey], jobs: int | None = None, root: Path | None = None,
          echo: Callable[[str], None] | None = print) -> BuildReport:
    keys = sorted(set(keys))
    root = Path(root) if root else cache_root()
    echo = echo or (lambda _msg: None)
    t0 = time.monotonic()
    with build_lock(root):
        nvcc, cutlass = nvcc_path(), cutlass_include_dir()  # refuse early, with the reason
        host = toolchain.find_host_compiler()
        if host is None:
            raise RuntimeError("no host C++ compiler for nvcc ($CUDAHOSTCXX, g++ or c++ on PATH)")
        entries = generate(keys, generated_dir(root))
        bdir = cmake_dir(root)
        lib = library_dir(root)
        lib.mkdir(parents=True, exist_ok=True)
        configure = [
            _tool("cmake"), "-S", str(toolchain.CMAKE_DIR), "-B", str(bdir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DCMAKE_CUDA_HOST_COMPILER={host}",
            "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
            f"-DFIG_GENERATED_DIR={generated_dir(root)}", f"-DFIG_LIBRARY_DIR={lib}",
            f"-DFIG_TEMPLATE_DIR={toolchain.TEMPLATE_DIR}", f"-DFIG_CUTLASS_INCLUDE={cutlass}",
        ]
        # The flags are the instance list's alone (they are hashed); none from the environment.
        # nvcc itself reads NVCC_PREPEND_FLAGS / NVCC_APPEND_FLAGS / NVCC_CCBIN: not those either.
        env = {k: v for k, v in os.environ.items()
               if k not in ("CUDAFLAGS", "CXXFLAGS", "CFLAGS", "LDFLAGS", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS",
                            "NVCC_CCBIN")}
        result = subprocess.run(configure, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"CMake configure failed:\n{result.stdout}\n{result.stderr}")
        # Remove the log of earlier runs so the timing summary covers this run only.
        (bdir / ".ninja_log").unlink(missing_ok=True)
        cmd = [_tool("ninja"), "-C", str(bdir), *(["-j", str(jobs)] if jobs else []), *entries.keys()]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        output = []
        assert proc.stdout is not None
        tty = sys.stdout.isatty()
        shown = -1
        for line in proc.stdout:
            output.append(line)
            m = _PROGRESS.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                if tty:
                    echo(f"\r{_progress_bar(done, total)}")
                elif done * 10 // total != shown:  # logs get a line per tenth, not per step
                    shown = done * 10 // total
                    echo(f"{_progress_bar(done, total)}\n")
        if proc.wait() != 0:
            raise RuntimeError("ninja build failed:\n" + "".join(output[-200:]))
        spills = spill_warnings(output)
        if spills:  # the flags ask ptxas to report every spill; no shipped instance may have one, nor a serialised WGMMA
            for e in entries.values():  # ninja linked them: remove them, or the registry would load them
                (lib / e["library"]).unlink(missing_ok=True)
            raise RuntimeError("register spills or serialised WGMMAs (ptxas); the libraries of this build were removed:\n"
                               + "\n".join(spills[:20]))
        seconds = _ninja_times(bdir)
        sizes = {name: (lib / e["library"]).stat().st_size for name, e in entries.items()
                 if (lib / e["library"]).exists()}
        missing = sorted(set(entries) - set(sizes))
        if missing:
            raise RuntimeError(f"build finished but libraries are missing: {missing}")
    return BuildReport(built=sorted(entries), seconds={k: v for k, v in seconds.items() if k in entries},
                       wall_seconds=time.monotonic() - t0, library_bytes=sizes)


def format_report(report: BuildReport) -> str:
    lines = [f"{'instance':<60} {'seconds':>8} {'size MB':>8}"]
    for name in report.built:
        secs = report.seconds.get(name)
        lines.append(f"{name:<60} {('%.1f' % secs) if secs is not None else 'cached':>8} "
                     f"{report.library_bytes.get(name, 0) / 1e6:>8.2f}")
    lines.append(f"{len(report.built)} instances, wall {report.wall_seconds:.1f} s")
    return "\n".join(lines)


def visible_archs() -> Sequence[str]:
    """The archs of the visible GPUs, or the fallback pair (A100, H100) when there is none."""
    try:
        import torch
    except ImportError:
        return FALLBACK_ARCHES
    if not torch.cuda.is_available():
        return FALLBACK_ARCHES
    caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    names = sorted({a.name for a in map(arch_for_capability, caps) if a is not None})
    if not names:
        raise RuntimeError(capability_error(caps[0]) + "; name --arch to build for another GPU")
    return tuple(names)
