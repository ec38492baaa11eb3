"""The Hopper prefill family (kind prefill_sm90: a TMA / cp.async producer warpgroup, WGMMA
consumer warpgroups) on an sm_90 GPU, through the same checks as the Ampere-path family
(test_prefill_gpu.py's helpers: float64 reference from the same KV values, random non-contiguous
page tables, ragged lengths including 1 and page multiples, NaN-poisoned outputs) with
backend="sm90", for the 16-bit caches this family builds.

Tolerances are test_prefill_gpu.py's, for the same reason: q.k and p.v accumulate in fp32, P is
rounded to the q dtype (bf16: 2^-8, fp16: 2^-11) before P V, and the output to the q dtype.

FP8 caches (e4m3, e5m2) run on FP8 WGMMA tiles: a 16-bit q quantised per (token, head) row to
e4m3, P to e4m3. The reference takes q exactly as the kernel quantises it (quantize_q_rows,
bit-exact) and the cache's own codes, so what remains is P's rounding and FP8 WGMMA's
accumulation. An e4m3 q given by the caller (its q_scale in the logits, the output in
o_data_type) is exact too: the reference takes its codes times q_scale, and the same bounds hold. The tolerances
come from those (fp8_tile_bounds, per output element of the float64 reference):
  - P: each p_j is rounded to e4m3 (3 mantissa bits): off by at most 2^-4 p_j (half an ulp), so
    |error| <= 2^-4 sum_j p_j |v_j|; its subnormal codes (P is scaled so that the row max is 2^8)
    add at most 2^-10 / 2^8 per key: 2^-18 sum_j |v_j|.
  - the logits: FP8 WGMMA adds a k32 instruction's products and the accumulator aligned to the
    largest of them and kept to about 14 bits (DeepSeek-V3, 3.3.2): each of the D / 32
    instructions is off by about 2^-13 of a value no larger than sum_d |q_d k_jd|, so a logit by
    at most D / 32 * 2^-13 = 2^-11 (D = 128; 2^-12 at 64, 6 * 2^-13 at 192, 2^-10 at 256) of that sum (log2 units),
    which moves each p_j by at most twice that times ln 2 (relative: its own logit, and the sum it
    is divided by) and the LSE by at most that. (2^-13 alone was too tight: the H100 showed LSE
    errors of about 2^-12.5 of the sum.) test_fp8_lse_where_the_sums_are_exact pins the LSE to
    1e-4 on values whose sums the accumulation cannot round, so this bound covers only rounding.
  - the 16-bit output: 2^-8 of |out| (bf16's unit roundoff: 8 significant bits; fp16's 2^-11).
  - O's accumulation: each tile's P V is summed by FP8 WGMMA (N / 32 k32 instructions, N the
    instance's keys per tile: 4 at 128, 2 at head dims 192's and 256's 64, each off by about 2^-13 of a value
    no larger than that tile's sum_j p_j |v_j|) into a fragment of its own, then added to O in fp32,
    so O is off by at most N / 32 * 2^-13 sum_j p_j |v_j| (pv_accumulation). (Chained
    into O across tiles instead, a 32768-key request with V of mean 3 came out 39% low:
    test_fp8_long_request_keeps_its_mean.)
  Every element must be within the sum. Over the whole output the P errors are taken as
  independent, each with RMS <= 2^-4 / sqrt(3) p_j |v_j| (uniform within half an ulp; their
  mean is not quite zero, a little low where p spreads over a binade, which V of mean 0 does
  not show and test_fp8_long_request_keeps_its_mean removes), so the L2 error must
  also be within 1.5 x 2^-4 / sqrt(3) ||sqrt(sum_j p_j^2 v_j^2)|| plus the other terms' norms: this
  one is what a wrong key order or scale would break first.

Dispatch: backend="auto" takes this family on sm_90 where its instance is built (an FP8 cache on
its FP8 tiles unless the wrapper has fp8_tiles=False) and the Ampere path otherwise;
backend="sm90" for a combination it does not build, or an FP8 cache with fp8_tiles=False, and an
FP8 q on the Ampere path are ArgumentErrors that name why.
"""
import math

import pytest
import torch

import flashinfer_gen
from conftest import requires_gpu
from generator import kind_prefill_sm90
from flashinfer_gen import ArgumentError
from flashinfer_gen.reference import attention_reference, fp8_tile_bounds, gather_request, quantize_q_rows
from test_prefill_gpu import (GROUPS, LAYOUTS, LENGTH_CASES, LSE_TOL, PAGE_SIZES, _ids, assert_close, check_paged,
                              check_ragged, heads_for, indptr_of, kv_values, make_paged, make_ragged, matrix_combos,
                              matrix_lengths, out_tolerance, paged_ref, paged_wrapper, plan_paged, plan_ragged,
                              poisoned, ragged_ref, ragged_wrapper, CUT_CASES, check_cut_wave)

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


@pytest.mark.parametrize("page_size", [1, 8, 16, 32, 64, 128, 3])
def test_page_sizes(page_size, workspace):
    """Pages smaller than, equal to and larger than a 128-key tile, and one that divides nothing.
    Pages of 8 to 64 keys are TMA boxes of that many rows, whose instructions the producer's four
    warps share (prefill_sm90_load.cuh): 32 a tile at head dims 128 and 256 with pages of 8 (16
    boxes of two 128-byte pieces, 8 of four), 8 an FP8 tile at head dim 128 with pages of 16."""
    check_paged(torch.bfloat16, torch.bfloat16, None, 128, "NHD", page_size, 4, [1, 64, 300, 129],
                [1, 1000, 300, 256], workspace, causal=True, seed=page_size, **SM90)
    check_paged(torch.float16, torch.float16, None, 64, "HND", page_size, 1, [77], [640], workspace,
                causal=False, seed=page_size + 1, **SM90)
    check_paged(torch.bfloat16, torch.bfloat16, None, 256, "HND", page_size, 2, [130, 5], [520, 385], workspace,
                causal=True, seed=page_size + 2, **SM90)
    check_fp8(torch.bfloat16, torch.float8_e4m3fn, "NHD", page_size, 4, [1, 200, 64], [1, 700, 256], workspace,
              causal=True, seed=page_size + 3)
    check_fp8(torch.float16, torch.float8_e5m2, "HND", page_size, 2, [130, 5], [520, 385], workspace,
              causal=False, seed=page_size + 4, d=64)
    check_fp8(torch.bfloat16, torch.float8_e4m3fn, "NHD", page_size, 4, [1, 130, 64], [1, 520, 256], workspace,
              causal=True, seed=page_size + 5, d=256)


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


