// Online softmax for one query row spread over the 4 lanes (c = lane % 4) that share g = lane / 4.
// Logits arrive in log2 units, so every exponential is a single exp2. The running sum stays
// lane-local (no shuffle per step); the lanes' sums are added once, at the end.
#pragma once
#include <cmath>
#include "device_utils.cuh"

namespace fig {

struct OnlineSoftmaxRow {
  float row_max;  // the shift P and lane_sum are taken against, log2 units: the max of the logits
                  // seen so far, or below it where tiles were taken against a max as it stood
                  // (exp2_rows_as_they_stand); -inf before the first valid logit
  float lane_sum; // sum of exp2(logit - row_max) over this lane's columns

  __device__ __forceinline__ void init() {
    row_max = -INFINITY;
    lane_sum = 0.0f;
  }

  // Turns logits x into probabilities exp2(x - new max) in place; returns the factor by which
  // the previously accumulated output must be scaled.
  template <int N>
  __device__ __forceinline__ float update(float (&x)[N]) {
    return update_each<N>([&](int i) -> float& { return x[i]; });
  }

  // The same for row r of a lane's mma accumulator n-tiles (s[n][2r], s[n][2r + 1] are its two
  // columns of n-tile n), so prefill needs no copy of its logits. With scale > 0 the entries are
  // raw accumulators and the logits scale * s (the maximum of those is scale * the raw maximum),
  // folded into exp2's argument: one FFMA per element instead of a multiply and a subtraction.
  // Masked entries are -inf either way.
  template <int N>
  __device__ __forceinline__ float update_rows(float (&s)[N][4], int r, float scale = 1.0f) {
    return update_each<2 * N>([&](int i) -> float& { return s[i / 2][2 * r + i % 2]; }, scale);
  }

  // Row r of a lane's mma accumulator n-tiles (as update_rows) turned into P = exp2(scale * s -
  // row_max) in place against the max as it stands, with no update; returns this lane's sum of
  // them, which the caller adds to lane_sum only if it keeps them (the Ampere prefill's settled
  // tiles, prefill_mainloop_sm80.cuh). A row without a max (-inf) gives +inf or NaN.
  template <int N>
  __device__ __forceinline__ float exp2_rows_as_they_stand(float (&s)[N][4], int r, float scale) const {
    return exp2_sum<2 * N>([&](int i) -> float& { return s[i / 2][2 * r + i % 2]; }, scale, row_max, 0.0f);
  }

  // The same for row r of a fragment in the quad layout of kBlocks 8-column blocks: frag(4 j +
  // 2 r + i) is column 8 j + 2 c + i of row r, as in a WGMMA accumulator (any indexable `frag`).
  // offset: the probabilities come out multiplied by 2^offset (room for an FP8 P's small values;
  // the sum carries the same factor, so O / sum does not change, and the LSE subtracts it).
  template <int kBlocks, int kChains = 1, class Frag>
  __device__ __forceinline__ float update_quad_row(Frag& frag, int r, float scale = 1.0f, float offset = 0.0f) {
    return update_each<2 * kBlocks, kChains>([&](int i) -> float& { return frag(4 * (i / 2) + 2 * r + i % 2); },
                                             scale, offset);
  }

