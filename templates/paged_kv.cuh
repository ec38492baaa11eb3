// Paged KV gather: (request, token) -> element offset of that token's row.
// Layouts differ only in strides (NHD [pages, page, heads, dim], HND [pages, heads, page, dim],
// K and V in one [pages, 2, ...] tensor), so the kernel takes a CuTe layout of the page pool
// with run-time strides and never branches on the layout. The KV head's offset is folded into
// the base pointer once, outside the loop.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include <cute/layout.hpp>
#include <cutlass/fast_math.h>
#include "fig_abi_common.h"

namespace fig {

struct PagedKv {
  // (page, slot in page, kv head) -> element offset; the head dim is contiguous.
  using PoolLayout = cute::Layout<cute::Shape<int, int, int>, cute::Stride<int64_t, int64_t, int64_t>>;
  PoolLayout pool;
  cutlass::FastDivmod page_size;
  const int32_t* indices;

  struct TokenLocation {
    int page;
    int slot;
  };

  static PagedKv from(const FigPagedKv& p) {
    PagedKv kv;
    kv.pool = PoolLayout(cute::make_shape(1, p.page_size, p.num_kv_heads),
                         cute::make_stride(p.stride_page, p.stride_slot, p.stride_head));
    kv.page_size = cutlass::FastDivmod(p.page_size);
    kv.indices = p.indices;
    return kv;
  }

  // Starts the page-table load of `token` of the request whose pages start at
  // indices[page_begin]; the caller uses the result a pipeline step later.
  __device__ __forceinline__ TokenLocation locate(int page_begin, int token) const {
    TokenLocation loc;
    int page_pos;
    page_size.fast_divmod(page_pos, loc.slot, token);
    loc.page = __ldg(indices + page_begin + page_pos);
    return loc;
  }

  __device__ __forceinline__ int64_t offset(TokenLocation loc) const { return pool(loc.page, loc.slot, 0); }
  __device__ __forceinline__ int64_t head_offset(int kv_head) const { return pool(0, 0, kv_head); }
};

// A CTA's cooperative copy of kRows consecutive tokens of K and V (one KV head) into shared
// rows of kRowBytes (a row of head-dim bytes plus padding), 16 bytes per cp.async. Consecutive
// threads take consecutive 16-byte chunks of a row, so each row is read as whole sectors.
// The rows' page-table lookups are done a tile ahead (lookup() / store()) into shared offsets,
// so a copy never waits for a page index: a lookup's latency hides under a tile's compute.
// Tokens at or past `end` re-read token end - 1 (the consumer masks them), so no load leaves
// the request's pages.
template <int kRows, int kRowBytes, int kDataBytes, int kThreads>
struct PagedKvTileCopy {
  static constexpr int kChunksPerRow = kDataBytes / 16;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kDataBytes % 16 == 0 && kRowBytes % 16 == 0, "rows are copied as 16-byte chunks");
  static_assert(kRows <= kThreads, "one thread looks up each row");

  // Byte offset (from the KV head's base) of row threadIdx.x of the tile at tile_begin; 0 for
  // threads past the tile's rows.
  __device__ __forceinline__ static int64_t lookup(const PagedKv& kv, int bytes_per_element, int page_begin,
                                                   int tile_begin, int end) {
    if (int(threadIdx.x) >= kRows) return 0;
    return kv.offset(kv.locate(page_begin, min(tile_begin + int(threadIdx.x), end - 1))) * bytes_per_element;
  }
  __device__ __forceinline__ static void store(int64_t (&row_offsets)[kRows], int64_t offset) {
    if (int(threadIdx.x) < kRows) row_offsets[threadIdx.x] = offset;
  }

  // Call after a barrier that follows the store() of these offsets.
  __device__ __forceinline__ static void copy(uint8_t (*k_rows)[kRowBytes], uint8_t (*v_rows)[kRowBytes],
                                              const int64_t (&row_offsets)[kRows], const uint8_t* k_base,
                                              const uint8_t* v_base) {
    CUTE_UNROLL
    for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
      const int id = int(threadIdx.x) + i * kThreads;
      if (kChunks % kThreads == 0 || id < kChunks) {
        const int row = id / kChunksPerRow;
        const int chunk = id % kChunksPerRow;
        const int64_t src = row_offsets[row] + 16 * chunk;
        cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
            *reinterpret_cast<const cute::uint128_t*>(k_base + src),
            *reinterpret_cast<cute::uint128_t*>(&k_rows[row][16 * chunk]));
        cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
            *reinterpret_cast<const cute::uint128_t*>(v_base + src),
            *reinterpret_cast<cute::uint128_t*>(&v_rows[row][16 * chunk]));
      }
    }
  }
};

}  // namespace fig
