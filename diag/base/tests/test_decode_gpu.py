"""Paged decode on the GPU against a float64 reference built from the same dequantised KV values.

Tolerances (relative L2 error of the output): the kernel computes q.k and p.v with fp32
accumulation, rounds P to the mma element type and the output to the q dtype. The error is
dominated by those two roundings: unit roundoff 2^-8 for bf16, 2^-11 for fp16. Bound: 1e-2
when either P or the output is bf16, 2e-3 when both are fp16 (about 4x the rounding error
seen, far below what a wrong index or a missed token gives, which is O(1)).
LSE (base 2) comes from fp32 logits of exactly representable inputs: absolute 1e-3.
"""
import pytest
import torch

from conftest import requires_gpu
from gpu_instances import kv_cases
from flashinfer_gen import ArgumentError, BatchDecodeWithPagedKVCacheWrapper, InstanceNotBuiltError
from flashinfer_gen.reference import decode_reference, relative_error

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]


KV_CASES = kv_cases()
CONVERSIONS = sorted({c for _, _, c in KV_CASES if c})
LSE_TOL = 1e-3


def out_tolerance(q_dtype, kv_dtype):
    bf16_involved = q_dtype == torch.bfloat16 or kv_dtype == torch.bfloat16
    return 1e-2 if bf16_involved else 2e-3


def ragged_lengths(gen, page_size, batch, max_len):
    """Lengths including 1, exact page multiples, one less/more than a multiple, and a long one."""
    fixed = [1, page_size, 2 * page_size, 3 * page_size + 1, max(1, 5 * page_size - 1), max_len]
    rand = torch.randint(1, max_len + 1, (max(0, batch - len(fixed)),), generator=gen).tolist()
    return (fixed + rand)[:batch]


def make_case(kv_lens, page_size, hq, hk, d, q_dtype, kv_dtype, layout, combined=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device("cuda")
    kv_lens = torch.tensor(kv_lens)
    pages_per = (kv_lens + page_size - 1) // page_size
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages_per.cumsum(0)]).to(torch.int32)
    total = int(indptr[-1])
    num_pages = total + 11
    # random, non-contiguous page table drawn from a larger pool
    indices = torch.randperm(num_pages, generator=gen)[:total].to(torch.int32)
    last = (kv_lens - (pages_per - 1) * page_size).to(torch.int32)
    shape = (num_pages, page_size, hk, d) if layout == "NHD" else (num_pages, hk, page_size, d)
    if combined:
        kv = (torch.randn((num_pages, 2) + shape[1:], generator=gen) * 2).to(dev).to(kv_dtype)
        k, v, cache = kv[:, 0], kv[:, 1], kv
    else:
        k = (torch.randn(shape, generator=gen) * 2).to(dev).to(kv_dtype)
        v = (torch.randn(shape, generator=gen) * 2).to(dev).to(kv_dtype)
        cache = (k, v)
    q = torch.randn(len(kv_lens), hq, d, generator=gen).to(dev).to(q_dtype)
    return q, k, v, cache, indptr.to(dev), indices.to(dev), last.to(dev)


def run_and_check(q_dtype, kv_dtype, conv, d, layout, page_size, group, kv_lens, hk=2, combined=False,
                  k_scale=None, v_scale=None, soft_cap=None, window_left=-1, sm_scale=None, seed=0, ws=None):
    hq = hk * group
    q, k, v, cache, indptr, indices, last = make_case(kv_lens, page_size, hq, hk, d, q_dtype, kv_dtype, layout,
                                                      combined, seed)
    ws = ws if ws is not None else torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    w = BatchDecodeWithPagedKVCacheWrapper(ws, layout, fp8_conversion=conv)
    w.plan(indptr, indices, last, hq, hk, d, page_size, window_left=window_left, logits_soft_cap=soft_cap,
           q_data_type=q_dtype, kv_data_type=kv_dtype, sm_scale=sm_scale)
    out = torch.full_like(q, float("nan"))  # poison: an unwritten element fails the check
    lse = torch.full((q.shape[0], hq), float("nan"), device="cuda")
    w.run(q, cache, k_scale=k_scale, v_scale=v_scale, out=out, lse=lse)
    torch.cuda.synchronize()
    ref, ref_lse = decode_reference(q, k, v, indptr, indices, last, layout, k_scale or 1.0, v_scale or 1.0,
                                    sm_scale, soft_cap, window_left)
    err = relative_error(out, ref)
    lse_err = float((lse.double() - ref_lse).abs().max()) if torch.isfinite(lse).all() else float("inf")
    tol = out_tolerance(q_dtype, kv_dtype)
    assert err < tol, f"output rel. error {err:.3e} >= {tol} ({w.module.key.name})"
    assert lse_err < LSE_TOL, f"lse abs. error {lse_err:.3e} >= {LSE_TOL} ({w.module.key.name})"
    return w, err


