"""Batch prefill (paged and ragged KV) on the GPU against a float64 reference built from the same
dequantised KV values (flashinfer_gen.reference.prefill_reference / ragged_reference).

Tolerances (relative L2 error of the output), as for decode: the kernel computes q.k and p.v with
fp32 accumulation, rounds P to the mma element type and the output to the q dtype. The error is
dominated by those two roundings: unit roundoff 2^-8 for bf16, 2^-11 for fp16. Bound: 1e-2
when either P or the output is bf16, 2e-3 when both are fp16 (about 4x the rounding error
seen, far below what a wrong index, a wrong mask or a missed token gives, which is O(1)).
LSE (base 2) comes from fp32 logits of exactly representable inputs: absolute 1e-3, FP8 included.

Masks: query i (0-based) of a request with qo_len n and kv_len m sits at position m - n + i;
causal keeps keys j <= m - n + i, window_left w >= 0 keeps keys j >= m - n + i - w (with or
without causal). Outputs and LSE are poisoned with NaN before every run, so an unwritten element
fails; relative_error gives inf for any NaN/Inf.

The wrappers are looked up on flashinfer_gen when a test runs, so this file collects (and, without
a GPU, skips) before flashinfer_gen/prefill.py exists.
"""

import pytest
import torch

import flashinfer_gen
from conftest import requires_gpu
from gpu_instances import kv_cases
from flashinfer_gen import ArgumentError, InstanceNotBuiltError
from flashinfer_gen.reference import prefill_reference, ragged_reference, relative_error
from generator import kind_prefill

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]


KV_CASES = kv_cases()
CONVERSIONS = sorted({c for _, _, c in KV_CASES if c})
HEAD_DIMS = (64, 128, 256)
LAYOUTS = ("NHD", "HND")
PAGE_SIZES = (1, 16, 32)
GROUPS = (1, 4, 7, 8)
LSE_TOL = 1e-3
NAN_E4M3 = 0x7F  # an e4m3fn NaN code
_ids = lambda x: str(x).replace("torch.", "")  # noqa: E731


# This file tests the Ampere-path family (mma.sync) on every arch, the H100 included, where
# backend="auto" would pick the Hopper family for 16-bit caches; test_prefill_sm90_gpu.py runs
# these checks with backend="sm90".
def paged_wrapper(*args, backend="sm80", **kwargs):
    return flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(*args, backend=backend, **kwargs)


def ragged_wrapper(*args, backend="sm80", **kwargs):
    return flashinfer_gen.BatchPrefillWithRaggedKVCacheWrapper(*args, backend=backend, **kwargs)


def out_tolerance(q_dtype, kv_dtype):
    bf16_involved = q_dtype == torch.bfloat16 or kv_dtype == torch.bfloat16
    return 1e-2 if bf16_involved else 2e-3


def heads_for(group, hk=None):
    """(num_qo_heads, num_kv_heads): 2 KV heads, except one for group 7 (7 q heads)."""
    hk = hk if hk is not None else (1 if group == 7 else 2)
    return hk * group, hk


def indptr_of(lens):
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lens, dtype=torch.int64).cumsum(0)]).to(
        torch.int32)


def kv_values(gen, shape, kv_dtype):
    return (torch.randn(shape, generator=gen) * 2).to("cuda").to(kv_dtype)


def make_paged(qo_lens, kv_lens, page_size, hq, hk, d, q_dtype, kv_dtype, layout="NHD", combined=False, seed=0):
    """q [sum(qo_lens), hq, d]; a paged cache whose pages are a random, non-contiguous draw from a
    larger pool. Returns a dict of everything plan()/run() and the reference need."""
    gen = torch.Generator().manual_seed(seed)
    kv = torch.tensor(kv_lens, dtype=torch.int64)
    pages_per = (kv + page_size - 1) // page_size
    kv_indptr = indptr_of(pages_per.tolist())
    total = int(kv_indptr[-1])
    num_pages = total + 11
    indices = torch.randperm(num_pages, generator=gen)[:total].to(torch.int32)
    last = (kv - (pages_per - 1) * page_size).to(torch.int32)
    shape = (num_pages, page_size, hk, d) if layout == "NHD" else (num_pages, hk, page_size, d)
    if combined:
        cache = kv_values(gen, (num_pages, 2) + shape[1:], kv_dtype)
        k, v = cache[:, 0], cache[:, 1]
    else:
        k, v = kv_values(gen, shape, kv_dtype), kv_values(gen, shape, kv_dtype)
        cache = (k, v)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to("cuda").to(q_dtype)
    return dict(q=q, k=k, v=v, cache=cache, qo_indptr=indptr_of(qo_lens).cuda(), kv_indptr=kv_indptr.cuda(),
                indices=indices.cuda(), last=last.cuda(), layout=layout, page_size=page_size, hq=hq, hk=hk, d=d)


def make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, kv_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = kv_values(gen, (sum(kv_lens), hk, d), kv_dtype)
    v = kv_values(gen, (sum(kv_lens), hk, d), kv_dtype)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to("cuda").to(q_dtype)
    return dict(q=q, k=k, v=v, qo_indptr=indptr_of(qo_lens).cuda(), kv_indptr=indptr_of(kv_lens).cuda(), hq=hq,
                hk=hk, d=d)


def plan_paged(w, c, q_dtype, kv_dtype, causal=False, qo_on_cpu=False, **opts):
    qo_indptr = c["qo_indptr"].cpu() if qo_on_cpu else c["qo_indptr"]
    w.plan(qo_indptr, c["kv_indptr"], c["indices"], c["last"], c["hq"], c["hk"], c["d"], c["page_size"],
           causal=causal, q_data_type=q_dtype, kv_data_type=kv_dtype, **opts)


