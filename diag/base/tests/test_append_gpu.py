"""append_paged_kv_cache and get_batch_indices_positions on the GPU.

The codes are checked bit for bit: a 16-bit cache must hold the appended rows unchanged, an FP8
cache clamp(x * fp32(1 / scale), -max, max).to(float8) (torch's round-to-nearest-even; NaN stays
NaN), computed on the host from the same inputs. Every byte of the cache that no appended token
owns must be unchanged (the cache starts as random bytes, so a stray write shows), including
the rest of each token's page and a token whose position or request lies outside the page table.
"""
import numpy as np
import pytest
import torch

from conftest import requires_gpu
from gpu_instances import kv_cases
from flashinfer_gen import ArgumentError, append_paged_kv_cache, get_batch_indices_positions

pytestmark = [requires_gpu, pytest.mark.gpu, pytest.mark.usefixtures("gpu_instances")]

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
CASES = kv_cases()


def _ids(v):
    return str(v).replace("torch.", "") if v is not None else "none"


def make_cache(seq_lens, page_size, hk, d, dtype, layout, combined, gen):
    """A cache of random bytes and a random non-contiguous page table with room for seq_lens."""
    seq_lens = torch.tensor(seq_lens)
    pages = (seq_lens + page_size - 1) // page_size
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages.cumsum(0)]).to(torch.int32)
    num_pages = int(indptr[-1]) + 5
    indices = torch.randperm(num_pages, generator=gen)[: int(indptr[-1])].to(torch.int32)
    last = (seq_lens - (pages - 1) * page_size).to(torch.int32)
    shape = (num_pages, page_size, hk, d) if layout == "NHD" else (num_pages, hk, page_size, d)
    nbytes = torch.tensor([], dtype=dtype).element_size()
    full = (num_pages, 2) + shape[1:] if combined else (2,) + shape
    raw = torch.randint(0, 256, (int(np.prod(full)) * nbytes,), dtype=torch.uint8, generator=gen)
    if dtype in FP8_MAX:  # random codes, NaN codes included
        data = raw.view(dtype).view(full).cuda()
    else:  # random finite 16-bit values (random bytes could be NaN, which compares unequal)
        data = torch.randn(full, generator=gen).to(dtype).cuda()
    if combined:
        k, v, cache = data[:, 0], data[:, 1], data
    else:
        k, v, cache = data[0], data[1], (data[0], data[1])
    return k, v, cache, indptr.cuda(), indices.cuda(), last.cuda()


def expected_codes(x: torch.Tensor, cache_dtype, scale):
    if cache_dtype not in FP8_MAX:
        return x.cpu()
    inv = torch.tensor(np.float32(1.0) / np.float32(1.0 if scale is None else scale))
    y = x.cpu().float() * inv
    return torch.clamp(y, -FP8_MAX[cache_dtype], FP8_MAX[cache_dtype]).to(cache_dtype)


def slot_view(cache_tensor, layout, page, slot):
    return cache_tensor[page, slot] if layout == "NHD" else cache_tensor[page, :, slot]