@pytest.mark.parametrize("q_dtype,kv_dtype", CASES, ids=_ids)
def test_short_last_wave_cut(q_dtype, kv_dtype, workspace, monkeypatch):
    """A grid's last items cut into pieces (test_prefill_gpu.py, CUT_CASES) on this family's grids
    of one CTA per unit, head dims 192 and 256. Its kind does not take the cut (kind_prefill_sm90:
    measured mixed there), so the test allows it, for the kernels' reading of a split item
    (pieces > 1, its `partial` below 0), which must hold for every family."""
    import dataclasses
    from generator.instances import KINDS
    monkeypatch.setitem(KINDS, "prefill_sm90",
                        dataclasses.replace(KINDS["prefill_sm90"], cut_last_wave=lambda key: True))
    for n, (qo, kv, group, hk) in enumerate(CUT_CASES):
        check_cut_wave(check_paged, monkeypatch, q_dtype, kv_dtype, None, 256 if n else 192, LAYOUTS[n % 2], 16,
                       group, qo, kv, workspace, hk=hk, k_scale=0.5, v_scale=2.0, seed=60 + n, **SM90)
        check_cut_wave(check_ragged, monkeypatch, q_dtype, kv_dtype, None, 192 if n else 256, group, qo, kv,
                       workspace, hk=hk, seed=70 + n, **SM90)


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


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_running_max_jumps(q_dtype, causal, workspace):
    """Rows whose largest logit grows by large steps from tile to tile, so that O and the sums are
    rescaled by factors as small as 2^-89, and to 0 past the 300x block, while P V is issued a block
    at a time and a row's max is kept while within 2^8 (prefill_sm90_mainloop.cuh): keys (standard
    deviation 2) scaled by 64-key blocks (0.5, 0.5, 3, 3, 6, 6, 20, 20, 300, 1, then 1) make every
    row's largest logit grow in steps of about 11, 13, 62 and 1300 nats, at tiles of 64 keys (head
    dims 192, with P over S's registers, and 256) and 128. Request 1 (9 rows, 300 keys) stops before
    the 300x block, so its output still weighs the earlier tiles; request 0's rows all see it."""
    scales = torch.tensor([0.5, 0.5, 3, 3, 6, 6, 20, 20, 300, 1], dtype=torch.float64).repeat_interleave(64)
    for n, d in enumerate(HEAD_DIMS + (192,)):
        qo_lens, kv_lens = [150, 9], [640 + 77, 300]
        hq, hk = heads_for(2)
        c = make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, q_dtype, seed=20 + n)
        key_scale = torch.ones(sum(kv_lens), dtype=torch.float64)
        key_scale[:640] = scales
        key_scale[kv_lens[0]:] = scales[:kv_lens[1]]
        c["k"] = (c["k"].double() * key_scale.to(c["k"].device)[:, None, None]).to(q_dtype)
        check_running_max(c, qo_lens, q_dtype, causal, workspace, "logits growing by key block")


