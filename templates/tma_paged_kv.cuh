// The paged KV cache as a TMA tensor (sm_90): [page, slot, kv head, head dim] of 16-bit or 8-bit
// elements with the cache's strides, boxes of `rows` consecutive slots of one page by one swizzle
// width of head dim (kv_swizzle_bytes: 128 bytes, 64 or 128 elements; 64 bytes where a row is not
// whole 128-byte lines, FP8 at head dims 64 and 192), the swizzle of the WGMMA operand layouts. Contiguous K/V (the
// ragged wrapper's one page per request, at its first row) are the same tensor with the page
// stride equal to the row stride, so page p + slot s is row p + s.
// rows = the largest power of two that divides the page size and, halving from it, the tile's
// keys, at least 8 (a box starts on a swizzle atom of 8 rows); otherwise every tile is gathered
// with cp.async: pages below 8 or of an odd size, and tiles of a non-power-of-two key count (which
// the generator no longer makes: a 96-key tile's halvings 48, 24, 12 would start boxes off the atom).
// A tensor map holds the cache's address: a CUDA graph captured with it replays on that cache.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <type_traits>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/numeric/numeric_types.hpp>
#include "fig_abi_common.h"

namespace fig {

// The swizzle width, in bytes, of a K-major WGMMA operand whose rows are row_bytes long, and so of
// the TMA boxes that fill it: 128 where the rows are whole 128-byte lines (every 16-bit head dim,
// FP8 at 128 and 256), else 64 (FP8 at head dims 64 and 192: rows of one and three 64-byte
// atoms). The host's tensor maps and the
// kernels' shared layouts both take it from here.
constexpr int kv_swizzle_bytes(int row_bytes) { return row_bytes % 128 == 0 ? 128 : 64; }

// The cache's element as the tensor map describes it (FP8 codes as bytes: TMA only copies them).
enum TmaElement : int { kTmaF16 = 0, kTmaBF16 = 1, kTmaByte = 2 };

template <class T>
constexpr int tma_element() {
  if constexpr (sizeof(T) == 1) return kTmaByte;
  else if constexpr (std::is_same_v<T, cute::bfloat16_t>) return kTmaBF16;
  else return kTmaF16;
}

struct KvTensorMaps {
  CUtensorMap k;  // 64-byte aligned, as a __grid_constant__ kernel parameter needs
  CUtensorMap v;
  int rows;       // slots per box; 0: no TMA (the producer gathers every tile)

  // make(), remembered per thread for the caches seen last (an engine's run() per layer cycles
  // through one cache per layer; each encode is a driver call on the launch path). The maps
  // depend on the addresses, strides and sizes of the cache alone, all in the key.
  static KvTensorMaps cached(const FigPagedKv& kv, int head_dim, int tile_keys, int element) {
    return cached_with(kv, head_dim, tile_keys, element, make);
  }

  // cached() with the encoding step given (a host test counts its calls). A set-associative table:
  // kSets sets of kWays entries, the set chosen by a multiplicative hash of the K cache's whole
  // address (large allocations are 2 MiB aligned or more, so their low bits alone would pick one
  // set), the least recently used entry of the set replaced. 32 layers' caches at random
  // addresses overflow a set (9 in one of 16) for about one engine in 600: some re-encodes.
  static constexpr int kSetBits = 4, kSets = 1 << kSetBits, kWays = 8;

  static int set_of(const void* k_cache) {
    return int((uint64_t(reinterpret_cast<uintptr_t>(k_cache)) * 0x9E3779B97F4A7C15ull) >> (64 - kSetBits));
  }

