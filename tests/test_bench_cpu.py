"""The benchmark scripts' own tables, on the CPU (the timings themselves need the device)."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import rotated_prefill  # noqa: E402

PEERS = {"flashinfer-fa2", "flashinfer-fa3"}
OURS = {"sm80", "sm90"}


def test_peer_pairs_compare_like_with_like():
    """Each ratio of the peers set puts one of our rows over a peer's: FlashInfer's row of the same
    layout, page size, page order and dtypes, or an SDPA backend (dense bf16) under a bf16 row of
    ours or FlashInfer's. A pair that drifted when the set's rows were reordered would fail here
    rather than print a ratio of unlike rows."""
    configs = rotated_prefill.SETS["peers"]
    assert len(set(configs)) == len(configs)
    seen = set()
    for ours, theirs in rotated_prefill.PEER_PAIRS:
        a, b = configs[ours], configs[theirs]
        assert (ours, theirs) not in seen
        seen.add((ours, theirs))
        if b[0] in ("cudnn", "flash"):
            assert a[3] == "bf16" and len(a) == 5 and a[4] in OURS | PEERS, (a, b)
            assert (a[4] == "sm80" or a[4] == "flashinfer-fa2") == (b[0] == "flash"), (a, b)  # mma.sync against FA2
            continue
        assert a[4] in OURS and b[4] in PEERS, (a, b)
        assert a[:3] == b[:3], (a, b)
        # the same q and KV dtypes; a conversion (@...) is ours alone, and a bf16 q on an e4m3
        # cache has only FlashInfer's q/k/v e4m3 row as its FA3 peer (its serving case)
        a_dtype = a[3].partition("@")[0]
        assert a_dtype == b[3] or (a_dtype, b[3]) == ("bf16/e4m3", "e4m3"), (a, b)
        assert (a[4] == "sm80") == (b[4] == "flashinfer-fa2"), (a, b)


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is not None, reason="FlashInfer is installed here")
def test_flashinfer_peer_absent_is_a_reason_not_a_crash():
    import peer_flashinfer
    module, why = peer_flashinfer.load()
    assert module is None and "flashinfer" in why
