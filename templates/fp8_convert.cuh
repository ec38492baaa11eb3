// FP8 (e4m3 / e5m2) -> fp16 conversion of four codes held in one 32-bit register.
//
// Both routines produce the two f16x2 registers that an m16n8k16 B fragment takes, so a KV
// word goes from a global load to the tensor core without touching shared memory.
//   hardware: the sm_89+ `cvt.rn.f16x2.e{4m3,5m2}x2` instruction; exact; NaN/Inf preserved.
//   software: bit placement only (sm_80 has no FP8 instruction). e5m2 is the upper byte of an
//     fp16, so it is one byte permute. e4m3 has one exponent bit less, so placing its bits
//     into an fp16 gives code * 2^-8 exactly (subnormals included, since fp16 has 7 more
//     binades); instead of multiplying every element back, kScale = 256 is folded into the
//     logits scale and the output scale by the caller. The e4m3 NaN codes (S.1111.111) would
//     land on finite values, so a word that holds one takes a rare slow path.
// This header also compiles as plain C++ (no CUDA) so the host test can check the software
// routine against torch over all 256 codes.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define FIG_HD __host__ __device__ __forceinline__
#else
#define FIG_HD inline
#endif

namespace fig {

enum class Fp8Format { kE4M3, kE5M2 };
enum class Conversion { kNone, kHardware, kSoftware };

// PRMT in its default mode: result byte i is byte sel[i] of the 8-byte value {b, a}.
FIG_HD uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t ab = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t s = (sel >> (4 * i)) & 7u;
    r |= uint32_t((ab >> (8 * s)) & 0xFFu) << (8 * i);
  }
  return r;
#endif
}

// PRMT with the sign mode of each selector nibble: where bit 3 of nibble i is set, result byte i
// is the sign bit of the byte that its low three bits select, replicated over all 8 bits (PTX
// prmt.b32, generic form). __byte_perm() takes only the low three bits of each nibble.
FIG_HD uint32_t byte_perm_signs(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
#else
  const uint64_t ab = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t s = (sel >> (4 * i)) & 15u;
    uint32_t byte = uint32_t((ab >> (8 * (s & 7u))) & 0xFFu);
    if (s & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
    r |= byte << (8 * i);
  }
  return r;
#endif
}

// e5m2: selectors that move codes {b0, b1} / {b2, b3} into the upper byte of each fp16 half
// (byte 4 of {b, a} is 0 when b == 0).
constexpr uint32_t kSelLowPairToHalves = 0x1404;   // -> [0, b0, 0, b1]
constexpr uint32_t kSelHighPairToHalves = 0x3424;  // -> [0, b2, 0, b3]
// V fragments pair byte p of two token rows a, b: [a.p, b.p, a.p+1, b.p+1] for p = 0 / 2.
FIG_HD constexpr uint32_t interleave_rows_selector(int p) { return p == 0 ? 0x5140u : 0x7362u; }
// A word of V's codes as `ldmatrix.trans` gives it (prefill_mainloop_sm80.cuh): bytes (key k, dim d),
// (k, d + 1), (k + 1, d), (k + 1, d + 1). Grouped by dim: [(k, d), (k + 1, d), (k, d + 1), (k + 1, d + 1)].
constexpr uint32_t kSelDimPairs = 0x3120u;

template <Fp8Format F, Conversion C>
struct Fp8ToF16;

// Every routine has convert() (exact for every code) and, for the mainloop's fast path,
// convert_finite() plus special_bits(): convert_finite() is exact whenever special_bits() of
// the word is 0. The mainloop runs the fast path, ORs special_bits() of what it converted and,
// in the rare case that a special code was present, replays its range with convert().
// convert_finite_rows(a, b, p) converts the interleaved pairs (a.p, b.p), (a.p+1, b.p+1) of two
// token rows, which is what a V fragment needs (decode). The routines without special codes have
// convert_dim_pairs(codes), exact, which converts a word of V's codes as the prefill warps'
// ldmatrix.trans reads it (kSelDimPairs) into its two dims' key pairs.
template <>
struct Fp8ToF16<Fp8Format::kE5M2, Conversion::kSoftware> {
  static constexpr float kScale = 1.0f;
  static constexpr bool kHasSpecialCodes = false;  // Inf / NaN survive the byte placement
  FIG_HD static uint32_t special_bits(uint32_t) { return 0u; }
  FIG_HD static void convert_finite(uint32_t codes, uint32_t& lo, uint32_t& hi) {
    lo = byte_perm(codes, 0u, kSelLowPairToHalves);
    hi = byte_perm(codes, 0u, kSelHighPairToHalves);
  }
  FIG_HD static void convert(uint32_t codes, uint32_t& lo, uint32_t& hi) { convert_finite(codes, lo, hi); }
  FIG_HD static void convert_finite_rows(uint32_t a, uint32_t b, int p, uint32_t& lo, uint32_t& hi) {
    convert_finite(byte_perm(a, b, interleave_rows_selector(p)), lo, hi);
  }
  // convert(byte_perm(codes, 0, kSelDimPairs)) with the two permutes made one each:
  // [0, (k, d), 0, (k + 1, d)] and [0, (k, d + 1), 0, (k + 1, d + 1)].
  FIG_HD static void convert_dim_pairs(uint32_t codes, uint32_t& even, uint32_t& odd) {
    even = byte_perm(codes, 0u, 0x2404u);
    odd = byte_perm(codes, 0u, 0x3414u);
  }
};