def plan_ragged(w, c, q_dtype, kv_dtype, causal=False, **opts):
    w.plan(c["qo_indptr"], c["kv_indptr"], c["hq"], c["hk"], c["d"], causal=causal, q_data_type=q_dtype,
           kv_data_type=kv_dtype, **opts)


def poisoned(q, out_dtype=None):
    """NaN out (q's dtype, or out_dtype) and lse of q's shape."""
    return (torch.full_like(q, float("nan"), dtype=out_dtype or q.dtype),
            torch.full(q.shape[:2], float("nan"), device=q.device))


def paged_ref(c, causal=False, k_scale=None, v_scale=None, sm_scale=None, soft_cap=None, window_left=-1, q=None):
    return prefill_reference(c["q"] if q is None else q, c["k"], c["v"], c["qo_indptr"], c["kv_indptr"],
                             c["indices"], c["last"], c["layout"], k_scale or 1.0, v_scale or 1.0, sm_scale,
                             soft_cap, window_left, causal)


def ragged_ref(c, causal=False, k_scale=None, v_scale=None, sm_scale=None, soft_cap=None, window_left=-1, q=None):
    return ragged_reference(c["q"] if q is None else q, c["k"], c["v"], c["qo_indptr"], c["kv_indptr"],
                            k_scale or 1.0, v_scale or 1.0, sm_scale, soft_cap, window_left, causal)


def assert_close(out, lse, ref, ref_lse, tol, what):
    """out within `tol` (relative L2) of ref and, unless lse is None, lse within LSE_TOL of ref_lse."""
    assert out.shape == ref.shape, f"out shape {tuple(out.shape)} != {tuple(ref.shape)} ({what})"
    if ref.numel() == 0:
        return
    err = relative_error(out, ref)
    assert err < tol, f"output rel. error {err:.3e} >= {tol} ({what})"
    if lse is not None:
        assert lse.shape == ref_lse.shape, f"lse shape {tuple(lse.shape)} != {tuple(ref_lse.shape)} ({what})"
        lse_err = float((lse.double() - ref_lse).abs().max()) if torch.isfinite(lse).all() else float("inf")
        assert lse_err < LSE_TOL, f"lse abs. error {lse_err:.3e} >= {LSE_TOL} ({what})"


def check_paged(q_dtype, kv_dtype, conv, d, layout, page_size, group, qo_lens, kv_lens, ws, hk=None, causal=False,
                combined=False, k_scale=None, v_scale=None, soft_cap=None, window_left=-1, sm_scale=None, seed=0,
                qo_on_cpu=False, backend="sm80"):
    hq, hk = heads_for(group, hk)
    c = make_paged(qo_lens, kv_lens, page_size, hq, hk, d, q_dtype, kv_dtype, layout, combined, seed)
    w = paged_wrapper(ws, layout, fp8_conversion=conv, backend=backend)
    plan_paged(w, c, q_dtype, kv_dtype, causal, qo_on_cpu, window_left=window_left, logits_soft_cap=soft_cap,
               sm_scale=sm_scale)
    out, lse = poisoned(c["q"])
    w.run(c["q"], c["cache"], k_scale=k_scale, v_scale=v_scale, out=out, lse=lse)
    torch.cuda.synchronize()
    ref, ref_lse = paged_ref(c, causal, k_scale, v_scale, sm_scale, soft_cap, window_left)
    what = (f"{w.module.key.name}, {layout}, page {page_size}, hq {hq}/hk {hk}, causal {causal}, window "
            f"{window_left}, qo {list(qo_lens)}, kv {list(kv_lens)}")
    assert_close(out, lse, ref, ref_lse, out_tolerance(q_dtype, kv_dtype), what)
    return w, c


def check_ragged(q_dtype, kv_dtype, conv, d, group, qo_lens, kv_lens, ws, hk=None, causal=False, k_scale=None,
                 v_scale=None, soft_cap=None, window_left=-1, sm_scale=None, seed=0, w=None, backend="sm80"):
    hq, hk = heads_for(group, hk)
    c = make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, kv_dtype, seed)
    w = w if w is not None else ragged_wrapper(ws, "NHD", fp8_conversion=conv, backend=backend)
    plan_ragged(w, c, q_dtype, kv_dtype, causal, window_left=window_left, logits_soft_cap=soft_cap, sm_scale=sm_scale)
    out, lse = poisoned(c["q"])
    w.run(c["q"], c["k"], c["v"], k_scale=k_scale, v_scale=v_scale, out=out, lse=lse)
    torch.cuda.synchronize()
    ref, ref_lse = ragged_ref(c, causal, k_scale, v_scale, sm_scale, soft_cap, window_left)
    what = (f"{w.module.key.name}, ragged, hq {hq}/hk {hk}, causal {causal}, window {window_left}, "
            f"qo {list(qo_lens)}, kv {list(kv_lens)}")
    assert_close(out, lse, ref, ref_lse, out_tolerance(q_dtype, kv_dtype), what)
    return w, c


@pytest.fixture(scope="module")
def workspace():
    return torch.empty(64 << 20, dtype=torch.uint8, device="cuda")


# --- the matrix ------------------------------------------------------------------------------------

def matrix_combos(kv_index, d_index, causal):
    """The (layout, page size, GQA group) combinations one matrix case runs: all four groups, each
    with page size PAGE_SIZES[(i + r) % 3] and layout LAYOUTS[(i + r) % 2], where the rotation
    r = (2 * d_index + causal + kv_index) % 6 takes each value 0..5 once over the six (head dim,
    causal) cases of a kv case. So every case runs every group, every page size and both layouts,
    and over one kv case's six cases every (layout, page size, group) triple runs exactly once
    (i + r mod 6 fixes the (page size, layout) pair, by the Chinese remainder theorem)."""
    r = (2 * d_index + int(causal) + kv_index) % 6
    return [(LAYOUTS[(i + r) % 2], PAGE_SIZES[(i + r) % 3], GROUPS[i]) for i in range(len(GROUPS))]


