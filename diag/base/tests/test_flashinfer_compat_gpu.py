"""Code written for FlashInfer, run unchanged on this library: only FlashInfer's import name,
wrapper names and call signatures are used below (`import flashinfer_gen as flashinfer`), with
the spellings FlashInfer code passes: an int8 workspace, `data_type=` for the KV dtype,
`non_blocking`, `rope_scale` / `rope_theta` with pos_encoding_mode "NONE", `head_dim_vo`,
`use_fp16_qk_reduction=False`, keyword-only scales on run(), and the single-request calls.
Each result is compared with the float64 reference on the same dequantised values; tolerance
1e-2 relative L2 (bf16 rounding of P and of the output, as in the other GPU tests)."""
import math

import pytest
import torch

import flashinfer_gen as flashinfer
from conftest import requires_gpu
from flashinfer_gen.reference import attention_reference, decode_reference, prefill_reference, relative_error

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]
TOL = 1e-2


def paged_case(kv_lens, page_size, hk, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    kv = torch.tensor(kv_lens)
    pages = (kv + page_size - 1) // page_size
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages.cumsum(0)]).to(torch.int32)
    num_pages = int(indptr[-1]) + 3
    indices = torch.randperm(num_pages, generator=gen)[: int(indptr[-1])].to(torch.int32)
    last = (kv - (pages - 1) * page_size).to(torch.int32)
    k = torch.randn(num_pages, page_size, hk, d, generator=gen).to(dtype).cuda()
    v = torch.randn(num_pages, page_size, hk, d, generator=gen).to(dtype).cuda()
    return k, v, indptr.cuda(), indices.cuda(), last.cuda()


def test_batch_decode_as_flashinfer_code_calls_it():
    workspace_buffer = torch.empty(128 * 1024 * 1024, dtype=torch.int8, device="cuda")
    k, v, indptr, indices, last = paged_case([33, 1, 700, 16], 16, 8, 128, torch.float8_e4m3fn, 1)
    q = torch.randn(4, 32, 128, device="cuda").to(torch.bfloat16)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace_buffer, "NHD", use_tensor_cores=True)
    wrapper.plan(indptr, indices, last, 32, 8, 128, 16, pos_encoding_mode="NONE", data_type=torch.float8_e4m3fn,
                 q_data_type=torch.bfloat16, rope_scale=1.0, rope_theta=1e4, non_blocking=True)
    out = wrapper.run(q, (k, v), k_scale=0.5, v_scale=2.0)
    ref, _ = decode_reference(q, k, v, indptr, indices, last, k_scale=0.5, v_scale=2.0)
    assert relative_error(out, ref) < TOL
    # q_scale folds into the logits like a larger sm_scale
    out_q = wrapper.run(q, (k, v), q_scale=2.0, k_scale=0.5, v_scale=2.0)
    ref_q, _ = decode_reference(q, k, v, indptr, indices, last, k_scale=0.5, v_scale=2.0,
                                sm_scale=2.0 / math.sqrt(128))
    assert relative_error(out_q, ref_q) < TOL


def test_batch_prefill_paged_and_ragged_as_flashinfer_code_calls_them():
    workspace_buffer = torch.empty(128 * 1024 * 1024, dtype=torch.int8, device="cuda")
    k, v, kv_indptr, kv_indices, last = paged_case([100, 17, 64], 16, 2, 128, torch.bfloat16, 2)
    qo_indptr = torch.tensor([0, 30, 47, 111], dtype=torch.int32, device="cuda")
    q = torch.randn(111, 8, 128, device="cuda").to(torch.bfloat16)
    prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace_buffer, "NHD")
    prefill.plan(qo_indptr, kv_indptr, kv_indices, last, 8, 2, 128, 16, head_dim_vo=128, causal=True,
                 pos_encoding_mode="NONE", use_fp16_qk_reduction=False, q_data_type=torch.bfloat16,
                 kv_data_type=torch.bfloat16, non_blocking=True)
    out, lse = prefill.run(q, (k, v), return_lse=True)
    ref, ref_lse = prefill_reference(q, k, v, qo_indptr, kv_indptr, kv_indices, last, causal=True)
    assert relative_error(out, ref) < TOL
    assert float((lse.double() - ref_lse).abs().max()) < 1e-3
    # ragged: the same keys as contiguous rows
    kr = torch.cat([attention_rows(k, kv_indices, kv_indptr, last, b) for b in range(3)]).to(torch.bfloat16)
    vr = torch.cat([attention_rows(v, kv_indices, kv_indptr, last, b) for b in range(3)]).to(torch.bfloat16)
    kv_lens = [100, 17, 64]
    ragged_indptr = torch.tensor([0, 100, 117, 181], dtype=torch.int32, device="cuda")
    ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace_buffer, "NHD")
    ragged.plan(qo_indptr, ragged_indptr, 8, 2, 128, head_dim_vo=128, causal=True, q_data_type=torch.bfloat16)
    out_r = ragged.run(q, kr, vr)
    assert relative_error(out_r, ref) < TOL
    assert sum(kv_lens) == kr.shape[0]


def attention_rows(cache, indices, indptr, last, b):
    """Request b's K or V rows from the 4-D NHD cache, in order."""
    pages = indices[int(indptr[b]):int(indptr[b + 1])].long()
    rows = cache[pages].reshape(-1, cache.shape[2], cache.shape[3])
    return rows[: (pages.numel() - 1) * cache.shape[1] + int(last[b])].float()


