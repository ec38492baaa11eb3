// Decode grid (1-D): blockIdx.x = work item * rows + row, where a work item is one entry of
// plan()'s list (a request's token range, split-KV pieces included) and a row is a KV head x
// row group. Rows vary fastest, so the CTAs that the block scheduler starts together read all
// KV heads of the same pages: with NHD, whole token rows of the pool instead of one 1/Hk slice
// of each, which keeps the DRAM accesses of concurrent CTAs on the same rows. A row group is up
// to kWarps warp tiles of kRowsPerTile q heads of one KV head; the CTA's warps split its token
// range into interleaved steps. GQA groups above kWarps * kRowsPerTile q heads per KV head take
// several row groups, which re-read the same KV rows from L2 rather than from memory.
#pragma once
#include "fig_abi_decode.h"

namespace fig {

struct DecodeGridShape {
  int group_size;         // q heads per KV head
  int row_tiles_per_cta;  // warp tiles per CTA: 1, 2 or kWarps (it must divide the warp count)
  int row_groups;         // CTAs per KV head

  template <class Cfg>
  __host__ __device__ static DecodeGridShape make(int num_qo_heads, int num_kv_heads) {
    static_assert(Cfg::kWarps == 4, "row_tiles_per_cta below assumes 1, 2 or 4 tiles divide the warps");
    DecodeGridShape s;
    s.group_size = num_qo_heads / num_kv_heads;
    const int tiles = (s.group_size + Cfg::kRowsPerTile - 1) / Cfg::kRowsPerTile;
    s.row_tiles_per_cta = tiles >= 3 ? Cfg::kWarps : tiles;
    s.row_groups = (tiles + s.row_tiles_per_cta - 1) / s.row_tiles_per_cta;
    return s;
  }

  __host__ __device__ int ctas_per_work_item(int num_kv_heads) const { return num_kv_heads * row_groups; }
};

struct DecodeWorkCoord {
  int request, begin, end, partial_slot;
  int kv_head, row_group;

  // The item of this CTA, or -1 past the plan's live items (a CUDA-graph plan launches its
  // capacity; the CTAs beyond exit at once).
  __device__ static int item_of_block(const FigDecodeParams& p, const DecodeGridShape& shape) {
    const int item = blockIdx.x / shape.ctas_per_work_item(p.kv.num_kv_heads);
    return item < *p.work.live_items ? item : -1;
  }

  __device__ static DecodeWorkCoord from_block(const FigDecodeParams& p, const DecodeGridShape& shape, int item) {
    DecodeWorkCoord w;
    const int rows = shape.ctas_per_work_item(p.kv.num_kv_heads);
    const int row = blockIdx.x % rows;
    w.request = p.work.request[item];
    w.begin = p.work.begin[item];
    w.end = p.work.end[item];
    w.partial_slot = p.work.partial[item];
    w.kv_head = row / shape.row_groups;
    w.row_group = row % shape.row_groups;
    return w;
  }
};

}  // namespace fig
