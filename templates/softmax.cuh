// Online softmax for one query row spread over the 4 lanes (c = lane % 4) that share g = lane / 4.
// Logits arrive in log2 units, so every exponential is a single exp2. The running sum stays
// lane-local (no shuffle per step); the lanes' sums are added once, at the end.
#pragma once
#include <cmath>

namespace fig {

struct OnlineSoftmaxRow {
  float row_max;  // of all logits seen so far, log2 units; -inf before the first valid one
  float lane_sum; // sum of exp2(logit - row_max) over this lane's columns

  __device__ __forceinline__ void init() {
    row_max = -INFINITY;
    lane_sum = 0.0f;
  }

  // Turns logits x into probabilities exp2(x - new max) in place; returns the factor by which
  // the previously accumulated output must be scaled.
  template <int N>
  __device__ __forceinline__ float update(float (&x)[N]) {
    float step_max = x[0];
    CUTE_UNROLL
    for (int i = 1; i < N; ++i) step_max = fmaxf(step_max, x[i]);
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    const float new_max = fmaxf(row_max, step_max);
    // A row with no valid logit yet keeps max -inf; subtract 0 then so that exp2 gives 0, not NaN.
    const float shift = new_max == -INFINITY ? 0.0f : new_max;
    const float rescale = exp2f(row_max - shift);
    lane_sum *= rescale;
    CUTE_UNROLL
    for (int i = 0; i < N; ++i) {
      x[i] = exp2f(x[i] - shift);
      lane_sum += x[i];
    }
    row_max = new_max;
    return rescale;
  }

  __device__ __forceinline__ float row_sum() const {
    float s = lane_sum;
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    return s;
  }
};

}  // namespace fig