@pytest.mark.parametrize("step", [7.9, 8.1, 16.05])
@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_running_max_slack_edges(q_dtype, step, workspace):
    """Rows whose largest logit grows by `step` (log2 units) every 128 keys: just within the
    consumers' slack of 2^8 (the running max kept, P up to 2^7.9, a rebase every other run), just
    past it (a rebase every run), and just past what an fp16 P holds (2^16: a slack that let such a
    step through would make P infinite). Every row has the same q, and one key in each 128-key run
    a logit of 2 + j step (the rest within about 0.5 of 0), so all rows see the same steps, at tiles of 64 keys
    (head dim 256: every other tile has no new max) and 128. The logits are exact to about 2^-11
    of their size in fp16 (the steps' edges hold) and 2^-8 in bf16 (they blur; the answers must
    still be right)."""
    for n, d in enumerate(HEAD_DIMS):
        qo_lens, kv_lens = [40, 7], [5 * 128 + 33, 3 * 128]
        hq, hk = heads_for(2)
        c = make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, q_dtype, seed=40 + n)
        gen = torch.Generator().manual_seed(50 + n)
        q_row = torch.randn(d, generator=gen, dtype=torch.float64).to(q_dtype)
        c["q"] = q_row.to("cuda").expand(c["q"].shape).contiguous()
        q_row = q_row.double()
        logit_per_unit = d ** -0.5 * math.log2(math.e) * float(q_row @ q_row)  # log2 logit of key = u q_row
        k = c["k"].double().cpu() * 0.05  # background logits within about 0.5 of 0
        start = 0
        for length in kv_lens:
            for j in range(-(-length // 128)):
                key = start + 128 * j + int(torch.randint(min(128, length - 128 * j), (1,), generator=gen))
                k[key] = (2.0 + j * step) / logit_per_unit * q_row  # every KV head
            start += length
        c["k"] = k.to(q_dtype).cuda()
        check_running_max(c, qo_lens, q_dtype, bool(n % 2), workspace, f"largest logit up by {step} a run")


def check_running_max(c, qo_lens, q_dtype, causal, workspace, label):
    """The ragged case c on the sm90 family against the float64 reference, request by request (a
    wrong answer for a few rows of one request would vanish in the whole output's L2 error). The
    logits here reach 10^2..10^3 (log2 units): fp32 keeps each of their d-term sums to about
    d 2^-24 of the sum of the terms' magnitudes, and the LSE (nearly the largest logit) inherits
    that; LSE_TOL alone assumes logits of order one."""
    hq, hk, d = c["hq"], c["hk"], c["d"]
    w = ragged_wrapper(workspace, "NHD", **SM90)
    plan_ragged(w, c, q_dtype, q_dtype, causal)
    assert w.module.key.kind == "prefill_sm90"
    out, lse = poisoned(c["q"])
    w.run(c["q"], c["k"], c["v"], out=out, lse=lse)
    torch.cuda.synchronize()
    ref, ref_lse = ragged_ref(c, causal)
    q_abs, k_abs = c["q"].double().abs(), c["k"].double().abs()
    for r in range(len(qo_lens)):
        qs, ks = slice(c["qo_indptr"][r], c["qo_indptr"][r + 1]), slice(c["kv_indptr"][r], c["kv_indptr"][r + 1])
        what = f"{w.module.key.name}, {label}, causal {causal}, request {r}"
        assert_close(out[qs], None, ref[qs], ref_lse[qs], out_tolerance(q_dtype, q_dtype), what)
        terms = torch.einsum("thd,khd->thk", q_abs[qs], k_abs[ks].repeat_interleave(hq // hk, dim=1))
        bound = LSE_TOL + d * 2.0 ** -24 * terms.amax(-1) * (d ** -0.5) * math.log2(math.e)
        lse_err = (lse[qs].double() - ref_lse[qs]).abs()
        assert bool((lse_err <= bound).all()), f"lse error {float(lse_err.max()):.3e} past its bound ({what})"


@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_head_dim_192(q_dtype, workspace):
    """16-bit tiles at head dim 192: three consumer warpgroups with P over S's registers and the
    mask bounds in shared memory, 64-key tiles by TMA (pages of 16 and 64, whose boxes are three
    64-element atoms a row) or gathered (pages of 1 and 3), both layouts, GQA groups 1-8; a request
    of 1000 keys (many tiles a unit), and the soft-cap, window and scales (the soft-cap instance
    holds each row's logits through the variant)."""
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    for n, (layout, page, group) in enumerate((("NHD", 16, 4), ("HND", 1, 1), ("NHD", 3, 7), ("HND", 64, 8))):
        w, _ = check_paged(q_dtype, q_dtype, None, 192, layout, page, group, qo, kv, workspace, causal=n % 2 == 0,
                           seed=5 + n, **SM90)
        assert w.module.key.kind == "prefill_sm90" and w.module.key.head_dim == 192
    w, _ = check_paged(q_dtype, q_dtype, None, 192, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0,
                       k_scale=0.5, v_scale=2.0, sm_scale=0.1, seed=9, **SM90)
    assert w.module.key.variant == "softcap" and w.module.key.kind == "prefill_sm90"
    check_paged(q_dtype, q_dtype, None, 192, "HND", 16, 4, qo, kv, workspace, causal=True, window_left=100,
                seed=10, **SM90)


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
    """auto: this family where built (FP8 caches on its FP8 tiles), the Ampere path with
    fp8_tiles=False; what a backend cannot serve, and an unknown backend, are clear errors before
    any launch."""
    c = make_paged([3, 70], [100, 70], 16, 8, 2, 128, torch.bfloat16, torch.bfloat16)
    auto = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace)
    plan_paged(auto, c, torch.bfloat16, torch.bfloat16, causal=True)
    assert auto.module.key.kind == "prefill_sm90"
    out = auto.run(c["q"], c["cache"])
    ref, ref_lse = paged_ref(c, causal=True)
    assert_close(out, None, ref, ref_lse, out_tolerance(torch.bfloat16, torch.bfloat16), "auto")
    plan_paged(auto, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    assert auto.module.key.kind == "prefill_sm90"  # FP8 tiles
    in16 = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, fp8_tiles=False)
    plan_paged(in16, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    assert in16.module.key.kind == "prefill"  # q kept in 16 bits, K/V upcast
    plan_paged(in16, c, torch.float8_e4m3fn, torch.float8_e4m3fn, causal=True)
    assert in16.module.key.q_dtype == "e4m3"  # an FP8 q: nothing to keep in 16 bits
    fa2 = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, backend="fa2")
    with pytest.raises(ArgumentError, match="runs only on the Hopper family's FP8 tiles"):
        plan_paged(fa2, c, torch.float8_e4m3fn, torch.float8_e4m3fn, causal=True)
    forced = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, backend="sm90", fp8_tiles=False)
    with pytest.raises(ArgumentError, match="backend='sm80'"):
        plan_paged(forced, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    with pytest.raises(ArgumentError, match="backend must be one of"):
        flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, backend="cudnn")
    fa2 = flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(workspace, backend="fa2")
    fa2.plan(c["qo_indptr"], torch.tensor([0, 100, 170], dtype=torch.int32, device="cuda"), 8, 2, 128,
             q_data_type=torch.bfloat16)
    assert fa2.module.key.kind == "prefill"


# --- FP8 caches on FP8 WGMMA tiles (see the module's docstring for the tolerances) ------------------

FP8_HEAD_DIMS = (64, 128, 192, 256)  # the head dims FP8 tiles are built at (generator/kind_prefill_sm90.py: all of them)


def accumulation(d):
    """A logit's accumulation error per unit of sum_d |q_d k_jd|: D / 32 k32 instructions, each ~2^-13
    (see the docstring)."""
    return d // 32 * 2.0 ** -13


def pv_accumulation(module):
    """O's accumulation error per unit of sum_j p_j |v_j|: a tile's N / 32 k32 instructions into a
    fragment of its own, N the instance's keys per tile (the generator's, as the kernel has it)."""
    return kind_prefill_sm90.block_n(module.key) // 32 * 2.0 ** -13
FP8_CASES = ((torch.bfloat16, torch.float8_e4m3fn), (torch.float16, torch.float8_e5m2),
             (torch.bfloat16, torch.float8_e5m2), (torch.float16, torch.float8_e4m3fn))


def fp8_bounds(c, ragged, causal, k_scale, v_scale, sm_scale, soft_cap, window_left, q):
    """fp8_tile_bounds over every request of case c (paged or ragged), q the quantised q."""
    qo = c["qo_indptr"].cpu().tolist()
    parts = []
    for b in range(len(qo) - 1):
        if ragged:
            kvp = c["kv_indptr"].cpu().tolist()
            k, v = c["k"][kvp[b]:kvp[b + 1]], c["v"][kvp[b]:kvp[b + 1]]
        else:
            kvp, last, ps = c["kv_indptr"].cpu().tolist(), c["last"].cpu().tolist(), c["page_size"]
            kv_len = (kvp[b + 1] - kvp[b] - 1) * ps + last[b]
            pages = c["indices"][kvp[b]:kvp[b + 1]]
            k, v = (gather_request(t, pages, kv_len, c["layout"]) for t in (c["k"], c["v"]))
        parts.append(fp8_tile_bounds(q[qo[b]:qo[b + 1]], k, v, causal, k_scale or 1.0, v_scale or 1.0, sm_scale,
                                     soft_cap, window_left))
    return [torch.cat(t) for t in zip(*parts)]


def assert_fp8_close(out, lse, ref, ref_lse, bounds, what, module, exact_sums=False):
    """exact_sums: q and K hold values whose products and sums FP8 WGMMA adds exactly, so the
    logits carry no accumulation error and the LSE only fp32's exp2 / log2 (1e-4). module: the
    instance that ran (its head dim and keys per tile)."""
    d, pv_acc = module.key.head_dim, pv_accumulation(module)
    abs_pv, rms_pv, abs_v, logit = bounds
    if exact_sums:
        logit = torch.zeros_like(logit)
    lse_slack = 1e-4
    out64 = out.to(torch.float64)
    assert torch.isfinite(out64).all(), f"non-finite output ({what})"
    eps = accumulation(d) * logit  # a logit's accumulation error, log2 units [rows, heads]
    p_rel = 2.0 ** -4 + 2.0 * eps[..., None] * math.log(2.0)  # p_j / sum: its logit and the sum's move
    bound = (p_rel + pv_acc) * abs_pv + 2.0 ** -18 * abs_v + 2.0 ** -8 * ref.abs() + 1e-6
    err = (out64 - ref).abs()
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"an element is {worst:.2f}x its bound ({what})"
    l2 = float(torch.linalg.vector_norm(out64 - ref))
    l2_bound = float(1.5 * 2.0 ** -4 / math.sqrt(3.0) * torch.linalg.vector_norm(rms_pv)
                     + 2.0 ** -8 * torch.linalg.vector_norm(ref) + 2.0 ** -18 * torch.linalg.vector_norm(abs_v)
                     + torch.linalg.vector_norm((2.0 * eps[..., None] * math.log(2.0) + pv_acc) * abs_pv))
    assert l2 <= l2_bound, f"L2 error {l2:.4g} > {l2_bound:.4g} ({what})"
    assert torch.isfinite(lse).all(), f"non-finite lse ({what})"
    lse_err = float(((lse.double() - ref_lse).abs() - (eps + lse_slack)).max()) if lse.numel() else -1.0
    assert lse_err <= 0.0, f"lse off by {lse_err:.3g} more than its bound ({what})"
    return l2 / max(float(torch.linalg.vector_norm(ref)), 1e-30)


def small_integers(c, seed):
    """q in {+-1, +-2, +-4} with a 4 in every row (so its codes are 112, 224, 448: q * 448 / 4), K
    and V in {-2 .. 2}: every q.k product is a multiple of 16 up to 896 and a logit's sum stays
    below 2^17, which the accumulation's ~14 bits hold exactly (its step at 2^17 is 2^4)."""
    gen = torch.Generator().manual_seed(seed)
    q = c["q"]
    powers = 2.0 ** torch.randint(0, 3, q.shape, generator=gen) * (torch.randint(0, 2, q.shape, generator=gen) * 2 - 1)
    powers[..., 0] = 4.0
    q.copy_(powers.to(q.dtype))
    for t in (c["k"], c["v"]):
        t.copy_(torch.randint(-2, 3, t.shape, generator=gen).to(torch.float32).to(t.dtype))


def fp8_q_ref(c, q_scale):
    """q as the kernel reads it: quantised per row (a 16-bit q), or an e4m3 q's codes times q_scale."""
    if c["q"].element_size() == 2:
        return quantize_q_rows(c["q"])
    return c["q"].double() * (1.0 if q_scale is None else float(q_scale))


def check_fp8(q_dtype, kv_dtype, layout, page_size, group, qo_lens, kv_lens, ws, hk=None, causal=False,
              combined=False, k_scale=None, v_scale=None, soft_cap=None, window_left=-1, sm_scale=None, seed=0,
              ragged=False, d=128, exact_sums=False, q_scale=None, o_dtype=None):
    """An FP8 cache on FP8 tiles against the derived bounds; q_dtype e4m3: q given in FP8, with
    q_scale, writing o_dtype (None: the plan's default, bf16)."""
    hq, hk = heads_for(group, hk)
    opts = dict(window_left=window_left, logits_soft_cap=soft_cap, sm_scale=sm_scale)
    if o_dtype is not None:
        opts["o_data_type"] = o_dtype
    if ragged:
        c = make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, kv_dtype, seed)
        w = ragged_wrapper(ws, "NHD", backend="sm90")
        plan_ragged(w, c, q_dtype, kv_dtype, causal, **opts)
    else:
        c = make_paged(qo_lens, kv_lens, page_size, hq, hk, d, q_dtype, kv_dtype, layout, combined, seed)
        w = paged_wrapper(ws, layout, backend="sm90")
        plan_paged(w, c, q_dtype, kv_dtype, causal, **opts)
    assert w.module.key.kind == "prefill_sm90" and w.module.key.conversion == "hardware", w.module.key.name
    out_dtype = q_dtype if q_dtype.itemsize == 2 else (o_dtype or torch.bfloat16)
    if exact_sums:
        small_integers(c, seed)
    out, lse = poisoned(c["q"], out_dtype)
    if ragged:
        w.run(c["q"], c["k"], c["v"], q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, out=out, lse=lse)
    else:
        w.run(c["q"], c["cache"], q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, out=out, lse=lse)
    torch.cuda.synchronize()
    q_ref = fp8_q_ref(c, q_scale)
    ref_fn = ragged_ref if ragged else paged_ref
    ref, ref_lse = ref_fn(c, causal, k_scale, v_scale, sm_scale, soft_cap, window_left, q=q_ref)
    bounds = fp8_bounds(c, ragged, causal, k_scale, v_scale, sm_scale, soft_cap, window_left, q_ref)
    what = (f"{w.module.key.name}, {'ragged' if ragged else f'{layout}, page {page_size}'}, hq {hq}/hk {hk}, "
            f"causal {causal}, window {window_left}, q_scale {q_scale}, qo {list(qo_lens)}, kv {list(kv_lens)}")
    return assert_fp8_close(out, lse, ref, ref_lse, bounds, what, w.module, exact_sums), c, w


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype", FP8_CASES, ids=_ids)
def test_fp8_matrix(q_dtype, kv_dtype, d, causal, workspace):
    """Every (layout, page size 1/16/32, GQA group 1/4/7/8) over the FP8 cases, as the 16-bit matrix."""
    kv_index, d_index = FP8_CASES.index((q_dtype, kv_dtype)), FP8_HEAD_DIMS.index(d)
    for n, (layout, page_size, group) in enumerate(matrix_combos(kv_index, d_index, causal)):
        seed = 2000 + 100 * kv_index + 10 * n + int(causal) + 5000 * d_index
        qo_lens, kv_lens = matrix_lengths(torch.Generator().manual_seed(seed), causal)
        check_fp8(q_dtype, kv_dtype, layout, page_size, group, qo_lens, kv_lens, workspace, causal=causal,
                  k_scale=0.75, v_scale=1.5, seed=seed, d=d)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
@pytest.mark.parametrize("lens", list(LENGTH_CASES.values()), ids=list(LENGTH_CASES))
def test_fp8_lengths(lens, d, causal, workspace):
    qo_lens, kv_lens = lens
    for n, (kv_dtype, layout, page_size, group) in enumerate(((torch.float8_e4m3fn, "NHD", 16, 4),
                                                              (torch.float8_e5m2, "HND", 1, 7),
                                                              (torch.float8_e4m3fn, "NHD", 64, 8))):
        check_fp8(torch.bfloat16, kv_dtype, layout, page_size, group, qo_lens, kv_lens, workspace, causal=causal,
                  seed=n, d=d)


@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype", FP8_CASES[:2], ids=_ids)
def test_fp8_window_softcap_scales_ragged_split(q_dtype, kv_dtype, d, workspace):
    """Soft-cap (at head dim 128, where the test build has it for both cases; at 64, 192 and 256:
    test_fp8_softcap_at_head_dims_64_192_256) with sm_scale and the scales, a window, the combined
    cache tensor, ragged K/V, split-KV."""
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    if d == 128:
        check_fp8(q_dtype, kv_dtype, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0, k_scale=0.5,
                  v_scale=2.0, sm_scale=0.1)
    else:
        check_fp8(q_dtype, kv_dtype, "NHD", 16, 4, qo, kv, workspace, causal=True, k_scale=0.5, v_scale=2.0,
                  sm_scale=0.1, d=d)
    check_fp8(q_dtype, kv_dtype, "HND", 32, 8, qo, kv, workspace, causal=True, window_left=40, seed=1, d=d)
    check_fp8(q_dtype, kv_dtype, "NHD", 64, 4, qo, kv, workspace, combined=True, causal=False, seed=2, d=d)
    for causal in (False, True):
        check_fp8(q_dtype, kv_dtype, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17], workspace,
                  causal=causal, ragged=True, k_scale=0.75, v_scale=1.5, seed=3 + causal, d=d)
        _, c, w = check_fp8(q_dtype, kv_dtype, "NHD", 16, 4, [16], [32768], workspace, hk=8, causal=causal,
                            k_scale=0.5, v_scale=2.0, seed=5 + causal, d=d)
        assert w._plan["schedule"].num_partial > 0, "batch 1 at 32k keys must be split"