def matrix_lengths(gen, causal):
    """Batch 4: qo 1 on kv 1; 64 queries on 269 keys (269: no multiple of 64 nor of a page size);
    a random pair (qo up to 300, kv up to 600; without causal qo may exceed kv); qo_len == kv_len."""
    qo2 = int(torch.randint(2, 301, (1,), generator=gen))
    kv2 = int(torch.randint(qo2 if causal else 2, 601, (1,), generator=gen))
    same = int(torch.randint(2, 200, (1,), generator=gen))
    return [1, 64, qo2, same], [1, 269, kv2, same]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=_ids)
def test_prefill_matrix(q_dtype, kv_dtype, conv, d, causal, workspace):
    kv_index, d_index = KV_CASES.index((q_dtype, kv_dtype, conv)), HEAD_DIMS.index(d)
    for n, (layout, page_size, group) in enumerate(matrix_combos(kv_index, d_index, causal)):
        seed = 1000 * kv_index + 100 * d_index + 10 * n + int(causal)
        qo_lens, kv_lens = matrix_lengths(torch.Generator().manual_seed(seed), causal)
        check_paged(q_dtype, kv_dtype, conv, d, layout, page_size, group, qo_lens, kv_lens, workspace,
                    causal=causal, k_scale=0.75, v_scale=1.5, seed=seed)


def test_matrix_rotation_covers_every_combination():
    """The rotation of test_prefill_matrix (checked here so that it cannot silently shrink)."""
    for kv_index in range(len(KV_CASES)):
        runs = [combo for d_index in range(len(HEAD_DIMS)) for causal in (False, True)
                for combo in matrix_combos(kv_index, d_index, causal)]
        assert sorted(runs) == sorted((lay, ps, g) for lay in LAYOUTS for ps in PAGE_SIZES for g in GROUPS)
        for d_index in range(len(HEAD_DIMS)):
            for causal in (False, True):
                lay, ps, g = zip(*matrix_combos(kv_index, d_index, causal))
                assert set(lay) == set(LAYOUTS) and set(ps) == set(PAGE_SIZES) and set(g) == set(GROUPS)


# --- lengths ---------------------------------------------------------------------------------------

LENGTH_CASES = {
    "qo_1_7_64_300": ([1, 7, 64, 300], [1000, 77, 129, 300]),
    "qo_eq_kv": ([7, 64, 300, 1, 129], [7, 64, 300, 1, 129]),
    "kv_1": ([1], [1]),
    "kv_not_tile_multiples": ([1, 33, 65, 100, 17], [63, 65, 127, 1023, 97]),
    "mixed_short_long": ([1, 300, 64, 0, 7], [1000, 300, 4096, 5, 7]),
    "qo_0_requests": ([0, 5, 0, 1, 0], [10, 33, 1, 1, 700]),
    "all_qo_0": ([0, 0], [5, 17]),
    "long_qo": ([700], [2000]),
}
# (q dtype, kv dtype, layout, page size, group, qo_indptr on the host)
LENGTH_CONFIGS = (
    (torch.float16, torch.float16, "NHD", 16, 4, True),
    (torch.bfloat16, torch.float8_e4m3fn, "HND", 1, 7, False),
    (torch.bfloat16, torch.bfloat16, "NHD", 32, 8, False),
)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lens", list(LENGTH_CASES.values()), ids=list(LENGTH_CASES))
def test_lengths(lens, causal, workspace):
    qo_lens, kv_lens = lens
    for n, (q_dtype, kv_dtype, layout, page_size, group, qo_on_cpu) in enumerate(LENGTH_CONFIGS):
        check_paged(q_dtype, kv_dtype, None, 128, layout, page_size, group, qo_lens, kv_lens, workspace,
                    causal=causal, seed=n, qo_on_cpu=qo_on_cpu)


@pytest.mark.parametrize("group", [2, 3, 5, 12, 16, 32])
def test_gqa_groups(group, workspace):
    check_paged(torch.bfloat16, torch.float8_e4m3fn, None, 128, "NHD", 16, group, [1, 40, 300], [33, 1000, 300],
                workspace, hk=1 if group > 8 else 2, causal=True)


# --- options: window, soft-cap, scales, LSE, combined cache ------------------------------------------

@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=_ids)
def test_window_softcap_scales(q_dtype, kv_dtype, conv, workspace):
    qo, kv = [1, 64, 300, 7, 0], [1000, 129, 300, 7, 3]
    args = (q_dtype, kv_dtype, conv, 128)
    # soft-cap (head dim 128 only is built) with both scales and sm_scale
    check_paged(*args, "NHD", 16, 4, qo, kv, workspace, causal=True, soft_cap=30.0, k_scale=0.5, v_scale=2.0,
                sm_scale=0.1)
    check_paged(*args, "HND", 32, 8, qo, kv, workspace, causal=False, soft_cap=5.0, sm_scale=0.3, seed=1)
    check_paged(*args, "HND", 32, 8, qo, kv, workspace, causal=True, window_left=0, soft_cap=20.0, seed=2)
    for n, window in enumerate((0, 1, 15, 64, 257, 5000)):
        check_paged(*args, LAYOUTS[n % 2], PAGE_SIZES[n % 3], GROUPS[n % 4], qo, kv, workspace, causal=True,
                    window_left=window, k_scale=1.25, seed=3 + n)
    for n, window in enumerate((0, 40)):  # a window without causal bounds the keys on the left only
        check_paged(*args, "NHD", 1, 4, [5, 64, 100], [40, 64, 1000], workspace, causal=False, window_left=window,
                    v_scale=0.25, seed=10 + n)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.float16, torch.float8_e5m2), (torch.bfloat16, torch.bfloat16)],
                         ids=_ids)
