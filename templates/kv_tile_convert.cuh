// A CTA's conversion of one shared K or V tile of FP8 codes into the 16-bit (fp16) rows that the
// prefill warps read with ldmatrix. Done once per tile by all threads, instead of once per
// warp in registers: every warp of the CTA reads the same keys, so a per-warp upcast did the
// work kWarps times over. Each thread takes 8 codes (8 bytes) and writes 16 bytes, so
// consecutive threads write consecutive 16-byte chunks of a row (no bank conflict).
//
// Every code goes through the exact routine (fp8_convert.cuh), whose NaN handling is branch-free:
// the fast routine with a replay of special codes needed a branch whose registers, next to a
// tile's P and O (the mainloop upcasts between a tile's halves), spilled.
#pragma once
#include <cuda_runtime.h>
#include "fp8_convert.cuh"
#include "device_utils.cuh"

namespace fig {

template <class Converter, int kRows, int kHeadDim, int kSrcRowBytes, int kDstRowBytes, int kThreads>
struct KvTileConvert {
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kHeadDim % 8 == 0 && kSrcRowBytes % 8 == 0 && kDstRowBytes % 16 == 0);

  // Call between the barrier after which the source tile is complete and the one before the
  // destination is read; the destination must not be read by anyone in between. One tile, K or
  // V: the mainloop converts V during a tile's logits and the next K during its P V.
  __device__ __forceinline__ static void run(const uint8_t (*src)[kSrcRowBytes], uint8_t (*dst)[kDstRowBytes]) {
    CUTE_UNROLL
    for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
      const int id = thread_index_here() + i * kThreads;
      if (kChunks % kThreads == 0 || id < kChunks) {
        const int row = id / kChunksPerRow;
        const int chunk = id % kChunksPerRow;
        const uint2 codes = *reinterpret_cast<const uint2*>(&src[row][8 * chunk]);
        uint4 halves;
        Converter::convert(codes.x, halves.x, halves.y);
        Converter::convert(codes.y, halves.z, halves.w);
        *reinterpret_cast<uint4*>(&dst[row][16 * chunk]) = halves;
      }
    }
  }
};

}  // namespace fig
