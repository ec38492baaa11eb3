// Split-KV merge: combines a request's partial (O, LSE) pairs, one thread per head dim.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi.h"

namespace fig {

template <class QElement, int kHeadDim>
__global__ void __launch_bounds__(kHeadDim) merge_partials_kernel(const FigDecodeParams p) {
  const int item = blockIdx.x;
  const int qo_head = blockIdx.y;
  const int d = threadIdx.x;
  const int request = p.merge_request[item];
  const int first = p.merge_indptr[item];
  const int last = p.merge_indptr[item + 1];
  float m = -INFINITY;
  for (int k = first; k < last; ++k) m = fmaxf(m, p.partial_lse[int64_t(k) * p.num_qo_heads + qo_head]);
  float acc = 0.0f, sum = 0.0f;
  for (int k = first; k < last; ++k) {
    const int64_t row = int64_t(k) * p.num_qo_heads + qo_head;
    const float weight = exp2f(p.partial_lse[row] - m);
    acc += weight * p.partial_out[row * kHeadDim + d];
    sum += weight;
  }
  QElement* out = static_cast<QElement*>(p.out) + request * p.out_stride_batch + qo_head * p.out_stride_head;
  out[d] = QElement(acc / sum);
  if (d == 0 && p.lse != nullptr) p.lse[int64_t(request) * p.num_qo_heads + qo_head] = m + log2f(sum);
}

}  // namespace fig
