// KV element kinds and the tensor-core element they are computed in.
// 16-bit KV is computed in its own type. FP8 KV is always computed in fp16: both FP8 formats
// convert to fp16 exactly, the hardware has an fp16 target only, and P (in [0, 1]) keeps three
// more mantissa bits than in bf16. A bf16 q is converted to fp16 once per CTA for that path;
// bf16 values within the fp16 range (|q| < 65504) convert exactly.
#pragma once
#include <cute/numeric/numeric_types.hpp>
#include "fp8_convert.cuh"

namespace fig {

template <class Elem>
struct Kv16 {
  using Element = Elem;     // cute::half_t or cute::bfloat16_t
  using MmaElement = Elem;
  static constexpr int kBytes = 2;
  static constexpr bool kIsFp8 = false;
  static constexpr bool kHasSpecialCodes = false;
  static constexpr float kScale = 1.0f;
};

template <Fp8Format F, Conversion C>
struct KvFp8 {
  using Element = uint8_t;
  using MmaElement = cute::half_t;
  using Converter = Fp8ToF16<F, C>;
  static constexpr int kBytes = 1;
  static constexpr bool kIsFp8 = true;
  static constexpr bool kHasSpecialCodes = Converter::kHasSpecialCodes;  // codes the fast path gets wrong
  static constexpr float kScale = Converter::kScale;
};

}  // namespace fig