template <>
struct Fp8ToF16<Fp8Format::kE4M3, Conversion::kSoftware> {
  static constexpr float kScale = 256.0f;  // the placed bits are code * 2^-8
  static constexpr bool kHasSpecialCodes = true;
  static constexpr uint16_t kF16NaN = 0x7E00u;
  // Each half of the permuted word holds a code in its low byte and the code's sign replicated in
  // its high byte: [b0, sign b0, b1, sign b1] and [b2, sign b2, b3, sign b3].
  static constexpr uint32_t kSelLowPair = 0x9180u;
  static constexpr uint32_t kSelHighPair = 0xB3A2u;
  // The same from two token rows a, b (bytes 0..3 of a, 4..7 of b): (a.p, b.p) and (a.p+1, b.p+1).
  static constexpr uint32_t rows_selector(int p, int next) {
    return p == 0 ? (next ? 0xD591u : 0xC480u) : (next ? 0xF7B3u : 0xE6A2u);
  }

  // One mask and one shift: a half's exponent and mantissa (its code's bits 6..0) and its sign
  // (bit 0 of the replicated byte, bit 8) move up by 7, to fp16 bits 13..7 and 15; the code's own
  // sign bit (bit 7) is masked off, so bit 14 stays clear. A PRMT, an AND and a shift a pair: the
  // form that moved the upper bytes down by one instead took an AND more.
  FIG_HD static uint32_t place(uint32_t halves) { return (halves & 0x017F017Fu) << 7; }
  // Bit 7 of a byte is set iff its low 7 bits are all ones: S.1111.111, the only e4m3 NaN.
  FIG_HD static uint32_t special_bits(uint32_t codes) {
    return ((codes & 0x7F7F7F7Fu) + 0x01010101u) & 0x80808080u;
  }
  FIG_HD static void convert_finite(uint32_t codes, uint32_t& lo, uint32_t& hi) {
    lo = place(byte_perm_signs(codes, 0u, kSelLowPair));
    hi = place(byte_perm_signs(codes, 0u, kSelHighPair));
  }
  // One permute both interleaves the two rows and lays each code out for place().
  FIG_HD static void convert_finite_rows(uint32_t a, uint32_t b, int p, uint32_t& lo, uint32_t& hi) {
    lo = place(byte_perm_signs(a, b, rows_selector(p, 0)));
    hi = place(byte_perm_signs(a, b, rows_selector(p, 1)));
  }
  FIG_HD static void convert(uint32_t codes, uint32_t& lo, uint32_t& hi) {
    convert_finite(codes, lo, hi);
    const uint32_t nan_bytes = special_bits(codes);
    for (int i = 0; i < 4; ++i) {
      if (nan_bytes & (0x80u << (8 * i))) {
        uint32_t& word = i < 2 ? lo : hi;
        const int shift = 16 * (i & 1);
        word = (word & ~(0xFFFFu << shift)) | (uint32_t(kF16NaN) << shift);
      }
    }
  }
};

#if defined(__CUDACC__)
// cvt.*x2 converts the two codes of a 16-bit operand; the upper code goes to the upper half.
template <Fp8Format F>
struct Fp8ToF16Hardware {
  static constexpr float kScale = 1.0f;
  static constexpr bool kHasSpecialCodes = false;  // the instruction handles NaN / Inf
  __device__ __forceinline__ static uint32_t special_bits(uint32_t) { return 0u; }
  __device__ __forceinline__ static void convert_finite(uint32_t codes, uint32_t& lo, uint32_t& hi) {
    convert(codes, lo, hi);
  }
  __device__ __forceinline__ static void convert_finite_rows(uint32_t a, uint32_t b, int p, uint32_t& lo,
                                                             uint32_t& hi) {
    convert(byte_perm(a, b, interleave_rows_selector(p)), lo, hi);
  }
  __device__ __forceinline__ static void convert_dim_pairs(uint32_t codes, uint32_t& even, uint32_t& odd) {
    convert(byte_perm(codes, 0u, kSelDimPairs), even, odd);
  }
  template <bool kFalse = false>
  __device__ __forceinline__ static void convert(uint32_t codes, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 890
    // The word's halves as the two 16-bit operands (mov.b32 {lo, hi}): ptxas then reads the upper
    // one in place (F2FP ... R.H1), where a 16-bit value shifted down from the word cost a SHF
    // per word, a third of the conversion's instructions.
    if constexpr (F == Fp8Format::kE4M3) {
      asm("{\n\t.reg .b16 lo16, hi16;\n\tmov.b32 {lo16, hi16}, %2;\n\t"
          "cvt.rn.f16x2.e4m3x2 %0, lo16;\n\tcvt.rn.f16x2.e4m3x2 %1, hi16;\n\t}"
          : "=r"(lo), "=r"(hi) : "r"(codes));
    } else {
      asm("{\n\t.reg .b16 lo16, hi16;\n\tmov.b32 {lo16, hi16}, %2;\n\t"
          "cvt.rn.f16x2.e5m2x2 %0, lo16;\n\tcvt.rn.f16x2.e5m2x2 %1, hi16;\n\t}"
          : "=r"(lo), "=r"(hi) : "r"(codes));
    }
#else
    static_assert(kFalse, "hardware FP8 conversion needs sm_89 or newer; build the software instance");
#endif
#endif
  }
};
template <>
struct Fp8ToF16<Fp8Format::kE4M3, Conversion::kHardware> : Fp8ToF16Hardware<Fp8Format::kE4M3> {};
template <>
struct Fp8ToF16<Fp8Format::kE5M2, Conversion::kHardware> : Fp8ToF16Hardware<Fp8Format::kE5M2> {};
#endif

}  // namespace fig