@pytest.fixture(scope="module")
def workspace():
    return torch.empty(64 << 20, dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_matrix(q_dtype, kv_dtype, conv, d, layout, page_size, group, workspace):
    gen = torch.Generator().manual_seed(d * 131 + page_size * 7 + group)
    lens = ragged_lengths(gen, page_size, 8, 8192 if page_size > 1 else 2048)
    run_and_check(q_dtype, kv_dtype, conv, d, layout, page_size, group, lens, seed=d + group, ws=workspace,
                  k_scale=0.75, v_scale=1.5)


@pytest.mark.parametrize("q_dtype,kv_dtype,conv", KV_CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_softcap_window_scales_split(q_dtype, kv_dtype, conv, workspace):
    # batch 1 with 8k tokens forces split-KV + merge; window and soft-cap on top.
    run_and_check(q_dtype, kv_dtype, conv, 128, "NHD", 16, 4, [8000], soft_cap=30.0, k_scale=0.5,
                  v_scale=2.0, sm_scale=0.1, ws=workspace)
    run_and_check(q_dtype, kv_dtype, conv, 128, "HND", 16, 4, [1, 300, 5000, 32], window_left=257,
                  ws=workspace)
    run_and_check(q_dtype, kv_dtype, conv, 128, "NHD", 32, 8, [4096, 1, 777], window_left=0, soft_cap=20.0,
                  ws=workspace)


@pytest.mark.parametrize("group", [1, 2, 3, 5, 7, 8, 9, 12, 16, 17, 24, 32, 64])
def test_gqa_groups(group, workspace):
    # Groups above 8 use several warp tiles; above 32, several row groups (gridDim.y).
    run_and_check(torch.bfloat16, torch.float8_e4m3fn, None, 128, "NHD", 16, group, [1, 33, 1000, 4096],
                  hk=1 if group > 16 else 2, ws=workspace)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_combined_kv_tensor(layout, workspace):
    run_and_check(torch.float16, torch.float8_e5m2, None, 128, layout, 16, 4, [5, 64, 1000], combined=True,
                  ws=workspace)


def test_long_context_batch1_fills_gpu(workspace):
    w, _ = run_and_check(torch.bfloat16, torch.float8_e4m3fn, None, 128, "NHD", 16, 4, [32768], hk=8,
                         ws=workspace)
    sched = w._plan["schedule"]
    assert sched.chunk_tokens is not None and sched.request.size > 1, "batch 1 at 32k must be split"


@pytest.mark.parametrize("conv", CONVERSIONS)
@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_device_conversion_all_codes(kv_dtype, conv, workspace):
    # The instance's own conversion routine (as the mainloop runs it) over all 256 codes.
    q, k, v, cache, indptr, indices, last = make_case([16], 16, 4, 1, 128, torch.float16, kv_dtype, "NHD")
    w = BatchDecodeWithPagedKVCacheWrapper(workspace, fp8_conversion=conv)
    w.plan(indptr, indices, last, 4, 1, 128, 16, q_data_type=torch.float16, kv_data_type=kv_dtype)
    codes = torch.arange(256, dtype=torch.uint8, device="cuda")
    out = torch.full((256,), 12345.0, device="cuda")
    w.module.call("convert_kv", codes.data_ptr(), out.data_ptr(), 256, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    expected = codes.view(kv_dtype).float()
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan], expected[~nan])


def test_cuda_graph_capture_and_no_sync(workspace):
    q, k, v, cache, indptr, indices, last = make_case([1, 100, 4000], 16, 8, 2, 128, torch.bfloat16,
                                                      torch.float8_e4m3fn, "NHD")
    w = BatchDecodeWithPagedKVCacheWrapper(workspace)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    out = torch.empty_like(q)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside run() raises
    try:
        w.run(q, cache, out=out)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            w.run(q, cache, out=out)
    assert w._plan["schedule"].merge_request.size > 0, "the case must exercise the split-KV merge"
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = decode_reference(q, k, v, indptr, indices, last)
        assert relative_error(out, ref) < 1e-2


def test_cuda_graph_captured_once_follows_every_plan(workspace):
    """use_cuda_graph: one capture, then five plans with new random lengths and page tables
    (split-KV and not; the captured plan itself has no split, so the merge kernel must be in the
    graph anyway), each replayed into a NaN-poisoned output and compared with the reference."""
    from flashinfer_gen import CUDAGraphBatchDecodeWithPagedKVCacheWrapper
    gen = torch.Generator().manual_seed(11)
    batch, hq, hk, d, page, pool = 6, 16, 4, 128, 16, 4000
    k = torch.randn(pool, page, hk, d, generator=gen).cuda().to(torch.float8_e4m3fn)
    v = torch.randn(pool, page, hk, d, generator=gen).cuda().to(torch.float8_e4m3fn)
    indptr_buf = torch.empty(batch + 1, dtype=torch.int32, device="cuda")
    indices_buf = torch.empty(pool, dtype=torch.int32, device="cuda")
    last_buf = torch.empty(batch, dtype=torch.int32, device="cuda")
    w = CUDAGraphBatchDecodeWithPagedKVCacheWrapper(workspace, indptr_buf, indices_buf, last_buf)
    assert w.is_cuda_graph_enabled
    q = torch.empty(batch, hq, d, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(q)

    def plan(lens):
        lens = torch.tensor(lens)
        pages = (lens + page - 1) // page
        indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages.cumsum(0)]).to(torch.int32)
        indices = torch.randperm(pool, generator=gen)[: int(indptr[-1])].to(torch.int32)
        last = (lens - (pages - 1) * page).to(torch.int32)
        w.plan(indptr.cuda(), indices.cuda(), last.cuda(), hq, hk, d, page, q_data_type=torch.bfloat16,
               kv_data_type=torch.float8_e4m3fn)
        return indptr.cuda(), indices.cuda(), last.cuda()

    plan([16, 1, 33, 64, 5, 48])  # short requests: too short to split
    assert w._plan["schedule"].num_partial == 0
    w.run(q, (k, v), out=out)  # warm-up outside the capture (loads the module)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph, stream=stream):
            w.run(q, (k, v), out=out)
    splits = []
    for step in range(5):
        if step % 2 == 0:  # one long request among short ones: split-KV
            lens = torch.randint(1, 200, (batch,), generator=gen).tolist()
            lens[step % batch] = 30000
        else:  # all below the smallest split piece: no split
            lens = torch.randint(1, 64, (batch,), generator=gen).tolist()
        indptr, indices, last = plan(lens)
        splits.append(w._plan["schedule"].num_partial > 0)
        q.copy_(torch.randn(q.shape, generator=gen).to(torch.bfloat16))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = decode_reference(q, k, v, indptr, indices, last)
        assert relative_error(out, ref) < 1e-2, f"replay after plan {step} ({lens})"
    assert any(splits) and not all(splits), splits
    with pytest.raises(ArgumentError, match="batch"):
        w.plan(indptr[:3], indices, last[:2], hq, hk, d, page, q_data_type=torch.bfloat16,
               kv_data_type=torch.float8_e4m3fn)
    with pytest.raises(ArgumentError, match="first plan's configuration"):
        w.plan(indptr, indices, last, hq, hk, d, page, q_data_type=torch.bfloat16,
               kv_data_type=torch.float8_e4m3fn, sm_scale=0.5)


