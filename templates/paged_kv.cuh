// Paged KV gather: (request, token) -> element offset of that token's row.
// Layouts differ only in strides (NHD [pages, page, heads, dim], HND [pages, heads, page, dim],
// K and V in one [pages, 2, ...] tensor), so the kernel takes a CuTe layout of the page pool
// with run-time strides and never branches on the layout. The KV head's offset is folded into
// the base pointer once, outside the loop.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include <cute/layout.hpp>
#include <cutlass/fast_math.h>
#include "device_utils.cuh"
#include "fig_abi_common.h"
#include "smem_rows.cuh"

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
// rows laid out as Rows says (smem_rows.cuh), 16 bytes per cp.async.
// Consecutive threads take consecutive 16-byte chunks of a row, so each row is read as whole
// sectors. The rows' page-table lookups are done a tile ahead (lookup() / store()) into shared
// memory as K row addresses, so a copy never waits for a page index: a lookup's latency hides
// under a tile's compute. A V row sits at a fixed distance from its K row (v_minus_k: the two
// pools share strides), so the copy holds no base pointers in registers across the mainloop.
// Tokens at or past `end` re-read token end - 1 (the consumer masks them), so no load leaves
// the request's pages.
template <int kRows, class Rows, int kDataBytes, int kThreads>
struct PagedKvTileCopy {
  static constexpr int kRowBytes = Rows::kRowBytes;
  static constexpr int kChunksPerRow = kDataBytes / 16;
  static_assert(kDataBytes % 16 == 0 && kDataBytes <= kRowBytes, "rows are copied as 16-byte chunks");
  static_assert(kRows <= kThreads, "one thread looks up each row");

  // K address of row threadIdx.x of the tile at tile_begin (k_base: the KV head's K base); 0 for
  // threads past the tile's rows.
  __device__ __forceinline__ static int64_t lookup(const PagedKv& kv, int bytes_per_element, const uint8_t* k_base,
                                                   int page_begin, int tile_begin, int end) {
    if (thread_index_here() >= kRows) return 0;
    const int64_t offset = kv.offset(kv.locate(page_begin, min(tile_begin + thread_index_here(), end - 1)));
    return reinterpret_cast<int64_t>(k_base + offset * bytes_per_element);
  }
  __device__ __forceinline__ static void store(int64_t (&row_addrs)[kRows], int64_t addr) {
    if (thread_index_here() < kRows) row_addrs[threadIdx.x] = addr;
  }

  // Call after a barrier that follows the store() of these addresses.
  __device__ __forceinline__ static void copy(uint8_t (*k_rows)[kRowBytes], uint8_t (*v_rows)[kRowBytes],
                                              const int64_t (&row_addrs)[kRows], int64_t v_minus_k) {
    using Passes = TilePasses<kRows, kChunksPerRow, kThreads>;
    const uint32_t thread = thread_index_here();
    // Every row address before any copy: a cp.async writes shared memory, which the compiler
    // cannot tell from the addresses, so with each pass's address read after the previous pass's
    // copies it read one, waited for it, copied, and read the next (SASS of 5a1bb92).
    int64_t k_src[Passes::kPasses];
    CUTE_UNROLL
    for (int i = 0; i < Passes::kPasses; ++i) {
      if (Passes::valid(thread, i)) k_src[i] = row_addrs[Passes::row(thread, i)] + 16 * Passes::column(thread, i);
    }
    CUTE_UNROLL
    for (int i = 0; i < Passes::kPasses; ++i) {
      if (Passes::valid(thread, i))
        chunk(k_rows, v_rows, k_src[i], v_minus_k, Passes::row(thread, i), Passes::column(thread, i));
    }
  }

 private:
  // k_src: the chunk's K bytes in the cache.
  __device__ __forceinline__ static void chunk(uint8_t (*k_rows)[kRowBytes], uint8_t (*v_rows)[kRowBytes], int64_t k_src,
                                               int64_t v_minus_k, int row, int column) {  // column: the 16-byte chunk
    const uint32_t dst = Rows::offset(row, column);
    cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(k_src),
                                                          *reinterpret_cast<cute::uint128_t*>(k_rows[0] + dst));
    cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(k_src + v_minus_k),
                                                          *reinterpret_cast<cute::uint128_t*>(v_rows[0] + dst));
  }
};

}  // namespace fig
