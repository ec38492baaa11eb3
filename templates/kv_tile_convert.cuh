// A CTA's conversion of one shared K/V tile of FP8 codes into the 16-bit (fp16) rows that the
// prefill warps read with ldmatrix. Done once per tile by all threads, instead of once per
// warp in registers: every warp of the CTA reads the same keys, so a per-warp upcast did the
// work kWarps times over. Except where the upcast is two instructions a word (`cvt`, e5m2's
// software routine) at head dims 64 and 128 (kind_prefill.py fp8_from_codes): there the warps
// read the codes themselves, each result feeding two m16 tiles, which cost less than this pass's
// shared-memory round trip and second barrier (prefill_mainloop_sm80.cuh). Each thread takes 8 codes (8 bytes) and writes 16 bytes, so
// consecutive threads read consecutive 8-byte halves of the source's 16-byte chunks and write
// consecutive 16-byte chunks of a row, each placed as SrcRows / DstRows says (smem_rows.cuh).
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

template <class Converter, int kRows, int kHeadDim, class SrcRows, class DstRows, int kThreads>
struct KvTileConvert {
  static constexpr int kSrcRowBytes = SrcRows::kRowBytes;
  static constexpr int kDstRowBytes = DstRows::kRowBytes;
  static constexpr int kChunksPerRow = kHeadDim / 8;
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
    using Passes = TilePasses<kRows, kChunksPerRow, kThreads>;  // 8-code chunks
    const uint32_t thread = thread_index_here();
    // Every load of the pass before any store: the compiler cannot tell the 8-bit ring from the
    // 16-bit tile apart, so with each chunk's loads after the previous chunk's stores it issued
    // two loads at a time and waited for them (SASS of 5a1bb92: eight such rounds a tile).
    uint2 k_codes[Passes::kPasses], v_codes[Passes::kPasses];
    CUTE_UNROLL
    for (int i = 0; i < Passes::kPasses; ++i) {
      if (Passes::valid(thread, i)) {
        const int chunk = Passes::column(thread, i);
        const uint32_t src = SrcRows::offset(Passes::row(thread, i), chunk / 2) + 8 * (chunk % 2);  // half a 16-byte chunk
        k_codes[i] = *reinterpret_cast<const uint2*>(k_src[0] + src);
        v_codes[i] = *reinterpret_cast<const uint2*>(v_src[0] + src);
      }
    }
    CUTE_UNROLL
    for (int i = 0; i < Passes::kPasses; ++i) {
      if (Passes::valid(thread, i)) {
        uint4 k16, v16;
        word<kExact>(k_codes[i].x, k16.x, k16.y, special);
        word<kExact>(k_codes[i].y, k16.z, k16.w, special);
        word<kExact>(v_codes[i].x, v16.x, v16.y, special);
        word<kExact>(v_codes[i].y, v16.z, v16.w, special);
        const uint32_t dst = DstRows::offset(Passes::row(thread, i), Passes::column(thread, i));
        *reinterpret_cast<uint4*>(k_dst[0] + dst) = k16;
        *reinterpret_cast<uint4*>(v_dst[0] + dst) = v16;
      }
    }
  }
};

}  // namespace fig
