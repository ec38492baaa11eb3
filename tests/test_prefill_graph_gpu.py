"""Prefill wrappers with use_cuda_graph=True (FlashInfer's *_buf arguments): one capture, then
five plans with new random lengths and page tables (split-KV and not), each replayed into a
NaN-poisoned output and compared with the float64 reference of test_prefill_gpu.py, for both
kernel families and both wrappers. The captured q / out are static buffers of the first plan's
token count; a later plan with fewer tokens must leave the rows past its own untouched (NaN).

Tolerance: test_prefill_gpu.py's for bf16 (1e-2 relative L2: P and the output are rounded to bf16).
"""
import pytest
import torch

import flashinfer_gen
from conftest import requires_gpu
from flashinfer_gen import ArgumentError
from flashinfer_gen.reference import prefill_reference, ragged_reference, relative_error
from test_prefill_gpu import indptr_of

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]

BATCH, HQ, HK, D, PAGE, POOL = 5, 16, 2, 128, 16, 6000
TOL = 1e-2
sm90_only = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                               reason="the prefill_sm90 family runs on sm_90 only")
FAMILIES = ["sm80", pytest.param("sm90", marks=sm90_only)]


@pytest.fixture(scope="module")
def workspace():
    return torch.empty(128 << 20, dtype=torch.uint8, device="cuda")


