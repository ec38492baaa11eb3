// The producer warpgroup of the Hopper prefill: gathers each tile's kBlockN keys of K and V (one
// KV head) from the paged cache, or from contiguous K/V described as one page per request, into
// the stage ring with cp.async. Per tile: each of the first kBlockN threads looks up one key's
// row address (page table, paged_kv.cuh), the warpgroup shares them through shared memory, and
// every thread copies 16-byte chunks into the swizzled K and Vt layouts. K and V have barriers
// of their own: the consumers free a stage's K once S = Q K^T is done, its V only after P V, a
// GEMM later; with two stages, one shared barrier held K back by that GEMM and the next tile's
// copies found the consumers waiting. Each thread's copies arrive on a "full" barrier as they
// complete (cp.async.mbarrier.arrive.noinc), so the producer never waits for its own copies,
// only for a free stage; the consumers fence the landed rows for WGMMA's async-proxy reads. Keys at or past `end` re-read key
// end - 1 (as the Ampere path): finite values that the consumers mask, so no load leaves the
// request's pages and no stale NaN reaches P V.
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include "paged_kv.cuh"
#include "prefill_sm90_smem.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90Load {
  using Smem = PrefillSm90Smem<Cfg>;
  using Element = typename Cfg::QElement;
  static constexpr int kThreads = Cfg::kProducerThreads;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kChunkElements = 16 / sizeof(Element);
  static constexpr int kChunksPerRow = kHeadDim / kChunkElements;
  static constexpr int kPasses = kBlockN * kChunksPerRow / kThreads;
  static_assert(kBlockN * kChunksPerRow % kThreads == 0, "every thread copies the same number of chunks");
  using Lookup = PagedKvTileCopy<kBlockN, kHeadDim * sizeof(Element), kHeadDim * sizeof(Element), kThreads>;

  // Called by the producer warpgroup, warpgroup 0 (so threadIdx.x < kThreads).
  __device__ __forceinline__ static void run(typename Smem::Storage& smem, const PagedKv& kv, const uint8_t* k_base,
                                             int64_t v_minus_k, int page_begin, int begin, int end) {
    using namespace cute;
    Tensor sK = make_tensor(make_smem_ptr(smem.kv.k), typename Smem::LayoutK{});    // (key, d, stage)
    Tensor sVt = make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutVt{});  // (d, key, stage)
    const int tiles = (end - begin + kBlockN - 1) / kBlockN;
    // Each tile's row lookups are issued a tile ahead, so their latency (a page-table read, then
    // the address) hides under the previous tile's copies and stage wait.
    int64_t k_row = tiles > 0 ? Lookup::lookup(kv, sizeof(Element), k_base, page_begin, begin, end) : 0;
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      const int stage = t % kStages;
      const uint32_t freed = ((t / kStages) & 1) ^ 1;  // the phase in which consumers freed tile t - kStages
      if (t >= kStages) smem.empty_k[stage].wait(freed);
      Lookup::store(smem.row_addrs[stage], k_row);
      named_barrier_sync(Cfg::kProducerBarrier, kThreads);
      if (t + 1 < tiles) k_row = Lookup::lookup(kv, sizeof(Element), k_base, page_begin, begin + (t + 1) * kBlockN, end);
      // Each barrier completes once every producer thread's copies before it have landed; the
      // producer goes on without waiting for them. V waits for its own stage, which the
      // consumers free a GEMM later than K's.
      copy_rows(smem.row_addrs[stage], 0, [&](int key, int column) { return &sK(key, column, stage); });
      cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_k[stage].bar);
      if (t >= kStages) smem.empty_v[stage].wait(freed);
      copy_rows(smem.row_addrs[stage], v_minus_k, [&](int key, int column) { return &sVt(column, key, stage); });
      cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_v[stage].bar);
    }
    cp_async_wait<0>();  // no copy outlives its thread
  }

 private:
  // The tile's rows (K rows at row_addrs, V rows `offset` bytes further) into the shared layout
  // that `destination(key, column)` addresses. Four chunks in flight per step of the loop: fully
  // unrolled, the producer's 56 registers spilled at head dim 64 (8 passes).
  template <class Destination>
  __device__ __forceinline__ static void copy_rows(const int64_t (&row_addrs)[kBlockN], int64_t offset,
                                                   Destination&& destination) {
#pragma unroll 4
    for (int i = 0; i < kPasses; ++i) {
      // Consecutive threads copy consecutive chunks of a row. The thread index is read here
      // (thread_index_here) so that the chunks' shared addresses, the same every tile, are
      // recomputed rather than held across the loop in the producer's few registers.
      const int chunk = thread_index_here() + i * kThreads;
      const int key = chunk / kChunksPerRow;
      const int column = kChunkElements * (chunk % kChunksPerRow);
      const uint8_t* src = reinterpret_cast<const uint8_t*>(row_addrs[key]) + offset + column * sizeof(Element);
      cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                                                            *reinterpret_cast<cute::uint128_t*>(destination(key, column)));
    }
  }
};

}  // namespace fig
