"""BatchDecodeWithPagedKVCacheWrapper, FlashInfer's API: plan() once per batch layout (host work:
validation, instance lookup, split-KV schedule), run() per layer (checks shapes, launches).

run() allocates nothing but the output when `out` is not given (through torch's caching
allocator, which is capture-safe), never synchronises, and so can be captured in a CUDA graph
after plan(). Without use_cuda_graph a new plan() may move the work list and change the grid, so
capture again after re-planning; with it (CUDAGraphBatchDecodeWithPagedKVCacheWrapper), capture
once per batch size and re-plan every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from generator.kind_decode import HEAD_DIMS, PARAMS, STEP_TOKENS, WARPS

from .common import (Wrapper, check_kv, check_kv_alignment, check_variant, dtype_names, finish_run,
                     flashinfer_extras, kv_dtype_alias, launch_params, lay_out_plan, lookup, merge_fields,
                     plan_kv_fields, positional_run_args, resident_ctas, unset_output, CheckedInputs, UNSET_QUERY)
from .ops import compiled_run, split_cache
from .validation import (TORCH_DTYPES, check_head_config, check_page_table, fail, kv_strides, require_int_index,
                         split_paged_kv)

MIN_CHUNK_TOKENS = WARPS * STEP_TOKENS  # a split-KV chunk gives each of the CTA's warps at least one step


@dataclass
class DecodeSchedule:
    """Work list: one CTA column per item; split requests also get a merge item."""
    request: np.ndarray   # [num_work] int32
    begin: np.ndarray
    end: np.ndarray
    partial: np.ndarray   # -1 or partial slot
    merge_request: np.ndarray
    merge_indptr: np.ndarray
    num_partial: int
    chunk_tokens: int | None


PIECE_OVERHEAD_TOKENS = 64    # pipeline fill + epilogue of one CTA, in tokens of streaming time
SPLIT_OVERHEAD_TOKENS = 128   # the merge kernel's launch and partial traffic
MAX_PIECES = 64


def _pieces(lens: np.ndarray, chunk: int) -> np.ndarray:
    return np.maximum(1, -(-lens // chunk))


def estimate_makespan(lens: np.ndarray, chunk: int | None, columns: int) -> float:
    """Streaming time, in tokens, of the grid when every request is cut into equal pieces of at
    most `chunk` tokens and `columns` CTA columns run at once (one wave). The block scheduler
    hands out CTAs in order, so with pieces sorted longest first this is close to LPT; the
    ceil(n / columns) term is the wave quantisation that a uniform batch suffers."""
    pieces = (np.ones_like(lens) if chunk is None else _pieces(lens, chunk))[None, :]
    return float(makespan_of(lens, pieces, pieces.sum(1), columns)[0])


def makespan_of(lens: np.ndarray, pieces: np.ndarray, n: np.ndarray, columns: int) -> np.ndarray:
    """estimate_makespan of each row of `pieces` ([candidate, request] piece counts; n: their row
    sums): the longest piece, the waves' share of the work, or the work over every column,
    whichever is larger, plus each wave's overhead and the merge's where any request is split."""
    waves = -(-n // columns)
    total = float(lens.sum())
    busy = np.maximum(np.maximum((lens[None, :] / pieces).max(1), waves * total / n), total / columns)
    return busy + waves * PIECE_OVERHEAD_TOKENS + np.where((pieces > 1).any(1), SPLIT_OVERHEAD_TOKENS, 0)


def choose_chunk(lens: np.ndarray, ctas_per_item: int, max_resident_ctas: int,
                 max_items: int | None = None) -> int | None:
    """The split-KV piece length (None: no split) with the smallest estimated makespan.

    Candidates are "no split" and cutting the longest request into k = 2..64 equal pieces (the
    same cap applies to every request). So batch 1 with 32k tokens spreads over every SM, and a
    batch whose requests would leave the last wave part-empty is cut finer. max_items (a CUDA-graph
    plan's capacity) drops the cuts that would list more pieces.
    """
    columns = max(1, max_resident_ctas // ctas_per_item)
    no_split = estimate_makespan(lens, None, columns)
    longest = int(lens.max())
    # every k at once (plan() runs once per step): the loop over k this replaces took most of it
    k = np.arange(2, MAX_PIECES + 1)
    chunks = np.maximum(MIN_CHUNK_TOKENS, -(-(-(-longest // k)) // STEP_TOKENS) * STEP_TOKENS)
    chunks = chunks[chunks < longest]
    if chunks.size == 0:
        return None
    pieces = np.maximum(1, -(-lens[None, :] // chunks[:, None]))        # [candidate, request]
    n = pieces.sum(1)
    if max_items is not None:
        chunks, pieces, n = chunks[n <= max_items], pieces[n <= max_items], n[n <= max_items]
        if chunks.size == 0:
            return None
    est = makespan_of(lens, pieces, n, columns)
    best = int(np.argmin(est))  # the first of equal estimates: the smallest k, as a loop over k would take
    return int(chunks[best]) if est[best] < no_split else None


def make_schedule(begin: np.ndarray, end: np.ndarray, ctas_per_item: int, max_resident_ctas: int,
                  max_items: int | None = None) -> DecodeSchedule:
    """Cuts requests into pieces of at most choose_chunk() tokens; pieces are listed longest
    first, which the block scheduler then dispatches first."""
    lens = (end - begin).astype(np.int64)
    return schedule_for_chunk(begin, end, choose_chunk(lens, ctas_per_item, max_resident_ctas, max_items))


def schedule_for_chunk(begin: np.ndarray, end: np.ndarray, chunk: int | None) -> DecodeSchedule:
    lens = (end - begin).astype(np.int64)
    batch = lens.size
    pieces = np.ones(batch, dtype=np.int64) if chunk is None else _pieces(lens, chunk)
    request = np.repeat(np.arange(batch, dtype=np.int64), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece = np.arange(request.size, dtype=np.int64) - first_piece
    # equal pieces, cut at multiples of the 16-token step so that only a request's last step is partial
    cut = lambda j: np.minimum(lens[request], (j * lens[request] // pieces[request] + STEP_TOKENS - 1)  # noqa: E731
                               // STEP_TOKENS * STEP_TOKENS)
    item_begin = begin[request] + np.where(piece == 0, 0, cut(piece))
    item_end = begin[request] + np.where(piece == pieces[request] - 1, lens[request], cut(piece + 1))
    keep = item_end > item_begin
    request, item_begin, item_end = request[keep], item_begin[keep], item_end[keep]
    pieces = np.bincount(request, minlength=batch)
    split = pieces[request] > 1
    partial = np.full(request.size, -1, dtype=np.int64)
    partial[split] = np.arange(int(split.sum()))
    split_requests = np.nonzero(pieces > 1)[0]
    merge_indptr = np.concatenate([[0], np.cumsum(pieces[split_requests])])
    order = np.argsort(-(item_end - item_begin), kind="stable")  # longest first
    i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return DecodeSchedule(i32(request[order]), i32(item_begin[order]), i32(item_end[order]), i32(partial[order]),
                          i32(split_requests), i32(merge_indptr), int(split.sum()), chunk)


class BatchDecodeWithPagedKVCacheWrapper(Wrapper):
    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 use_tensor_cores: bool = True, paged_kv_indptr_buffer: torch.Tensor | None = None,
                 paged_kv_indices_buffer: torch.Tensor | None = None,
                 paged_kv_last_page_len_buffer: torch.Tensor | None = None, fp8_conversion: str | None = None,
                 jit: bool | None = None):
        """workspace_buffer: a CUDA tensor of a 1-byte dtype (FlashInfer suggests 128 MB) for the
        split-KV partials; wrappers may share one (each keeps its own work list). Tensor cores are
        always used (use_tensor_cores is accepted for FlashInfer compatibility).

        use_cuda_graph: capture once, re-plan every step. The three buffers (int32, on the
        workspace's device) fix the batch size (len(indptr) - 1) and the most pages a plan may
        use; plan() copies the page table into them and writes its work list at fixed addresses,
        and run() launches a grid sized for the capacity whose surplus CTAs exit at once, so a
        graph captured after one plan() stays right after any later plan() of that batch size
        (other lengths, page tables, split-KV or not). The first plan fixes the configuration
        (heads, head dim, page size, dtypes, scale, soft-cap): a later plan must keep it.
        fp8_conversion: None (hardware where the arch has it), "hardware" or "software".
        jit: build a missing instance on demand."""
        super().__init__(workspace_buffer, kv_layout, fp8_conversion, jit)
        self._graph = None
        if use_cuda_graph:
            device = self._workspace.device
            buffers = (paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer)
            names = ("paged_kv_indptr_buffer", "paged_kv_indices_buffer", "paged_kv_last_page_len_buffer")
            for buf, name in zip(buffers, names):
                if buf is None:
                    fail(f"use_cuda_graph=True needs {name} (its size fixes the capacity a captured graph serves)")
                require_int_index(buf, name)
                if buf.dtype != torch.int32 or not buf.is_cuda or buf.device != device or not buf.is_contiguous():
                    fail(f"{name} must be a contiguous int32 tensor on {device}, got {buf.dtype} on {buf.device}")
            batch = paged_kv_indptr_buffer.numel() - 1
            if batch < 1 or paged_kv_last_page_len_buffer.numel() != batch:
                fail(f"paged_kv_indptr_buffer holds batch + 1 = {paged_kv_indptr_buffer.numel()} entries and "
                     f"paged_kv_last_page_len_buffer batch = {paged_kv_last_page_len_buffer.numel()}: they disagree")
            self._graph = dict(batch=batch, buffers=buffers, fixed=None, captured=False)
        elif any(b is not None for b in (paged_kv_indptr_buffer, paged_kv_indices_buffer,
                                         paged_kv_last_page_len_buffer)):
            fail("the paged_kv_*_buffer arguments serve use_cuda_graph=True")

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._graph is not None

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int,
             num_kv_heads: int, head_dim: int, page_size: int, pos_encoding_mode: str = "NONE",
             window_left: int = -1, logits_soft_cap: float | None = None, q_data_type="float16",
             kv_data_type=None, data_type=None, sm_scale: float | None = None, rope_scale: float | None = None,
             rope_theta: float | None = None, non_blocking: bool = True) -> None:
        """FlashInfer's signature; data_type is its old name of kv_data_type."""
        device = self._workspace.device
        flashinfer_extras(head_dim, rope_scale=rope_scale, rope_theta=rope_theta, non_blocking=non_blocking)
        kv_data_type = kv_dtype_alias(kv_data_type, data_type)
        require_int_index(indptr, "indptr")
        require_int_index(indices, "indices")
        require_int_index(last_page_len, "last_page_len")
        check_head_config(num_qo_heads, num_kv_heads, head_dim, page_size, HEAD_DIMS)
        window_left, soft_cap, scale = check_variant(head_dim, pos_encoding_mode, window_left, logits_soft_cap,
                                                     sm_scale)
        q_name, kv_name = dtype_names(q_data_type, kv_data_type)
        indptr_h, last_h, max_index = check_page_table(indptr, indices, last_page_len, page_size)
        batch = indptr_h.numel() - 1
        end = ((indptr_h[1:] - indptr_h[:-1] - 1) * page_size + last_h).numpy().astype(np.int64)
        begin = np.zeros_like(end) if window_left < 0 else np.maximum(end - 1 - window_left, 0)

        module = lookup("decode", device, q_name, kv_name, head_dim, soft_cap, self._fp8_conversion, self._jit)
        ctas_per_item = module.call("ctas_per_work_item", num_qo_heads, num_kv_heads)
        resident = resident_ctas(module, device)
        page_indices = indices.detach()[: int(indptr_h[-1])].to("cpu", torch.int64).numpy()
        capacity = None
        if self._graph is not None:
            capacity, fixed = self._graph_capacity(indptr_h, page_indices, max_index, ctas_per_item, resident,
                                                   (module.key, num_qo_heads, num_kv_heads, head_dim, page_size, scale,
                                                    soft_cap))
        sched = make_schedule(begin, end, ctas_per_item, resident, None if capacity is None else capacity["request"])
        work = dict(request=sched.request, begin=sched.begin, end=sched.end, partial=sched.partial,
                    merge_row=sched.merge_request, merge_indptr=sched.merge_indptr, page_indptr=indptr_h.numpy(),
                    page_indices=page_indices, work_count=[sched.request.size],
                    merge_count=[sched.merge_request.size])
        self._ints, ptr = lay_out_plan(self._workspace, self._ints, work, sched.num_partial, num_qo_heads, head_dim,
                                       capacity)
        if capacity is not None:
            self._commit_graph_plan(fixed, indptr_h, page_indices, last_h)
        # the grid: the plan's items, or a graph plan's capacity (its surplus CTAs exit at once)
        grid_items = sched.request.size if capacity is None else capacity["request"]
        grid_merge = sched.merge_request.size if capacity is None else capacity["merge_row"]
        # the launch parameters but those run() sets per call (q, the cache, out/lse, scales)
        params, views = launch_params(
            PARAMS, q=UNSET_QUERY, kv=plan_kv_fields(ptr, page_size, num_kv_heads),
            work=dict(request=ptr["request"], begin=ptr["begin"], end=ptr["end"], partial=ptr["partial"],
                      num_items=grid_items, live_items=ptr["work_count"]),
            merge=merge_fields(ptr, grid_merge), out=unset_output(num_qo_heads),
            scales=dict(sm_scale=scale, k_scale=1.0, v_scale=1.0, logits_soft_cap=soft_cap, q_scale_device=None,
                        k_scale_device=None, v_scale_device=None))
        self._plan = dict(
            module=module, batch=batch, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
            head_dim=head_dim, page_size=page_size, q_dtype=TORCH_DTYPES[q_name], kv_dtype=TORCH_DTYPES[kv_name],
            sm_scale=scale, soft_cap=soft_cap, max_index=max_index, schedule=sched, device=device, ptr=ptr,
            grid_items=grid_items, grid_merge=grid_merge, params=params, views=views,
            checked=CheckedInputs(batch, "batch"), unit_scales=(scale, 1.0, 1.0, None, None, None))

    def _graph_capacity(self, indptr_h: torch.Tensor, page_indices: np.ndarray, max_index: int, ctas_per_item: int,
                        resident: int, config: tuple) -> tuple[dict, dict]:
        """(the fixed sizes of a CUDA-graph plan's arrays, what the first plan fixes), checking this
        plan against them, against the buffers and against the cache a captured run() used
        (note_graph_run). Nothing is changed here: plan() commits after its layout."""
        g = self._graph
        batch, num_pages = indptr_h.numel() - 1, page_indices.size
        if batch != g["batch"]:
            fail(f"a CUDA-graph wrapper serves batch {g['batch']} (its paged_kv_indptr_buffer); plan() got {batch}")
        indices_buf = g["buffers"][1]
        if num_pages > indices_buf.numel():
            fail(f"plan() uses {num_pages} pages; paged_kv_indices_buffer holds {indices_buf.numel()}")
        fixed = g["fixed"]
        if fixed is None:
            # one wave of items at most beyond one per request: what the split heuristic aims for
            fixed = dict(config=config, max_items=max(batch, 2 * max(1, resident // ctas_per_item)))
        elif config != fixed["config"]:
            fail("a CUDA-graph wrapper keeps its first plan's configuration (instance, heads, head dim, page size, "
                 "sm_scale, soft-cap), which a captured graph has baked in; make another wrapper for another")
        limits = g.get("limits")
        if limits is not None and max_index >= limits["kv_extent"]:
            fail(f"indices refers to page {max_index} but the cache of this wrapper's "
                 f"{'captured' if g['captured'] else 'last'} run has {limits['kv_extent']} pages")
        m = fixed["max_items"]
        return dict(request=m, begin=m, end=m, partial=m, merge_row=batch, merge_indptr=batch + 1,
                    page_indptr=batch + 1, page_indices=indices_buf.numel(), work_count=1, merge_count=1,
                    partial_slots=m), fixed

    def _commit_graph_plan(self, fixed: dict, indptr_h: torch.Tensor, page_indices: np.ndarray,
                           last_h: torch.Tensor) -> None:
        """After a CUDA-graph plan's layout: its page table into the user's buffers (FlashInfer keeps
        the planned page table there; so do we), and the first plan's sizes fixed."""
        indptr_buf, indices_buf, last_buf = self._graph["buffers"]
        with torch.no_grad():
            indptr_buf.copy_(indptr_h.to(torch.int32), non_blocking=False)
            indices_buf[: page_indices.size].copy_(torch.from_numpy(page_indices).to(torch.int32))
            last_buf.copy_(last_h.to(torch.int32))
        self._graph["fixed"] = fixed

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: float | None = None, k_scale: float | None = None,
            v_scale: float | None = None, out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, enable_pdl: bool | None = None, _eager: bool = False):
        """FlashInfer's run(); k_scale, v_scale, out, lse, return_lse may also come positionally
        after the cache (this library's earlier signature). q_scale multiplies the logits (a quantised q's scale);
        enable_pdl is accepted (the merge kernel uses PDL on sm_90 anyway)."""
        if not _eager and torch.compiler.is_compiling():  # one opaque op for torch.compile (ops.py)
            return compiled_run(self, q, *split_cache(paged_kv_cache), args, q_scale, k_scale, v_scale, out, lse,
                                return_lse)
        if args:
            k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
        plan = self._plan
        if plan is None:
            fail("call plan() before run()")
        checked = plan["checked"]
        kv_key = checked.kv_key(paged_kv_cache)
        kv = checked.kv.get(kv_key)
        if kv is None:
            device, hk, d = plan["device"], plan["num_kv_heads"], plan["head_dim"]
            k, v = split_paged_kv(paged_kv_cache, self._layout)
            check_kv(k, v, plan["kv_dtype"], device)
            strides = kv_strides(k, self._layout, plan["page_size"], hk, d)
            check_kv_alignment(k, v, strides)
            if plan["max_index"] >= k.shape[0]:
                fail(f"indices refers to page {plan['max_index']} but the cache has {k.shape[0]} pages")
            kv = checked.kv[kv_key] = dict(k_cache=k.data_ptr(), v_cache=v.data_ptr(), strides=strides,
                                           pages=k.shape[0])
        return finish_run(plan, q, kv, q_scale, k_scale, v_scale, out, lse, return_lse, self._graph)


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """FlashInfer's CUDA-graph decode wrapper: BatchDecodeWithPagedKVCacheWrapper with
    use_cuda_graph=True and its three buffers (see there)."""

    def __init__(self, workspace_buffer: torch.Tensor, indptr_buffer: torch.Tensor, indices_buffer: torch.Tensor,
                 last_page_len_buffer: torch.Tensor, kv_layout: str = "NHD", use_tensor_cores: bool = True,
                 fp8_conversion: str | None = None, jit: bool | None = None):
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer, fp8_conversion=fp8_conversion, jit=jit)
