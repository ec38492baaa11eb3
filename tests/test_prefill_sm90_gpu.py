"""The Hopper prefill family (kind prefill_sm90: a TMA / cp.async producer warpgroup, WGMMA
consumer warpgroups) on an sm_90 GPU, through the same checks as the Ampere-path family
(test_prefill_gpu.py's helpers: float64 reference from the same KV values, random non-contiguous
page tables, ragged lengths including 1 and page multiples, NaN-poisoned outputs) with
backend="sm90", for the 16-bit caches this family builds.

Tolerances are test_prefill_gpu.py's, for the same reason: q.k and p.v accumulate in fp32, P is
rounded to the q dtype (bf16: 2^-8, fp16: 2^-11) before P V, and the output to the q dtype.

Dispatch: backend="auto" takes this family on sm_90 where its instance is built and the Ampere
path otherwise (an FP8 cache); backend="sm90" for a combination it does not build is an
ArgumentError that names why.
"""
import pytest
import torch

import flashinfer_gen
from conftest import requires_gpu
from flashinfer_gen import ArgumentError
from test_prefill_gpu import (GROUPS, LAYOUTS, LENGTH_CASES, PAGE_SIZES, _ids, assert_close, check_paged,
                              check_ragged, make_paged, matrix_combos, matrix_lengths, out_tolerance, paged_ref,
                              paged_wrapper, plan_paged, poisoned)

requires_sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                                   reason="the prefill_sm90 family runs on sm_90 (H100/H200) only")
pytestmark = [requires_gpu, requires_sm90, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]

CASES = ((torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16))
HEAD_DIMS = (64, 128, 256)
SM90 = dict(backend="sm90")


