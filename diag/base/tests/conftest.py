import faulthandler
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


# A hung kernel holds its test inside a CUDA call, where no Python-level timeout reaches it. After
# FIG_TEST_TIMEOUT seconds (300 by default, 0: never) of one test's call, faulthandler prints every
# thread's stack and ends the process, so a hang costs a device session minutes, not its budget (a
# persistent-CTA hang on 2026-11-27 held one for ten). Fixtures (the instance builds) are not timed.
TEST_TIMEOUT = float(os.environ.get("FIG_TEST_TIMEOUT", "300"))


_timeout_stream = None


def _terminal_stderr(config):
    """The stderr the run started with: under pytest's fd capture, fd 2 is a temporary file while
    a test runs (and lost when the process ends); the capture keeps a duplicate of the original."""
    global _timeout_stream
    if _timeout_stream is None:
        capman = config.pluginmanager.getplugin("capturemanager")
        err = getattr(getattr(capman, "_global_capturing", None), "err", None)
        fd = getattr(err, "targetfd_save", None)
        _timeout_stream = os.fdopen(os.dup(fd if isinstance(fd, int) else 2), "w")
    return _timeout_stream


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if TEST_TIMEOUT > 0:
        stream = _terminal_stderr(item.config)
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True, file=stream)
    try:
        yield
    finally:
        if TEST_TIMEOUT > 0:
            faulthandler.cancel_dump_traceback_later()


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