@pytest.mark.parametrize("kv_layout", ["NHD", "HND"])
def test_single_decode_and_prefill(kv_layout):
    gen = torch.Generator().manual_seed(3)
    kv_len, hq, hk, d = 300, 16, 4, 128
    k = torch.randn(kv_len, hk, d, generator=gen).to(torch.float16).cuda()
    v = torch.randn(kv_len, hk, d, generator=gen).to(torch.float16).cuda()
    kk, vv = (k, v) if kv_layout == "NHD" else (k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous())
    q1 = torch.randn(hq, d, generator=gen).to(torch.float16).cuda()
    out = flashinfer.single_decode_with_kv_cache(q1, kk, vv, kv_layout=kv_layout, logits_soft_cap=None)
    ref, _ = attention_reference(q1.unsqueeze(0), k, v)
    assert relative_error(out, ref[0]) < 2e-3
    q = torch.randn(40, hq, d, generator=gen).to(torch.float16).cuda()
    out_p, lse = flashinfer.single_prefill_with_kv_cache(q, kk, vv, causal=True, kv_layout=kv_layout,
                                                         return_lse=True)
    ref_p, ref_lse = attention_reference(q, k, v, causal=True)
    assert relative_error(out_p, ref_p) < 2e-3
    assert float((lse.double() - ref_lse).abs().max()) < 1e-3


def test_flashinfer_arguments_this_library_cannot_honour_are_refused():
    workspace_buffer = torch.empty(16 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    k, v, kv_indptr, kv_indices, last = paged_case([10], 16, 2, 128, torch.bfloat16, 4)
    qo = torch.tensor([0, 10], dtype=torch.int32, device="cuda")
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace_buffer)
    for kwargs, match in ((dict(custom_mask=torch.ones(100, dtype=torch.bool, device="cuda")), "custom_mask"),
                          (dict(head_dim_vo=64), "head_dim_vo"), (dict(use_fp16_qk_reduction=True), "fp16_qk"),
                          (dict(pos_encoding_mode="ROPE_LLAMA"), "pos_encoding_mode")):
        with pytest.raises(flashinfer.ArgumentError, match=match):
            w.plan(qo, kv_indptr, kv_indices, last, 8, 2, 128, 16, **kwargs)
    d = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace_buffer)
    with pytest.raises(flashinfer.ArgumentError, match="data_type"):
        d.plan(kv_indptr, kv_indices, last, 8, 2, 128, 16, kv_data_type=torch.bfloat16, data_type=torch.float16)
    with pytest.raises(flashinfer.ArgumentError, match="1-byte dtype"):
        flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(1024, dtype=torch.float16, device="cuda"))


def test_scales_as_device_tensors_follow_a_captured_graph():
    """k_scale / v_scale / q_scale as one-element CUDA float32 tensors: the kernel reads them at
    launch, so a graph captured once follows a changed value; a non-positive logits scale gives
    NaN (it cannot be checked on the host without a sync), never a plausible wrong answer."""
    workspace_buffer = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    k, v, indptr, indices, last = paged_case([40, 300], 16, 2, 128, torch.float8_e4m3fn, 8)
    q = torch.randn(2, 8, 128, device="cuda").to(torch.bfloat16)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace_buffer)
    w.plan(indptr, indices, last, 8, 2, 128, 16, q_data_type=torch.bfloat16, kv_data_type=torch.float8_e4m3fn)
    k_scale = torch.tensor([0.5], device="cuda")
    v_scale = torch.tensor([2.0], device="cuda")
    out = torch.empty_like(q)
    w.run(q, (k, v), k_scale=k_scale, v_scale=v_scale, out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q, (k, v), k_scale=k_scale, v_scale=v_scale, out=out)
    for ks, vs in ((0.5, 2.0), (0.125, 0.75), (3.0, 1.0)):
        k_scale.fill_(ks)
        v_scale.fill_(vs)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = decode_reference(q, k, v, indptr, indices, last, k_scale=ks, v_scale=vs)
        assert relative_error(out, ref) < TOL, (ks, vs)
    k_scale.fill_(0.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isnan(out).all()
    # prefill reads them the same way
    # FlashInfer's FA2 backend (q in 16 bits, K/V upcast) for TOL; the FP8 tiles' own scale test is
    # test_prefill_sm90_gpu.py's test_fp8_cuda_graph_and_device_scales
    p = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace_buffer, backend="fa2")
    qo_indptr = torch.tensor([0, 5, 12], dtype=torch.int32, device="cuda")
    qp = torch.randn(12, 8, 128, device="cuda").to(torch.bfloat16)
    p.plan(qo_indptr, indptr, indices, last, 8, 2, 128, 16, causal=True, q_data_type=torch.bfloat16,
           kv_data_type=torch.float8_e4m3fn)
    k_scale.fill_(0.25)
    q_scale = torch.tensor([2.0], device="cuda")
    out_p = p.run(qp, (k, v), q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    ref_p, _ = prefill_reference(qp, k, v, qo_indptr, indptr, indices, last, causal=True, k_scale=0.25, v_scale=1.0,
                                 sm_scale=2.0 / math.sqrt(128))
    assert relative_error(out_p, ref_p) < TOL
    with pytest.raises(flashinfer.ArgumentError, match="one-element float32"):
        w.run(q, (k, v), k_scale=torch.tensor([0.5]))