@pytest.fixture(scope="module")
def workspace():
    return torch.empty(64 << 20, dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype", CASES, ids=_ids)
def test_prefill_matrix(q_dtype, kv_dtype, d, causal, workspace):
    """test_prefill_gpu's rotation: over a case's six (head dim, causal) runs, every (layout, page
    size 1/16/32, GQA group 1/4/7/8) triple once."""
    kv_index, d_index = CASES.index((q_dtype, kv_dtype)), HEAD_DIMS.index(d)
    for n, (layout, page_size, group) in enumerate(matrix_combos(kv_index, d_index, causal)):
        seed = 1000 * kv_index + 100 * d_index + 10 * n + int(causal)
        qo_lens, kv_lens = matrix_lengths(torch.Generator().manual_seed(seed), causal)
        w, _ = check_paged(q_dtype, kv_dtype, None, d, layout, page_size, group, qo_lens, kv_lens, workspace,
                           causal=causal, k_scale=0.75, v_scale=1.5, seed=seed, **SM90)
        assert w.module.key.kind == "prefill_sm90"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lens", list(LENGTH_CASES.values()), ids=list(LENGTH_CASES))
def test_lengths(lens, causal, workspace):
    qo_lens, kv_lens = lens
    for n, (q_dtype, layout, page_size, group) in enumerate(((torch.float16, "NHD", 16, 4),
                                                             (torch.bfloat16, "HND", 1, 7),
                                                             (torch.bfloat16, "NHD", 64, 8))):
        check_paged(q_dtype, q_dtype, None, 128, layout, page_size, group, qo_lens, kv_lens, workspace,
                    causal=causal, seed=n, qo_on_cpu=bool(n % 2), **SM90)


@pytest.mark.parametrize("page_size", [1, 16, 64, 128, 3])
def test_page_sizes(page_size, workspace):
    """Pages smaller than, equal to and larger than a 128-key tile, and one that divides nothing."""
    check_paged(torch.bfloat16, torch.bfloat16, None, 128, "NHD", page_size, 4, [1, 64, 300, 129],
                [1, 1000, 300, 256], workspace, causal=True, seed=page_size, **SM90)
    check_paged(torch.float16, torch.float16, None, 64, "HND", page_size, 1, [77], [640], workspace,
                causal=False, seed=page_size + 1, **SM90)


@pytest.mark.parametrize("group", [2, 3, 5, 12, 16, 32])
def test_gqa_groups(group, workspace):
    check_paged(torch.bfloat16, torch.bfloat16, None, 128, "NHD", 16, group, [1, 40, 300], [33, 1000, 300],
                workspace, hk=1 if group > 8 else 2, causal=True, **SM90)


@pytest.mark.parametrize("q_dtype,kv_dtype", CASES, ids=_ids)
def test_window_softcap_scales(q_dtype, kv_dtype, workspace):
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    args = (q_dtype, kv_dtype, None, 128)
    check_paged(*args, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0, k_scale=0.5, v_scale=2.0,
                sm_scale=0.1, **SM90)
    check_paged(*args, "HND", 32, 8, qo, kv, workspace, causal=False, soft_cap=5.0, sm_scale=0.3, seed=1, **SM90)
    check_paged(*args, "HND", 32, 8, qo, kv, workspace, causal=True, window_left=0, soft_cap=20.0, seed=2, **SM90)
    for n, window in enumerate((0, 1, 15, 64, 257, 5000)):
        check_paged(*args, LAYOUTS[n % 2], PAGE_SIZES[n % 3], GROUPS[n % 4], qo, kv, workspace, causal=True,
                    window_left=window, k_scale=1.25, seed=3 + n, **SM90)
    for n, window in enumerate((0, 40)):
        check_paged(*args, "NHD", 1, 4, [5, 64, 100], [40, 64, 1000], workspace, causal=False, window_left=window,
                    v_scale=0.25, seed=10 + n, **SM90)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_combined_kv_tensor(layout, workspace):
    check_paged(torch.bfloat16, torch.bfloat16, None, 128, layout, 16, 4, [5, 64, 1, 130], [5, 1000, 1, 200],
                workspace, causal=True, combined=True, k_scale=0.5, **SM90)
    check_paged(torch.float16, torch.float16, None, 64, layout, 1, 7, [33], [99], workspace, causal=False,
                combined=True, **SM90)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_dtype,kv_dtype", CASES, ids=_ids)
def test_split_kv_long_context(q_dtype, kv_dtype, causal, workspace):
    w, _ = check_paged(q_dtype, kv_dtype, None, 128, "NHD", 16, 4, [16], [32768], workspace, hk=8, causal=causal,
                       k_scale=0.5, v_scale=2.0, **SM90)
    assert w._plan["schedule"].num_partial > 0, "batch 1 at 32k keys must be split"
    check_paged(q_dtype, kv_dtype, None, 128, "HND", 32, 4, [16, 1], [32768, 5], workspace, hk=8, causal=causal,
                window_left=20000, seed=1, **SM90)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_dtype,kv_dtype", CASES, ids=_ids)
def test_ragged(q_dtype, kv_dtype, causal, workspace):
    for n, d in enumerate(HEAD_DIMS + (192,)):
        w, _ = check_ragged(q_dtype, kv_dtype, None, d, (1, 4, 7, 2)[n], [1, 7, 64, 300, 0, 17],
                            [1, 77, 1000, 300, 5, 17], workspace, causal=causal, k_scale=0.75, v_scale=1.5, seed=n,
                            **SM90)
        assert w.module.key.kind == "prefill_sm90"
        check_ragged(q_dtype, kv_dtype, None, d, 8, [5, 129], [4096, 129], workspace, causal=causal, seed=10 + n,
                     **SM90)


def test_head_dim_192_paged(workspace):
    check_paged(torch.bfloat16, torch.bfloat16, None, 192, "NHD", 16, 4, [1, 64, 300], [1000, 64, 300], workspace,
                causal=True, seed=5, **SM90)


def test_cuda_graph_capture(workspace):
    """run() captured once replays to the right answer (the plan's work list stays put)."""
    c = make_paged([16, 1, 100, 0], [4096, 1, 4000, 3], 16, 32, 8, 128, torch.bfloat16, torch.bfloat16)
    w = paged_wrapper(workspace, **SM90)
    plan_paged(w, c, torch.bfloat16, torch.bfloat16, causal=True)
    out, lse = poisoned(c["q"])
    w.run(c["q"], c["cache"], out=out, lse=lse)  # warm-up outside the capture (loads, attributes)
    torch.cuda.synchronize()
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(c["q"], c["cache"], out=out, lse=lse)
    graph.replay()
    torch.cuda.synchronize()
    ref, ref_lse = paged_ref(c, causal=True)
    assert_close(out, lse, ref, ref_lse, out_tolerance(torch.bfloat16, torch.bfloat16), "graph replay")


def test_backend_dispatch(workspace):
    """auto: this family for a 16-bit cache where built, the Ampere path for FP8; sm90 for FP8 and
    an unknown backend are clear errors before any launch."""
    c = make_paged([3, 70], [100, 70], 16, 8, 2, 128, torch.bfloat16, torch.bfloat16)
    auto = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace)
    plan_paged(auto, c, torch.bfloat16, torch.bfloat16, causal=True)
    assert auto.module.key.kind == "prefill_sm90"
    out = auto.run(c["q"], c["cache"])
    ref, ref_lse = paged_ref(c, causal=True)
    assert_close(out, None, ref, ref_lse, out_tolerance(torch.bfloat16, torch.bfloat16), "auto")
    plan_paged(auto, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    assert auto.module.key.kind == "prefill"
    forced = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, backend="sm90")
    with pytest.raises(ArgumentError, match="prefill_sm90.*kv_dtype='e4m3'"):
        plan_paged(forced, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    with pytest.raises(ArgumentError, match="backend must be one of"):
        flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, backend="cudnn")
    fa2 = flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, backend="fa2")
    fa2.plan(c["qo_indptr"], torch.tensor([0, 100, 170], dtype=torch.int32, device="cuda"), 8, 2, 128,
             q_data_type=torch.bfloat16)
    assert fa2.module.key.kind == "prefill"
