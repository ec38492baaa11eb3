// fp32 -> FP8 (e4m3 / e5m2) codes, as written into an FP8 KV cache: saturating round-to-nearest-
// even (a finite value past the largest code, and +-inf, become +-max; NaN stays NaN), which is
// what `cvt.rn.satfinite` does and what torch gives for clamp(x, -max, max).to(float8_*).
//   hardware: the sm_89+ `cvt.rn.satfinite.{e4m3,e5m2}x2.f32`, two values per instruction.
//   software: integer rounding of the fp32 bits (sm_80 has no FP8 instruction): the same code as
//     torch for every value but NaN, which becomes a NaN code with the input's sign (its payload
//     bits are not specified either way). Like fp8_convert.cuh this compiles as plain C++, so a
//     host test checks it against torch over every rounding boundary.
#pragma once
#include <stdint.h>
#include <string.h>
#include <cmath>
#include "fp8_convert.cuh"

namespace fig {

template <Fp8Format F>
struct Fp8Limits;
template <>
struct Fp8Limits<Fp8Format::kE4M3> {
  static constexpr int kMantissaBits = 3;
  static constexpr int kBias = 7;
  static constexpr uint32_t kMaxCode = 0x7E;      // 448 = 1.110b x 2^8 (S.1111.111 is NaN)
  static constexpr float kMax = 448.0f;
  static constexpr float kMinNormal = 0.015625f;  // 2^-6
  static constexpr float kSubnormalSteps = 512.0f;  // subnormal code = x / 2^-9
};
template <>
struct Fp8Limits<Fp8Format::kE5M2> {
  static constexpr int kMantissaBits = 2;
  static constexpr int kBias = 15;
  static constexpr uint32_t kMaxCode = 0x7B;      // 57344 = 1.11b x 2^15 (0x7C is inf)
  static constexpr float kMax = 57344.0f;
  static constexpr float kMinNormal = 6.103515625e-05f;  // 2^-14
  static constexpr float kSubnormalSteps = 65536.0f;     // subnormal code = x / 2^-16
};

template <Fp8Format F>
FIG_HD uint32_t encode_fp8_software(float x) {
  using L = Fp8Limits<F>;
  uint32_t bits;
  memcpy(&bits, &x, 4);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7Fu;  // NaN
  float a;
  memcpy(&a, &magnitude, 4);
  if (a >= L::kMax) return sign | L::kMaxCode;  // saturate: every such value rounds to max or past it
  if (a < L::kMinNormal) {
    // a * 2^k is exact (a power of two); rint rounds half to even. A result of 2^kMantissaBits
    // is the smallest normal code, which is what the bits then say.
#if defined(__CUDA_ARCH__)
    return sign | uint32_t(rintf(a * L::kSubnormalSteps));
#else
    return sign | uint32_t(std::nearbyint(a * L::kSubnormalSteps));
#endif
  }
  // Normal: drop 23 - m mantissa bits, rounding half to even; a carry moves into the exponent.
  constexpr int kShift = 23 - L::kMantissaBits;
  const uint32_t rounded = (magnitude + ((1u << (kShift - 1)) - 1u) + ((magnitude >> kShift) & 1u)) >> kShift;
  const uint32_t code = rounded - (uint32_t(127 - L::kBias) << L::kMantissaBits);
  return sign | (code > L::kMaxCode ? L::kMaxCode : code);
}

// Eight fp32 values -> eight codes, element i in byte i.
template <Fp8Format F, Conversion C>
struct Fp8Encoder {
  static constexpr bool kIsCopy = false;
  static constexpr int kBytes = 1;
  FIG_HD static void encode8(const float (&x)[8], uint32_t& lo, uint32_t& hi) {
    lo = encode2(x[0], x[1]) | (encode2(x[2], x[3]) << 16);
    hi = encode2(x[4], x[5]) | (encode2(x[6], x[7]) << 16);
  }

 private:
  // a's code in the low byte, b's in the high one.
  FIG_HD static uint32_t encode2(float a, float b) {
    if constexpr (C == Conversion::kSoftware) {
      return encode_fp8_software<F>(a) | (encode_fp8_software<F>(b) << 8);
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
      uint16_t pair;  // the instruction puts its first source in the upper byte
      if constexpr (F == Fp8Format::kE4M3) {
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(b), "f"(a));
      } else {
        asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(b), "f"(a));
      }
      return pair;
#else
      // Hardware instances are built for sm_89+ only (generator predicate); the host test and a
      // device pass for an older arch never take this branch.
      return encode_fp8_software<F>(a) | (encode_fp8_software<F>(b) << 8);
#endif
    }
  }
};

// A 16-bit cache of the source dtype: the rows are copied as they are.
struct CopyEncoder {
  static constexpr bool kIsCopy = true;
  static constexpr int kBytes = 2;
};

}  // namespace fig