def test_checks_hold_after_a_successful_run(workspace):
    """run() remembers what it checked since plan() (CheckedInputs): tensors whose metadata it has
    not seen are checked in full, a q with seen metadata at an unaligned address is refused, and a
    new plan() forgets (its page table may need a larger cache)."""
    q, k, v, cache, indptr, indices, last = make_case([5, 40], 16, 8, 2, 128, torch.float16, torch.float16, "NHD")
    w = BatchDecodeWithPagedKVCacheWrapper(workspace)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.float16)
    first = w.run(q, cache)
    again = w.run(q.clone(), cache)  # the remembered path
    torch.cuda.synchronize()
    assert torch.equal(first, again)
    unaligned = torch.empty(q.numel() + 1, dtype=q.dtype, device="cuda")[1:].view(q.shape)
    cases = [
        (lambda: w.run(q.to(torch.bfloat16), cache), "dtype"),
        (lambda: w.run(q[:1], cache), "shape"),
        (lambda: w.run(unaligned, cache), "aligned"),
        (lambda: w.run(q, (k[:2], v[:2])), "page"),
        (lambda: w.run(q, (k, v.to(torch.bfloat16))), "same dtype"),
        (lambda: w.run(q, (k[..., ::2], v[..., ::2])), "last dim"),
    ]
    for call, match in cases:
        with pytest.raises(ArgumentError, match=match):
            call()
    small = (k[:3].clone(), v[:3].clone())  # holds the pages of a one-page plan only
    one_page = torch.full((1,), 2, dtype=torch.int32, device="cuda")
    w.plan(indptr[:2], one_page, last[:1], 8, 2, 128, 16, q_data_type=torch.float16)
    w.run(q[:1], small)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.float16)
    with pytest.raises(ArgumentError, match="page"):
        w.run(q, small)