def test_combined_kv_tensor(q_dtype, kv_dtype, layout, workspace):
    check_paged(q_dtype, kv_dtype, None, 128, layout, 16, 4, [5, 64, 1, 130], [5, 1000, 1, 200], workspace,
                causal=True, combined=True, k_scale=0.5)
    check_paged(q_dtype, kv_dtype, None, 64, layout, 1, 7, [33], [99], workspace, causal=False, combined=True)


@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.float8_e4m3fn)],
                         ids=_ids)
def test_allocated_outputs_and_return_lse(q_dtype, kv_dtype, workspace):
    """run() without out/lse allocates them; return_lse gives (out, lse); a given out is written
    and returned."""
    c = make_paged([3, 70], [100, 70], 16, 8, 2, 128, q_dtype, kv_dtype)
    w = paged_wrapper(workspace)
    plan_paged(w, c, q_dtype, kv_dtype, causal=True)
    ref, ref_lse = paged_ref(c, causal=True)
    tol = out_tolerance(q_dtype, kv_dtype)
    out = w.run(c["q"], c["cache"])
    assert isinstance(out, torch.Tensor) and out.dtype == q_dtype and out.device == c["q"].device
    assert_close(out, None, ref, ref_lse, tol, "allocated out")
    out, lse = w.run(c["q"], c["cache"], return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == c["q"].shape[:2]
    assert_close(out, lse, ref, ref_lse, tol, "return_lse")
    given, given_lse = poisoned(c["q"])
    result = w.run(c["q"], c["cache"], out=given, lse=given_lse, return_lse=True)
    torch.cuda.synchronize()
    assert result[0].data_ptr() == given.data_ptr() and result[1].data_ptr() == given_lse.data_ptr()
    assert_close(given, given_lse, ref, ref_lse, tol, "given out and lse")


# --- split-KV --------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.bfloat16, torch.float8_e4m3fn), (torch.float16, torch.float16),
                                              (torch.bfloat16, torch.bfloat16)], ids=_ids)
def test_split_kv_long_context(q_dtype, kv_dtype, causal, workspace):
    # batch 1, 16 queries on 32k keys: one (request, head) tile cannot fill the GPU, so the schedule
    # must split the keys over several work items and merge their partial (out, lse).
    w, _ = check_paged(q_dtype, kv_dtype, None, 128, "NHD", 16, 4, [16], [32768], workspace, hk=8, causal=causal,
                       k_scale=0.5, v_scale=2.0)
    num_partial = getattr(w._plan["schedule"], "num_partial", None)
    if num_partial is not None:
        assert num_partial > 0, f"batch 1 at 32k keys must be split ({w.module.key.name})"
    check_paged(q_dtype, kv_dtype, None, 128, "HND", 32, 4, [16, 1], [32768, 5], workspace, hk=8, causal=causal,
                window_left=20000, seed=1)


@pytest.mark.parametrize("d", [192, 256])
@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.bfloat16, torch.float8_e4m3fn), (torch.bfloat16, torch.bfloat16)],
                         ids=_ids)
def test_split_kv_eight_warp_ctas(q_dtype, kv_dtype, d, workspace):
    # From head dim 192 on, the sm_90a instances are CTAs of 8 warps (kind_prefill.warps): their
    # split pieces and merge, beside short requests in the same batch.
    w, _ = check_paged(q_dtype, kv_dtype, None, d, "NHD", 16, 4, [16, 3, 200], [32768, 700, 200], workspace, hk=8,
                       causal=True, k_scale=0.5, v_scale=2.0, seed=d)
    if w.module.key.arch == "sm90a":
        assert kind_prefill.warps(w.module.key) == 8, w.module.key.name
    num_partial = getattr(w._plan["schedule"], "num_partial", None)
    if num_partial is not None:
        assert num_partial > 0, f"16 queries on 32k keys must be split ({w.module.key.name})"


# A grid's short last wave (prefill.cut_last_wave): with the resident CTAs faked at 2 fewer than
# the batch's units (a lap and 2 units), plan() cuts the last items into split-KV pieces, some of
# a request's row tiles and not others, so that a split item's `partial` is below 0 (which the
# kernels must read as split: pieces > 1); first checked with 1 resident CTA, which splits
# nothing. Requests of about as many keys, so that the last units are as long as the others.
CUT_CASES = (([100, 300], [1600, 1700], 4, 2), ([261, 300], [1761, 1700], 1, 3))


def check_cut_wave(check, monkeypatch, *args, **kwargs):
    import flashinfer_gen.prefill as prefill
    monkeypatch.setattr(prefill, "resident_ctas", lambda module, device: 1)
    w, _ = check(*args, **kwargs)
    whole = w._plan["schedule"]
    assert whole.num_partial == 0 and w._plan["params"].work.ctas == 0, "a grid of one CTA per unit, nothing split"
    units = whole.request.size * w._plan["num_kv_heads"]
    monkeypatch.setattr(prefill, "resident_ctas", lambda module, device: units - 2)
    w, _ = check(*args, **kwargs)
    sched = w._plan["schedule"]
    split = sched.pieces > 1
    assert sched.num_partial > 0 and (sched.partial[split] < 0).any() and not split.all(), w.module.key.name


@pytest.mark.parametrize("q_dtype,kv_dtype,conv", [(torch.bfloat16, torch.bfloat16, None),
                                                   (torch.float16, torch.float8_e4m3fn, "hardware"),
                                                   (torch.bfloat16, torch.float8_e5m2, "software")], ids=_ids)
