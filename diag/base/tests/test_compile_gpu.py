"""torch.compile(fullgraph=True) over an attention layer that appends its new K/V to an FP8
paged cache and then attends with the decode (or prefill) wrapper: the wrappers' run() and
append_paged_kv_cache are custom ops with fake implementations, so the graph has no break
(fullgraph=True raises on one), and the compiled layer gives what the eager layer gives: the
same kernels on the same inputs (the projection is an extern matmul either way, the rest exact
elementwise work), so the outputs and caches are compared for equality."""
import pytest
import torch

import flashinfer_gen
from conftest import requires_gpu

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]


def setup(batch, seq, hq, hk, d, page, fp8):
    gen = torch.Generator().manual_seed(7)
    pages_per = (seq + page - 1) // page
    num_pages = batch * pages_per + 2
    indices = torch.randperm(num_pages, generator=gen)[: batch * pages_per].to(torch.int32).cuda()
    indptr = torch.arange(0, batch * pages_per + 1, pages_per, dtype=torch.int32).cuda()
    last = torch.full((batch,), seq - (pages_per - 1) * page, dtype=torch.int32).cuda()
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    k = torch.randn(num_pages, page, hk, d, generator=gen).to(dtype).cuda()
    v = torch.randn(num_pages, page, hk, d, generator=gen).to(dtype).cuda()
    return k, v, indices, indptr, last, dtype


class DecodeLayer(torch.nn.Module):
    """Project x to q/k/v, append the new token's K/V, decode against the cache, project out."""

    def __init__(self, wrapper, hq, hk, d, indices, indptr, last, positions):
        super().__init__()
        self.wrapper, self.hq, self.hk, self.d = wrapper, hq, hk, d
        self.qkv = torch.nn.Linear(64, (hq + 2 * hk) * d, bias=False, dtype=torch.bfloat16, device="cuda")
        self.indices, self.indptr, self.last, self.positions = indices, indptr, last, positions

    def forward(self, x, k_cache, v_cache):
        qkv = self.qkv(x)
        q, k, v = qkv.split([self.hq * self.d, self.hk * self.d, self.hk * self.d], dim=-1)
        batch = torch.arange(x.shape[0], dtype=torch.int32, device=x.device)
        flashinfer_gen.append_paged_kv_cache(k.reshape(-1, self.hk, self.d), v.reshape(-1, self.hk, self.d), batch,
                                             self.positions, (k_cache, v_cache), self.indices, self.indptr, self.last,
                                             k_scale=0.5, v_scale=0.25)
        return self.wrapper.run(q.reshape(-1, self.hq, self.d), (k_cache, v_cache), k_scale=0.5, v_scale=0.25)


@torch.no_grad()  # serving runs without autograd; the ops have no backward
def test_decode_layer_compiles_fullgraph_and_matches_eager():
    batch, seq, hq, hk, d, page = 4, 100, 8, 2, 128, 16
    k, v, indices, indptr, last, dtype = setup(batch, seq, hq, hk, d, page, fp8=True)
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer_gen.BatchDecodeWithPagedKVCacheWrapper(workspace)
    w.plan(indptr, indices, last, hq, hk, d, page, q_data_type=torch.bfloat16, kv_data_type=dtype)
    positions = torch.full((batch,), seq - 1, dtype=torch.int32, device="cuda")  # the newest token's slot
    layer = DecodeLayer(w, hq, hk, d, indices, indptr, last, positions)
    x = torch.randn(batch, 64, dtype=torch.bfloat16, device="cuda")
    k_eager, v_eager = k.clone(), v.clone()
    want = layer(x, k_eager, v_eager)
    compiled = torch.compile(layer, fullgraph=True)
    got = compiled(x, k, v)
    torch.cuda.synchronize()
    assert torch.equal(k.view(torch.uint8), k_eager.view(torch.uint8)), "the compiled append wrote other codes"
    assert torch.equal(v.view(torch.uint8), v_eager.view(torch.uint8))
    assert torch.equal(got, want)
    # a second call with new inputs runs the same compiled graph (no recompile needed for values)
    x2 = torch.randn_like(x)
    assert torch.equal(compiled(x2, k, v), layer(x2, k_eager, v_eager))


@torch.no_grad()
def test_prefill_call_compiles_fullgraph_with_lse():
    batch, seq, hq, hk, d, page = 2, 64, 8, 2, 128, 16
    k, v, indices, indptr, last, dtype = setup(batch, seq, hq, hk, d, page, fp8=False)
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace)
    qo_indptr = torch.tensor([0, 64, 128], dtype=torch.int32, device="cuda")
    w.plan(qo_indptr, indptr, indices, last, hq, hk, d, page, causal=True, q_data_type=torch.bfloat16)
    q = torch.randn(128, hq, d, dtype=torch.bfloat16, device="cuda")

    def attend(q, k, v):
        out, lse = w.run(q * 2, (k, v), return_lse=True)
        return out.float() + lse.unsqueeze(-1)

    want = attend(q, k, v)
    got = torch.compile(attend, fullgraph=True)(q, k, v)
    assert torch.equal(got, want)


@torch.no_grad()
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="an e4m3 q runs on the Hopper prefill family (sm_90) only")
def test_prefill_with_e4m3_q_compiles_and_follows_the_output_dtype():
    """An e4m3 q writes the plan's o_data_type, which the compiled call takes from the plan it
    traced under: a re-plan to another output dtype compiles again (Dynamo's guard on the plan)
    rather than returning a tensor of the old dtype; an `out` of another dtype is refused."""
    batch, seq, hq, hk, d, page = 2, 64, 8, 2, 128, 16
    k, v, indices, indptr, last, _ = setup(batch, seq, hq, hk, d, page, fp8=True)
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer_gen.BatchPrefillWithPagedKVCacheWrapper(workspace)
    qo_indptr = torch.tensor([0, 64, 128], dtype=torch.int32, device="cuda")
    q = torch.randn(128, hq, d, device="cuda").to(torch.float8_e4m3fn)

    def attend(q, k, v):
        return w.run(q, (k, v), q_scale=0.5, k_scale=0.75).float()

    compiled = torch.compile(attend, fullgraph=True)
    for o_dtype in (torch.float16, torch.bfloat16):
        w.plan(qo_indptr, indptr, indices, last, hq, hk, d, page, causal=True, q_data_type=torch.float8_e4m3fn,
               kv_data_type=torch.float8_e4m3fn, o_data_type=o_dtype)
        assert w.run(q, (k, v)).dtype == o_dtype
        assert torch.equal(compiled(q, k, v), attend(q, k, v))
    # what run() does under torch.compile, called directly: an out of the wrong dtype is refused
    # (it would otherwise be filled by a converting copy_)
    from flashinfer_gen.ops import compiled_run
    with pytest.raises(flashinfer_gen.ArgumentError, match="out must be"):
        compiled_run(w, q, k, v, (), None, None, None, torch.empty(q.shape, dtype=torch.float16, device="cuda"),
                     None, False)
