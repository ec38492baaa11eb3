// Append: each appended token's K and V rows (all KV heads) go to the slot its position names
// in its request's pages, converted by the cache's encoder (fp8_encode.cuh). One thread moves 8
// elements of one (token, KV head): one 16-byte load of the source, one 16-byte (16-bit cache)
// or 8-byte (FP8) store; consecutive threads take consecutive chunks of a row, then of the next
// head, then of the next token, so loads and stores are whole sectors.
//
// Out-of-range input is skipped, never written elsewhere: a token whose request index, position
// or page falls outside the page table or the cache writes nothing (run() validates what it can
// without a device sync; this is the guard for what lives on the device).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cute/numeric/numeric_types.hpp>
#include <type_traits>
#include "fig_abi_append.h"
#include "fp8_encode.cuh"

namespace fig {

template <class SrcElement_, class Encoder_, int kHeadDim_, int kElements_, int kThreads_>
struct AppendConfig {
  using SrcElement = SrcElement_;  // cute::half_t or cute::bfloat16_t
  using Encoder = Encoder_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kElements = kElements_;  // per thread
  static constexpr int kThreads = kThreads_;
  static constexpr int kChunks = kHeadDim / kElements;
  static_assert(kElements == 8 && kHeadDim % kElements == 0, "a thread moves one 16-byte source chunk");
};

template <class SrcElement>
__device__ __forceinline__ float2 pair_to_float2(uint32_t bits) {
  if constexpr (std::is_same_v<SrcElement, cute::half_t>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&bits));
  } else {
    static_assert(std::is_same_v<SrcElement, cute::bfloat16_t>);
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  }
}

template <class Cfg>
__device__ __forceinline__ void append_chunk(const uint8_t* src, uint8_t* dst, float inv_scale) {
  const uint4 in = *reinterpret_cast<const uint4*>(src);
  if constexpr (Cfg::Encoder::kIsCopy) {
    *reinterpret_cast<uint4*>(dst) = in;
  } else {
    const uint32_t words[4] = {in.x, in.y, in.z, in.w};
    float x[8];
    CUTE_UNROLL
    for (int i = 0; i < 4; ++i) {
      const float2 f = pair_to_float2<typename Cfg::SrcElement>(words[i]);
      x[2 * i] = f.x * inv_scale;
      x[2 * i + 1] = f.y * inv_scale;
    }
    uint2 out;
    Cfg::Encoder::encode8(x, out.x, out.y);
    *reinterpret_cast<uint2*>(dst) = out;
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) append_kernel(const FigAppendParams p) {
  const int64_t idx = int64_t(blockIdx.x) * Cfg::kThreads + threadIdx.x;
  const int chunk = int(idx % Cfg::kChunks);
  const int64_t row = idx / Cfg::kChunks;  // token x KV head
  const int head = int(row % p.kv.num_kv_heads);
  const int64_t token = row / p.kv.num_kv_heads;
  if (token >= p.nnz) return;
  const int b = __ldg(p.batch_indices + token);
  const int pos = __ldg(p.positions + token);
  if (b < 0 || b >= p.batch || pos < 0) return;
  const int page_in_request = pos / p.kv.page_size;
  const int slot = pos - page_in_request * p.kv.page_size;
  const int first_page = __ldg(p.kv.indptr + b);
  if (page_in_request >= __ldg(p.kv.indptr + b + 1) - first_page) return;
  if (first_page < 0 || first_page + page_in_request >= p.num_indices) return;
  const int page = __ldg(p.kv.indices + first_page + page_in_request);
  if (page < 0 || page >= p.num_pages) return;

  constexpr int kSrcBytes = int(sizeof(typename Cfg::SrcElement));
  constexpr int kDstBytes = Cfg::Encoder::kBytes;
  const int element = chunk * Cfg::kElements;
  const int64_t src = (token * p.stride_row + head * p.stride_head + element) * kSrcBytes;
  const int64_t dst = (int64_t(page) * p.kv.stride_page + int64_t(slot) * p.kv.stride_slot +
                       int64_t(head) * p.kv.stride_head + element) * kDstBytes;
  append_chunk<Cfg>(static_cast<const uint8_t*>(p.key) + src,
                    static_cast<uint8_t*>(const_cast<void*>(p.kv.k_cache)) + dst, p.k_inv_scale);
  append_chunk<Cfg>(static_cast<const uint8_t*>(p.value) + src,
                    static_cast<uint8_t*>(const_cast<void*>(p.kv.v_cache)) + dst, p.v_inv_scale);
}

template <class Cfg>
int append_run(const FigAppendParams* p, cudaStream_t stream) {
  const int64_t threads = int64_t(p->nnz) * p->kv.num_kv_heads * Cfg::kChunks;
  if (threads > 0) {
    const int64_t blocks = (threads + Cfg::kThreads - 1) / Cfg::kThreads;
    if (blocks > 0x7FFFFFFF) return int(cudaErrorInvalidConfiguration);
    append_kernel<Cfg><<<dim3(unsigned(blocks)), Cfg::kThreads, 0, stream>>>(*p);
  }
  return int(cudaGetLastError());
}

}  // namespace fig
