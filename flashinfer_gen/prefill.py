"""BatchPrefillWithPagedKVCacheWrapper and BatchPrefillWithRaggedKVCacheWrapper, FlashInfer's API:
plan() once per batch layout (validation, instance lookup, the work list, one host-to-device copy),
run() per layer (checks shapes, launches; allocates nothing but `out`/`lse` when they are not
given). run() can be captured in a CUDA graph after plan(). Without use_cuda_graph a later plan()
changes the work list's size and addresses, so capture again after re-planning; with it (and
FlashInfer's *_buf arguments), capture once per batch size and re-plan every step.

The ragged wrapper's contiguous K/V [tokens, heads, dim] are handed to the same kernel as a paged
cache with one page per request: page index = the request's first row, page size 2^30.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from generator.instances import KINDS
from generator.keys import FP8_DTYPES, KV_BYTES
from generator.kind_prefill import HEAD_DIMS, PARAMS

from .common import (INT32_MAX, UNSET_QUERY, CheckedInputs, Wrapper, check_kv, check_kv_alignment,
                     check_variant, dtype_names, finish_run, o_dtype_name, flashinfer_extras, launch_params,
                     lay_out_plan,
                     l2_bytes, lookup_family, merge_fields, plan_kv_fields, positional_run_args, resident_ctas,
                     unset_output)
from .ops import compiled_run, split_cache
from .validation import (TORCH_DTYPES, check_head_config, check_indptr, check_page_table,
                         fail, kv_strides, require_int_index, require_tensor, split_paged_kv)

MAX_PIECES = 64
# A grid's short last wave (make_schedule's cut_wave, cut_last_wave): the most pieces an item is
# cut into, and the least gain (the modelled makespan, whole over cut) a cut must show. The model
# (LeastLoaded) is optimistic: where it showed 1.56-1.65 the H200 ran 1.04-1.38x faster cut, where
# 1.32 and less, 0.81-1.11x (README, "The grid's short last wave").
CUT_MAX_PIECES = 8
CUT_MIN_GAIN = 1.45
CUT_MAX_LAPS = 3  # past 3 laps a cut cannot gain CUT_MIN_GAIN (cut_last_wave)
# Laps of units (of the persistent CTAs) that cta_unit_lists deals last, greedily
TAIL_GREEDY_LAPS = 2
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
# Tests only: caps a persistent instance's grid, so that each CTA walks many items (its rings
# wrapping within and across them). None: the CTAs the GPU holds at once.
MAX_PERSISTENT_CTAS: int | None = None
# The Hopper family runs an FP8 cache on FP8 WGMMA tiles, which quantise a 16-bit q to e4m3 per
# packed row (README, "The Hopper prefill kernel": 4.1% relative L2 error on random data against
# 0.17% with q kept in 16 bits). fp8_tiles=False keeps q in 16 bits: backend="auto" then takes the
# Ampere path for an FP8 cache, which upcasts K/V instead.
FP8_TILES_KIND = "prefill_sm90"
# the FP8 q dtypes some prefill family builds (q given in FP8, with q_scale and an o_data_type)
FP8_Q_DTYPES = tuple(d for d in FP8_DTYPES if any(d in KINDS[k].allowed("q_dtype") for k in BACKENDS["auto"]))


def families(backend: str, q_name: str, kv_name: str, fp8_tiles: bool) -> tuple[str, ...]:
    """The kinds backend= may use for these dtypes, preferred first: BACKENDS, less the FP8 tiles
    for a 16-bit q on an FP8 cache where fp8_tiles is False (they would quantise it), and for an
    FP8 q only the kinds that build one (fp8_tiles does not concern it: nothing is quantised)."""
    kinds = BACKENDS[backend]
    if q_name in FP8_DTYPES:
        able = tuple(k for k in kinds if q_name in KINDS[k].allowed("q_dtype"))
        if not able:
            fail(f"a q of dtype {TORCH_DTYPES[q_name]} runs only on the Hopper family's FP8 tiles (backend 'sm90' or "
                 f"'auto' on an sm_90 GPU); got backend={backend!r}")
        return able
    if kv_name in FP8_DTYPES and not fp8_tiles:
        kinds = tuple(k for k in kinds if k != FP8_TILES_KIND)
        if not kinds:
            fail(f"backend={backend!r} runs an FP8 cache only on the Hopper family's FP8 tiles (q quantised to "
                 "e4m3), which fp8_tiles=False refuses; use backend='sm80' to keep q in 16 bits")
    return kinds


@dataclass
class PrefillSchedule:
    """Work list (per item and KV head: a CTA, or a persistent CTA's turn) and the split-KV merge of
    split requests."""
    request: np.ndarray
    row_begin: np.ndarray
    kv_begin: np.ndarray
    kv_end: np.ndarray
    partial: np.ndarray   # -1, or (split: pieces > 1) the slot of the item's piece for token 0 (make_schedule)
    pieces: np.ndarray
    merge_row: np.ndarray
    merge_indptr: np.ndarray
    num_partial: int


def make_schedule(qo_len: np.ndarray, kv_len: np.ndarray, group: int, causal: bool, window_left: int,
                  kv_heads: int, resident_ctas: int, tile_rows: int, tile_keys: int,
                  max_partial: int | None = None, cut_wave: bool = False,
                  cut_slots: int | None = None) -> PrefillSchedule:
    """Cuts every request into tile_rows packed rows (token x group + head) with the keys those rows
    see (causal rows stop at their diagonal, windowed rows start at their window). The tiles end
    at the request's last row, so that a partial tile, if any, is the first (its row_begin below
    0, item_rows): causal, those rows see the fewest keys, and a partial tile's idle consumer
    warpgroups (or warps) wait out its keys as a full tile would. As the last tile it was the
    request's longest unit, which on the Hopper family's three consumers ran one of them: causal
    rows 5-7% slower at S = 4096 than at 4224 (bench/probe_seq.py). Where the items would not
    fill one wave of the GPU, each request's key ranges are cut into up to MAX_PIECES pieces
    (whole tiles) whose partial results a merge kernel combines; max_partial (a CUDA-graph plan's
    capacity) caps the partial slots this may take. Otherwise, with cut_wave (a grid of one CTA
    per unit, not a CUDA-graph plan), non-causal, and row tiles of whole tokens, the items that
    would run in a short last wave may be cut into pieces too (cut_last_wave), where their partial
    slots are at most cut_slots (what the workspace holds). Longest items first."""
    # first row tile: the partial one, from rows - tile_rows * ceil(rows / tile_rows) (0 if whole)
    items = []  # (request, row_begin, begin, end)
    for b, (n, m) in enumerate(zip(qo_len.tolist(), kv_len.tolist())):
        rows = n * group
        for row0 in range(rows - tile_rows * -(-rows // tile_rows), rows, tile_rows):
            first, last = max(row0, 0) // group, (min(rows, row0 + tile_rows) - 1) // group
            begin = max(0, m - n + first - window_left) if window_left >= 0 else 0
            end = min(m, m - n + last + 1) if causal else m
            items.append((b, row0, begin, end))
    item_pieces = np.ones(len(items), dtype=np.int64)
    if items and len(items) * kv_heads < resident_ctas:
        longest = np.zeros(len(qo_len), dtype=np.int64)
        for b, _, begin, end in items:
            longest[b] = max(longest[b], end - begin)
        pieces_of = np.ones(len(qo_len), dtype=np.int64)
        for want in range(min(MAX_PIECES, -(-resident_ctas // (len(items) * kv_heads))), 0, -1):
            pieces_of = np.maximum(1, np.minimum(want, longest // (2 * tile_keys)))
            if max_partial is None or int((qo_len * pieces_of)[pieces_of > 1].sum()) <= max_partial:
                break
        item_pieces = pieces_of[[b for b, _, _, _ in items]]
    elif items and cut_wave and not causal and max_partial is None and tile_rows % group == 0:
        # (a group that does not divide the tile's rows puts a token's q heads in two row tiles,
        # which would have to be cut alike: the merge kernel combines every q head of a token)
        cut, p = cut_last_wave(items, kv_heads, resident_ctas, tile_keys)
        item_pieces[cut] = p
    partial_of, runs, slots = partial_slots(items, item_pieces, qo_len, group, tile_rows)
    if slots and cut_slots is not None and slots > cut_slots and len(items) * kv_heads >= resident_ctas:
        # a cut of the last wave is optional: where its partials do not fit the workspace, the grid
        # runs whole (a batch under one wave keeps its split, which lay_out_plan then refuses)
        item_pieces[:] = 1
        partial_of, runs, slots = partial_slots(items, item_pieces, qo_len, group, tile_rows)
    work = []
    for k, (b, row0, begin, end) in enumerate(items):
        p = int(item_pieces[k])
        if p == 1:
            work.append((b, row0, begin, end, -1, 1))
            continue
        keys = piece_keys(np.array([end - begin]), p, tile_keys)[0]  # a piece may be empty: its rows
        lo = begin + np.concatenate([[0], np.cumsum(keys)[:-1]])        # then write O = 0, LSE = -inf
        for piece in range(p):
            work.append((b, row0, int(lo[piece]), int(lo[piece] + keys[piece]), int(partial_of[k]) + piece, p))
    work.sort(key=lambda w: -(w[3] - w[2]))
    cols = np.array(work, dtype=np.int64).reshape(-1, 6).T
    qo_start = np.concatenate([[0], np.cumsum(qo_len)])
    merge_row = np.concatenate([qo_start[b] + np.arange(t0, t1 + 1) for b, t0, t1, _ in runs] + [np.zeros(0)])
    counts = np.concatenate([np.full(t1 - t0 + 1, p) for _, t0, t1, p in runs] + [np.zeros(0)])
    i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return PrefillSchedule(*(i32(c) for c in cols), i32(merge_row), i32(np.concatenate([[0], np.cumsum(counts)])),
                           slots)


def piece_keys(keys: np.ndarray, pieces: int, tile_keys: int) -> np.ndarray:
    """[items, pieces]: the keys of each piece of items of `keys` keys cut into `pieces`, in order:
    whole tiles of ceil(keys / pieces) keys, the rest in the last ones (which may be empty)."""
    chunk = -(-np.maximum(1, -(-keys // pieces)) // tile_keys) * tile_keys
    return np.clip(keys[:, None] - np.arange(pieces)[None, :] * chunk[:, None], 0, chunk[:, None])


def partial_slots(items: list, item_pieces: np.ndarray, qo_len: np.ndarray, group: int,
                  tile_rows: int) -> tuple[np.ndarray, list, int]:
    """(each item's `partial`, the runs (request, t0, t1, pieces), the slots in all). A run of a
    request's consecutive split row tiles (tokens t0..t1, p pieces) takes (t1 - t0 + 1) x p slots
    from the next free one, `first`, token-major (a token's pieces are the merge kernel's
    contiguous range): piece i of token t in slot first + (t - t0) p + i. The kernels add
    qtoken x pieces to the item's `partial`, which is therefore first - t0 p (+ the piece): below 0
    where a run starts at a token t0 past first / p, so a split item is one with pieces > 1."""
    partial_of = np.full(len(items), -1, dtype=np.int64)
    runs, slots = [], 0
    split = np.flatnonzero(item_pieces > 1)
    k = 0
    while k < split.size:
        i = j = int(split[k])
        b, p = items[i][0], int(item_pieces[i])
        while j + 1 < len(items) and items[j + 1][0] == b and item_pieces[j + 1] == p:
            j += 1
        t0 = max(items[i][1], 0) // group
        t1 = (min(int(qo_len[b]) * group, items[j][1] + tile_rows) - 1) // group
        partial_of[i:j + 1] = slots - t0 * p
        runs.append((b, t0, t1, p))
        slots += (t1 - t0 + 1) * p
        k += j - i + 1
    return partial_of, runs, slots


def cut_last_wave(items: list, kv_heads: int, resident: int, tile_keys: int) -> tuple[np.ndarray, int]:
    """(items, pieces): which of a grid's items (make_schedule's (request, row_begin, begin, end),
    non-causal) to cut into how many pieces (1: none), so that a short last wave of the GPU is not
    left to a few CTAs for a whole unit's time. Every item is kv_heads units (CTAs) of cost keys +
    tile_keys (a tile for the unit's setup, as grid_unit_order), a piece likewise with its own keys. The GPU deals CTAs to
    free slots in grid order, longest first, which this models as greedy list scheduling on
    `resident` slots (LeastLoaded): the units before the last lap and the partial one dealt in
    turn, the rest item by item to the least loaded slots. Only the fewest of the cheapest items
    (the grid's last) that hold the partial lap are cut, into 2..CUT_MAX_PIECES pieces, the best
    where its gain is at least CUT_MIN_GAIN, which past CUT_MAX_LAPS laps of units it cannot be
    (equal units: 4 laps against 3 and a bit), so those grids are not modelled. (Cutting more
    items lost on the H200: every causal item of B1 S1152 cut in two ran at 0.53x, the merge of
    every token, and causal grids were not measured with a cut of their own.)"""
    units = len(items) * kv_heads
    none = np.zeros(0, dtype=np.int64), 1
    partial_lap = units % resident if resident > 0 else 0
    if units <= resident or units > CUT_MAX_LAPS * resident or partial_lap == 0:
        return none
    keys = np.array([end - begin for _, _, begin, end in items], dtype=np.int64)
    items = keys.size
    order = np.argsort(-keys, kind="stable")                  # longest first, as make_schedule's sort
    cost = keys[order] + tile_keys
    tail_items = min(items, -(-(partial_lap + resident) // kv_heads))
    head = items - tail_items
    cut = min(tail_items, -(-partial_lap // kv_heads))
    # slots' loads after the head's units, dealt in turn (whole laps of near-equal units)
    loads = np.bincount(np.arange(head * kv_heads) % resident, weights=np.repeat(cost[:head], kv_heads),
                        minlength=resident)
    whole = LeastLoaded(loads)
    whole.deal(cost[head:items - cut], kv_heads)
    uncut = whole.copy()
    uncut.deal(cost[items - cut:], kv_heads)
    best_span, best_p = float("inf"), 1
    keys_cut = cost[items - cut:] - tile_keys                 # [cut]
    for p in range(2, CUT_MAX_PIECES + 1):                    # the fewest pieces of the shortest span
        tail = whole.copy()
        tail.deal(np.sort(piece_keys(keys_cut, p, tile_keys).ravel())[::-1] + tile_keys, kv_heads)
        if tail.span() < best_span:
            best_span, best_p = tail.span(), p
    return (order[items - cut:], best_p) if best_span * CUT_MIN_GAIN <= uncut.span() else none


class LeastLoaded:
    """Greedy list scheduling of equal-cost units in bulk: the slots' loads as a heap of
    (load, slot count) groups, so that dealing n units of one cost to the n least loaded slots
    takes a step per group touched, not per unit."""

    def __init__(self, loads: np.ndarray):
        values, counts = np.unique(np.asarray(loads, dtype=np.float64), return_counts=True)
        self.heap = list(zip(values.tolist(), counts.tolist()))
        heapq.heapify(self.heap)

    def add(self, n: int, cost: float) -> None:
        while n > 0:
            load, count = heapq.heappop(self.heap)
            take = min(n, count)
            heapq.heappush(self.heap, (load + cost, take))
            if count > take:
                heapq.heappush(self.heap, (load, count - take))
            n -= take

    def copy(self) -> "LeastLoaded":
        other = LeastLoaded.__new__(LeastLoaded)
        other.heap = list(self.heap)
        return other

    def deal(self, cost: np.ndarray, kv_heads: int) -> None:
        """kv_heads units of each cost in turn (costs in dealing order), a run of equal costs in one
        add(): add() hands its units out one at a time in effect (a group it raised is popped
        again while it is the least loaded)."""
        if cost.size == 0:
            return
        edges = np.flatnonzero(np.diff(cost)) + 1
        for lo, hi in zip(np.concatenate([[0], edges]).tolist(), np.concatenate([edges, [cost.size]]).tolist()):
            self.add((hi - lo) * kv_heads, float(cost[lo]))

    def span(self) -> float:
        return max(load for load, _ in self.heap)


def item_rows(row_begin: np.ndarray, rows_total: np.ndarray, tile_rows: int) -> np.ndarray:
    """Packed rows of each item: [row_begin, row_begin + tile_rows) within [0, rows_total)."""
    return np.minimum(rows_total, row_begin + tile_rows) - np.maximum(row_begin, 0)


def cta_unit_lists(kv_begin: np.ndarray, kv_end: np.ndarray, kv_heads: int, ctas: int, tile_keys: int,
                   stride: int, heads_per_section: int | None = None,
                   item_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A persistent kernel's work: (indptr [ctas + 1], units) with CTA c's units
    units[indptr[c]:indptr[c + 1]], unit = item + kv_head x stride (stride: the kernel's
    num_items). The KV heads are taken in sections of heads_per_section (all of them by default):
    a section's K/V rows should fit in L2, since its units run at about the same time. Within a
    section the units go longest first (cost: keys plus a tile for the item's own setup; ties by
    KV head, then item, so that units of equal length run head by head), dealt out to the CTAs
    in a snake (least loaded CTA first, to the most loaded, then back: over units sorted longest
    first the laps' differences cancel, where dealing each lap the same way adds them up); a
    section's last, partial lap goes to the CTAs least loaded after its whole laps. The last
    section's last TAIL_GREEDY_LAPS laps of units, in that order (longest first), are then dealt
    again, each to the CTA least loaded at the time: the snake balances a section's laps, while
    the CTAs' final sums are set by the last units. A unit's cost, by which "longest" goes, is its
    item's keys plus a tile, times item_weight (unit_weights: an item whose rows leave some of
    the CTA's consumer warpgroups idle costs less; 1 by default). That keeps the CTAs' sums within
    about one unit of each other (d128 B4 S4096 32/32 scored with the unit costs measured: max /
    mean 1.048 without the weights and the greedy laps, 1.006 with them; causal 1.054 and
    1.015, and 1.004 since a request's partial row tile comes first (make_schedule), a short
    unit, and the greedy tail may take in the section before the last: the causal mean 2.5% and
    the largest sum 3.5% lower than with the partial tiles last). (Longest first over every
    head at once had a causal prompt's CTAs streaming 128 heads' K/V together, past L2: bf16 B4
    S4096 causal at 0.79x the non-persistent kernel, H100.) The units are placed, not sorted: plan()
    runs every step (B16 S8192 causal, 32 KV heads, 131k units: 13 ms with a sort of the units,
    ~5 ms placed; B4 S4096, 32 heads: under 1 ms)."""
    items = kv_begin.size
    if items == 0 or ctas == 0:
        return np.zeros(ctas + 1, dtype=np.int32), np.zeros(0, dtype=np.int32)
    if (stride - 1) + (kv_heads - 1) * stride > INT32_MAX:
        fail(f"{kv_heads} KV heads x {stride} work items do not fit the kernel's 32-bit unit numbers")
    item_cost = (kv_end.astype(np.int64) - kv_begin + tile_keys) * (1.0 if item_weight is None else item_weight)
    by_cost = np.argsort(-item_cost, kind="stable")                            # items longest first, ties by item
    sorted_cost = item_cost[by_cost]
    # Runs of equal cost among the sorted items: a section lists run by run, each run head by head.
    new_run = np.concatenate([[True], sorted_cost[1:] != sorted_cost[:-1]])
    run_start = np.flatnonzero(new_run)
    run_of = np.cumsum(new_run) - 1
    start = run_start[run_of]                                                  # [items]: its run's first position
    length = np.diff(np.append(run_start, items))[run_of]                      # [items]: its run's length
    offset = np.arange(items) - start                                          # [items]: within its run
    per = max(1, min(kv_heads, heads_per_section or kv_heads))
    unit_item = np.empty(items * kv_heads, dtype=np.int64)                     # dealing order
    unit_head = np.empty(items * kv_heads, dtype=np.int64)
    cta = np.empty(items * kv_heads, dtype=np.int64)
    load = np.zeros(ctas)
    for h0 in range(0, kv_heads, per):
        heads = min(per, kv_heads - h0)
        lo, hi = h0 * items, (h0 + heads) * items
        local = np.arange(heads)[:, None]
        where = lo + start * heads + local * length + offset                    # [heads, items]: position in the order
        unit_item[where] = by_cost[None, :]
        unit_head[where] = h0 + local
        seats = np.argsort(load, kind="stable")                                # least loaded CTA first
        k = np.arange(hi - lo)
        lap, seat = k // ctas, k % ctas
        # whole laps in a snake; a last, partial lap to the CTAs least loaded after them (run on in
        # the snake, after an odd number of whole laps it went to the most loaded CTAs, and section
        # after section to the same ones: the chunked step, 16 x 512 on 8192 keys with 192-row
        # tiles, 8 sections of 176 units on 132 CTAs, was dealt 8 to 16 units a CTA)
        full = hi - lo if hi - lo <= ctas else (hi - lo) - (hi - lo) % ctas
        cta[lo:lo + full] = seats[np.where(lap[:full] % 2 == 0, seat[:full], ctas - 1 - seat[:full])]
        load += np.bincount(cta[lo:lo + full], weights=item_cost[unit_item[lo:lo + full]], minlength=ctas)
        if full < hi - lo:
            cta[lo + full:hi] = np.argsort(load, kind="stable")[seat[full:]]
            load += np.bincount(cta[lo + full:hi], weights=item_cost[unit_item[lo + full:hi]], minlength=ctas)
    # The last TAIL_GREEDY_LAPS laps of units again, each to the least loaded CTA then (a few
    # hundred heap steps), longest first: the last section's alone, or, where that section is
    # less than those laps, the laps' units of the sections before it too, dealt longest first
    # across them and then put back in section order (each CTA's list stays section by section);
    # whichever leaves the lower largest sum. (A section of a lap and a third whose first units
    # are the longest, as causal B4 S4096 32/32's last 2 heads once the short partial row tiles
    # come first, left max / mean at 1.025, with the section before it 1.004; non-causal the
    # section alone stays better, 1.006 against 1.014.)
    n = cta.size

    def greedy(first: int, order: np.ndarray) -> tuple[float, np.ndarray]:
        heap = list(zip(np.bincount(cta[:first], weights=item_cost[unit_item[:first]], minlength=ctas).tolist(),
                        range(ctas)))
        heapq.heapify(heap)
        dealt = np.empty(n - first, dtype=np.int64)
        for k, cost in enumerate(item_cost[unit_item[first + order]].tolist()):
            least, c = heapq.heappop(heap)
            dealt[k] = c
            heapq.heappush(heap, (least + cost, c))
        return max(load for load, _ in heap), dealt

    first = max(lo, n - TAIL_GREEDY_LAPS * ctas)
    order = np.arange(n - first)
    makespan, dealt = greedy(first, order)
    wide = max(0, n - TAIL_GREEDY_LAPS * ctas)
    if wide < first:
        wide_order = np.argsort(-item_cost[unit_item[wide:]], kind="stable")
        wide_makespan, wide_dealt = greedy(wide, wide_order)
        if wide_makespan < makespan:
            first, order, dealt = wide, wide_order, wide_dealt
    unit_item[first:], unit_head[first:] = unit_item[first + order], unit_head[first + order]
    cta[first:] = dealt
    if first < lo:  # back in section order, longest first within each (a stable sort of the dealt order)
        back = first + np.argsort(unit_head[first:] // per, kind="stable")
        unit_item[first:], unit_head[first:], cta[first:] = unit_item[back], unit_head[back], cta[back]
    # each CTA's units in dealing order (a stable sort of 16-bit keys is numpy's radix sort)
    by_cta = np.argsort(cta.astype(np.int16 if ctas <= 1 << 15 else np.int32), kind="stable")
    units = (unit_item + unit_head * stride)[by_cta]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cta, minlength=ctas))])
    return indptr.astype(np.int32), units.astype(np.int32)


