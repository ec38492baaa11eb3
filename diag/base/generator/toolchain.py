"""Where the sources and tools live: the templates and CMake files (in a source checkout or as
package data of an installed wheel), nvcc, the CuTe/CUTLASS headers, and the versions of both,
which are part of every instance's cache key.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _data_dir(installed: str, checkout: str) -> Path:
    # An installed wheel carries the folders inside the package (see pyproject.toml's
    # package-dir); a checkout or an editable install has them beside it.
    inside = _HERE / installed
    return inside if inside.is_dir() else _HERE.parent / checkout


TEMPLATE_DIR = _data_dir("templates", "templates")
CMAKE_DIR = _data_dir("cmake", "build")


def find_nvcc() -> str | None:
    """$CUDACXX, nvcc on PATH, then $CUDA_HOME/bin and /usr/local/cuda/bin."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def find_host_compiler() -> str | None:
    """The C++ compiler nvcc compiles host code with: $CUDAHOSTCXX (as CMake reads it), else g++ or
    c++ on PATH. The build passes it explicitly, so it is the one whose version the key holds."""
    for c in (os.environ.get("CUDAHOSTCXX"), shutil.which("g++"), shutil.which("c++")):
        if c and Path(c).is_file():
            return str(Path(c))
    return None


@functools.lru_cache(maxsize=8)
def _version(path: str, mtime_ns: int) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    release = re.search(r"release [^\n]*", out)
    build = re.search(r"Build [^\n]*", out)
    return " ".join(m.group(0).strip() for m in (release, build) if m) or out.strip().splitlines()[0]


def version(path: str) -> str:
    """What `path --version` says (nvcc: its release and build lines; a host compiler: its first line)."""
    return _version(path, Path(path).stat().st_mtime_ns)


def cutlass_include_dir() -> Path | None:
    try:
        import cutlass_library
    except ImportError:
        return None
    include = Path(cutlass_library.__file__).resolve().parent / "source" / "include"
    return include if (include / "cute" / "tensor.hpp").exists() else None


@functools.lru_cache(maxsize=4)
def _cutlass_version(include: str) -> str:
    text = (Path(include) / "cutlass" / "version.h").read_text()
    parts = [re.search(rf"#define CUTLASS_{p} (\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) if m else "?" for m in parts)


def current() -> dict | None:
    """The nvcc, host compiler and CUTLASS a build would use now, or None where one is missing
    (a machine that only runs prebuilt libraries)."""
    nvcc, host, include = find_nvcc(), find_host_compiler(), cutlass_include_dir()
    if nvcc is None or host is None or include is None:
        return None
    return {"nvcc": version(nvcc), "host_cxx": f"{host}: {version(host)}", "cutlass": _cutlass_version(str(include))}
