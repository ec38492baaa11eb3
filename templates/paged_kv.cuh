// Paged KV gather: (request, token) -> element offset of that token's row for one KV head.
// Layouts differ only in strides (NHD [pages, page, heads, dim], HND [pages, heads, page, dim],
// K and V in one [pages, 2, ...] tensor), so the kernel takes a CuTe layout of the page pool
// with run-time strides and never branches on the layout.
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

  // Offset of token `token` of the request whose pages start at indices[page_begin].
  __device__ __forceinline__ int64_t token_offset(int page_begin, int token, int kv_head) const {
    int page_pos, slot;
    page_size.fast_divmod(page_pos, slot, token);
    const int page = __ldg(indices + page_begin + page_pos);
    return pool(page, slot, kv_head);
  }
};

}  // namespace fig
