"""One small paged prefill per KV dtype and conversion (causal, GQA 4, ragged lengths, a split-KV
case), on each prefill family the GPU runs (backend sm80, and sm90 on Hopper: 16-bit caches and
FP8 caches on FP8 tiles with a bf16 or an e4m3 q, pages of 16 by TMA, of 3 by the cp.async gather;
persistent CTAs capped at 2, so each walks many units), for compute-sanitizer:
`compute-sanitizer --tool memcheck|racecheck|synccheck python bench/sanitize_prefill.py`.
--head-dim 64: the head-dim-64 cases alone (the Hopper family's CTAs of three consumer warpgroups,
the Ampere path's FP8 caches, whose codes the warps read from padded rows). --head-dim 128,
192 or 256: the Ampere-path cases alone at that head dim (CTAs of 8 warps from 192 on), and at 192
and 256 the Hopper family's bf16 and FP8 tiles (FP8 also with the soft-cap).
Checks each result against the float64 reference as well (FP8 tiles: on q as the kernel reads it,
within 0.05, about the L2 bound of tests/test_prefill_sm90_gpu.py for P's e4m3 rounding).
--tail: the Ampere path's cases with a short last wave cut into pieces (resident CTAs faked)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flashinfer_gen import BatchPrefillWithPagedKVCacheWrapper, prefill  # noqa: E402
from flashinfer_gen.reference import prefill_reference, quantize_q_rows, relative_error  # noqa: E402
from generator.arches import arch_for_capability  # noqa: E402


def case(kv_dtype, conversion, qo_lens, kv_lens, hq=8, hk=2, d=128, page=16, backend="sm80", q_dtype=torch.bfloat16,
         ctas=None, soft_cap=None, causal=True, resident=None):
    prefill.MAX_PERSISTENT_CTAS = ctas  # a persistent instance's grid capped: each CTA walks many units
    if resident is not None:  # resident CTAs faked, for plan()'s cut of a short last wave (cut_last_wave)
        prefill.resident_ctas = lambda module, device: resident
    gen = torch.Generator().manual_seed(1)
    kv = torch.tensor(kv_lens)
    pages = (kv + page - 1) // page
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), pages.cumsum(0)]).to(torch.int32)
    indices = torch.randperm(int(indptr[-1]) + 3, generator=gen)[: int(indptr[-1])].to(torch.int32)
    last = (kv - (pages - 1) * page).to(torch.int32)
    qo_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(qo_lens).cumsum(0)]).to(torch.int32)
    num_pages = int(indptr[-1]) + 3
    k = torch.randn(num_pages, page, hk, d, generator=gen).cuda().to(kv_dtype)
    v = torch.randn(num_pages, page, hk, d, generator=gen).cuda().to(kv_dtype)
    q = torch.randn(int(qo_indptr[-1]), hq, d, generator=gen).cuda().to(q_dtype)
    ws = torch.empty(32 << 20, dtype=torch.uint8, device="cuda")
    w = BatchPrefillWithPagedKVCacheWrapper(ws, fp8_conversion=conversion, backend=backend)
    w.plan(qo_indptr, indptr, indices, last, hq, hk, d, page, causal=causal, logits_soft_cap=soft_cap,
           q_data_type=q_dtype, kv_data_type=kv_dtype)
    out = w.run(q, (k, v), q_scale=0.5 if q_dtype.itemsize == 1 else None)
    torch.cuda.synchronize()
    fp8_tiles = w.module.key.kind == "prefill_sm90" and kv_dtype.itemsize == 1
    q_ref = q.double() * 0.5 if q_dtype.itemsize == 1 else quantize_q_rows(q) if fp8_tiles else q
    ref, _ = prefill_reference(q_ref, k, v, qo_indptr, indptr.cuda(), indices.cuda(), last, logits_soft_cap=soft_cap,
                               causal=causal)
    err = relative_error(out, ref)
    grid = w._plan["params"].work.ctas
    print(f"{w.module.key.name}: {w._plan['schedule'].request.size} items, {w._plan['schedule'].num_partial} "
          f"partial slots, {f'{grid} persistent CTAs' if grid else 'a CTA per unit'}, rel. error {err:.2e}")
    sched = w._plan["schedule"]
    cut = resident is None or ((sched.pieces > 1) & (sched.partial < 0)).any()  # a cut past a request's start
    if not cut:
        print("  plan() cut no last wave here")
    return err < (0.05 if fp8_tiles else 1e-2) and cut


def main() -> int:
    # --head-dim 64: only the head-dim-64 cases (the Hopper family's three-consumer CTAs, 16-bit and FP8, and
    # the Ampere path's FP8 caches); 128, 192, 256:
    # only the Ampere path's cases at that head dim (CTAs of 8 warps from 192 on), and at 192 and
    # 256 the Hopper family's bf16 and FP8 tiles
    only_d64 = sys.argv[1:] == ["--head-dim", "64"]
    wide = sys.argv[1:] in (["--head-dim", "128"], ["--head-dim", "192"], ["--head-dim", "256"])
    tail = sys.argv[1:] == ["--tail"]
    if sys.argv[1:] and not (only_d64 or wide or tail):
        sys.exit("usage: sanitize_prefill.py [--head-dim 64|128|192|256 | --tail]")
    arch = arch_for_capability(torch.cuda.get_device_capability())
    ok = True
    if tail:
        # a short last wave cut into split-KV pieces (the Ampere path, non-causal, 28 units on 26
        # faked resident CTAs): split items whose first token is past their request's start,
        # whose `partial` is below 0, written by the epilogue as split
        for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            for conversion in (arch.conversions if kv_dtype != torch.bfloat16 else (None,)):
                ok &= case(kv_dtype, conversion, [100, 300], [1600, 1700], causal=False, resident=26)
        print("all within tolerance" if ok else "SOME CASE FAILED")
        return 0 if ok else 1
    if wide:
        d = int(sys.argv[2])
        for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            for conversion in (arch.conversions if kv_dtype != torch.bfloat16 else (None,)):
                ok &= case(kv_dtype, conversion, [1, 70, 33, 150], [40, 200, 33, 300], d=d)
        ok &= case(torch.bfloat16, None, [16], [3000], d=d)  # split-KV and the merge kernel
        if d in (192, 256) and torch.cuda.get_device_capability() == (9, 0):
            # the Hopper family at head dims 192 and 256: 16-bit 64-key tiles (three consumers at
            # 192), and FP8 tiles: 64-key tiles, 64-byte rows of transposed V, three items a
            # producer warp (column groups by halves of the keys) or two column groups in the V
            # transpose, 64-byte atoms of Q, K and V at 192; TMA and gather
            for page in (16, 3):
                # 16-bit 64-key tiles (TMA boxes at page 16; three 64-element atoms a row at 192)
                ok &= case(torch.bfloat16, None, [1, 70, 33, 150], [40, 200, 33, 300], d=d, page=page, backend="sm90")
                for kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                    ok &= case(kv_dtype, None, [1, 70, 33, 150], [40, 200, 33, 300], d=d, page=page, backend="sm90")
                ok &= case(torch.float8_e4m3fn, None, [1, 70, 33], [40, 200, 33], d=d, page=page, backend="sm90",
                           q_dtype=torch.float8_e4m3fn)
                # with the soft-cap (the FP8 loop's gathered-tile test without the request's key count)
                ok &= case(torch.float8_e4m3fn, None, [1, 70, 33], [40, 200, 33], d=d, page=page, backend="sm90",
                           soft_cap=30.0)
        print("all within tolerance" if ok else "SOME CASE FAILED")
        return 0 if ok else 1
    if torch.cuda.get_device_capability() == (9, 0):
        for page in (16, 3):  # head dim 64: three consumer warpgroups a CTA (16-bit tiles), persistent or capped at 2
            for ctas in (None, 2):
                ok &= case(torch.bfloat16, None, [1, 70, 33, 300], [40, 200, 33, 700], d=64, page=page, backend="sm90",
                           ctas=ctas)
            # FP8 tiles at head dim 64: 64-byte swizzled Q, K and V rows (TMA boxes at page 16), two
            # producer warps a column group in the V transpose
            for kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                ok &= case(kv_dtype, None, [1, 70, 33, 300], [40, 200, 33, 700], d=64, page=page, backend="sm90")
            ok &= case(torch.float8_e4m3fn, None, [1, 70, 33], [40, 200, 33], d=64, page=page, backend="sm90",
                       q_dtype=torch.float8_e4m3fn)
    if only_d64:
        # the Ampere path's FP8 caches at head dim 64: `cvt` and e5m2's software routine read the
        # codes in the warps, from rows of 64 codes padded to 80 bytes; e4m3's software routine
        # upcasts by the CTA
        for kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            for conversion in arch.conversions:
                ok &= case(kv_dtype, conversion, [1, 70, 33], [40, 200, 33], d=64)
        print("all within tolerance" if ok else "SOME CASE FAILED")
        return 0 if ok else 1
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        for conversion in (arch.conversions if kv_dtype != torch.bfloat16 else (None,)):
            ok &= case(kv_dtype, conversion, [1, 70, 33], [40, 200, 33])
    ok &= case(torch.bfloat16, None, [16], [3000])  # few items: split-KV and the merge kernel
    if torch.cuda.get_device_capability() == (9, 0):
        for page in (16, 3):  # TMA boxes; the cp.async gather
            ok &= case(torch.bfloat16, None, [1, 70, 33], [40, 200, 33], page=page, backend="sm90")
            ok &= case(torch.bfloat16, None, [16], [3000], page=page, backend="sm90")
            for kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):  # FP8 tiles: the V transpose ring
                ok &= case(kv_dtype, None, [1, 70, 33], [40, 200, 33], page=page, backend="sm90")
            ok &= case(torch.float8_e4m3fn, None, [16], [3000], page=page, backend="sm90")
            ok &= case(torch.float8_e4m3fn, None, [1, 70, 33], [40, 200, 33], page=page, backend="sm90",
                       q_dtype=torch.float8_e4m3fn)  # q given in e4m3
            for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):  # persistent CTAs, rings running on across units
                ok &= case(kv_dtype, None, [1, 70, 33, 300], [40, 200, 33, 700], page=page, backend="sm90", ctas=2)
    print("all within tolerance" if ok else "SOME CASE FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
