// A CTA's conversion of one shared K/V tile of FP8 codes into the 16-bit (fp16) rows that the
// prefill warps read with ldmatrix. Done once per tile by all threads, instead of once per
// warp in registers: every warp of the CTA reads the same keys, so a per-warp upcast did the
// work kWarps times over. Each thread takes 8 codes (8 bytes) and writes 16 bytes, so
// consecutive threads write consecutive 16-byte chunks of a row, placed as DstRows says
// (smem_rows.cuh).
//
// Every code is converted exactly: the fast bit placement handles the finite codes, and a thread
// whose chunks hold a special code (e4m3 NaN, see fp8_convert.cuh) converts them again with the
// exact routine before the barrier that publishes the tile: one test per thread and tile, a
// branch that real caches never take. The mainloop therefore needs no replay for FP8 prefill.
#pragma once
#include <cuda_runtime.h>
#include "fp8_convert.cuh"
#include "device_utils.cuh"
#include "smem_rows.cuh"

namespace fig {

template <class Converter, int kRows, int kHeadDim, int kSrcRowBytes, class DstRows, int kThreads>
struct KvTileConvert {
  static constexpr int kDstRowBytes = DstRows::kRowBytes;
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kHeadDim % 8 == 0 && kSrcRowBytes % 8 == 0 && kDstRowBytes % 16 == 0);

  // Call between the barrier after which the source tile is complete and the one before the
  // destination is read; the destination must not be read by anyone in between.
  __device__ __forceinline__ static void run(const uint8_t (*k_src)[kSrcRowBytes], const uint8_t (*v_src)[kSrcRowBytes],
                                             uint8_t (*k_dst)[kDstRowBytes], uint8_t (*v_dst)[kDstRowBytes]) {
    uint32_t special = 0;  // special_bits() of every word the fast routine converted
    pass<false>(k_src, v_src, k_dst, v_dst, special);
    if constexpr (Converter::kHasSpecialCodes) {
      // This thread's chunks again, exactly. A loop whose trip count ptxas cannot bound stays a
      // branch; as an `if`, the exact pass was predicated into every tile (0.6x the speed).
#pragma unroll 1
      for (int again = 0, passes = opaque_int(special != 0u ? 1 : 0); again < passes; ++again)
        pass<true>(k_src, v_src, k_dst, v_dst, special);
    }
  }

 private:
  template <bool kExact>
  __device__ __forceinline__ static void word(uint32_t codes, uint32_t& lo, uint32_t& hi, uint32_t& special) {
    if constexpr (kExact) {
      Converter::convert(codes, lo, hi);
    } else {
      Converter::convert_finite(codes, lo, hi);
      special |= Converter::special_bits(codes);
    }
  }

  template <bool kExact>
  __device__ __forceinline__ static void pass(const uint8_t (*k_src)[kSrcRowBytes], const uint8_t (*v_src)[kSrcRowBytes],
                                              uint8_t (*k_dst)[kDstRowBytes], uint8_t (*v_dst)[kDstRowBytes],
                                              uint32_t& special) {
    CUTE_UNROLL
    for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
      const int id = thread_index_here() + i * kThreads;
      if (kChunks % kThreads == 0 || id < kChunks) {
        const int row = id / kChunksPerRow;
        const int chunk = id % kChunksPerRow;
        const uint2 k_codes = *reinterpret_cast<const uint2*>(&k_src[row][8 * chunk]);
        const uint2 v_codes = *reinterpret_cast<const uint2*>(&v_src[row][8 * chunk]);
        uint4 k16, v16;
        word<kExact>(k_codes.x, k16.x, k16.y, special);
        word<kExact>(k_codes.y, k16.z, k16.w, special);
        word<kExact>(v_codes.x, v16.x, v16.y, special);
        word<kExact>(v_codes.y, v16.z, v16.w, special);
        *reinterpret_cast<uint4*>(k_dst[0] + DstRows::offset(row, chunk)) = k16;
        *reinterpret_cast<uint4*>(v_dst[0] + DstRows::offset(row, chunk)) = v16;
      }
    }
  }
};

}  // namespace fig
