// A prefill CTA's work item, shared by both prefill families (prefill_kernel.cuh on mma.sync,
// prefill_sm90_kernel.cuh on WGMMA): plan()'s item (request, packed query rows, key range) and
// KV head, the rows' packing, and the keys each packed row sees.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi_prefill.h"
#include "paged_kv.cuh"

namespace fig {

struct PrefillArgs {
  FigPrefillParams p;
  PagedKv kv;
  float logits_scale;  // sm_scale * k_scale * KV conversion factor
  float out_scale;     // v_scale * KV conversion factor
};

// The CTA's rows: [row_begin, row_begin + the tile's rows) within [0, rows_total). plan() ends a
// request's row tiles at its last row, so its first tile may start below row 0 (prefill.py,
// make_schedule): causal, the rows that see the fewest keys are the partial tile. The Ampere
// kernel keeps this in shared memory across the mainloop, so it holds no registers there.
struct PrefillRows {
  int request, kv_head, row_begin, rows_total, group, qo_start, partial, pieces;

  // Packed row r of the request = (query token r / group, q head kv_head * group + r % group).
  __device__ __forceinline__ int token(int r) const { return r / group; }
  __device__ __forceinline__ int qo_head(int r) const { return kv_head * group + r % group; }
  // Whether packed row r is one of the request's (0 <= r < rows_total).
  __device__ __forceinline__ bool has(int r) const { return unsigned(r) < unsigned(rows_total); }
  // The tile's first row that is one of the request's.
  __device__ __forceinline__ int first_row() const { return max(row_begin, 0); }
};

// A unit of work: one item of plan()'s list for one KV head, numbered item + kv_head x num_items
// in FigPrefillWork::cta_units, which plan() orders by sections of KV heads whose K/V rows fit in
// L2 (prefill.py, l2_heads_per_section), so that the CTAs running at once re-read rows L2 holds.
struct PrefillUnit {
  int item, kv_head;

  __device__ __forceinline__ static PrefillUnit of(const FigPrefillParams& p, unsigned unit) {
    const unsigned items = p.work.num_items;  // > 0 wherever a unit exists
    return {int(unit % items), int(unit / items)};
  }

  // A grid of one CTA per unit (work.ctas == 0): CTA `cta`'s unit, in plan()'s grid order (by
  // section, each item by item with its KV heads fastest, the cheapest units last: prefill.py,
  // grid_unit_order); false for a CTA past the plan's live units (a CUDA-graph plan's grid has its
  // capacity's).
  __device__ __forceinline__ static bool of_grid(const FigPrefillParams& p, unsigned cta, PrefillUnit& unit) {
    if (cta >= unsigned(*p.work.live_items) * unsigned(p.kv.num_kv_heads)) return false;
    unit = of(p, unsigned(p.work.cta_units[cta]));
    return true;
  }
};

struct PrefillItem {
  PrefillRows rows;
  int begin, end;  // keys [begin, end) of the request this item covers
  int kv_len;
  int shift;       // query i of the request sits at key position shift + i

  __device__ __forceinline__ static PrefillItem load(const FigPrefillParams& p, int item, int kv_head) {
    PrefillItem w;
    w.rows.kv_head = kv_head;
    w.rows.request = p.work.request[item];
    w.rows.row_begin = p.work.row_begin[item];
    w.rows.partial = p.work.partial[item];
    w.rows.pieces = p.work.pieces[item];
    w.rows.group = p.out.num_heads / p.kv.num_kv_heads;
    w.rows.qo_start = p.qo_indptr[w.rows.request];
    const int qo_len = p.qo_indptr[w.rows.request + 1] - w.rows.qo_start;
    w.rows.rows_total = qo_len * w.rows.group;
    w.kv_len = p.kv_len[w.rows.request];
    w.begin = p.work.kv_begin[item];
    w.end = p.work.kv_end[item];
    w.shift = w.kv_len - qo_len;
    return w;
  }

  // Keys [x, y] packed row r sees: the item's range, cut by the causal bound and the window.
  __device__ __forceinline__ int2 key_range(int r, int causal, int window_left) const {
    const int diagonal = shift + rows.token(r);  // the query's own position among the keys
    return make_int2(max(begin, window_left >= 0 ? diagonal - window_left : 0),
                     min(end - 1, causal ? diagonal : kv_len - 1));
  }
};

}  // namespace fig
