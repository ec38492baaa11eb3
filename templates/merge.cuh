// Split-KV merge: combines a request's partial (O, LSE) pairs for one q head and head dim.
// Run by the last CTA of a split request (see DecodeEpilogue::merge_if_last); the partials were
// written by other CTAs, so they are read through L2 (ld.cg), never a stale L1 line.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi.h"

namespace fig {

template <class QElement, int kHeadDim>
__device__ __forceinline__ void merge_partials(const FigDecodeParams& p, int request, int first_slot,
                                               int last_slot, int qo_head, int d) {
  float m = -INFINITY;
  for (int k = first_slot; k < last_slot; ++k) m = fmaxf(m, __ldcg(p.partial_lse + int64_t(k) * p.num_qo_heads + qo_head));
  float acc = 0.0f, sum = 0.0f;
  for (int k = first_slot; k < last_slot; ++k) {
    const int64_t row = int64_t(k) * p.num_qo_heads + qo_head;
    const float weight = exp2f(__ldcg(p.partial_lse + row) - m);
    acc += weight * __ldcg(p.partial_out + row * kHeadDim + d);
    sum += weight;
  }
  QElement* out = static_cast<QElement*>(p.out) + request * p.out_stride_batch + qo_head * p.out_stride_head;
  out[d] = QElement(acc / sum);
  if (d == 0 && p.lse != nullptr) p.lse[int64_t(request) * p.num_qo_heads + qo_head] = m + log2f(sum);
}

}  // namespace fig