def test_run_rewrites_what_changed_since_the_last_run(workspace):
    """run() rewrites a group of the params only where its source differs from the last run()'s
    (finish_run): calls that alternate q's strides, out's strides, out given / allocated, lse,
    the scales (None, floats, device tensors) and two caches must each match the reference."""
    lens = [1, 16, 33, 70]
    q, k, v, cache, indptr, indices, last = make_case(lens, 16, 8, 2, 128, torch.bfloat16, torch.bfloat16, "NHD")
    k2 = (torch.randn_like(k, dtype=torch.float32) * 2).to(k.dtype)  # a second cache of the same shape
    v2 = torch.randn_like(v, dtype=torch.float32).to(v.dtype)
    w = BatchDecodeWithPagedKVCacheWrapper(workspace)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    wide = torch.randn(q.shape[0], 12, 128, device="cuda").to(q.dtype)
    q_strided = wide[:, 2:10]  # another row stride than q's
    q_strided.copy_(q)
    scale_t = torch.tensor([0.5], device="cuda")
    calls = [
        dict(q=q, cache=cache),
        dict(q=q_strided, cache=cache, out="strided", k_scale=0.5, v_scale=2.0),
        dict(q=q, cache=(k2, v2), out="given", lse=True),
        dict(q=q_strided, cache=(k2, v2), k_scale=scale_t, v_scale=1.5),
        dict(q=q, cache=cache, out="given", k_scale=0.5, v_scale=2.0),
        dict(q=q, cache=cache, out="strided"),
        dict(q=q_strided, cache=(k2, v2), out="given", lse=True, k_scale=0.5, v_scale=2.0),
        dict(q=q, cache=cache),
    ]
    for i, c in enumerate(calls):
        kk, vv = c["cache"]
        out = None
        if c.get("out") == "given":
            out = torch.full_like(q, float("nan"))
        elif c.get("out") == "strided":
            out = torch.full((q.shape[0], 10, 128), float("nan"), device="cuda", dtype=q.dtype)[:, 1:9]
        lse = torch.full((q.shape[0], 8), float("nan"), device="cuda") if c.get("lse") else None
        got = w.run(c["q"], c["cache"], k_scale=c.get("k_scale"), v_scale=c.get("v_scale"), out=out, lse=lse)
        torch.cuda.synchronize()
        ks = c.get("k_scale")
        ks = float(ks) if isinstance(ks, torch.Tensor) else (ks or 1.0)
        ref, ref_lse = decode_reference(q, kk, vv, indptr, indices, last, "NHD", ks, c.get("v_scale") or 1.0)
        err = relative_error(got, ref)
        assert err < out_tolerance(q.dtype, kk.dtype), f"call {i} ({c.keys()}): rel. error {err:.3e}"
        if lse is not None:
            assert float((lse.double() - ref_lse).abs().max()) < LSE_TOL, f"call {i}: lse"


def test_bad_inputs_raise_before_launch(workspace):
    q, k, v, cache, indptr, indices, last = make_case([5, 40], 16, 8, 2, 128, torch.float16, torch.float16, "NHD")
    w = BatchDecodeWithPagedKVCacheWrapper(workspace)
    with pytest.raises(ArgumentError, match="plan"):
        w.run(q, cache)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.float16)
    cases = [
        (lambda: w.run(q.to(torch.bfloat16), cache), "dtype"),
        (lambda: w.run(q[:1], cache), "shape"),
        (lambda: w.run(q.cpu(), cache), "CUDA"),
        (lambda: w.run(q, (k[:2], v[:2])), "page"),
        (lambda: w.run(q, (k, v.to(torch.bfloat16))), "same dtype"),
        (lambda: w.run(q, (k.transpose(1, 2), v.transpose(1, 2))), "layout"),
        (lambda: w.run(q, (k[..., ::2], v[..., ::2])), "last dim"),
        (lambda: w.run(q, cache, k_scale=torch.tensor(1.0)), "float"),
        (lambda: w.run(q, cache, out=torch.empty(2, 8, 64, device="cuda", dtype=torch.float16)), "out"),
        (lambda: w.run(q, cache, lse=torch.empty(2, 8, device="cuda", dtype=torch.float16)), "lse"),
        (lambda: w.plan(indptr.flip(0), indices, last, 8, 2, 128, 16), "indptr"),
        (lambda: w.plan(indptr, indices, last + 16, 8, 2, 128, 16), "last_page_len"),
        (lambda: w.plan(indptr, indices, last, 8, 2, 96, 16), "head_dim"),
        (lambda: w.plan(indptr, indices, last, 8, 3, 128, 16), "multiple"),
        (lambda: w.plan(indptr, indices.float(), last, 8, 2, 128, 16), "int32"),
        (lambda: w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.float16,
                        kv_data_type=torch.bfloat16), "16-bit KV"),
    ]
    for call, match in cases:
        with pytest.raises((ArgumentError, ValueError), match=match):
            call()
    # a page index past the end of the cache
    bad = indices.clone()
    bad[0] = k.shape[0] + 5
    w.plan(indptr, bad, last, 8, 2, 128, 16, q_data_type=torch.float16)
    with pytest.raises(ArgumentError, match="refers to page"):
        w.run(q, cache)


