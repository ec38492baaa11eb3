// Decode grid (1-D): blockIdx.x = work item * rows + row, where a work item is one entry of
// plan()'s list (a request's token range, split-KV pieces included) and a row is a KV head x
// row group. Rows vary fastest, so the CTAs that the block scheduler starts together read all
// KV heads of the same pages: with NHD, whole token rows of the pool instead of one 1/Hk slice
// of each, which keeps the DRAM accesses of concurrent CTAs on the same rows. A row group is up to 4 warp tiles of 8 q
// heads of one KV head; the CTA's warps split its token range into interleaved 16-token steps.
// GQA groups above 32 q heads per KV head take several row groups, which re-read the same KV
// rows from L2 rather than from memory.
#pragma once
#include "fig_abi.h"

namespace fig {

struct DecodeGridShape {
  int group_size;         // q heads per KV head
  int row_tiles_per_cta;  // 1, 2 or 4 warp tiles of 8 heads
  int row_groups;         // CTAs along y per KV head

  static constexpr int kRowsPerTile = 8;
  static constexpr int kMaxTilesPerCta = 4;  // = warps per CTA

  __host__ __device__ static DecodeGridShape make(int num_qo_heads, int num_kv_heads) {
    DecodeGridShape s;
    s.group_size = num_qo_heads / num_kv_heads;
    const int tiles = (s.group_size + kRowsPerTile - 1) / kRowsPerTile;
    s.row_tiles_per_cta = tiles >= 3 ? kMaxTilesPerCta : tiles;  // must divide the warp count
    s.row_groups = (tiles + s.row_tiles_per_cta - 1) / s.row_tiles_per_cta;
    return s;
  }
};

struct DecodeWorkCoord {
  int request, begin, end, partial_slot;
  int kv_head, row_group;

  __device__ static DecodeWorkCoord from_block(const FigDecodeParams& p, const DecodeGridShape& shape) {
    DecodeWorkCoord w;
    const int rows = p.num_kv_heads * shape.row_groups;
    const int item = blockIdx.x / rows;
    const int row = blockIdx.x % rows;
    w.request = p.work_request[item];
    w.begin = p.work_begin[item];
    w.end = p.work_end[item];
    w.partial_slot = p.work_partial[item];
    w.kv_head = row / shape.row_groups;
    w.row_group = row % shape.row_groups;
    return w;
  }
};

}  // namespace fig