  // Rows r = 0, 1 of a thread's quad-layout fragment (frag(4 j + 2 r + i): raw logits, the row's
  // logits being scale[r] * frag with scale[r] > 0, masked entries -inf) for a new tile, their
  // running maxima kept while they hold: when no logit of the warp's rows passes its row's max by
  // more than `slack` (log2 units; the warp votes), the tile's probabilities are taken against the
  // maxima as they stand (at most 2^slack, times 2^offset) and nothing is rescaled, with no quad
  // shuffle on the way; otherwise every row of the warp moves to its exact new max. Returns
  // through shift what each row's logits subtract before exp2 (P = exp2(scale[r] * x - shift[r]))
  // and through rescale O's factors; lane_sum comes back rescaled, and the caller adds the tile's
  // P to it. For callers that make P themselves (the Hopper prefill issues P V a block at a time
  // as P comes out of exp2).
  template <int kBlocks, int kChains, class Frag>
  __device__ __forceinline__ static void rebase_quad_rows(OnlineSoftmaxRow (&row)[2], const Frag& frag,
                                                          const float (&scale)[2], float offset, float slack,
                                                          float (&rescale)[2], float (&shift)[2]) {
    constexpr int N = 2 * kBlocks;
    static_assert(N % kChains == 0, "whole chains");
    float local[2];
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      float chain_max[kChains];
      CUTE_UNROLL
      for (int c = 0; c < kChains; ++c) chain_max[c] = frag(4 * (c / 2) + 2 * r + c % 2);
      CUTE_UNROLL
      for (int i = kChains; i < N; ++i)
        chain_max[i % kChains] = fmaxf(chain_max[i % kChains], frag(4 * (i / 2) + 2 * r + i % 2));
      local[r] = chain_max[0];
      CUTE_UNROLL
      for (int c = 1; c < kChains; ++c) local[r] = fmaxf(local[r], chain_max[c]);
    }
    // "Not within": a row without a max yet (-inf) takes the exact path as soon as it sees a
    // finite logit. (fmaxf drops a NaN logit from the max, but its exp2 is NaN: the row's sum and
    // O carry it either way.)
    const bool exact = __any_sync(0xffffffffu, !(local[0] * scale[0] <= row[0].row_max + slack) ||
                                                   !(local[1] * scale[1] <= row[1].row_max + slack));
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      float new_max = row[r].row_max;
      if (exact) {
        float m = local[r];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        new_max = fmaxf(new_max, m * scale[r]);
      }
      // A row with no valid logit yet keeps max -inf; subtract 0 then so that exp2 gives 0, not NaN.
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      rescale[r] = exact ? fast_exp2(row[r].row_max - base) : 1.0f;
      shift[r] = base - offset;
      row[r].lane_sum *= rescale[r];
      row[r].row_max = new_max;
    }
  }

  __device__ __forceinline__ float row_sum() const {
    float s = lane_sum;
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    return s;
  }

 private:
  // kChains: the maximum and the sum as that many interleaved dependent chains, combined at the
  // end. One chain (the default) on purpose where registers are short: two interleaved chains or a
  // tree gave ptxas the freedom to hold more values and made the Ampere path's 64-key prefill
  // tiles spill. The Hopper consumers have the registers, and there a 128-long chain was latency
  // the two warps of a scheduler could not hide.
  template <int N, int kChains = 1, class At>
  __device__ __forceinline__ float update_each(At&& at, float scale = 1.0f, float offset = 0.0f) {
    static_assert(N % kChains == 0, "whole chains");
    float chain_max[kChains];
    CUTE_UNROLL
    for (int c = 0; c < kChains; ++c) chain_max[c] = at(c);
    CUTE_UNROLL
    for (int i = kChains; i < N; ++i) chain_max[i % kChains] = fmaxf(chain_max[i % kChains], at(i));
    float step_max = chain_max[0];
    CUTE_UNROLL
    for (int c = 1; c < kChains; ++c) step_max = fmaxf(step_max, chain_max[c]);
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    const float new_max = fmaxf(row_max, step_max * scale);
    // A row with no valid logit yet keeps max -inf; subtract 0 then so that exp2 gives 0, not NaN.
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float rescale = fast_exp2(row_max - base);
    lane_sum = exp2_sum<N, kChains>(at, scale, base - offset, lane_sum * rescale);
    row_max = new_max;
    return rescale;
  }

  // at(i) = exp2(scale * at(i) - shift) for the N entries; returns start plus their sum, taken in
  // kChains interleaved chains.
  template <int N, int kChains = 1, class At>
  __device__ __forceinline__ static float exp2_sum(At&& at, float scale, float shift, float start) {
    float chain_sum[kChains];
    chain_sum[0] = start;
    CUTE_UNROLL
    for (int c = 1; c < kChains; ++c) chain_sum[c] = 0.0f;
    CUTE_UNROLL
    for (int i = 0; i < N; ++i) {
      at(i) = fast_exp2(fmaf(at(i), scale, -shift));
      chain_sum[i % kChains] += at(i);
    }
    float sum = chain_sum[0];
    CUTE_UNROLL
    for (int c = 1; c < kChains; ++c) sum += chain_sum[c];
    return sum;
  }
};

}  // namespace fig
