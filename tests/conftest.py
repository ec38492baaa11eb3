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


def pytest_report_header(config):
    cache = os.environ.get("FLASHINFER_GEN_CACHE", "~/.cache/flashinfer_gen")
    return f"flashinfer_gen: CUDA={'yes' if HAS_CUDA else 'no'}, cache={cache}"
