// Logits variants: one hook, raw q.k accumulator -> logit in log2 units (softmax uses exp2).
// `scale` already holds sm_scale * k_scale * the KV conversion's exponent-bias factor; the runtime
// requires both scales > 0, so every variant is increasing in the accumulator.
// kLinear: the logit is scale_log2 * acc, so a softmax may take the row maximum over raw
// accumulators and fold the scale into exp2's argument (one FFMA per element, softmax.cuh).
#pragma once
#include <cmath>
#include "device_utils.cuh"

namespace fig {

constexpr float kLog2e = 1.4426950408889634f;

// A scale the caller keeps on the device (FigScales::*_scale_device), or 1. A logits factor that
// is not > 0 would break the softmax's folded maximum (and means nothing): it makes the output
// NaN, so the mistake shows instead of passing as a wrong answer.
__device__ __forceinline__ float device_scale(const float* p, bool must_be_positive) {
  if (p == nullptr) return 1.0f;
  const float s = __ldg(p);
  return (must_be_positive && !(s > 0.0f)) ? __int_as_float(0x7fc00000) : s;
}

struct PlainLogits {
  static constexpr bool kUseSoftCap = false;
  static constexpr bool kLinear = true;
  float scale_log2;
  __host__ __device__ PlainLogits(float scale, float /*soft_cap*/) : scale_log2(scale * kLog2e) {}
  __device__ __forceinline__ float operator()(float acc) const { return acc * scale_log2; }
};

// cap * tanh(logit / cap), as in Gemma-2 / Grok. tanh(x) = 1 - 2 / (2^(2x log2 e) + 1) on the SFU:
// its absolute error stays below ~3e-7 for every x (the quotient is within 2 ulp, and the
// subtraction from 1 adds no relative error that matters next to 1), so the logit, cap times
// that, is off by well under 1e-4 at cap 30; exp of a logit only sees that absolute error.
// tanh.approx would be off by ~5e-4 (15e-3 in the logit), and tanhf()'s branches and temporaries
// made the prefill tiles spill. Large |x| gives 2^(+-inf) -> +-1; NaN stays NaN.
struct SoftCapLogits {
  static constexpr bool kUseSoftCap = true;
  static constexpr bool kLinear = false;
  float pre;   // 2 * log2(e) * scale / cap
  float post;  // cap * log2(e)
  __host__ __device__ SoftCapLogits(float scale, float soft_cap)
      : pre(2.0f * kLog2e * scale / soft_cap), post(soft_cap * kLog2e) {}
  __device__ __forceinline__ float operator()(float acc) const {
    return post * (1.0f - __fdividef(2.0f, fast_exp2(acc * pre) + 1.0f));
  }
};

}  // namespace fig
