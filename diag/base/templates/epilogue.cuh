// Decode epilogue: the warps that split one row tile's tokens merge their (max, sum, O) through
// shared memory, then the CTA writes either the final output and LSE (request not split) or
// an fp32 partial for the merge kernel. LSE is base 2, as in FlashInfer.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi_decode.h"
#include "scheduler.cuh"

namespace fig {

template <class Cfg>
struct DecodeEpilogue {
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kWarps = Cfg::kWarps;
  static constexpr int kRows = Cfg::kRowsPerTile;

  struct SharedStorage {
    float o[kWarps][kRows][kHeadDim];  // unnormalised O of each warp
    float row_max[kWarps][kRows];
    float row_sum[kWarps][kRows];
  };

  template <class Mainloop>
  __device__ __forceinline__ static void stage(SharedStorage& smem, const Mainloop& ml, int warp) {
    const float sum = ml.softmax.row_sum();
    if (ml.lane_c == 0) {
      smem.row_max[warp][ml.lane_g] = ml.softmax.row_max;
      smem.row_sum[warp][ml.lane_g] = sum;
    }
    CUTE_UNROLL
    for (int nt = 0; nt < Mainloop::kNTiles; ++nt) {
      CUTE_UNROLL
      for (int i = 0; i < 2; ++i)
        smem.o[warp][ml.lane_g][Mainloop::v_dim(2 * ml.lane_c + i, nt)] = ml.o_acc[nt][i];
    }
  }

  // Call after a __syncthreads() that follows every warp's stage().
  __device__ __forceinline__ static void write(const SharedStorage& smem, const FigDecodeParams& p,
                                               const DecodeGridShape& shape, const DecodeWorkCoord& w,
                                               float out_scale) {
    using QElement = typename Cfg::QElement;
    const int tiles = shape.row_tiles_per_cta;
    const int slices = kWarps / tiles;
    for (int idx = threadIdx.x; idx < tiles * kRows * kHeadDim; idx += blockDim.x) {
      const int tile = idx / (kRows * kHeadDim);
      const int row = (idx / kHeadDim) % kRows;
      const int d = idx % kHeadDim;
      const int head_in_group = (w.row_group * tiles + tile) * kRows + row;
      if (head_in_group >= shape.group_size) continue;
      const int qo_head = w.kv_head * shape.group_size + head_in_group;
      float m = -INFINITY;
      for (int s = 0; s < slices; ++s) m = fmaxf(m, smem.row_max[s * tiles + tile][row]);
      float acc = 0.0f, sum = 0.0f;
      for (int s = 0; s < slices; ++s) {
        const int warp = s * tiles + tile;
        const float weight = exp2f(smem.row_max[warp][row] - m);  // 0 for a warp that saw no token
        acc += weight * smem.o[warp][row][d];
        sum += weight * smem.row_sum[warp][row];
      }
      const float value = acc / sum * out_scale;
      const float lse = m + log2f(sum);
      if (w.partial_slot < 0) {
        QElement* out = static_cast<QElement*>(p.out.data) + w.request * p.out.stride_row + qo_head * p.out.stride_head;
        out[d] = QElement(value);
        if (d == 0 && p.out.lse != nullptr) p.out.lse[int64_t(w.request) * p.out.num_heads + qo_head] = lse;
      } else {
        const int64_t row_index = int64_t(w.partial_slot) * p.out.num_heads + qo_head;
        p.merge.partial_out[row_index * kHeadDim + d] = value;
        if (d == 0) p.merge.partial_lse[row_index] = lse;
      }
    }
  }
};

}  // namespace fig