def test_short_last_wave_cut(q_dtype, kv_dtype, conv, workspace, monkeypatch):
    for n, (qo, kv, group, hk) in enumerate(CUT_CASES):
        check_cut_wave(check_paged, monkeypatch, q_dtype, kv_dtype, conv, 128, LAYOUTS[n % 2], 16, group, qo, kv,
                       workspace, hk=hk, k_scale=0.5, v_scale=2.0, seed=40 + n)
        check_cut_wave(check_ragged, monkeypatch, q_dtype, kv_dtype, conv, 64 if n else 128, group, qo, kv,
                       workspace, hk=hk, seed=50 + n)


# --- ragged KV -------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=_ids)
def test_ragged(q_dtype, kv_dtype, conv, causal, workspace):
    w = ragged_wrapper(workspace, "NHD", fp8_conversion=conv)  # re-planned for every head dim
    for n, d in enumerate(HEAD_DIMS):
        check_ragged(q_dtype, kv_dtype, conv, d, (1, 4, 7)[n], [1, 7, 64, 300, 0, 17], [1, 77, 1000, 300, 5, 17],
                     workspace, causal=causal, k_scale=0.75, v_scale=1.5, seed=n, w=w)
        check_ragged(q_dtype, kv_dtype, conv, d, 8, [5, 129], [4096, 129], workspace, causal=causal, seed=10 + n,
                     w=w)


@pytest.mark.parametrize("q_dtype,kv_dtype", [(torch.float16, torch.float8_e4m3fn), (torch.bfloat16, torch.bfloat16)],
                         ids=_ids)
def test_ragged_options(q_dtype, kv_dtype, workspace):
    qo, kv = [1, 64, 300, 0], [1000, 129, 300, 9]
    check_ragged(q_dtype, kv_dtype, None, 128, 4, qo, kv, workspace, causal=True, soft_cap=30.0, k_scale=0.5,
                 v_scale=2.0, sm_scale=0.1)
    for n, window in enumerate((0, 3, 64, 500)):
        check_ragged(q_dtype, kv_dtype, None, 128, 4, qo, kv, workspace, causal=bool(n % 2), window_left=window,
                     seed=n)
    check_ragged(q_dtype, kv_dtype, None, 128, 4, [16], [32768], workspace, hk=8, causal=True)  # split-KV
    c = make_ragged([3, 70], [100, 70], 8, 2, 128, q_dtype, kv_dtype)
    w = ragged_wrapper(workspace)
    plan_ragged(w, c, q_dtype, kv_dtype, causal=True)
    out, lse = w.run(c["q"], c["k"], c["v"], return_lse=True)
    ref, ref_lse = ragged_ref(c, causal=True)
    assert_close(out, lse, ref, ref_lse, out_tolerance(q_dtype, kv_dtype), "ragged return_lse")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=_ids)
def test_row_maxima_that_jump(q_dtype, kv_dtype, conv, d, causal, workspace):
    """Unmasked tiles are first taken against the rows' running maxima as they stand, and taken
    again with the maxima moved where the warp's vote fails: some lane's sum of a row's P in the
    tile passes 2^8 (compute_settled_tile in prefill_mainloop_sm80.cuh; not for the FP8 codes path
    at head dim 128). Here the logits of some rows jump at keys inside unmasked tiles. Dim 0 of q
    is 4 in the even q heads and 0 in the odd ones, and dim 0 of K steps from 0 to 32 at key 150
    and to 64 at key 300 (jumps of 16 log2 units at head dim 128: 4 x 32 / sqrt(128) x log2(e)).
    Dim 1 of q is 4 in the q heads 0 mod 4 only, and dim 1 of K is 448 at key 520, a jump of 196
    (138 at head dim 256) in the one lane of a quad that holds it; the rows of heads 2 mod 4 do not
    see it, so their output still weighs the keys around the steps. So the warps that vote mix rows,
    and single lanes, that pass the bound with ones that do not, and taken against a max that did
    not move, key 520's P would pass fp32's range (the steps alone pass fp16's). Values exact in
    every dtype. At head dim 128 once more with the soft-cap, whose logits go through the same vote."""
    group = 4
    qo_lens, kv_lens = [30, 300, 1], [700, 1500, 2000]
    hq, hk = heads_for(group)
    c = make_ragged(qo_lens, kv_lens, hq, hk, d, q_dtype, kv_dtype, seed=3)
    heads = torch.arange(hq, device="cuda")
    c["q"][:, :, 0] = torch.where(heads % 2 == 0, 4.0, 0.0).to(q_dtype)
    c["q"][:, :, 1] = torch.where(heads % 4 == 0, 4.0, 0.0).to(q_dtype)
    k = c["k"].float()
    for start, n in zip(indptr_of(kv_lens).tolist(), kv_lens):
        steps = torch.zeros(n)
        steps[150:] = 32.0
        steps[300:] = 64.0
        k[start:start + n, :, 0] = steps[:, None].cuda()
        k[start + 520, :, 1] = 448.0
    c["k"] = k.to(kv_dtype)
    w = ragged_wrapper(workspace, "NHD", fp8_conversion=conv)
    for soft_cap in (None, 30.0) if d == 128 else (None,):
        plan_ragged(w, c, q_dtype, kv_dtype, causal, logits_soft_cap=soft_cap)
        out, lse = poisoned(c["q"])
        w.run(c["q"], c["k"], c["v"], out=out, lse=lse)
        torch.cuda.synchronize()
        ref, ref_lse = ragged_ref(c, causal, soft_cap=soft_cap)
        assert_close(out, lse, ref, ref_lse, out_tolerance(q_dtype, kv_dtype),
                     f"{w.module.key.name}, jumping maxima, causal {causal}, soft-cap {soft_cap}")

