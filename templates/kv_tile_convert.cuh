// A CTA's conversion of one shared K/V tile of FP8 codes into the 16-bit (fp16) rows that the
// prefill warps read with ldmatrix. Done once per tile by all threads, instead of once per
// warp in registers: every warp of the CTA reads the same keys, so a per-warp upcast did the
// work kWarps times over. Each thread takes 8 codes (8 bytes) and writes 16 bytes, so
// consecutive threads write consecutive 16-byte chunks of a row (no bank conflict).
//
// Every code is converted exactly: the fast bit placement handles the finite codes, and a word
// that holds a special code (e4m3 NaN, see fp8_convert.cuh) takes the exact routine, a branch
// that real caches never take. The mainloop therefore needs no replay for FP8 prefill.
#pragma once
#include <cuda_runtime.h>
#include "fp8_convert.cuh"
#include "paged_kv.cuh"

namespace fig {

template <class Converter, int kRows, int kHeadDim, int kSrcRowBytes, int kDstRowBytes, int kThreads>
struct KvTileConvert {
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kHeadDim % 8 == 0 && kSrcRowBytes % 8 == 0 && kDstRowBytes % 16 == 0);

  __device__ __forceinline__ static void word(uint32_t codes, uint32_t& lo, uint32_t& hi) {
    Converter::convert_finite(codes, lo, hi);
    if constexpr (Converter::kHasSpecialCodes) {
      if (Converter::special_bits(codes) != 0u) Converter::convert(codes, lo, hi);
    }
  }

  // Call between the barrier after which the source tile is complete and the one before the
  // destination is read; the destination must not be read by anyone in between.
  __device__ __forceinline__ static void run(const uint8_t (*k_src)[kSrcRowBytes], const uint8_t (*v_src)[kSrcRowBytes],
                                             uint8_t (*k_dst)[kDstRowBytes], uint8_t (*v_dst)[kDstRowBytes]) {
    CUTE_UNROLL
    for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
      const int id = thread_index_here() + i * kThreads;
      if (kChunks % kThreads == 0 || id < kChunks) {
        const int row = id / kChunksPerRow;
        const int chunk = id % kChunksPerRow;
        const uint2 k_codes = *reinterpret_cast<const uint2*>(&k_src[row][8 * chunk]);
        const uint2 v_codes = *reinterpret_cast<const uint2*>(&v_src[row][8 * chunk]);
        uint4 k16, v16;
        word(k_codes.x, k16.x, k16.y);
        word(k_codes.y, k16.z, k16.w);
        word(v_codes.x, v16.x, v16.y);
        word(v_codes.y, v16.z, v16.w);
        *reinterpret_cast<uint4*>(&k_dst[row][16 * chunk]) = k16;
        *reinterpret_cast<uint4*>(&v_dst[row][16 * chunk]) = v16;
      }
    }
  }
};

}  // namespace fig
