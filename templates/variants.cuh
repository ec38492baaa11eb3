// Logits variants: one hook, raw q.k accumulator -> logit in log2 units (softmax uses exp2).
// `scale` already holds sm_scale * k_scale * the KV conversion's exponent-bias factor.
#pragma once
#include <cmath>

namespace fig {

constexpr float kLog2e = 1.4426950408889634f;

struct PlainLogits {
  static constexpr bool kUseSoftCap = false;
  float scale_log2;
  __host__ __device__ PlainLogits(float scale, float /*soft_cap*/) : scale_log2(scale * kLog2e) {}
  __device__ __forceinline__ float operator()(float acc) const { return acc * scale_log2; }
};

// cap * tanh(logit / cap), as in Gemma-2 / Grok; accurate tanhf since cap ~ 30 would amplify
// the approximate instruction's error into the logits.
struct SoftCapLogits {
  static constexpr bool kUseSoftCap = true;
  float pre;   // scale / cap
  float post;  // cap * log2(e)
  __host__ __device__ SoftCapLogits(float scale, float soft_cap)
      : pre(scale / soft_cap), post(soft_cap * kLog2e) {}
  __device__ __forceinline__ float operator()(float acc) const { return post * tanhf(acc * pre); }
};

}  // namespace fig
