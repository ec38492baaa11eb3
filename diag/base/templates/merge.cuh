// Split-KV merge: combines a row's partial (O, LSE) pairs into its output, one CTA per
// (split row, q head). A row is whatever the kind's output rows are (a decode request, a
// prefill token); the kind's plan() lists the split rows and their partial slots. Latency, not bandwidth, is its cost (a few KB per CTA), so every
// partial's loads are issued before any is used: the CTA's threads are kGroups groups of
// D / 4 lanes, lane = four head dims (one 16-byte load), group g takes partials g, g + kGroups, ...
// kUnroll at a time; the groups' sums meet in shared memory.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi_common.h"
#include "launch.cuh"

namespace fig {

template <int kHeadDim>
struct MergeShape {
  static constexpr int kThreads = 128;
  static constexpr int kDimLanes = kHeadDim / 4;  // float4 per lane
  static constexpr int kGroups = kThreads / kDimLanes;  // threads past kGroups * kDimLanes idle
  static constexpr int kUnroll = 4;
  static_assert(kHeadDim % 4 == 0 && kGroups >= 1, "head dim must be a multiple of 4, at most 512");
};

template <class OElement, int kHeadDim>
__global__ void __launch_bounds__(MergeShape<kHeadDim>::kThreads) merge_partials_kernel(const FigSplitMerge merge, const FigOutput out) {
  using Shape = MergeShape<kHeadDim>;
  __shared__ float4 group_acc[Shape::kGroups][Shape::kDimLanes];
  __shared__ float group_sum[Shape::kGroups];
  __shared__ float warp_max[Shape::kThreads / 32];

  const int item = blockIdx.x;
  const int qo_head = blockIdx.y;
  if (item >= *merge.live_items) return;  // a CUDA-graph plan launches its capacity
  const int row = merge.row[item];  // written by plan(), not by the primary kernel
  const int first = merge.indptr[item];
  const int count = merge.indptr[item + 1] - first;
  wait_for_primary();  // the partials below are the primary kernel's output

  // partial_lse: [num_partial, num_heads]; partial_out: [num_partial, num_heads, kHeadDim].
  auto lse_of = [&](int k) { return merge.partial_lse[int64_t(first + k) * out.num_heads + qo_head]; };
  float m = -INFINITY;
  for (int k = threadIdx.x; k < count; k += Shape::kThreads) m = fmaxf(m, lse_of(k));
  for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = warp_max[0];
  for (int w = 1; w < Shape::kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);

  const int lane = threadIdx.x % Shape::kDimLanes;
  const int group = threadIdx.x / Shape::kDimLanes;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float sum = 0.0f;
  for (int k0 = group; group < Shape::kGroups && k0 < count; k0 += Shape::kGroups * Shape::kUnroll) {
    float weight[Shape::kUnroll];
    float4 value[Shape::kUnroll];
#pragma unroll
    for (int u = 0; u < Shape::kUnroll; ++u) {
      const int k = k0 + u * Shape::kGroups;
      const bool ok = k < count;
      const int64_t slot = int64_t(first + (ok ? k : 0)) * out.num_heads + qo_head;
      weight[u] = ok ? exp2f(merge.partial_lse[slot] - m) : 0.0f;
      value[u] = reinterpret_cast<const float4*>(merge.partial_out + slot * kHeadDim)[lane];
    }
#pragma unroll
    for (int u = 0; u < Shape::kUnroll; ++u) {
      acc.x += weight[u] * value[u].x;
      acc.y += weight[u] * value[u].y;
      acc.z += weight[u] * value[u].z;
      acc.w += weight[u] * value[u].w;
      sum += weight[u];
    }
  }
  if (group < Shape::kGroups) {
    group_acc[group][lane] = acc;
    if (lane == 0) group_sum[group] = sum;
  }
  __syncthreads();
  if (group == 0) {
    float total = group_sum[0];
    for (int g = 1; g < Shape::kGroups; ++g) {
      const float4 a = group_acc[g][lane];
      acc.x += a.x; acc.y += a.y; acc.z += a.z; acc.w += a.w;
      total += group_sum[g];
    }
    OElement* dst = static_cast<OElement*>(out.data) + row * out.stride_row + qo_head * out.stride_head + 4 * lane;
    dst[0] = OElement(acc.x / total);
    dst[1] = OElement(acc.y / total);
    dst[2] = OElement(acc.z / total);
    dst[3] = OElement(acc.w / total);
    if (lane == 0 && out.lse != nullptr) out.lse[int64_t(row) * out.num_heads + qo_head] = m + log2f(total);
  }
}

// Launches the merge of `merge`'s split rows (if any) as a programmatic dependent of the kernel
// before it on `stream`. Returns a cudaError_t value.
template <class OElement, int kHeadDim>
int launch_merge(const FigSplitMerge& merge, const FigOutput& out, cudaStream_t stream) {
  if (merge.num_items == 0) return int(cudaSuccess);
  return int(launch_dependent(merge_partials_kernel<OElement, kHeadDim>, dim3(merge.num_items, out.num_heads),
                              dim3(MergeShape<kHeadDim>::kThreads), 0, stream, merge, out));
}

}  // namespace fig