def test_fp8_softcap_at_head_dims_64_192_256(workspace):
    """Soft-cap on FP8 tiles at head dim 64: two consumer warpgroups and persistent CTAs, unlike the
    default variant's three; at 192 and 256 the two consumers of every FP8 instance there, with
    64-key tiles, P V by chunks of O (96 and 32 columns) and the mask bounds in shared memory; 192's
    rows are three 64-byte swizzle atoms (the test build has each for a bf16 q and an e4m3 cache).
    Forced to the Hopper family, so that a fallback cannot pass it."""
    bf16, e4m3 = torch.bfloat16, torch.float8_e4m3fn
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    _, _, w = check_fp8(bf16, e4m3, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0, k_scale=0.5,
                        v_scale=2.0, sm_scale=0.1, d=64)
    assert w.module.key.variant == "softcap" and w._plan["params"].work.ctas, "persistent CTAs"
    check_fp8(bf16, e4m3, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17], workspace, causal=False,
              ragged=True, soft_cap=20.0, seed=1, d=64)
    for d in (192, 256):
        for causal, layout, page in ((True, "NHD", 16), (False, "HND", 1)):
            _, _, w = check_fp8(bf16, e4m3, layout, page, 4, qo, kv, workspace, causal=causal, soft_cap=30.0,
                                k_scale=0.5, v_scale=2.0, sm_scale=0.1, seed=2 + causal + d, d=d)
            assert w.module.key.variant == "softcap" and w.module.key.kind == "prefill_sm90"
            assert w.module.key.head_dim == d
        check_fp8(bf16, e4m3, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17], workspace,
                  causal=True, ragged=True, soft_cap=20.0, window_left=100, seed=4 + d, d=d)


