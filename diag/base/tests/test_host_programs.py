"""Host-side C++ of the kernel headers, compiled with nvcc and run on the CPU (CI has nvcc and no
GPU): each program in tests/host/ prints "ok" or the first failed check.

tma_cache_test.cu: the per-thread table of TMA descriptors (KvTensorMaps::cached_with) encodes
an engine's 32 per-layer caches once each, compares every part of its key, and replaces a set's
least recently used entry.

smem_rows_test.cu: the Ampere-path prefill's shared K/V row layouts (smem_rows.cuh), swizzled and
padded: chunks inside their rows and distinct, step() equal to offset(), ldmatrix's eight rows on
eight bank positions, and each copied run of eight chunks one 128-byte line."""
import subprocess
from pathlib import Path

import pytest

from generator import abi, toolchain

pytestmark = pytest.mark.skipif(toolchain.find_nvcc() is None or toolchain.cutlass_include_dir() is None,
                                reason="needs nvcc and the nvidia-cutlass headers")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("program", ["tma_cache_test.cu", "smem_rows_test.cu"])
def test_host_program(program, tmp_path):
    (tmp_path / abi.COMMON_HEADER).write_text(abi.common_header())
    exe = tmp_path / "test"
    subprocess.run([toolchain.find_nvcc(), "-std=c++17", "-O2", "--expt-relaxed-constexpr", f"-I{tmp_path}",
                    f"-I{ROOT / 'templates'}", f"-I{toolchain.cutlass_include_dir()}",
                    str(ROOT / "tests" / "host" / program), "-o", str(exe)], check=True, capture_output=True,
                   text=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
