// Prefill epilogue: each warp normalises its rows' O into fp32 rows in shared memory; then the CTA writes whole rows, coalesced, as the final output and LSE (base 2)
// or, for a split-KV piece, as an fp32 partial for the merge kernel. A row that saw no key (an
// empty split piece) writes O = 0 and LSE = -inf, which the merge weighs as nothing.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi_prefill.h"
#include "prefill_work.cuh"

namespace fig {

template <class Cfg>
struct PrefillEpilogue {
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockM = Cfg::kBlockM;

  struct SharedStorage {
    float o[kBlockM][kHeadDim];
    float lse[kBlockM];
  };

  template <class Mainloop>
  __device__ __forceinline__ static void stage(SharedStorage& smem, const Mainloop& ml, float out_scale) {
    CUTE_UNROLL
    for (int m = 0; m < Mainloop::kMTiles; ++m) {
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r) {
        const float sum = ml.softmax[m][r].row_sum();
        const int row = ml.first_row() + 16 * m + ml.lane_g() + 8 * r;
        const float scale = sum > 0.0f ? out_scale / sum : 0.0f;
        CUTE_UNROLL
        for (int e = 0; e < Mainloop::kNTiles; ++e) {
          CUTE_UNROLL
          for (int i = 0; i < 2; ++i) smem.o[row][ml.o_column(e, i)] = ml.o_acc[m][e][2 * r + i] * scale;
        }
        if (ml.lane_c() == 0) smem.lse[row] = sum > 0.0f ? ml.softmax[m][r].row_max + log2f(sum) : -INFINITY;
      }
    }
  }

  // Call after a barrier that follows every warp's stage(): kWriters threads, `thread` one of
  // them (0 ..< kWriters), four values each per pass.
  template <int kWriters>
  __device__ __forceinline__ static void write(const SharedStorage& smem, const PrefillRows& rows,
                                               const FigPrefillParams& p, int thread) {
    using OElement = typename Cfg::OElement;
    constexpr int kQuads = kHeadDim / 4;
    for (int idx = thread; idx < kBlockM * kQuads; idx += kWriters) {
      const int local = idx / kQuads;
      const int d = 4 * (idx % kQuads);
      const int r = rows.row_begin + local;
      if (!rows.has(r)) continue;
      const int qtoken = rows.token(r);
      const int head = rows.qo_head(r);
      const float4 v = *reinterpret_cast<const float4*>(&smem.o[local][d]);
      if (rows.pieces == 1) {  // not split (a split item's `partial` may be below 0: prefill.py)
        const int64_t token = rows.qo_start + qtoken;
        OElement* out = static_cast<OElement*>(p.out.data) + token * p.out.stride_row + head * p.out.stride_head + d;
        out[0] = OElement(v.x);
        out[1] = OElement(v.y);
        out[2] = OElement(v.z);
        out[3] = OElement(v.w);
        if (d == 0 && p.out.lse != nullptr) p.out.lse[token * p.out.num_heads + head] = smem.lse[local];
      } else {
        // Slots are token-major, so a token's pieces are the merge kernel's contiguous range.
        const int64_t slot = int64_t(rows.partial) + int64_t(qtoken) * rows.pieces;
        const int64_t index = slot * p.out.num_heads + head;
        *reinterpret_cast<float4*>(p.merge.partial_out + index * kHeadDim + d) = v;
        if (d == 0) p.merge.partial_lse[index] = smem.lse[local];
      }
    }
  }
};

}  // namespace fig