@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype", FP8_CASES[:2], ids=_ids)
def test_fp8_lse_where_the_sums_are_exact(q_dtype, kv_dtype, d, workspace):
    """Values whose logits FP8 WGMMA sums exactly (small_integers): the LSE within 1e-4 of the
    reference, so the looser bound elsewhere is the accumulation's rounding and nothing else."""
    for n, (layout, page_size, causal, ragged) in enumerate((("NHD", 16, True, False), ("HND", 1, False, False),
                                                             (None, None, True, True))):
        check_fp8(q_dtype, kv_dtype, layout, page_size, 4, [1, 64, 300, 7], [1000, 129, 300, 7], workspace,
                  causal=causal, ragged=ragged, k_scale=0.5, v_scale=2.0, seed=20 + n, exact_sums=True, d=d)


def test_fp8_quantisation_error_is_what_the_readme_says(workspace):
    """The error FP8 tiles add (q per row and P in e4m3) against the float64 reference on the
    *unquantised* q: bf16 q, e4m3 cache, 32/8 heads, causal. The README quotes the printed
    figures. q's rounding moves each logit by up to 2^-4 of each q.k term, an error whose effect
    grows with the logits' spread (here the random data's, about 2 nats), so this is only a gross
    bound, 1/4, that a wrong scale or key order breaks; the derived bounds are check_fp8's."""
    rel, c, w = check_fp8(torch.bfloat16, torch.float8_e4m3fn, "NHD", 16, 4, [512, 512], [512, 2048], workspace,
                          hk=8, causal=True, seed=11)
    out = w.run(c["q"], c["cache"])
    ref, _ = paged_ref(c, causal=True)
    rel_unquantised = float(torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref))
    print(f"FP8 tiles, bf16 q / e4m3 cache: rel. L2 error {rel:.4f} against the quantised q, "
          f"{rel_unquantised:.4f} against q itself")
    assert rel_unquantised < 0.25


