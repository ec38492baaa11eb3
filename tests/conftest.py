import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    import torch
    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
FAKE_TOOLCHAIN = {"nvcc": "release 0.0 (test)", "cutlass": "0.0.0"}


def pytest_report_header(config):
    cache = os.environ.get("FLASHINFER_GEN_CACHE", "~/.cache/flashinfer_gen")
    return f"flashinfer_gen: CUDA={'yes' if HAS_CUDA else 'no'}, cache={cache}"


@pytest.fixture
def fixed_toolchain(monkeypatch):
    """CPU tests of the cache key and the registry see one fixed nvcc/CUTLASS, whatever this
    machine has (or lacks)."""
    from generator import toolchain
    monkeypatch.setattr(toolchain, "current", lambda: dict(FAKE_TOOLCHAIN))
    return dict(FAKE_TOOLCHAIN)


@pytest.fixture(scope="session")
def gpu_instances(pytestconfig):
    """Builds, once per session and in parallel, every instance the GPU tests use that the cache
    does not hold yet (tests/gpu_instances.py lists them), so a fresh machine needs nothing but
    the README's commands. Its progress is shown even under pytest's output capture."""
    from gpu_instances import ensure_built
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return ensure_built()
