// Paged KV gather: (request, token) -> element offset of that token's row.
// Layouts differ only in strides (NHD [pages, page, heads, dim], HND [pages, heads, page, dim],
// K and V in one [pages, 2, ...] tensor), so the kernel takes a CuTe layout of the page pool
// with run-time strides and never branches on the layout. The KV head's offset is folded into
// the base pointer once, outside the loop.
#pragma once
#include <cute/layout.hpp>
#include <cutlass/fast_math.h>

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

}  // namespace fig
