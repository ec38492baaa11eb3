"""BatchPrefillWithPagedKVCacheWrapper and BatchPrefillWithRaggedKVCacheWrapper, FlashInfer's API:
plan() once per batch layout (validation, instance lookup, the work list, one host-to-device copy),
run() per layer (checks shapes, launches; allocates nothing but `out`/`lse` when they are not
given). run() can be captured in a CUDA graph after plan(); a later plan() changes the work list's
size and addresses, so capture again after re-planning (a graph replayed across plans would read
the wrong items).

The ragged wrapper's contiguous K/V [tokens, heads, dim] are handed to the same kernel as a paged
cache with one page per request: page index = the request's first row, page size 2^30.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from generator.instances import KINDS
from generator.kind_prefill import HEAD_DIMS, PARAMS

from .common import (INT32_MAX, UNSET_QUERY, CheckedInputs, Wrapper, check_kv, check_kv_alignment, check_q,
                     check_variant, dtype_names, flashinfer_extras, launch, launch_params, lay_out_plan,
                     lookup_family, merge_fields, output_tensors, plan_kv_fields, positional_run_args, resident_ctas,
                     set_run_fields, unset_output)
from .ops import compiled_run, split_cache
from .validation import (TORCH_DTYPES, check_head_config, check_indptr, check_page_table,
                         fail, kv_strides, require_int_index, require_tensor, scale_arg,
                         split_paged_kv)

MAX_PIECES = 64
# backend= of the wrappers -> the kernel families (kinds of the prefill ABI) it may use, preferred
# first. "auto" takes the Hopper family where its instance is built for the call and the device,
# else the Ampere-path one. FlashInfer's names for its two families are accepted as aliases.
BACKENDS = {
    "auto": ("prefill_sm90", "prefill"),
    "sm90": ("prefill_sm90",),
    "sm80": ("prefill",),
    "fa3": ("prefill_sm90",),
    "fa2": ("prefill",),
}
RAGGED_PAGE_SIZE = 1 << 30  # one page holds a whole request's contiguous rows


@dataclass
class PrefillSchedule:
    """Work list (one CTA per item and KV head) and the split-KV merge of split requests."""
    request: np.ndarray
    row_begin: np.ndarray
    kv_begin: np.ndarray
    kv_end: np.ndarray
    partial: np.ndarray   # -1, or the request's first partial slot + the item's piece
    pieces: np.ndarray
    merge_row: np.ndarray
    merge_indptr: np.ndarray
    num_partial: int


def make_schedule(qo_len: np.ndarray, kv_len: np.ndarray, group: int, causal: bool, window_left: int,
                  kv_heads: int, resident_ctas: int, tile_rows: int, tile_keys: int) -> PrefillSchedule:
    """Cuts every request into tile_rows packed rows (token x group + head) with the keys those rows
    see (causal rows stop at their diagonal, windowed rows start at their window). Where the items
    would not fill one wave of the GPU, each request's key ranges are cut into up to MAX_PIECES
    pieces (whole tiles) whose partial results a merge kernel combines. Longest items first."""
    items = []  # (request, row_begin, begin, end)
    for b, (n, m) in enumerate(zip(qo_len.tolist(), kv_len.tolist())):
        rows = n * group
        for row0 in range(0, rows, tile_rows):
            first, last = row0 // group, (min(rows, row0 + tile_rows) - 1) // group
            begin = max(0, m - n + first - window_left) if window_left >= 0 else 0
            end = min(m, m - n + last + 1) if causal else m
            items.append((b, row0, begin, end))
    pieces_of = np.ones(len(qo_len), dtype=np.int64)
    if items and len(items) * kv_heads < resident_ctas:
        want = min(MAX_PIECES, -(-resident_ctas // (len(items) * kv_heads)))
        for b in range(len(qo_len)):
            longest = max((e - s for r, _, s, e in items if r == b), default=0)
            pieces_of[b] = max(1, min(want, longest // (2 * tile_keys)))
    slot_base = np.zeros(len(qo_len), dtype=np.int64)
    split = pieces_of > 1
    slot_base[split] = np.cumsum(np.concatenate([[0], (qo_len * pieces_of)[split]]))[:-1]
    work = []
    for b, row0, begin, end in items:
        p = int(pieces_of[b])
        if p == 1:
            work.append((b, row0, begin, end, -1, 1))
            continue
        chunk = -(-max(1, -(-(end - begin) // p)) // tile_keys) * tile_keys
        for i in range(p):  # a piece may be empty: its rows then write O = 0, LSE = -inf
            lo = min(end, begin + i * chunk)
            work.append((b, row0, lo, min(end, lo + chunk), int(slot_base[b]) + i, p))
    work.sort(key=lambda w: -(w[3] - w[2]))
    cols = np.array(work, dtype=np.int64).reshape(-1, 6).T
    qo_start = np.concatenate([[0], np.cumsum(qo_len)])
    merge_row = np.concatenate([qo_start[b] + np.arange(qo_len[b]) for b in np.nonzero(split)[0]] + [np.zeros(0)])
    counts = np.concatenate([np.full(qo_len[b], pieces_of[b]) for b in np.nonzero(split)[0]] + [np.zeros(0)])
    i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return PrefillSchedule(*(i32(c) for c in cols), i32(merge_row), i32(np.concatenate([[0], np.cumsum(counts)])),
                           int((qo_len * pieces_of)[split].sum()))


class _BatchPrefill(Wrapper):
    """plan()/run() of both wrappers; they differ in how the keys are described."""

    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str = "NHD", fp8_conversion: str | None = None,
                 jit: bool | None = None, *, backend: str = "auto"):
        """workspace_buffer: a CUDA tensor of a 1-byte dtype (FlashInfer suggests 128 MB) for the split-KV
        partials; wrappers may share one (each keeps its own work list). fp8_conversion: None
        (hardware where the arch has it), "hardware" or "software". jit: build a missing instance
        on demand. backend: "auto", "sm90" (Hopper WGMMA family, sm_90a only), "sm80" (the mma.sync
        family, every arch), or FlashInfer's "fa3" / "fa2" for those two."""
        super().__init__(workspace_buffer, kv_layout, fp8_conversion, jit)
        if backend not in BACKENDS:
            fail(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        self._backend = backend

    def _plan_common(self, qo_indptr, kv_len: np.ndarray, num_qo_heads, num_kv_heads, head_dim, page_size, causal,
                     pos_encoding_mode, sm_scale, window_left, logits_soft_cap, q_data_type, kv_data_type,
                     page_table: dict) -> None:
        device = self._workspace.device
        window_left, soft_cap, scale = check_variant(head_dim, pos_encoding_mode, window_left, logits_soft_cap,
                                                     sm_scale)
        if not isinstance(causal, bool):
            fail(f"causal must be a bool, got {causal!r}")
        q_name, kv_name = dtype_names(q_data_type, kv_data_type)
        qo_h = check_indptr(qo_indptr, "qo_indptr", batch=kv_len.size)
        qo_len = np.diff(qo_h.numpy()).astype(np.int64)
        if causal and (qo_len > kv_len).any():
            b = int(np.nonzero(qo_len > kv_len)[0][0])
            fail(f"causal: request {b} has qo_len {qo_len[b]} > kv_len {kv_len[b]}; its first queries would see no key")
        module = lookup_family(BACKENDS[self._backend], device, q_name, kv_name, head_dim, soft_cap,
                               self._fp8_conversion, self._jit)
        tile_rows, tile_keys = KINDS[module.key.kind].tiles(module.key)
        sched = make_schedule(qo_len, kv_len, num_qo_heads // num_kv_heads, causal, window_left, num_kv_heads,
                              resident_ctas(module, device), tile_rows, tile_keys)
        arrays = dict(request=sched.request, row_begin=sched.row_begin, kv_begin=sched.kv_begin, kv_end=sched.kv_end,
                      partial=sched.partial, pieces=sched.pieces, merge_row=sched.merge_row,
                      merge_indptr=sched.merge_indptr, qo_indptr=qo_h.numpy(), kv_len=kv_len,
                      work_count=[sched.request.size], merge_count=[sched.merge_row.size], **page_table)
        self._ints, ptr = lay_out_plan(self._workspace, self._ints, arrays, sched.num_partial, num_qo_heads, head_dim)
        # the launch parameters but those run() sets per call (q, the cache, out/lse, scales)
        params, views = launch_params(
            PARAMS, q=UNSET_QUERY, kv=plan_kv_fields(ptr, page_size, num_kv_heads),
            qo_indptr=ptr["qo_indptr"], kv_len=ptr["kv_len"],
            work=dict(request=ptr["request"], row_begin=ptr["row_begin"], kv_begin=ptr["kv_begin"],
                      kv_end=ptr["kv_end"], partial=ptr["partial"], pieces=ptr["pieces"],
                      num_items=sched.request.size, live_items=ptr["work_count"]),
            merge=merge_fields(ptr, sched.merge_row.size), out=unset_output(num_qo_heads),
            scales=dict(sm_scale=scale, k_scale=1.0, v_scale=1.0, logits_soft_cap=soft_cap, q_scale_device=None,
                        k_scale_device=None, v_scale_device=None),
            causal=int(causal), window_left=window_left)
        self._plan = dict(module=module, total_qo=int(qo_h[-1]), num_qo_heads=num_qo_heads,
                          num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size, causal=causal,
                          window_left=window_left, q_dtype=TORCH_DTYPES[q_name], kv_dtype=TORCH_DTYPES[kv_name],
                          sm_scale=scale, soft_cap=soft_cap, schedule=sched, device=device, ptr=ptr, params=params,
                          views=views, checked=CheckedInputs())

    def _run_common(self, q, kv: dict, q_scale, k_scale, v_scale, out, lse, return_lse):
        """kv: the cache as CheckedInputs holds it (addresses and strides), checked by the caller."""
        plan = self._plan
        device, hq, d = plan["device"], plan["num_qo_heads"], plan["head_dim"]
        checked = plan["checked"]
        q_key = checked.q_key(q)
        if q_key is None or q_key not in checked.q:
            check_q(q, plan["total_qo"], hq, d, plan["q_dtype"], device, "qo_indptr[-1]")
            checked.q.add(q_key)
        elif q.data_ptr() % 4:
            fail(f"q must be 4-byte aligned with even strides, got address {q.data_ptr():#x}")
        (qs, qs_dev), (ks, ks_dev), (vs, vs_dev) = (scale_arg(q_scale, "q_scale", device, positive=True),
                                                    scale_arg(k_scale, "k_scale", device, positive=True),
                                                    scale_arg(v_scale, "v_scale", device))
        out, lse = output_tensors(q, out, lse, return_lse, device)
        set_run_fields(plan["views"], q, kv, out, lse,
                       dict(sm_scale=plan["sm_scale"] * qs, k_scale=ks, v_scale=vs, q_scale_device=qs_dev,
                            k_scale_device=ks_dev, v_scale_device=vs_dev))
        launch(plan["module"], plan["params"], device)
        return (out, lse) if return_lse else out

    def _checked_kv(self, key, check) -> dict:
        """The cache's launch fields, from CheckedInputs, or check(): (k, v, strides) after its checks."""
        checked = self._plan["checked"]
        kv = checked.kv.get(key)
        if kv is None:
            k, v, strides = check()
            check_kv_alignment(k, v, strides)
            kv = checked.kv[key] = dict(k_cache=k.data_ptr(), v_cache=v.data_ptr(), strides=strides)
        return kv


class BatchPrefillWithPagedKVCacheWrapper(_BatchPrefill):
    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, head_dim_vo: int | None = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             sm_scale: float | None = None, window_left: int = -1, logits_soft_cap: float | None = None,
             rope_scale: float | None = None, rope_theta: float | None = None, q_data_type="float16",
             kv_data_type=None, non_blocking: bool = True) -> None:
        """FlashInfer's signature (argument order included)."""
        flashinfer_extras(head_dim_qk, head_dim_vo, custom_mask, packed_custom_mask, use_fp16_qk_reduction, rope_scale,
                          rope_theta, non_blocking)
        for t, what in ((qo_indptr, "qo_indptr"), (paged_kv_indptr, "paged_kv_indptr"),
                        (paged_kv_indices, "paged_kv_indices"), (paged_kv_last_page_len, "paged_kv_last_page_len")):
            require_int_index(t, what)
        check_head_config(num_qo_heads, num_kv_heads, head_dim_qk, page_size, HEAD_DIMS)
        indptr_h, last_h, max_index = check_page_table(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
                                                       page_size)
        kv_len = ((indptr_h[1:] - indptr_h[:-1] - 1) * page_size + last_h).numpy().astype(np.int64)
        indices = paged_kv_indices.detach()[: int(indptr_h[-1])].to("cpu", torch.int64).numpy()
        self._plan_common(qo_indptr, kv_len, num_qo_heads, num_kv_heads, head_dim_qk, page_size, causal,
                          pos_encoding_mode, sm_scale, window_left, logits_soft_cap, q_data_type, kv_data_type,
                          dict(page_indptr=indptr_h.numpy(), page_indices=indices))
        self._plan["max_index"] = max_index

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: float | None = None, k_scale: float | None = None,
            v_scale: float | None = None, out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, enable_pdl: bool | None = None, _eager: bool = False):
        """FlashInfer's run(); k_scale, v_scale, out, lse, return_lse may also come positionally
        after the cache. q_scale multiplies the logits; enable_pdl is accepted."""
        if not _eager and torch.compiler.is_compiling():  # one opaque op for torch.compile (ops.py)
            return compiled_run(self, q, *split_cache(paged_kv_cache), args, q_scale, k_scale, v_scale, out, lse,
                                return_lse)
        k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
        plan = self._plan
        if plan is None:
            fail("call plan() before run()")

        def check():
            k, v = split_paged_kv(paged_kv_cache, self._layout)
            check_kv(k, v, plan["kv_dtype"], plan["device"])
            strides = kv_strides(k, self._layout, plan["page_size"], plan["num_kv_heads"], plan["head_dim"])
            if plan["max_index"] >= k.shape[0]:
                fail(f"paged_kv_indices refers to page {plan['max_index']} but the cache has {k.shape[0]} pages")
            return k, v, strides

        kv = self._checked_kv(CheckedInputs.kv_key(paged_kv_cache), check)
        return self._run_common(q, kv, q_scale, k_scale, v_scale, out, lse, return_lse)