def test_fp8_cuda_graph_and_device_scales(workspace):
    """A captured FP8 run replays to the right answer and follows k_scale / v_scale tensors."""
    c = make_paged([16, 1, 100, 0], [4096, 1, 4000, 3], 16, 32, 8, 128, torch.bfloat16, torch.float8_e4m3fn)
    w = paged_wrapper(workspace, backend="sm90")
    plan_paged(w, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    ks, vs = torch.tensor([0.5], device="cuda"), torch.tensor([2.0], device="cuda")
    out, lse = poisoned(c["q"])
    w.run(c["q"], c["cache"], k_scale=ks, v_scale=vs, out=out, lse=lse)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(c["q"], c["cache"], k_scale=ks, v_scale=vs, out=out, lse=lse)
    q_ref = quantize_q_rows(c["q"])
    for k_scale, v_scale in ((0.5, 2.0), (0.125, 0.75)):
        ks.fill_(k_scale)
        vs.fill_(v_scale)
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_lse = paged_ref(c, True, k_scale, v_scale, q=q_ref)
        bounds = fp8_bounds(c, False, True, k_scale, v_scale, None, None, -1, q_ref)
        assert_fp8_close(out, lse, ref, ref_lse, bounds, f"graph replay, k_scale {k_scale}", w.module)


@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
def test_fp8_long_request_keeps_its_mean(d, workspace):
    """16 requests x 128 queries on 32768 keys each (64 work items x 8 KV heads: not split), V of
    mean 3, and K's rows all equal: every logit of a row is then the same, P is exactly 2^8 for
    every key (nothing for e4m3 to round) and O the plain average of V, so what is left is the
    accumulation, where a truncation would add up, one-signed: each tile's P V in FP8 WGMMA (N / 32
    k32 instructions, each ~2^-13 of at most the tile's sum p|v|: pv_accumulation), kv / N fp32
    adds of the tiles into O (2^-24 each, relative), and the bf16 output (2^-8); besides, the fp32
    p that the row sum takes is exp2 of 8 plus the rounding of s * scale - max * scale, at most
    2^-24 of a logit below 2^6 (log2 units, random data), so p / 2^8 - 1 < 2^-18. Relative
    to the mean of |v| (sum p|v| / sum p), each element within their sum, and the mean signed
    error within it times the largest mean|v| / |reference|; chained across tiles instead, O came
    out 39% low (bench/check_fp8_accumulation.py, 023716c). Random K elsewhere: check_fp8's bounds."""
    batch, qo, kv, hq, hk = 16, 128, 32768, 32, 8
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(batch * qo, hq, d, device="cuda", generator=gen).to(torch.bfloat16)
    k_row = torch.randn(1, hk, d, device="cuda", generator=gen)
    k = k_row.expand(batch * kv, hk, d).contiguous().to(torch.float8_e4m3fn)
    v = (torch.randn(batch * kv, hk, d, device="cuda", generator=gen) + 3.0).to(torch.float8_e4m3fn)
    c = dict(q=q, k=k, v=v, qo_indptr=torch.arange(0, batch * qo + 1, qo, dtype=torch.int32, device="cuda"),
             kv_indptr=torch.arange(0, batch * kv + 1, kv, dtype=torch.int32, device="cuda"), hq=hq, hk=hk, d=d)
    w = ragged_wrapper(workspace, "NHD", backend="sm90")
    plan_ragged(w, c, torch.bfloat16, torch.float8_e4m3fn)
    assert w._plan["schedule"].num_partial == 0, "the requests must not be split (the point of the test)"
    out, lse = poisoned(q)
    w.run(q, k, v, out=out, lse=lse)
    torch.cuda.synchronize()
    tiles = kv // kind_prefill_sm90.block_n(w.module.key)
    rel_bound = pv_accumulation(w.module) + tiles * 2.0 ** -24 + 2.0 ** -8 + 2.0 ** -18
    for b in (0, batch - 1):  # two requests: the float64 reference of one is 1 GB of logits
        qs, ks = slice(b * qo, (b + 1) * qo), slice(b * kv, (b + 1) * kv)
        q_ref = quantize_q_rows(q[qs])
        ref, _ = attention_reference(q_ref, k[ks], v[ks])
        # each element: its own bound (sum p|v| / sum p = the mean of |v|, per head and column)
        mean_abs_v = v[ks].double().abs().mean(0).repeat_interleave(hq // hk, 0)  # [hq, d]
        err = (out[qs].double() - ref).abs()
        worst = float((err / (rel_bound * mean_abs_v)).max())
        bias = float(((out[qs].double() - ref) / ref).mean())
        bias_bound = rel_bound * float((mean_abs_v / ref.abs()).max())
        print(f"request {b}: mean signed rel. error {bias:+.2e} (bound {bias_bound:.2e}), worst element "
              f"{worst:.2f}x its bound")
        assert torch.isfinite(out[qs]).all(), f"request {b}: non-finite output"
        assert worst <= 1.0, f"request {b}: an element is {worst:.2f}x its accumulation bound"
        assert abs(bias) <= bias_bound, f"request {b}: O is off by {bias:+.3e} on average"


# --- q given in e4m3 (q_scale, o_data_type) ------------------------------------------------------

FP8_Q_CASES = ((torch.float8_e4m3fn, torch.bfloat16), (torch.float8_e5m2, torch.float16),
               (torch.float8_e4m3fn, torch.float16), (torch.float8_e5m2, torch.bfloat16))  # (kv, out)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", FP8_HEAD_DIMS)
@pytest.mark.parametrize("kv_dtype,o_dtype", FP8_Q_CASES, ids=_ids)
def test_fp8_q_matrix(kv_dtype, o_dtype, d, causal, workspace):
    """An e4m3 q (codes of N(0, 1), q_scale 0.5; 0.25 in the ragged batch) with each cache and
    output dtype: the (layout, page size, group) rotation, then a ragged batch with every length
    case."""
    kv_index, d_index = FP8_Q_CASES.index((kv_dtype, o_dtype)), FP8_HEAD_DIMS.index(d)
    for n, (layout, page_size, group) in enumerate(matrix_combos(kv_index, 2 + d_index, causal)):
        seed = 3000 + 100 * kv_index + 10 * n + int(causal) + 5000 * d_index
        qo_lens, kv_lens = matrix_lengths(torch.Generator().manual_seed(seed), causal)
        check_fp8(torch.float8_e4m3fn, kv_dtype, layout, page_size, group, qo_lens, kv_lens, workspace, causal=causal,
                  q_scale=0.5, k_scale=0.75, v_scale=1.5, o_dtype=o_dtype, seed=seed, d=d)
    check_fp8(torch.float8_e4m3fn, kv_dtype, None, None, 4, [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17],
              workspace, causal=causal, ragged=True, q_scale=0.25, o_dtype=o_dtype, seed=3900 + kv_index, d=d)


def test_fp8_q_window_softcap_split_exact(workspace):
    """An e4m3 q: window, soft-cap (with sm_scale), split-KV, the default output dtype (bf16), and
    the LSE on values whose sums the accumulation keeps exact."""
    e4m3 = torch.float8_e4m3fn
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    check_fp8(e4m3, e4m3, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0, sm_scale=0.1, q_scale=2.0,
              o_dtype=torch.bfloat16)
    check_fp8(e4m3, torch.float8_e5m2, "HND", 32, 8, qo, kv, workspace, causal=True, window_left=40, q_scale=0.5,
              seed=1)
    _, _, w = check_fp8(e4m3, e4m3, "NHD", 16, 4, [16], [32768], workspace, hk=8, causal=False, q_scale=0.125,
                        v_scale=2.0, o_dtype=torch.float16, seed=2)
    assert w._plan["schedule"].num_partial > 0, "batch 1 at 32k keys must be split"
    check_fp8(e4m3, e4m3, "NHD", 16, 4, [1, 64, 300, 7], [1000, 129, 300, 7], workspace, causal=True, q_scale=0.5,
              seed=3, exact_sums=True)


def test_fp8_q_cuda_graph_device_scale_and_bad_inputs(workspace):
    """A captured run with q_scale as a device tensor follows its value; out's dtype is the plan's
    o_data_type; what does not fit an FP8 q is an ArgumentError before any launch."""
    e4m3 = torch.float8_e4m3fn
    c = make_paged([16, 1, 100, 0], [4096, 1, 4000, 3], 16, 32, 8, 128, e4m3, e4m3)
    w = paged_wrapper(workspace, backend="sm90")
    plan_paged(w, c, e4m3, e4m3, causal=True, o_data_type=torch.float16)
    qs = torch.tensor([0.5], device="cuda")
    out, lse = poisoned(c["q"], torch.float16)
    w.run(c["q"], c["cache"], q_scale=qs, out=out, lse=lse)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(c["q"], c["cache"], q_scale=qs, out=out, lse=lse)
    for q_scale in (0.5, 0.0625):
        qs.fill_(q_scale)
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        q_ref = fp8_q_ref(c, q_scale)
        ref, ref_lse = paged_ref(c, True, q=q_ref)
        bounds = fp8_bounds(c, False, True, None, None, None, None, -1, q_ref)
        assert_fp8_close(out, lse, ref, ref_lse, bounds, f"graph replay, q_scale {q_scale}", w.module)
    assert w.run(c["q"], c["cache"], q_scale=0.5).dtype == torch.float16
    with pytest.raises(ArgumentError, match="out must be .* torch.float16"):
        w.run(c["q"], c["cache"], out=torch.empty(c["q"].shape, dtype=torch.bfloat16, device="cuda"))
    with pytest.raises(ArgumentError, match="q has dtype torch.bfloat16"):
        w.run(c["q"].to(torch.bfloat16), c["cache"])
    for odd in (torch.empty(c["q"].shape[0], c["q"].shape[1], 130, dtype=e4m3, device="cuda")[..., 1:129],
                torch.empty(c["q"].shape[0], c["q"].shape[1], 130, dtype=e4m3, device="cuda")[..., :128]):
        # an unaligned address; an aligned one with a 130-byte head stride (even, not a multiple of 4)
        with pytest.raises(ArgumentError, match="4-byte aligned"):
            w.run(odd, c["cache"])
    for bad, match in ((dict(o_data_type=e4m3), "float16 or bfloat16 for an FP8 q"),
                       (dict(q_data_type=torch.float8_e5m2), "q_data_type must be"),
                       (dict(kv_data_type=torch.bfloat16), "needs an FP8 KV cache")):
        args = {**dict(q_data_type=e4m3, kv_data_type=e4m3), **bad}
        with pytest.raises(ArgumentError, match=match):
            w.plan(c["qo_indptr"], c["kv_indptr"], c["indices"], c["last"], c["hq"], c["hk"], c["d"], c["page_size"],
                   causal=True, **args)


def test_fp8_q_graph_wrapper_follows_each_plan(workspace):
    """use_cuda_graph=True with an e4m3 q: captured once, then re-planned with new lengths and
    page tables from a pool (one step with a 20000-key request among short ones: split-KV), each
    replay into NaN-poisoned static buffers within check_fp8's bounds, rows past the plan's
    untouched, out in the plan's o_data_type."""
    e4m3, batch, hq, hk, d, page, rows, pool = torch.float8_e4m3fn, 3, 8, 2, 128, 16, 96, 1400
    gen = torch.Generator().manual_seed(9)
    k, v = kv_values(gen, (pool, page, hk, d), e4m3), kv_values(gen, (pool, page, hk, d), e4m3)
    bufs = dict(qo_indptr_buf=torch.empty(batch + 1, dtype=torch.int32, device="cuda"),
                paged_kv_indptr_buf=torch.empty(batch + 1, dtype=torch.int32, device="cuda"),
                paged_kv_indices_buf=torch.empty(pool, dtype=torch.int32, device="cuda"),
                paged_kv_last_page_len_buf=torch.empty(batch, dtype=torch.int32, device="cuda"))
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", True, **bufs, backend="sm90")
    q_buf = torch.randn(rows, hq, d, generator=gen).to(e4m3).cuda()
    out, lse = poisoned(q_buf, torch.float16)

    def plan(qo_lens, kv_lens):
        pages = [-(-n // page) for n in kv_lens]
        c = dict(q=None, k=k, v=v, qo_indptr=indptr_of(qo_lens).cuda(), kv_indptr=indptr_of(pages).cuda(),
                 indices=torch.randperm(pool, generator=gen)[: sum(pages)].to(torch.int32).cuda(),
                 last=torch.tensor([n - (p - 1) * page for n, p in zip(kv_lens, pages)], dtype=torch.int32).cuda(),
                 layout="NHD", page_size=page, hq=hq, hk=hk, d=d)
        w.plan(c["qo_indptr"], c["kv_indptr"], c["indices"], c["last"], hq, hk, d, page, causal=True,
               q_data_type=e4m3, kv_data_type=e4m3, o_data_type=torch.float16)
        return c

    plan([rows - 40, 30, 10], [500, 30, 700])  # the first plan fixes the capacity: `rows` tokens
    w.run(q_buf, (k, v), q_scale=0.5, out=out, lse=lse)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q_buf, (k, v), q_scale=0.5, out=out, lse=lse)
    for qo_lens, kv_lens in (([5, 1, 7], [20000, 3, 40]), ([30, 60, 6], [30, 900, 16]),
                             ([rows - 2, 1, 1], [96, 1, 2])):
        c = plan(qo_lens, kv_lens)
        total = sum(qo_lens)
        q_buf.copy_(torch.randn(q_buf.shape, generator=gen).to(e4m3))
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        c["q"] = q_buf[:total]
        q_ref = fp8_q_ref(c, 0.5)
        ref, ref_lse = paged_ref(c, True, q=q_ref)
        bounds = fp8_bounds(c, False, True, None, None, None, None, -1, q_ref)
        assert_fp8_close(out[:total], lse[:total], ref, ref_lse, bounds, f"graph step qo {qo_lens} kv {kv_lens}",
                         w.module)
        assert out[total:].isnan().all() and lse[total:].isnan().all(), "rows past the plan's were written"


def test_fp8_grid_in_l2_sections(workspace, monkeypatch):
    """The FP8 three-consumer instances run one CTA per unit in plan()'s grid order: with sections
    of 3 KV heads of 8 (3, 3, 2), every unit once, paged and ragged, a bf16 and an e4m3 q, and a
    CUDA-graph wrapper re-planned between replays."""
    import flashinfer_gen.prefill as prefill
    monkeypatch.setattr(prefill, "l2_heads_per_section", lambda *args: 3)
    bf16, e4m3 = torch.bfloat16, torch.float8_e4m3fn
    _, _, w = check_fp8(bf16, e4m3, "NHD", 16, 4, [1, 64, 300, 129], [1, 1000, 300, 256], workspace, hk=8,
                        causal=True, seed=21)
    assert w._plan["params"].work.ctas == 0, "a persistent FP8 instance: the grid order is not what runs"
    check_fp8(e4m3, e4m3, None, None, 4, [1, 7, 64, 300], [1, 77, 1000, 300], workspace, hk=8, ragged=True,
              q_scale=0.5, seed=22)
    monkeypatch.setattr(prefill, "l2_heads_per_section", lambda *args: 1)
    test_fp8_q_graph_wrapper_follows_each_plan(workspace)


@pytest.mark.parametrize("ctas", [1, 2, 3])
def test_persistent_ctas_walk_many_items(ctas, workspace, monkeypatch):
    """A persistent instance (head dim <= 128) with its grid capped at 1-3 CTAs: each CTA walks many
    work units, so its rings wrap within and across items, for TMA and gathered tiles (page 3),
    16-bit and FP8 caches (FP8 persistent with the soft-cap), an e4m3 q, split-KV (with pieces that have no keys), and a CUDA-graph
    wrapper, against the same references and bounds as the uncapped tests. A wrong ring count or
    a barrier some threads skip hangs rather than fails here (the device runs are under a
    timeout); the shared-memory hazards between units (Q and q_scale rewritten, the gather's row
    addresses) are racecheck's, in bench/sanitize_prefill.py."""
    import flashinfer_gen.prefill as prefill
    monkeypatch.setattr(prefill, "MAX_PERSISTENT_CTAS", ctas)
    bf16, f16, e4m3 = torch.bfloat16, torch.float16, torch.float8_e4m3fn
    w, _ = check_paged(bf16, bf16, None, 128, "NHD", 16, 4, [1, 64, 300, 129, 7], [1, 1000, 300, 256, 900], workspace,
                       causal=True, seed=ctas, **SM90)
    assert w._plan["params"].work.ctas == ctas
    check_paged(f16, f16, None, 64, "HND", 3, 7, [77, 5, 30], [640, 9, 300], workspace, causal=False, seed=ctas, **SM90)
    # split pieces without keys (zero tiles: O = 0, LSE = -inf for the merge) among a CTA's units on
    # any GPU: the schedule made as for 132 resident CTAs (17 pieces of 2048 keys for 32768)
    with monkeypatch.context() as m:
        m.setattr(prefill, "resident_ctas", lambda module, device: 132)
        w, _ = check_ragged(bf16, bf16, None, 128, 8, [16], [32768], workspace, causal=True, hk=8, seed=ctas, **SM90)
    assert (w._plan["schedule"].kv_end <= w._plan["schedule"].kv_begin).any(), "no empty piece"
    # FP8 instances with three consumers (the default variant) run one CTA per unit, so the cap
    # leaves them as they are; the soft-cap ones, with two consumers, are the persistent FP8 ones
    check_fp8(bf16, e4m3, "NHD", 16, 4, [1, 64, 300, 7], [1000, 129, 300, 7], workspace, causal=True, seed=ctas)
    check_fp8(e4m3, torch.float8_e5m2, "HND", 3, 8, [33, 100], [99, 700], workspace, causal=True, q_scale=0.5,
              o_dtype=f16, seed=ctas)
    check_fp8(bf16, e4m3, "HND", 3, 4, [1, 64, 300, 7], [1000, 129, 300, 7], workspace, causal=True, soft_cap=30.0,
              seed=ctas)
    check_fp8(e4m3, e4m3, "NHD", 16, 8, [33, 100], [99, 700], workspace, causal=True, soft_cap=30.0, q_scale=0.5,
              o_dtype=bf16, seed=ctas)
    check_fp8(bf16, e4m3, "NHD", 16, 4, [1, 64, 300, 7], [1000, 129, 300, 7], workspace, causal=True, soft_cap=30.0,
              seed=ctas, d=64)  # 64-byte swizzled rows through the persistent rings
    test_fp8_q_graph_wrapper_follows_each_plan(workspace)