def grid_unit_order(item_cost: np.ndarray, kv_heads: int, stride: int, heads_per_section: int,
                    resident: int) -> np.ndarray:
    """A grid of one CTA per unit: CTA b runs unit [b] (item + kv_head x stride, stride: the kernel's
    num_items), for every (item, KV head) of the plan's items (item_cost: each one's keys plus a
    tile, plan()'s order: longest first). Section by section of heads_per_section KV heads
    (l2_heads_per_section), within one item by item with the section's heads fastest, so that
    the CTAs the GPU runs at once re-read a section's K/V rows from L2; but the cheapest units,
    as many as keep `resident` CTAs busy for the longest unit's time, are taken out of their
    sections and run last, longest first, so that no long unit starts in the grid's last wave.
    (Every head of an item together, the order before, streamed a long prompt's K/V of all heads
    at once, past L2: bf16 B4 S4096 32/32 on the Ampere path, 64 MB. Sections without the tail
    put each section's longest units, the last section's among them, at its start: causal FP8
    rows 3% slower, H100, 8c3353b.) Where the costs are equal the tail is the sections' order."""
    items = item_cost.size
    if items == 0:
        return np.zeros(0, dtype=np.int32)
    if (stride - 1) + (kv_heads - 1) * stride > INT32_MAX:
        fail(f"{kv_heads} KV heads x {stride} work items do not fit the kernel's 32-bit unit numbers")
    per = max(1, min(kv_heads, heads_per_section))
    item = np.arange(items, dtype=np.int64)[:, None]
    units = np.concatenate([(item + np.arange(h0, min(kv_heads, h0 + per))[None, :] * stride).ravel()
                            for h0 in range(0, kv_heads, per)])
    cost = np.asarray(item_cost, dtype=np.float64)[units % stride]
    position = np.arange(units.size)
    cheapest = np.lexsort((-position, cost))  # ties: the later unit first, so equal costs keep the order
    taken = int(np.searchsorted(np.cumsum(cost[cheapest]), resident * cost.max())) + 1
    tail = np.zeros(units.size, dtype=bool)
    tail[cheapest[:taken]] = True
    last = np.flatnonzero(tail)
    last = last[np.argsort(-cost[last], kind="stable")]
    return np.concatenate([units[~tail], units[last]]).astype(np.int32)