@pytest.mark.parametrize("src_dtype,cache_dtype,conv", CASES, ids=_ids)
@pytest.mark.parametrize("layout,combined,page_size", [("NHD", False, 16), ("HND", False, 1), ("NHD", True, 5),
                                                       ("HND", True, 16)])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_append_bit_exact(src_dtype, cache_dtype, conv, layout, combined, page_size, d):
    gen = torch.Generator().manual_seed(d + page_size)
    hk = 4
    # sequence lengths after the append (1, page multiples, ragged) and the appended counts
    seq_lens = [1, 16, 33, 80, 7, 64]
    append_lens = [1, 16, 5, 80, 0, 3]
    k, v, cache, indptr, indices, last = make_cache(seq_lens, page_size, hk, d, cache_dtype, layout, combined, gen)
    before_k, before_v = k.clone(), v.clone()
    append_indptr = torch.tensor([0] + np.cumsum(append_lens).tolist(), dtype=torch.int32).cuda()
    nnz = int(sum(append_lens))
    batch_indices, positions = get_batch_indices_positions(append_indptr, torch.tensor(seq_lens, dtype=torch.int32)
                                                           .cuda(), nnz)
    # the helper against a plain loop
    want_b, want_p = [], []
    for b, (n, s) in enumerate(zip(append_lens, seq_lens)):
        want_b += [b] * n
        want_p += list(range(s - n, s))
    assert batch_indices.tolist() == want_b and positions.tolist() == want_p
    # values: normal, with large ones past the FP8 range and a few NaN / inf to keep or saturate
    x = torch.randn(2, nnz, hk, d, generator=gen) * torch.tensor([1.0, 300.0]).view(2, 1, 1, 1)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -1e6])
    key, value = x[0].to(src_dtype).cuda(), x[1].to(src_dtype).cuda()
    scales = (0.5, 3.0) if cache_dtype in FP8_MAX else (None, None)
    append_paged_kv_cache(key, value, batch_indices, positions, cache, indices, indptr, last, kv_layout=layout,
                          k_scale=scales[0], v_scale=scales[1], fp8_conversion=conv)
    torch.cuda.synchronize()
    want_k, want_v = before_k.clone(), before_v.clone()
    exp_k, exp_v = expected_codes(key, cache_dtype, scales[0]), expected_codes(value, cache_dtype, scales[1])
    ind_h, indices_h = indptr.cpu(), indices.cpu()
    for i in range(nnz):
        b, p = want_b[i], want_p[i]
        page = int(indices_h[int(ind_h[b]) + p // page_size])
        slot_view(want_k, layout, page, p % page_size).copy_(exp_k[i].cuda())
        slot_view(want_v, layout, page, p % page_size).copy_(exp_v[i].cuda())
    for got, want, what in ((k, want_k, "k"), (v, want_v, "v")):
        gb, wb = got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)
        if cache_dtype in FP8_MAX:
            # NaN codes: e4m3 has one (S.1111.111), e5m2 several; any NaN code keeps the NaN
            nan = torch.isnan(want.contiguous().float())
            assert torch.equal(torch.isnan(got.contiguous().float()), nan), f"{what}: NaN pattern differs"
            same = torch.equal(gb[~nan], wb[~nan])
        else:
            same = torch.equal(gb, wb)
        assert same, f"{what} cache differs from the expected codes"


def test_out_of_range_tokens_are_skipped():
    """A token whose position lies past its request's pages, or whose request index is past the
    batch, writes nothing anywhere; the others still land."""
    gen = torch.Generator().manual_seed(5)
    k, v, cache, indptr, indices, last = make_cache([16, 16], 16, 2, 128, torch.bfloat16, "NHD", False, gen)
    before_k, before_v = k.clone(), v.clone()
    key = torch.randn(4, 2, 128, generator=gen).to(torch.bfloat16).cuda()
    value = torch.randn(4, 2, 128, generator=gen).to(torch.bfloat16).cuda()
    batch_indices = torch.tensor([0, 1, 7, 0], dtype=torch.int32).cuda()
    # 16: past request 1's one page; 7: no such request; -2: a negative position
    positions = torch.tensor([3, 16, 0, -2], dtype=torch.int32).cuda()
    append_paged_kv_cache(key, value, batch_indices, positions, cache, indices, indptr, last)
    torch.cuda.synchronize()
    want_k, want_v = before_k.clone(), before_v.clone()
    want_k[int(indices[0]), 3] = key[0]
    want_v[int(indices[0]), 3] = value[0]
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


def test_bad_inputs_are_refused_before_launch():
    gen = torch.Generator().manual_seed(6)
    k, v, cache, indptr, indices, last = make_cache([8], 16, 2, 128, torch.float8_e4m3fn, "NHD", False, gen)
    before = k.clone()
    key = torch.randn(4, 2, 128).to(torch.bfloat16).cuda()
    b = torch.zeros(4, dtype=torch.int32).cuda()
    p = torch.arange(4, dtype=torch.int32).cuda()
    ok = dict(append_key=key, append_value=key.clone(), batch_indices=b, positions=p, paged_kv_cache=cache,
              kv_indices=indices, kv_indptr=indptr, kv_last_page_len=last)
    bad = [
        (dict(append_key=key.float(), append_value=key.float()), "float16 or bfloat16"),
        (dict(append_value=key[:3]), "must match append_key"),
        (dict(batch_indices=b.long()), "int32"),
        (dict(positions=p[:3]), "entries"),
        (dict(batch_indices=b.cpu()), "CUDA"),
        (dict(kv_layout="NDH"), "kv_layout"),
        (dict(k_scale=-1.0), "k_scale must be > 0"),
        (dict(kv_last_page_len=last.repeat(2)), "kv_last_page_len"),
        (dict(append_key=key[:, :, :64].contiguous(), append_value=key[:, :, :64].contiguous()),
         "does not match layout"),
        (dict(paged_kv_cache=(k.to(torch.float16), v.to(torch.float16))), "cache takes"),
    ]
    for change, match in bad:
        args = {**ok, **change}
        with pytest.raises(ArgumentError, match=match):
            append_paged_kv_cache(**args)
    k16 = torch.zeros(2, 16, 2, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ArgumentError, match="quantise into an FP8 cache"):
        append_paged_kv_cache(**{**ok, "paged_kv_cache": (k16, k16.clone()), "k_scale": 2.0})
    torch.cuda.synchronize()
    assert torch.equal(k.view(torch.uint8), before.view(torch.uint8)), "a refused call wrote the cache"
