// K and V rows as mma.sync B fragments of the decode mainloop (prefill reads its 16-bit tiles with
// ldmatrix instead, prefill_mainloop_sm80.cuh).
//
// The reduction dims of both products may be permuted freely, so each lane reads vectors of
// whole token rows and we *define* the mma's k index to be what it holds:
//   S = Q K^T: lane (g, c) = (lane / 4, lane % 4) supplies token g of an n-tile and the head dims
//     k_dim(c, e), e < D/4. Its k-step j uses its elements 4j..4j+3: one 32-bit word of FP8 codes
//     (or two of 16-bit values) is exactly the two f16x2 B registers. Q's A fragment is loaded with
//     the same permutation, so the dot product is unchanged.
//   O = P V: lane (g, c) supplies V[tokens 2c, 2c+1, 2c+8, 2c+9 of a 16-token k-step][dim v_dim(g, n-tile)]:
//     four token rows of D/8 dims; token pairs are interleaved with one byte permute. The output
//     column of n-tile e that lane g supplies is dim v_dim(g, e); the epilogue puts it back.
// Lane c's K vectors are vectors c, c+4, c+8, ... of a row and lane g's V vectors g, g+8, ...
#pragma once
#include <cute/numeric/numeric_types.hpp>
#include "fp8_convert.cuh"
#include "kv_types.cuh"

namespace fig {

// Largest power of two <= cap that divides n.
constexpr int pow2_divisor(int n, int cap) { return (cap > 1 && n % cap != 0) ? pow2_divisor(n, cap / 2) : cap; }

template <class Kv, int kHeadDim>
struct KvFragments {
  static constexpr int kBytes = Kv::kBytes;
  static constexpr int kKElems = kHeadDim / 4;  // K dims a lane owns per token
  static constexpr int kVElems = kHeadDim / 8;  // V dims a lane owns per token
  static constexpr int kVecK = pow2_divisor(kKElems, 16 / kBytes);  // elements per K load: one 16-byte load
  static constexpr int kVecV = pow2_divisor(kVElems, 16 / kBytes);  // elements per V load
  static constexpr int kKWords = kKElems * kBytes / 4;
  static constexpr int kVWords = kVElems * kBytes / 4;
  static constexpr int kKSteps = kHeadDim / 16;  // mma k-steps of Q K^T
  static constexpr int kNTiles = kHeadDim / 8;   // mma n-tiles of P V
  static constexpr bool kMayReplay = Kv::kHasSpecialCodes;
  static constexpr bool kIsFp8Words = Kv::kIsFp8;  // one word holds a k-step (else two)
  static_assert(kHeadDim % 16 == 0 && kVecK * kBytes >= 4, "a k-step's four elements must be whole words");
  static_assert(kVecV * kBytes >= 4 && kVWords * 4 == kVElems * kBytes,
                "V rows must be whole words per lane (FP8: head dim a multiple of 32)");

  __host__ __device__ static constexpr int k_dim(int c, int e) { return ((e / kVecK) * 4 + c) * kVecK + e % kVecK; }
  __host__ __device__ static constexpr int v_dim(int g, int e) { return ((e / kVecV) * 8 + g) * kVecV + e % kVecV; }

  // K word(s) of k-step j -> the two B registers. The fast path also records special codes.
  template <bool kExact>
  __device__ __forceinline__ static void k_fragment(const uint32_t* row_words, int j, uint32_t& b0, uint32_t& b1,
                                                    uint32_t& special) {
    if constexpr (Kv::kIsFp8) {
      const uint32_t codes = row_words[j];
      if constexpr (kExact) {
        Kv::Converter::convert(codes, b0, b1);
      } else {
        Kv::Converter::convert_finite(codes, b0, b1);
        if constexpr (kMayReplay) special |= Kv::Converter::special_bits(codes);
      }
    } else {
      b0 = row_words[2 * j];
      b1 = row_words[2 * j + 1];
    }
  }

  // B registers of P.V for lane element e of 16-bit V: b0 pairs tokens (2c, 2c+1), b1 (2c+8, 2c+9).
  // rows[r]: the lane's words of token rows 2c, 2c+1, 2c+8, 2c+9 (all of them, or one load's
  // worth, e then counting from that load's first element).
  template <int kWords>
  __device__ __forceinline__ static void v_fragment16(const uint32_t (&rows)[4][kWords], int e, uint32_t& b0,
                                                      uint32_t& b1) {
    const int w = e / 2;
    const uint32_t sel = (e % 2) == 0 ? 0x5410u : 0x7632u;
    b0 = byte_perm(rows[0][w], rows[1][w], sel);
    b1 = byte_perm(rows[2][w], rows[3][w], sel);
  }

  // FP8 V: one permute gathers elements e, e+1 of a token pair -> b0 (or b1) of n-tiles e and e+1.
  template <bool kExact, int kWords>
  __device__ __forceinline__ static void v_fragments8(const uint32_t (&rows)[4][kWords], int e, uint32_t& b0_e,
                                                      uint32_t& b0_e1, uint32_t& b1_e, uint32_t& b1_e1,
                                                      uint32_t& special) {
    const int w = e / 4;
    convert_rows<kExact>(rows[0][w], rows[1][w], e % 4, b0_e, b0_e1, special);
    convert_rows<kExact>(rows[2][w], rows[3][w], e % 4, b1_e, b1_e1, special);
  }

 private:
  template <bool kExact>
  __device__ __forceinline__ static void convert_rows(uint32_t a, uint32_t b, int p, uint32_t& lo, uint32_t& hi,
                                                      uint32_t& special) {
    if constexpr (kExact) {
      Kv::Converter::convert(byte_perm(a, b, interleave_rows_selector(p)), lo, hi);
    } else {
      Kv::Converter::convert_finite_rows(a, b, p, lo, hi);
      if constexpr (kMayReplay) {
        if (p == 0) special |= Kv::Converter::special_bits(a) | Kv::Converter::special_bits(b);
      }
    }
  }
};

}  // namespace fig