def step_lengths(gen, step: int, rows: int) -> tuple[list, list]:
    """(qo_lens, kv_lens) of re-plan `step`, at most `rows` query tokens: even steps put one long
    history among short requests (one wave is not filled: split-KV), odd ones many queries with
    short histories (no split)."""
    qo = torch.randint(1, rows // BATCH + 1, (BATCH,), generator=gen)
    if step % 2 == 0:
        qo = torch.randint(1, 8, (BATCH,), generator=gen)
        kv = qo + torch.randint(0, 300, (BATCH,), generator=gen)
        kv[step % BATCH] = 20000 + int(qo[step % BATCH])
    else:
        kv = qo + torch.randint(0, 64, (BATCH,), generator=gen)
    return qo.tolist(), kv.tolist()


def replay_and_check(graph, q_buf, out_buf, lse_buf, gen, total, reference):
    q_buf.copy_(torch.randn(q_buf.shape, generator=gen).to(q_buf.dtype))
    out_buf.fill_(float("nan"))
    lse_buf.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref, ref_lse = reference(q_buf[:total])
    err = relative_error(out_buf[:total], ref)
    assert err < TOL, f"output rel. error {err:.3e}"
    assert (lse_buf[:total] - ref_lse).abs().max().item() < 1e-3
    assert out_buf[total:].isnan().all() and lse_buf[total:].isnan().all(), "rows past the plan's were written"


def capture(run):
    run()  # warm-up outside the capture (loads the module)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            run()
    return graph


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("backend", FAMILIES)
def test_paged_graph_captured_once_follows_every_plan(backend, causal, workspace):
    gen = torch.Generator().manual_seed(21 + int(causal))
    k = torch.randn(POOL, PAGE, HK, D, generator=gen).cuda().to(torch.bfloat16)
    v = torch.randn(POOL, PAGE, HK, D, generator=gen).cuda().to(torch.bfloat16)
    bufs = dict(qo_indptr_buf=torch.empty(BATCH + 1, dtype=torch.int32, device="cuda"),
                paged_kv_indptr_buf=torch.empty(BATCH + 1, dtype=torch.int32, device="cuda"),
                paged_kv_indices_buf=torch.empty(POOL, dtype=torch.int32, device="cuda"),
                paged_kv_last_page_len_buf=torch.empty(BATCH, dtype=torch.int32, device="cuda"))
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", True, backend=backend, **bufs)
    assert w.is_cuda_graph_enabled

    def plan(qo_lens, kv_lens):
        kv = torch.tensor(kv_lens)
        pages = (kv + PAGE - 1) // PAGE
        kv_indptr = indptr_of(pages.tolist())
        indices = torch.randperm(POOL, generator=gen)[: int(kv_indptr[-1])].to(torch.int32)
        last = (kv - (pages - 1) * PAGE).to(torch.int32)
        t = dict(qo_indptr=indptr_of(qo_lens).cuda(), kv_indptr=kv_indptr.cuda(), indices=indices.cuda(),
                 last=last.cuda())
        w.plan(t["qo_indptr"], t["kv_indptr"], t["indices"], t["last"], HQ, HK, D, PAGE, causal=causal,
               q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        assert torch.equal(bufs["paged_kv_indices_buf"][: indices.numel()].cpu(), indices)
        return t

    rows = 600
    first = [rows - 4 * 100] + [100] * 4
    plan(first, [n + 37 for n in first])  # the first plan fixes the token capacity: 600
    assert w._plan["schedule"].num_partial == 0
    q_buf = torch.empty(rows, HQ, D, dtype=torch.bfloat16, device="cuda")
    out_buf, lse_buf = torch.empty_like(q_buf), torch.empty(rows, HQ, dtype=torch.float32, device="cuda")
    graph = capture(lambda: w.run(q_buf, (k, v), out=out_buf, lse=lse_buf))
    splits = []
    for step in range(5):
        qo_lens, kv_lens = step_lengths(gen, step, rows)
        t = plan(qo_lens, kv_lens)
        splits.append(w._plan["schedule"].num_partial > 0)
        replay_and_check(graph, q_buf, out_buf, lse_buf, gen, sum(qo_lens),
                         lambda q: prefill_reference(q, k, v, t["qo_indptr"], t["kv_indptr"], t["indices"], t["last"],
                                                     "NHD", causal=causal))
    assert any(splits) and not all(splits), splits
    with pytest.raises(ArgumentError, match="at most the 600"):
        plan([rows] + [1] * (BATCH - 1), [rows + 1] * BATCH)
    with pytest.raises(ArgumentError, match="batch"):
        plan([1] * (BATCH + 1), [1] * (BATCH + 1))
    with pytest.raises(ArgumentError, match="first plan's configuration"):
        w.plan(t["qo_indptr"], t["kv_indptr"], t["indices"], t["last"], HQ, HK, D, PAGE, causal=not causal,
               q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)


@pytest.mark.parametrize("backend", FAMILIES)
def test_graph_grid_in_l2_sections(backend, workspace, monkeypatch):
    """The captured paged plan above with a section per KV head: the grid order (one CTA per unit,
    prefill.grid_unit_order) and the persistent lists are rewritten by each plan and the captured
    launch follows them."""
    import flashinfer_gen.prefill as prefill
    monkeypatch.setattr(prefill, "l2_heads_per_section", lambda *args: 1)
    test_paged_graph_captured_once_follows_every_plan(backend, True, workspace)


@pytest.mark.parametrize("backend", FAMILIES)
def test_ragged_graph_captured_once_follows_every_plan(backend, workspace):
    gen = torch.Generator().manual_seed(31)
    kv_rows = 40000
    k_buf = torch.randn(kv_rows, HK, D, generator=gen).cuda().to(torch.bfloat16)
    v_buf = torch.randn(kv_rows, HK, D, generator=gen).cuda().to(torch.bfloat16)
    qo_buf = torch.empty(BATCH + 1, dtype=torch.int32, device="cuda")
    kv_buf = torch.empty(BATCH + 1, dtype=torch.int32, device="cuda")
    w = flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", True, qo_buf, kv_buf, backend=backend)

    def plan(qo_lens, kv_lens):
        t = dict(qo_indptr=indptr_of(qo_lens).cuda(), kv_indptr=indptr_of(kv_lens).cuda())
        w.plan(t["qo_indptr"], t["kv_indptr"], HQ, HK, D, causal=True, q_data_type=torch.bfloat16,
               kv_data_type=torch.bfloat16)
        assert torch.equal(kv_buf.cpu(), t["kv_indptr"].cpu()) and torch.equal(qo_buf.cpu(), t["qo_indptr"].cpu())
        return t

    rows = 500
    plan([100] * BATCH, [300] * BATCH)
    q_buf = torch.empty(rows, HQ, D, dtype=torch.bfloat16, device="cuda")
    out_buf, lse_buf = torch.empty_like(q_buf), torch.empty(rows, HQ, dtype=torch.float32, device="cuda")
    graph = capture(lambda: w.run(q_buf, k_buf, v_buf, out=out_buf, lse=lse_buf))
    splits = []
    for step in range(5):
        qo_lens, kv_lens = step_lengths(gen, step, rows)
        t = plan(qo_lens, kv_lens)
        splits.append(w._plan["schedule"].num_partial > 0)
        total_kv = sum(kv_lens)
        replay_and_check(graph, q_buf, out_buf, lse_buf, gen, sum(qo_lens),
                         lambda q: ragged_reference(q, k_buf[:total_kv], v_buf[:total_kv], t["qo_indptr"],
                                                    t["kv_indptr"], causal=True))
    assert any(splits) and not all(splits), splits


def test_later_plans_must_fit_the_captured_tensors(workspace):
    """A replay skips run(), so a later plan() is held to the tensors of the captured run():
    fewer q rows than the first plan's tokens, a cache with fewer pages, ragged K/V with fewer
    rows; and a first plan() that fails fixes nothing."""
    gen = torch.Generator().manual_seed(41)
    pool = 64
    k = torch.randn(pool, PAGE, HK, D, generator=gen).cuda().to(torch.bfloat16)
    v = torch.randn(pool, PAGE, HK, D, generator=gen).cuda().to(torch.bfloat16)
    bufs = dict(qo_indptr_buf=torch.empty(3, dtype=torch.int32, device="cuda"),
                paged_kv_indptr_buf=torch.empty(3, dtype=torch.int32, device="cuda"),
                paged_kv_indices_buf=torch.empty(8, dtype=torch.int32, device="cuda"),
                paged_kv_last_page_len_buf=torch.empty(2, dtype=torch.int32, device="cuda"))
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", True, backend="sm80", **bufs)

    def plan(qo_lens, pages, causal=False):
        w.plan(indptr_of(qo_lens).cuda(), indptr_of([len(p) for p in pages]).cuda(),
               torch.tensor(sum(pages, []), dtype=torch.int32).cuda(), torch.full((2,), PAGE, dtype=torch.int32).cuda(),
               HQ, HK, D, PAGE, causal=causal, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)

    with pytest.raises(ArgumentError, match="paged_kv_indices_buf holds 8"):
        plan([60, 60], [list(range(5)), list(range(5, 10))], causal=True)
    plan([200, 100], [[1, 2], [3, 4, 5]])  # accepted: the failed plan fixed neither tokens nor causal
    plan([50, 50], [[1, 2], [3, 4, 5]])
    q = torch.randn(100, HQ, D, generator=gen).cuda().to(torch.bfloat16)
    graph = capture(lambda: w.run(q, (k[:16], v[:16])))  # 100 q rows, a 16-page cache
    plan([60, 40], [[1, 2], [3, 4, 5]])
    with pytest.raises(ArgumentError, match="q of this wrapper's captured run has 100 rows"):  # 200 <= 300
        plan([150, 50], [[1, 2], [3, 4, 5]])
    with pytest.raises(ArgumentError, match="reaches 21 pages but the cache of this wrapper's captured run has 16"):
        plan([50, 50], [[1, 2], [3, 20]])
    plan([60, 40], [[0, 15], [7]])
    del graph

    qo_buf, kv_buf = torch.empty(3, dtype=torch.int32, device="cuda"), torch.empty(3, dtype=torch.int32, device="cuda")
    r = flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", True, qo_buf, kv_buf, backend="sm80")
    r.plan(indptr_of([10, 10]).cuda(), indptr_of([100, 100]).cuda(), HQ, HK, D, q_data_type=torch.bfloat16,
           kv_data_type=torch.bfloat16)
    kr = torch.randn(300, HK, D, generator=gen).cuda().to(torch.bfloat16)
    q = torch.randn(20, HQ, D, generator=gen).cuda().to(torch.bfloat16)
    graph = capture(lambda: r.run(q, kr, kr))
    r.plan(indptr_of([10, 10]).cuda(), indptr_of([150, 150]).cuda(), HQ, HK, D, q_data_type=torch.bfloat16,
           kv_data_type=torch.bfloat16)
    with pytest.raises(ArgumentError, match="reaches 301 K/V rows but the cache of this wrapper's captured run has 300"):
        r.plan(indptr_of([10, 10]).cuda(), indptr_of([150, 151]).cuda(), HQ, HK, D, q_data_type=torch.bfloat16,
               kv_data_type=torch.bfloat16)
    del graph


def test_graph_arguments_are_checked(workspace):
    one = torch.empty(3, dtype=torch.int32, device="cuda")
    with pytest.raises(ArgumentError, match="needs paged_kv_indices_buf"):
        flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", True, one, one.clone(), None,
                                                          one[:2].clone())
    with pytest.raises(ArgumentError, match="paged_kv_last_page_len_buf must hold 2"):
        flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", True, one, one.clone(), one.clone(),
                                                          one.clone())
    with pytest.raises(ArgumentError, match="serve use_cuda_graph=True"):
        flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", False, one)
    with pytest.raises(ArgumentError, match="int32"):
        flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", True, one, one.to(torch.int64))
    with pytest.raises(ArgumentError, match="custom_mask"):
        flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", False, custom_mask_buf=one)