def unit_weights(cost: tuple[int, tuple[float, ...]] | None, rows: np.ndarray) -> np.ndarray | None:
    """Each item's unit cost relative to a full row tile's (cta_unit_lists' item_weight) from the
    kind's unit_cost (rows a row group takes, cost by how many groups have rows) and the item's
    packed rows; None where the kind gives none."""
    if cost is None:
        return None
    granule, by_groups = cost
    return np.asarray(by_groups)[np.clip(-(-rows // granule), 1, len(by_groups)) - 1]


def l2_heads_per_section(kv_len: np.ndarray, head_dim: int, kv_bytes: int, l2_bytes: int) -> int:
    """KV heads whose K and V rows (every request's) fill at most half of L2 (at least one): the
    persistent kernel's section (cta_unit_lists); the other half is left to the rows in flight.
    Finer sections, of (KV head, request) pairs, measured worse on the H100 (a4402df against
    3f02ffa, bench/results/ab/prefill-sm90-l2pairs-*: d128 rows at 0.985x, geometric mean, and
    chunked prefill with an e4m3 cache at 0.8x)."""
    per_head = max(1, int(kv_len.sum()) * head_dim * 2 * kv_bytes)
    return max(1, (l2_bytes // 2) // per_head)


def schedule_capacity(rows: int, batch: int, group: int, kv_heads: int, tile_rows: int,
                      resident_ctas: int) -> tuple[int, int]:
    """(items, partial slots) that make_schedule can list for any batch of `batch` requests with
    at most `rows` query tokens in all: a CUDA-graph plan's fixed sizes.
    Without split-KV a request's first row tile may be partial, so the items are at most one per
    request more than the rows fill. Split-KV happens only when the items times kv_heads are
    under resident_ctas, and cuts each into at most ceil(resident_ctas / (items x kv_heads))
    pieces: under 2 x resident_ctas / kv_heads items in all. A split item takes a partial slot
    per token of its row tile (at most ceil(tile_rows / group))."""
    items = max(-(-rows * group // tile_rows) + batch, 2 * -(-resident_ctas // kv_heads))
    return items, items * -(-tile_rows // group)


class _BatchPrefill(Wrapper):
    """plan()/run() of both wrappers; they differ in how the keys are described."""

    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str, use_cuda_graph: bool,
                 buffers: dict[str, torch.Tensor | None], custom_mask_buf, mask_indptr_buf, backend: str, jit_args,
                 fp8_conversion: str | None, jit: bool | None, fp8_tiles: bool = True):
        """workspace_buffer: a CUDA tensor of a 1-byte dtype (FlashInfer suggests 128 MB) for the split-KV
        partials; wrappers may share one (each keeps its own work list). fp8_conversion: None
        (hardware where the arch has it), "hardware" or "software". jit: build a missing instance
        on demand. backend: "auto", "sm90" (Hopper WGMMA family, sm_90a only), "sm80" (the mma.sync
        family, every arch), or FlashInfer's "fa3" / "fa2" for those two. fp8_tiles: False keeps a
        16-bit q in 16 bits with an FP8 cache (the Ampere path) instead of the Hopper family's FP8
        tiles, which quantise it to e4m3 (see FP8_TILES_KIND's note).

        use_cuda_graph: capture once, re-plan every step, as with the decode wrapper. `buffers`
        (FlashInfer's *_buf arguments: int32, on the workspace's device) fix the batch size
        (len(qo_indptr_buf) - 1) and, for the paged wrapper, the most pages a plan may use. The
        first plan() fixes the most query tokens (qo_indptr[-1]) and the configuration (heads,
        head dim, page size, dtypes, causal, window, scale, soft-cap); a later plan may have other
        lengths and page tables within those. plan() copies its indptr/page table into the buffers
        and writes its work list at fixed addresses; run() launches a grid sized for the capacity
        whose surplus CTAs exit at once. q (and out) may then have more rows than the plan's
        qo_indptr[-1], as the padded static buffers of a captured step do; rows past it are
        neither read nor written."""
        super().__init__(workspace_buffer, kv_layout, fp8_conversion, jit)
        self._paged = "paged_kv_indices_buf" in buffers
        if backend not in BACKENDS:
            fail(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if custom_mask_buf is not None or mask_indptr_buf is not None:
            fail("custom_mask_buf / mask_indptr_buf are not supported; use causal=True and window_left")
        if jit_args is not None:
            fail("jit_args is not supported: instances come from this library's generator (jit=True builds one)")
        if not isinstance(use_cuda_graph, bool):
            fail(f"use_cuda_graph must be a bool, got {use_cuda_graph!r}")
        if not isinstance(fp8_tiles, bool):
            fail(f"fp8_tiles must be a bool, got {fp8_tiles!r}")
        self._backend = backend
        self._fp8_tiles = fp8_tiles
        self._graph = None
        if use_cuda_graph:
            device = self._workspace.device
            for name, buf in buffers.items():
                if buf is None:
                    fail(f"use_cuda_graph=True needs {name} (its size fixes the capacity a captured graph serves)")
                require_int_index(buf, name)
                if buf.dtype != torch.int32 or not buf.is_cuda or buf.device != device or not buf.is_contiguous():
                    fail(f"{name} must be a contiguous int32 tensor on {device}, got {buf.dtype} on {buf.device}")
            batch = buffers["qo_indptr_buf"].numel() - 1
            if batch < 1:
                fail(f"qo_indptr_buf holds batch + 1 entries, got {batch + 1}")
            for name, buf in buffers.items():  # the page table's buffer sets the page capacity instead
                want = batch if name == "paged_kv_last_page_len_buf" else batch + 1
                if name != "paged_kv_indices_buf" and buf.numel() != want:
                    fail(f"{name} must hold {want} entries for the batch of {batch} that qo_indptr_buf sets, got "
                         f"{buf.numel()}")
            self._graph = dict(batch=batch, buffers=buffers, fixed=None, captured=False)
        elif any(b is not None for b in buffers.values()):
            fail(f"the {', '.join(buffers)} arguments serve use_cuda_graph=True")

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._graph is not None

    def _graph_capacity(self, qo_h: torch.Tensor, page_table: dict, kv_extent: int, config: tuple, group: int,
                        num_kv_heads: int, tile_rows: int, resident: int, num_heads: int,
                        head_dim: int) -> tuple[dict, dict]:
        """(the fixed sizes of a CUDA-graph plan's arrays, what the first plan fixes), checking this
        plan against them, against the buffers and against the tensors a captured run() used
        (note_graph_run): kv_extent is the cache's leading dim this plan reaches (pages, or the
        ragged wrapper's K/V rows). Nothing is changed here: plan() commits after its layout."""
        g = self._graph
        batch, total_qo = qo_h.numel() - 1, int(qo_h[-1])
        if batch != g["batch"]:
            fail(f"a CUDA-graph wrapper serves batch {g['batch']} (its qo_indptr_buf); plan() got {batch}")
        fixed = g["fixed"]
        if fixed is None:
            items, slots = schedule_capacity(total_qo, batch, group, num_kv_heads, tile_rows, resident)
            fits = self._partial_slots_fitting(num_heads, head_dim)
            # a persistent instance's grid, fixed with the rest: the captured launch keeps it
            ctas = min(items * num_kv_heads, resident, MAX_PERSISTENT_CTAS or resident)
            fixed = dict(config=config, rows=total_qo, items=items, partial_slots=max(0, min(slots, fits)), ctas=ctas)
        elif config != fixed["config"]:
            fail("a CUDA-graph wrapper keeps its first plan's configuration (instance, heads, head dim, page size, "
                 "causal, window, sm_scale, soft-cap), which a captured graph has baked in; make another wrapper "
                 "for another")
        elif total_qo > fixed["rows"]:
            fail(f"this plan has {total_qo} query tokens; a CUDA-graph wrapper serves at most the {fixed['rows']} of "
                 "its first plan")
        limits = g.get("limits")
        if limits is not None:
            when = "captured run" if g["captured"] else "last run"
            if total_qo > limits["q_rows"]:
                fail(f"this plan has {total_qo} query tokens but the q of this wrapper's {when} has {limits['q_rows']} "
                     "rows")
            if kv_extent > limits["kv_extent"]:
                what = "pages" if self._paged else "K/V rows"
                fail(f"this plan reaches {kv_extent} {what} but the cache of this wrapper's {when} has "
                     f"{limits['kv_extent']}")
        pages = page_table["page_indices"].size
        if self._paged:
            if pages > g["buffers"]["paged_kv_indices_buf"].numel():
                fail(f"plan() uses {pages} pages; paged_kv_indices_buf holds "
                     f"{g['buffers']['paged_kv_indices_buf'].numel()}")
            pages = g["buffers"]["paged_kv_indices_buf"].numel()
        rows, items = fixed["rows"], fixed["items"]
        merge_rows = min(rows, fixed["partial_slots"] // 2)  # a split row takes two partial slots or more
        ctas = fixed["ctas"]
        return dict(cta_indptr=ctas + 1, cta_units=items * num_kv_heads, ctas=ctas,
                    request=items, row_begin=items, kv_begin=items, kv_end=items, partial=items, pieces=items,
                    merge_row=merge_rows, merge_indptr=merge_rows + 1, qo_indptr=batch + 1, kv_len=batch,
                    work_count=1, merge_count=1, page_indptr=batch + 1, page_indices=pages,
                    partial_slots=fixed["partial_slots"]), fixed

    def _partial_slots_fitting(self, num_heads: int, head_dim: int) -> int:
        """Split-KV partial slots (fp32 out and lse of every q head) the workspace holds, less one
        for lse's alignment (lay_out_plan)."""
        return self._workspace.numel() // (num_heads * (head_dim + 1) * 4) - 1

    def _plan_common(self, qo_indptr, kv_len: np.ndarray, num_qo_heads, num_kv_heads, head_dim, page_size, causal,
                     pos_encoding_mode, sm_scale, window_left, logits_soft_cap, q_data_type, kv_data_type,
                     o_data_type, page_table: dict) -> None:
        device = self._workspace.device
        window_left, soft_cap, scale = check_variant(head_dim, pos_encoding_mode, window_left, logits_soft_cap,
                                                     sm_scale)
        if not isinstance(causal, bool):
            fail(f"causal must be a bool, got {causal!r}")
        q_name, kv_name = dtype_names(q_data_type, kv_data_type, FP8_Q_DTYPES)
        o_name = o_dtype_name(q_name, o_data_type)
        qo_h = check_indptr(qo_indptr, "qo_indptr", batch=kv_len.size)
        qo_len = np.diff(qo_h.numpy()).astype(np.int64)
        if causal and (qo_len > kv_len).any():
            b = int(np.nonzero(qo_len > kv_len)[0][0])
            fail(f"causal: request {b} has qo_len {qo_len[b]} > kv_len {kv_len[b]}; its first queries would see no key")
        module = lookup_family(families(self._backend, q_name, kv_name, self._fp8_tiles), device, q_name, kv_name,
                               head_dim, soft_cap, self._fp8_conversion, self._jit, o_name)
        tile_rows, tile_keys = KINDS[module.key.kind].tiles(module.key)
        group, resident = num_qo_heads // num_kv_heads, resident_ctas(module, device)
        copies = dict(page_table.pop("copies"), qo_indptr_buf=qo_h)
        kv_extent = page_table.pop("kv_extent")
        capacity = None
        if self._graph is not None:
            capacity, fixed = self._graph_capacity(
                qo_h, page_table, kv_extent,
                (module.key, num_qo_heads, num_kv_heads, head_dim, page_size, causal, window_left, scale, soft_cap),
                group, num_kv_heads, tile_rows, resident, num_qo_heads, head_dim)
        # a persistent instance's (spec.persistent) CTAs walk lists of units; a grid of one CTA per
        # unit may have its short last wave's items cut (spec.cut_last_wave)
        spec = KINDS[module.key.kind]
        persistent = spec.persistent is not None and spec.persistent(module.key)
        cut_wave = not persistent and spec.cut_last_wave is not None and spec.cut_last_wave(module.key)
        sched = make_schedule(qo_len, kv_len, group, causal, window_left, num_kv_heads, resident, tile_rows, tile_keys,
                              None if capacity is None else capacity["partial_slots"], cut_wave=cut_wave,
                              cut_slots=self._partial_slots_fitting(num_qo_heads, head_dim))
        # the grid: the plan's items, or a graph plan's capacity (its surplus CTAs exit at once)
        grid_items = sched.request.size if capacity is None else capacity["request"]
        ctas = 0
        if persistent:
            ctas = (min(sched.request.size * num_kv_heads, resident, MAX_PERSISTENT_CTAS or resident)
                    if capacity is None else capacity["ctas"])
        sections = l2_heads_per_section(kv_len, head_dim, KV_BYTES[kv_name], l2_bytes(device))
        if ctas:
            weight = unit_weights(spec.unit_cost(module.key) if spec.unit_cost else None,
                                  item_rows(sched.row_begin, qo_len[sched.request] * group, tile_rows))
            cta_indptr, cta_units = cta_unit_lists(sched.kv_begin, sched.kv_end, num_kv_heads, ctas, tile_keys,
                                                   grid_items, sections, weight)
        else:
            cta_indptr = np.zeros(1, dtype=np.int32)
            cta_units = grid_unit_order(sched.kv_end.astype(np.int64) - sched.kv_begin + tile_keys, num_kv_heads,
                                        grid_items, sections, resident)
        arrays = dict(request=sched.request, row_begin=sched.row_begin, kv_begin=sched.kv_begin, kv_end=sched.kv_end,
                      partial=sched.partial, pieces=sched.pieces, merge_row=sched.merge_row,
                      merge_indptr=sched.merge_indptr, qo_indptr=qo_h.numpy(), kv_len=kv_len,
                      work_count=[sched.request.size], merge_count=[sched.merge_row.size], cta_indptr=cta_indptr,
                      cta_units=cta_units, **page_table)
        self._ints, ptr = lay_out_plan(self._workspace, self._ints, arrays, sched.num_partial, num_qo_heads, head_dim,
                                       capacity)
        if capacity is not None:  # the plan stands: FlashInfer keeps the planned indptr / page table in the buffers
            with torch.no_grad():
                for name, host in copies.items():
                    self._graph["buffers"][name][: host.numel()].copy_(host.to(torch.int32))
            self._graph["fixed"] = fixed
        grid_merge = sched.merge_row.size if capacity is None else capacity["merge_row"]
        # the launch parameters but those run() sets per call (q, the cache, out/lse, scales)
        params, views = launch_params(
            PARAMS, q=UNSET_QUERY, kv=plan_kv_fields(ptr, page_size, num_kv_heads),
            qo_indptr=ptr["qo_indptr"], kv_len=ptr["kv_len"],
            work=dict(request=ptr["request"], row_begin=ptr["row_begin"], kv_begin=ptr["kv_begin"],
                      kv_end=ptr["kv_end"], partial=ptr["partial"], pieces=ptr["pieces"],
                      num_items=grid_items, live_items=ptr["work_count"], ctas=ctas, cta_indptr=ptr["cta_indptr"],
                      cta_units=ptr["cta_units"]),
            merge=merge_fields(ptr, grid_merge), out=unset_output(num_qo_heads),
            scales=dict(sm_scale=scale, k_scale=1.0, v_scale=1.0, logits_soft_cap=soft_cap, q_scale_device=None,
                        k_scale_device=None, v_scale_device=None),
            causal=int(causal), window_left=window_left)
        self._plan = dict(module=module, total_qo=int(qo_h[-1]), num_qo_heads=num_qo_heads,
                          num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size, causal=causal,
                          window_left=window_left, q_dtype=TORCH_DTYPES[q_name], kv_dtype=TORCH_DTYPES[kv_name],
                          out_dtype=None if o_name == "same" else TORCH_DTYPES[o_name],
                          sm_scale=scale, soft_cap=soft_cap, schedule=sched, device=device, ptr=ptr, params=params,
                          views=views, checked=CheckedInputs(int(qo_h[-1]), "qo_indptr[-1]", self._graph is not None),
                          unit_scales=(scale, 1.0, 1.0, None, None, None))

    def _run_common(self, q, kv: dict, q_scale, k_scale, v_scale, out, lse, return_lse):
        """kv: the cache as CheckedInputs holds it (addresses and strides), checked by the caller."""
        return finish_run(self._plan, q, kv, q_scale, k_scale, v_scale, out, lse, return_lse, self._graph)

    def _checked_kv(self, key, check) -> dict:
        """The cache's launch fields, from CheckedInputs, or check(): (k, v, strides) after its checks."""
        checked = self._plan["checked"]
        kv = checked.kv.get(key)
        if kv is None:
            k, v, strides = check()
            check_kv_alignment(k, v, strides)
            kv = checked.kv[key] = dict(k_cache=k.data_ptr(), v_cache=v.data_ptr(), strides=strides,
                                        pages=k.shape[0])  # pages, or the ragged wrapper's K/V rows
        return kv


class BatchPrefillWithPagedKVCacheWrapper(_BatchPrefill):
    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: torch.Tensor | None = None, paged_kv_indptr_buf: torch.Tensor | None = None,
                 paged_kv_indices_buf: torch.Tensor | None = None,
                 paged_kv_last_page_len_buf: torch.Tensor | None = None, custom_mask_buf=None, mask_indptr_buf=None,
                 backend: str = "auto", jit_args=None, *, fp8_conversion: str | None = None, jit: bool | None = None,
                 fp8_tiles: bool = True):
        """FlashInfer's signature (argument order included); see _BatchPrefill for the arguments."""
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph,
                         dict(qo_indptr_buf=qo_indptr_buf, paged_kv_indptr_buf=paged_kv_indptr_buf,
                              paged_kv_indices_buf=paged_kv_indices_buf,
                              paged_kv_last_page_len_buf=paged_kv_last_page_len_buf),
                         custom_mask_buf, mask_indptr_buf, backend, jit_args, fp8_conversion, jit, fp8_tiles)

    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
             paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim_qk: int,
             page_size: int, head_dim_vo: int | None = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             sm_scale: float | None = None, window_left: int = -1, logits_soft_cap: float | None = None,
             rope_scale: float | None = None, rope_theta: float | None = None, q_data_type="float16",
             kv_data_type=None, o_data_type=None, non_blocking: bool = True) -> None:
        """FlashInfer's signature (argument order included). An FP8 q (q_data_type float8_e4m3fn,
        with an FP8 cache; run() takes its q_scale) writes o_data_type, float16 or bfloat16
        (bfloat16 if None); a 16-bit q writes its own dtype."""
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
                          o_data_type, dict(page_indptr=indptr_h.numpy(), page_indices=indices, kv_extent=max_index + 1,
                               copies=dict(paged_kv_indptr_buf=indptr_h, paged_kv_indices_buf=torch.from_numpy(indices),
                                           paged_kv_last_page_len_buf=last_h)))
        self._plan["max_index"] = max_index

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: float | None = None, k_scale: float | None = None,
            v_scale: float | None = None, out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
            return_lse: bool = False, enable_pdl: bool | None = None, _eager: bool = False):
        """FlashInfer's run(); k_scale, v_scale, out, lse, return_lse may also come positionally
        after the cache. q_scale multiplies the logits; enable_pdl is accepted."""
        if not _eager and torch.compiler.is_compiling():  # one opaque op for torch.compile (ops.py)
            return compiled_run(self, q, *split_cache(paged_kv_cache), args, q_scale, k_scale, v_scale, out, lse,
                                return_lse)
        if args:
            k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
        plan = self._plan
        if plan is None:
            fail("call plan() before run()")

        key = CheckedInputs.kv_key(paged_kv_cache)
        kv = plan["checked"].kv.get(key)
        if kv is None:  # the first run() with this cache
            def check():
                k, v = split_paged_kv(paged_kv_cache, self._layout)
                check_kv(k, v, plan["kv_dtype"], plan["device"])
                strides = kv_strides(k, self._layout, plan["page_size"], plan["num_kv_heads"], plan["head_dim"])
                if plan["max_index"] >= k.shape[0]:
                    fail(f"paged_kv_indices refers to page {plan['max_index']} but the cache has {k.shape[0]} pages")
                return k, v, strides

            kv = self._checked_kv(key, check)
        return self._run_common(q, kv, q_scale, k_scale, v_scale, out, lse, return_lse)


class BatchPrefillWithRaggedKVCacheWrapper(_BatchPrefill):
    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: torch.Tensor | None = None, kv_indptr_buf: torch.Tensor | None = None,
                 custom_mask_buf=None, mask_indptr_buf=None, backend: str = "auto", jit_args=None, *,
                 fp8_conversion: str | None = None, jit: bool | None = None, fp8_tiles: bool = True):
        """FlashInfer's signature (argument order included); see _BatchPrefill for the arguments.
        With use_cuda_graph, k and v may have more rows than the plan's kv_indptr[-1]."""
        if kv_layout != "NHD":
            fail(f"ragged K/V are [tokens, num_kv_heads, head_dim]: kv_layout must be 'NHD', got {kv_layout!r}")
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph,
                         dict(qo_indptr_buf=qo_indptr_buf, kv_indptr_buf=kv_indptr_buf), custom_mask_buf,
                         mask_indptr_buf, backend, jit_args, fp8_conversion, jit, fp8_tiles)

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, num_qo_heads: int, num_kv_heads: int,
             head_dim_qk: int, head_dim_vo: int | None = None, custom_mask=None, packed_custom_mask=None,
             causal: bool = False, pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False,
             window_left: int = -1, logits_soft_cap: float | None = None, sm_scale: float | None = None,
             rope_scale: float | None = None, rope_theta: float | None = None, q_data_type="float16",
             kv_data_type=None, o_data_type=None, non_blocking: bool = True) -> None:
        """FlashInfer's signature (argument order included). An FP8 q (q_data_type float8_e4m3fn,
        with an FP8 cache; run() takes its q_scale) writes o_data_type, float16 or bfloat16
        (bfloat16 if None); a 16-bit q writes its own dtype."""
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
                          o_data_type,
                          dict(page_indptr=np.arange(kv_len.size + 1), page_indices=kv_h[:-1], kv_extent=int(kv_h[-1]),
                               copies=dict(kv_indptr_buf=torch.from_numpy(kv_h))))
        self._plan["total_kv"] = int(kv_h[-1])

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, q_scale: float | None = None,
            k_scale: float | None = None, v_scale: float | None = None, out: torch.Tensor | None = None,
            lse: torch.Tensor | None = None, return_lse: bool = False, enable_pdl: bool | None = None,
            _eager: bool = False):
        """FlashInfer's run(), as the paged wrapper's."""
        if not _eager and torch.compiler.is_compiling():  # one opaque op for torch.compile (ops.py)
            return compiled_run(self, q, k, v, args, q_scale, k_scale, v_scale, out, lse, return_lse)
        if args:
            k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
        plan = self._plan
        if plan is None:
            fail("call plan() before run()")

        key = CheckedInputs.kv_key((k, v))
        kv = plan["checked"].kv.get(key)
        if kv is None:  # the first run() with these K/V
            def check():
                shape = (plan["total_kv"], plan["num_kv_heads"], plan["head_dim"])
                for t, what in ((k, "k"), (v, "v")):
                    require_tensor(t, what)
                if k.dtype != v.dtype:
                    fail(f"k and v must have the same dtype, got {k.dtype} and {v.dtype}")
                check_kv(k, v, plan["kv_dtype"], plan["device"])
                for t, what in ((k, "k"), (v, "v")):
                    # a CUDA-graph plan reads the first kv_indptr[-1] rows of its (padded) static k and v
                    fits = t.shape[1:] == shape[1:] and (t.shape[0] >= shape[0] if self._graph else t.shape[0] == shape[0])
                    if t.dim() != 3 or not fits:
                        fail(f"{what} has shape {tuple(t.shape)}; plan() needs [kv_indptr[-1], num_kv_heads, head_dim] = "
                             f"{shape}{' (or more rows, with use_cuda_graph)' if self._graph else ''}")
                if k.stride() != v.stride():
                    fail(f"k and v must have the same strides, got {k.stride()} and {v.stride()}")
                # page = a request's first row, slot = its row within the request
                return k, v, (k.stride(0), k.stride(0), k.stride(1))

            kv = self._checked_kv(key, check)
        return self._run_common(q, kv, q_scale, k_scale, v_scale, out, lse, return_lse)