# --- CUDA graphs, no host sync ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["paged", "ragged"])
def test_cuda_graph_capture_and_no_sync(kind, workspace):
    q_dtype, kv_dtype = torch.bfloat16, torch.float8_e4m3fn
    qo, kv = [16, 1, 100, 0], [32768, 1, 4000, 3]
    if kind == "paged":
        c = make_paged(qo, kv, 16, 32, 8, 128, q_dtype, kv_dtype)
        w = paged_wrapper(workspace)
        plan_paged(w, c, q_dtype, kv_dtype, causal=True)
        run = lambda **kw: w.run(c["q"], c["cache"], **kw)  # noqa: E731
        reference = lambda: paged_ref(c, causal=True)  # noqa: E731
    else:
        c = make_ragged(qo, kv, 32, 8, 128, q_dtype, kv_dtype)
        w = ragged_wrapper(workspace)
        plan_ragged(w, c, q_dtype, kv_dtype, causal=True)
        run = lambda **kw: w.run(c["q"], c["k"], c["v"], **kw)  # noqa: E731
        reference = lambda: ragged_ref(c, causal=True)  # noqa: E731
    out, lse = poisoned(c["q"])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside run() raises
    try:
        run(out=out, lse=lse)
        out2, lse2 = run(return_lse=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    ref, ref_lse = reference()
    assert_close(out, lse, ref, ref_lse, 1e-2, f"{kind} run under sync debug mode")
    assert_close(out2, lse2, ref, ref_lse, 1e-2, f"{kind} allocating run under sync debug mode")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            run(out=out, lse=lse)
    gen = torch.Generator().manual_seed(7)
    for replay in range(2):
        c["q"].copy_(torch.randn(c["q"].shape, generator=gen).to(c["q"]))
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_lse = reference()
        assert_close(out, lse, ref, ref_lse, 1e-2, f"{kind} graph replay {replay}")


def test_grid_in_l2_sections(workspace, monkeypatch):
    """plan()'s grid order (prefill.grid_unit_order) with sections of 3 KV heads of 8 (3, 3, 2),
    as a long prompt's K/V makes them: every unit of every section runs once, bf16 and FP8
    caches, paged and ragged, causal (the items' lengths differ), split-KV pieces among them."""
    import flashinfer_gen.prefill as prefill
    monkeypatch.setattr(prefill, "l2_heads_per_section", lambda *args: 3)
    bf16, e4m3 = torch.bfloat16, torch.float8_e4m3fn
    qo, kv = [1, 64, 300, 129], [1, 1000, 300, 256]
    w, _ = check_paged(bf16, bf16, None, 128, "NHD", 16, 4, qo, kv, workspace, hk=8, causal=True, seed=11)
    assert w._plan["params"].work.ctas == 0
    check_paged(bf16, e4m3, "hardware", 128, "HND", 16, 4, qo, kv, workspace, hk=8, causal=True, seed=12)
    check_ragged(bf16, e4m3, "software", 128, 4, qo, kv, workspace, hk=8, causal=False, seed=13)
    check_ragged(bf16, bf16, None, 128, 1, [16], [32768], workspace, hk=8, causal=True, seed=14)


# --- argument checks -------------------------------------------------------------------------------

def expect_error(call, match, untouched=None):
    """`call` raises ArgumentError whose message matches `match` (case-insensitive); `untouched`
    (a NaN-poisoned output the call was given) proves that nothing was launched."""
    with pytest.raises(ArgumentError, match="(?i)" + match):
        call()
    if untouched is not None:
        torch.cuda.synchronize()
        assert torch.isnan(untouched).all(), f"a kernel ran before the error ({match})"


def test_paged_bad_inputs_raise_before_launch(workspace):
    c = make_paged([3, 20], [5, 40], 16, 8, 2, 128, torch.float16, torch.float16)
    q, k, v, cache = c["q"], c["k"], c["v"], c["cache"]
    qo_indptr, kv_indptr, indices, last = c["qo_indptr"], c["kv_indptr"], c["indices"], c["last"]
    out, _ = poisoned(q)
    w = paged_wrapper(workspace)
    expect_error(lambda: w.run(q, cache, out=out), "plan", out)
    plan = lambda qo=qo_indptr, hq=8, hk=2, d=128, **kw: w.plan(qo, kv_indptr, indices, last, hq, hk, d, 16,  # noqa
                                                                 q_data_type=torch.float16, **kw)
    plan_errors = [
        (lambda: plan(qo=torch.tensor([0, 20, 3], dtype=torch.int32, device="cuda")), "qo_indptr|qo_len|decreasing"),
        (lambda: plan(qo=torch.tensor([0, 3], dtype=torch.int32, device="cuda")), "qo_indptr|batch"),  # batch 1 != 2
        (lambda: plan(qo=qo_indptr.float()), "qo_indptr|int32"),
        (lambda: plan(d=72), "head_dim"),
        (lambda: plan(hq=8, hk=3), "multiple"),
        (lambda: plan(qo=torch.tensor([0, 6, 23], dtype=torch.int32, device="cuda"), causal=True),
         "causal|qo_len|kv_len"),  # request 0: 6 queries on 5 keys
        (lambda: plan(pos_encoding_mode="ROPE_LLAMA"), "pos_encoding_mode"),
        (lambda: plan(window_left=-2), "window_left"),
        (lambda: plan(kv_data_type=torch.bfloat16), "16-bit|kv_data_type|dtype"),
        (lambda: w.plan(qo_indptr, kv_indptr.flip(0), indices, last, 8, 2, 128, 16), "indptr"),
        (lambda: w.plan(qo_indptr, kv_indptr, indices, last + 16, 8, 2, 128, 16), "last_page_len"),
    ]
    for call, match in plan_errors:
        expect_error(call, match)
    plan()
    run_errors = [
        (lambda: w.run(q.to(torch.bfloat16), cache, out=out), "dtype"),
        (lambda: w.run(q[:, :4], cache, out=out[:, :4]), "shape|heads"),  # wrong head count
        (lambda: w.run(q[:-1], cache, out=out[:-1]), "shape|qo_indptr|token"),  # 22 tokens, qo_indptr[-1] = 23
        (lambda: w.run(q.cpu(), cache), "CUDA"),
        (lambda: w.run(q, (k.transpose(1, 2), v.transpose(1, 2)), out=out), "layout|shape"),
        (lambda: w.run(q, (k[:, :, :1], v[:, :, :1]), out=out), "shape|layout"),
        (lambda: w.run(q, (k, v.to(torch.bfloat16)), out=out), "dtype"),
        (lambda: w.run(q, (k[:2], v[:2]), out=out), "page"),  # the page table points past 2 pages
        (lambda: w.run(q, cache, k_scale=torch.tensor(1.0), out=out), "float|k_scale"),
        (lambda: w.run(q, cache, out=torch.empty(q.shape[0], 8, 64, device="cuda", dtype=q.dtype)), "out"),
        (lambda: w.run(q, cache, out=torch.empty_like(q, dtype=torch.bfloat16)), "out"),
        (lambda: w.run(q, cache, out=out, lse=torch.empty(q.shape[:2], device="cuda", dtype=torch.float16)), "lse"),
        (lambda: w.run(q, cache, out=out, lse=torch.empty(q.shape[0], 4, device="cuda")), "lse"),
    ]
    for call, match in run_errors:
        expect_error(call, match, out)
    # qo_indptr[-1] (24) does not match q (23 tokens) at run
    plan(qo=torch.tensor([0, 3, 24], dtype=torch.int32, device="cuda"))
    expect_error(lambda: w.run(q, cache, out=out), "shape|qo_indptr|token", out)
    # a page index past the end of the cache: plan() cannot know, run() must refuse
    bad = indices.clone()
    bad[0] = k.shape[0] + 5
    w.plan(qo_indptr, kv_indptr, bad, last, 8, 2, 128, 16, q_data_type=torch.float16)
    expect_error(lambda: w.run(q, cache, out=out), "page", out)


def test_ragged_bad_inputs_raise_before_launch(workspace):
    c = make_ragged([3, 20], [5, 40], 8, 2, 128, torch.float16, torch.float16)
    q, k, v, qo_indptr, kv_indptr = c["q"], c["k"], c["v"], c["qo_indptr"], c["kv_indptr"]
    out, _ = poisoned(q)
    expect_error(lambda: ragged_wrapper(workspace, "HND").plan(qo_indptr, kv_indptr, 8, 2, 128), "layout|NHD")
    w = ragged_wrapper(workspace)
    expect_error(lambda: w.run(q, k, v, out=out), "plan", out)
    plan = lambda qo=qo_indptr, kv=kv_indptr, hq=8, hk=2, d=128, **kw: w.plan(qo, kv, hq, hk, d,  # noqa: E731
                                                                              q_data_type=torch.float16, **kw)
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    plan_errors = [
        (lambda: plan(qo=i32(0, 20, 3)), "qo_indptr|qo_len|decreasing"),  # not monotone
        (lambda: plan(kv=i32(0, 40, 5)), "kv_indptr|kv_len|decreasing"),
        (lambda: plan(kv=i32(0, 0, 45)), "kv_len|kv_indptr|key|token"),  # request 0 without keys
        (lambda: plan(qo=i32(0, 3)), "qo_indptr|batch"),
        (lambda: plan(d=72), "head_dim"),
        (lambda: plan(hk=3), "multiple"),
        (lambda: plan(qo=i32(0, 6, 23), causal=True), "causal|qo_len|kv_len"),
        (lambda: plan(pos_encoding_mode="ROPE_LLAMA"), "pos_encoding_mode"),
    ]
    for call, match in plan_errors:
        expect_error(call, match)
    plan()
    run_errors = [
        (lambda: w.run(q.to(torch.bfloat16), k, v, out=out), "dtype"),
        (lambda: w.run(q[:-1], k, v, out=out[:-1]), "shape|qo_indptr|token"),
        (lambda: w.run(q, k[:-1], v[:-1], out=out), "kv_indptr|shape|token"),  # kv_indptr[-1] = 45 != 44
        (lambda: w.run(q, k, v[:-1], out=out), "shape|same"),
        (lambda: w.run(q, k[:, :1], v[:, :1], out=out), "shape|head"),
        (lambda: w.run(q, k, v.to(torch.bfloat16), out=out), "dtype"),
        (lambda: w.run(q, k.cpu(), v.cpu(), out=out), "CUDA"),
        (lambda: w.run(q, k, v, out=out, lse=torch.empty(q.shape[:2], device="cuda", dtype=torch.float16)), "lse"),
    ]
    for call, match in run_errors:
        expect_error(call, match, out)


def test_unbuilt_instance_names_the_fix(workspace, monkeypatch):
    monkeypatch.setenv("FLASHINFER_GEN_JIT", "0")
    c = make_paged([5], [5], 16, 8, 2, 64, torch.float16, torch.float8_e5m2)
    w = paged_wrapper(workspace, jit=False)
    # soft-cap at head dim 64 is deliberately not in the GPU test build (tests/gpu_instances.py)
    with pytest.raises(InstanceNotBuiltError, match="flashinfer-gen build") as info:
        plan_paged(w, c, torch.float16, torch.float8_e5m2, logits_soft_cap=10.0)
    assert info.value.nearest, "the error must list the nearest built instances"


# --- NaN codes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("conv", CONVERSIONS)
def test_nan_codes_propagate_like_the_reference(conv, causal, workspace):
    """A NaN code in a visible K poisons the rows that see it, one in V that dim of those rows;
    with causal, a NaN K that a row does not see leaves it finite. NaN codes in the unused slots
    of a last page and in pages no request uses must change nothing (the software conversion
    detects a word with a NaN code and converts that word exactly)."""
    qo, kv = [5, 40, 64], [40, 300, 1000]
    c = make_paged(qo, kv, 16, 8, 2, 128, torch.bfloat16, torch.float8_e4m3fn)
    k, v, indices, kv_indptr = c["k"], c["v"], c["indices"], c["kv_indptr"]
    kb, vb = k.view(torch.uint8), v.view(torch.uint8)  # the codes, written through a byte view
    page_of = lambda b, t: int(indices[int(kv_indptr[b]) + t // 16])  # noqa: E731
    kb[page_of(1, 270), 270 % 16, 0, 5] = NAN_E4M3  # request 1, KV head 0; causal: seen by its queries 10..39
    vb[page_of(2, 3), 3, 1, 77] = NAN_E4M3          # request 2, KV head 1, dim 77: seen by every query
    kb[page_of(0, 39), 40 % 16:] = NAN_E4M3         # request 0 (40 keys): slots 8..15 of its last page are unused
    vb[page_of(0, 39), 40 % 16:] = NAN_E4M3
    unused = torch.tensor(sorted(set(range(k.shape[0])) - set(indices.tolist())), device="cuda")
    kb[unused], vb[unused] = NAN_E4M3, NAN_E4M3
    w = paged_wrapper(workspace, fp8_conversion=conv)
    plan_paged(w, c, torch.bfloat16, torch.float8_e4m3fn, causal=causal)
    out = torch.full_like(c["q"], 123.0)
    w.run(c["q"], c["cache"], out=out)
    torch.cuda.synchronize()
    ref, _ = paged_ref(c, causal=causal)
    r1, r2 = slice(5, 45), slice(45, 109)
    assert not torch.isnan(ref[:5]).any()
    assert torch.isnan(ref[r1][10:, :4]).all() and torch.isnan(ref[r2][:, 4:, 77]).all()
    assert bool(torch.isnan(ref[r1][:10]).any()) != causal
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"NaN pattern differs ({w.module.key.name})"
    finite = ~torch.isnan(ref)
    err = float(torch.linalg.vector_norm(out.double()[finite] - ref[finite]) / torch.linalg.vector_norm(ref[finite]))
    assert err < 1e-2


def test_wrappers_share_one_workspace(workspace):
    """A serving engine plans a prefill and a decode wrapper on one workspace, then runs both:
    each keeps its own work list (split-KV on both sides, so both use the shared partials)."""
    from flashinfer_gen import BatchDecodeWithPagedKVCacheWrapper
    from flashinfer_gen.reference import decode_reference
    c = make_paged([16], [6000], 16, 8, 2, 128, torch.bfloat16, torch.float8_e4m3fn, seed=3)
    p = paged_wrapper(workspace)
    plan_paged(p, c, torch.bfloat16, torch.float8_e4m3fn, causal=True)
    d = BatchDecodeWithPagedKVCacheWrapper(workspace)
    d.plan(c["kv_indptr"], c["indices"], c["last"], c["hq"], c["hk"], c["d"], c["page_size"],
           q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    assert p._plan["schedule"].num_partial > 0 and d._plan["schedule"].num_partial > 0
    q_decode = torch.randn(1, c["hq"], c["d"], device="cuda").to(torch.bfloat16)
    for _ in range(2):  # interleaved, as a model's layers would run them
        out_p = p.run(c["q"], c["cache"])
        out_d = d.run(q_decode, c["cache"])
    torch.cuda.synchronize()
    ref_p, _ = paged_ref(c, causal=True)
    ref_d, _ = decode_reference(q_decode, c["k"], c["v"], c["kv_indptr"], c["indices"], c["last"])
    assert relative_error(out_p, ref_p) < 1e-2
    assert relative_error(out_d, ref_d) < 1e-2


@pytest.mark.parametrize("d", [80, 96, 192])
@pytest.mark.parametrize("kv_dtype,conv", [(torch.bfloat16, None), (torch.float8_e4m3fn, None),
                                           (torch.float8_e5m2, "software")], ids=_ids)
def test_other_head_dims(d, kv_dtype, conv, workspace):
    """Head dims off the default set: 80, 96 and 192, every KV dtype (an FP8 tile is upcast in
    shared memory, so 80 works with FP8 too), causal and not, with GQA 7 and a batch of 1 long
    request whose keys are split (the merge kernel at a head dim that is not a power of two)."""
    for causal in (False, True):
        check_paged(torch.bfloat16, kv_dtype, conv, d, "NHD", 16, 7, [1, 70, 33, 0], [40, 200, 33, 9], workspace,
                    causal=causal, seed=d)
    w, _ = check_paged(torch.bfloat16, kv_dtype, conv, d, "HND", 16, 4, [16], [6000], workspace, hk=2, causal=True)
    assert w._plan["schedule"].num_partial > 0, "the long request must be split"


def test_unaligned_workspace_is_refused():
    ws = torch.empty((1 << 20) + 8, dtype=torch.uint8, device="cuda")[8:]
    with pytest.raises(ArgumentError, match="16-byte aligned"):
        paged_wrapper(ws)
    with pytest.raises(ArgumentError, match="16-byte aligned"):
        flashinfer_gen.BatchDecodeWithPagedKVCacheWrapper(ws)