class BatchPrefillWithRaggedKVCacheWrapper(_BatchPrefill):
    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str = "NHD", fp8_conversion: str | None = None,
                 jit: bool | None = None, *, backend: str = "auto"):
        if kv_layout != "NHD":
            fail(f"ragged K/V are [tokens, num_kv_heads, head_dim]: kv_layout must be 'NHD', got {kv_layout!r}")
        super().__init__(workspace_buffer, kv_layout, fp8_conversion, jit, backend=backend)

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int, num_kv_heads: int,
             head_dim_qk: int, head_dim_vo: int | None = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             window_left: int = -1, logits_soft_cap: float | None = None, sm_scale: float | None = None,
             rope_scale: float | None = None, rope_theta: float | None = None, q_data_type="float16",
             kv_data_type=None, non_blocking: bool = True) -> None:
        """FlashInfer's signature (argument order included)."""
        flashinfer_extras(head_dim_qk, head_dim_vo, custom_mask, packed_custom_mask, use_fp16_qk_reduction, rope_scale,
                          rope_theta, non_blocking)
        require_int_index(qo_indptr, "qo_indptr")
        require_int_index(kv_indptr, "kv_indptr")
        check_head_config(num_qo_heads, num_kv_heads, head_dim_qk, RAGGED_PAGE_SIZE, HEAD_DIMS)
        kv_h = check_indptr(kv_indptr, "kv_indptr").numpy().astype(np.int64)
        kv_len = np.diff(kv_h)
        if (kv_len < 1).any():
            b = int(np.nonzero(kv_len < 1)[0][0])
            fail(f"request {b} has no keys (kv_indptr[{b}] == kv_indptr[{b + 1}]); prefill needs at least one")
        # A request is one page of RAGGED_PAGE_SIZE rows, addressed by its first row as an int32.
        if kv_len.max() >= RAGGED_PAGE_SIZE or kv_h[-1] > INT32_MAX:
            fail(f"ragged K/V: at most {RAGGED_PAGE_SIZE - 1} keys per request and {INT32_MAX} in all, got "
                 f"{int(kv_len.max())} and {int(kv_h[-1])}")
        self._plan_common(qo_indptr, kv_len, num_qo_heads, num_kv_heads, head_dim_qk, RAGGED_PAGE_SIZE, causal,
                          pos_encoding_mode, sm_scale, window_left, logits_soft_cap, q_data_type, kv_data_type,
                          dict(page_indptr=np.arange(kv_len.size + 1), page_indices=kv_h[:-1]))
        self._plan["total_kv"] = int(kv_h[-1])

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, q_scale: float | None = None,
            k_scale: float | None = None, v_scale: float | None = None, out: torch.Tensor | None = None,
            lse: torch.Tensor | None = None, return_lse: bool = False, enable_pdl: bool | None = None,
            _eager: bool = False):
        """FlashInfer's run(), as the paged wrapper's."""
        if not _eager and torch.compiler.is_compiling():  # one opaque op for torch.compile (ops.py)
            return compiled_run(self, q, k, v, args, q_scale, k_scale, v_scale, out, lse, return_lse)
        k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
        plan = self._plan
        if plan is None:
            fail("call plan() before run()")

        def check():
            shape = (plan["total_kv"], plan["num_kv_heads"], plan["head_dim"])
            for t, what in ((k, "k"), (v, "v")):
                require_tensor(t, what)
            if k.dtype != v.dtype:
                fail(f"k and v must have the same dtype, got {k.dtype} and {v.dtype}")
            check_kv(k, v, plan["kv_dtype"], plan["device"])
            for t, what in ((k, "k"), (v, "v")):
                if tuple(t.shape) != shape:
                    fail(f"{what} has shape {tuple(t.shape)}; plan() needs [kv_indptr[-1], num_kv_heads, head_dim] = "
                         f"{shape}")
            if k.stride() != v.stride():
                fail(f"k and v must have the same strides, got {k.stride()} and {v.stride()}")
            # page = a request's first row, slot = its row within the request
            return k, v, (k.stride(0), k.stride(0), k.stride(1))

        kv = self._checked_kv(CheckedInputs.kv_key((k, v)), check)
        return self._run_common(q, kv, q_scale, k_scale, v_scale, out, lse, return_lse)