def test_unbuilt_instance_names_the_fix(workspace, monkeypatch):
    monkeypatch.setenv("FLASHINFER_GEN_JIT", "0")
    q, k, v, cache, indptr, indices, last = make_case([5], 16, 8, 2, 64, torch.float16, torch.float8_e5m2, "NHD")
    w = BatchDecodeWithPagedKVCacheWrapper(workspace, jit=False)
    # soft-cap at head dim 64 is deliberately not in the GPU test build
    with pytest.raises(InstanceNotBuiltError, match="flashinfer-gen build") as info:
        w.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=torch.float16, kv_data_type=torch.float8_e5m2,
               logits_soft_cap=10.0)
    assert info.value.nearest, "the error must list the nearest built instances"


@pytest.mark.parametrize("conv", CONVERSIONS)
def test_nan_codes_propagate_like_the_reference(conv, workspace):
    # A NaN code in K poisons its request's rows, one in V its dim; the software path detects them
    # and replays the range with the exact conversion. Finite requests must be unaffected.
    lens = [40, 300, 1000]
    q, k, v, cache, indptr, indices, last = make_case(lens, 16, 8, 2, 128, torch.bfloat16, torch.float8_e4m3fn, "NHD")
    nan = torch.tensor([0x7F], dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    page_of = lambda b, t: int(indices[int(indptr[b]) + t // 16])  # noqa: E731
    k[page_of(1, 17), 17 % 16, 0, 5] = nan[0]    # request 1, KV head 0
    v[page_of(2, 999), 999 % 16, 1, 77] = nan[0]  # request 2, KV head 1, dim 77
    w = BatchDecodeWithPagedKVCacheWrapper(workspace, fp8_conversion=conv)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    out = torch.full_like(q, 123.0)
    w.run(q, cache, out=out)
    torch.cuda.synchronize()
    ref, _ = decode_reference(q, k, v, indptr, indices, last)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(ref[1, :4]).all() and torch.isnan(ref[2, 4:, 77]).all()
    finite = ~torch.isnan(ref)
    err = float(torch.linalg.vector_norm(out.double()[finite] - ref[finite]) / torch.linalg.vector_norm(ref[finite]))
    assert err < 1e-2


def test_side_streams_and_devices(workspace):
    """run() launches on the current stream of the tensors' device, with that device current:
    two side streams give the same results as the default one, and on a second GPU (where one
    exists) plan() and run() work while another device is current."""
    q, k, v, cache, indptr, indices, last = make_case([7, 300, 2000], 16, 8, 2, 128, torch.bfloat16,
                                                      torch.float8_e4m3fn, "NHD")
    ref, _ = decode_reference(q, k, v, indptr, indices, last)
    w = BatchDecodeWithPagedKVCacheWrapper(workspace)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    outs = []
    for stream in (torch.cuda.Stream(), torch.cuda.Stream()):
        with torch.cuda.stream(stream):
            out = torch.full_like(q, float("nan"))
            w.run(q, cache, out=out)
        stream.synchronize()
        outs.append(out)
    for out in outs:
        assert relative_error(out, ref) < 1e-2
    assert torch.equal(outs[0], outs[1])
    if torch.cuda.device_count() < 2:
        return
    dev1 = torch.device("cuda", 1)
    ws1 = torch.empty(16 << 20, dtype=torch.uint8, device=dev1)
    w1 = BatchDecodeWithPagedKVCacheWrapper(ws1)
    with torch.cuda.device(0):  # the other device is current throughout
        w1.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
        out1 = w1.run(q.to(dev1), (k.to(dev1), v.to(dev1)))
    torch.cuda.synchronize(dev1)
    assert relative_error(out1.to(q.device), ref) < 1e-2