  template <class Make>
  static KvTensorMaps cached_with(const FigPagedKv& kv, int head_dim, int tile_keys, int element, Make&& make_maps) {
    struct Entry {
      const void* k = nullptr;
      const void* v = nullptr;
      int64_t strides[3] = {};
      int page_size = 0, heads = 0, head_dim = 0, tile_keys = 0;
      int element = -1;
      uint64_t used = 0;  // when last hit or filled
      KvTensorMaps maps;
    };
    thread_local Entry table[kSets][kWays];
    thread_local uint64_t clock = 0;
    Entry* set = table[set_of(kv.k_cache)];
    ++clock;
    Entry* oldest = &set[0];
    for (int way = 0; way < kWays; ++way) {
      Entry& e = set[way];
      if (e.k == kv.k_cache && e.v == kv.v_cache && e.strides[0] == kv.stride_page &&
          e.strides[1] == kv.stride_slot && e.strides[2] == kv.stride_head && e.page_size == kv.page_size &&
          e.heads == kv.num_kv_heads && e.head_dim == head_dim && e.tile_keys == tile_keys && e.element == element) {
        e.used = clock;
        return e.maps;
      }
      if (e.used < oldest->used) oldest = &e;
    }
    Entry& e = *oldest;
    e.maps = make_maps(kv, head_dim, tile_keys, element);
    e.k = kv.k_cache;
    e.v = kv.v_cache;
    e.strides[0] = kv.stride_page;
    e.strides[1] = kv.stride_slot;
    e.strides[2] = kv.stride_head;
    e.page_size = kv.page_size;
    e.heads = kv.num_kv_heads;
    e.head_dim = head_dim;
    e.tile_keys = tile_keys;
    e.element = element;
    e.used = clock;
    return e.maps;
  }

  // element: a TmaElement; the box is kv_swizzle_bytes of head dim wide.
  static KvTensorMaps make(const FigPagedKv& kv, int head_dim, int tile_keys, int element) {
    const int64_t bytes = element == kTmaByte ? 1 : 2;
    const int swizzle = kv_swizzle_bytes(int(head_dim * bytes));
    const int box_columns = int(swizzle / bytes);
    KvTensorMaps maps;
    maps.rows = 0;
    int rows = tile_keys;
    while (rows >= 8 && kv.page_size % rows != 0) rows /= 2;
    if ((rows & (rows - 1)) != 0) rows = 0;  // not a power of two: box i would start at 12 i keys, say
    const int64_t strides[3] = {kv.stride_head * bytes, kv.stride_slot * bytes, kv.stride_page * bytes};
    for (int64_t s : strides)
      if (s % 16 != 0 || s <= 0 || s >= (int64_t(1) << 40)) rows = 0;
    if (rows < 8 || head_dim % box_columns != 0) return maps;
    auto encode = encoder();
    if (encode == nullptr) return maps;
    const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(kv.num_kv_heads), cuuint64_t(kv.page_size),
                                cuuint64_t(0x7fffffff)};  // the page table was checked against the pool
    const cuuint64_t byte_strides[3] = {cuuint64_t(strides[0]), cuuint64_t(strides[1]), cuuint64_t(strides[2])};
    const cuuint32_t box[4] = {cuuint32_t(box_columns), 1, cuuint32_t(rows), 1};
    const cuuint32_t unit[4] = {1, 1, 1, 1};
    const CUtensorMapDataType type = element == kTmaByte   ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                     : element == kTmaBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                           : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    for (int i = 0; i < 2; ++i) {
      CUtensorMap* map = i == 0 ? &maps.k : &maps.v;
      void* base = const_cast<void*>(i == 0 ? kv.k_cache : kv.v_cache);
      if (encode(map, type, 4, base, dims, byte_strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                 swizzle == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
        return maps;
    }
    maps.rows = rows;
    return maps;
  }

 private:
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  // The driver's encoder through the runtime, so the library needs no -lcuda.
  static Encode encoder() {
    static Encode fn = [] {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult status;
      if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &status) !=
              cudaSuccess || status != cudaDriverEntryPointSuccess)
        return Encode(nullptr);
      return reinterpret_cast<Encode>(p);
    }();
    return fn;
  }
};

// One box: `rows` slots from (page, slot) of KV head `head`, head-dim columns [column, column + swizzle width),
// into shared memory at `dst`; its bytes complete on `bar`.
__device__ __forceinline__ void tma_load_kv_box(const CUtensorMap* map, uint64_t* bar, void* dst, int column,
                                                int head, int slot, int page) {
  cute::SM90_TMA_LOAD_4D::copy(map, bar, uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL), dst, column, head, slot,
                               page);
}

}  // namespace fig
