// The producer warpgroup of the Hopper prefill: loads each tile's kBlockN keys of K and V (one KV
// head) from the paged cache, or from contiguous K/V described as one page per request, into the
// stage ring: by TMA boxes of whole page runs (tma_paged_kv.cuh) where the page size allows,
// else by a cp.async gather. Gather, per tile: each of the first kBlockN threads looks up one key's
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
#include "tma_paged_kv.cuh"

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
  static_assert(kBlockN / 8 <= 32 && kHeadDim % 64 == 0, "a TMA box (>= 8 keys) per lane of warp 0, 64 columns a piece");
  using Lookup = PagedKvTileCopy<kBlockN, kHeadDim * sizeof(Element), kHeadDim * sizeof(Element), kThreads>;

  // The first key of the item's first tile: tiles start on multiples of kBlockN, so a TMA box
  // never straddles a page; the keys before `begin` are the request's own, masked by the consumers.
  __device__ __forceinline__ static int first_key(int begin) { return begin - begin % kBlockN; }
  __device__ __forceinline__ static int tile_count(int begin, int end) {
    return end > begin ? (end - first_key(begin) + kBlockN - 1) / kBlockN : 0;
  }

  // Called by the producer warpgroup, warpgroup 0 (so threadIdx.x < kThreads).
  __device__ __forceinline__ static void run(typename Smem::Storage& smem, const PagedKv& kv, const KvTensorMaps& maps,
                                             int kv_head, const uint8_t* k_base, int64_t v_minus_k, int page_begin,
                                             int begin, int end, int kv_len) {
    using namespace cute;
    Tensor sK = make_tensor(make_smem_ptr(smem.kv.k), typename Smem::LayoutK{});    // (key, d, stage)
    Tensor sVt = make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutVt{});  // (d, key, stage)
    const int first = first_key(begin);
    const int tiles = tile_count(begin, end);
    // TMA where the cache allows it (maps.rows > 0) and the tile lies within the request's keys:
    // a tile reaching past them would read a page's unused slots, whose stale values (NaN, say)
    // P = 0 does not cancel in P V; the gather re-reads the last key there instead.
    auto gathered = [&](int t) { return maps.rows == 0 || first + (t + 1) * kBlockN > kv_len; };
    // Each tile's lookups (rows to gather, or the TMA boxes' pages) are issued a tile ahead, so
    // their latency (a page-table read) hides under the previous tile's copies and stage waits.
    int64_t k_row = 0;
    PagedKv::TokenLocation box = {0, 0};
    auto look_ahead = [&](int t) {
      if (t >= tiles) return;
      if (gathered(t))
        k_row = Lookup::lookup(kv, sizeof(Element), k_base, page_begin, first + t * kBlockN, end);
      else if (threadIdx.x < kBlockN / maps.rows)
        box = kv.locate(page_begin, first + t * kBlockN + threadIdx.x * maps.rows);
    };
    look_ahead(0);
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      const int stage = t % kStages;
      const uint32_t freed = ((t / kStages) & 1) ^ 1;  // the phase in which consumers freed tile t - kStages
      if (gathered(t)) {
        if (t >= kStages) smem.empty_k[stage].wait(freed);
        Lookup::store(smem.row_addrs[stage], k_row);
        named_barrier_sync(Cfg::kProducerBarrier, kThreads);
        look_ahead(t + 1);
        // Each barrier completes once every producer thread's copies before it have landed; the
        // producer goes on without waiting for them. V waits for its own stage, which the
        // consumers free a GEMM later than K's.
        copy_rows(smem.row_addrs[stage], 0, [&](int key, int column) { return &sK(key, column, stage); });
        cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_k[stage].bar);
        if (t >= kStages) smem.empty_v[stage].wait(freed);
        copy_rows(smem.row_addrs[stage], v_minus_k, [&](int key, int column) { return &sVt(column, key, stage); });
        cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_v[stage].bar);
      } else {
        const PagedKv::TokenLocation here = box;
        look_ahead(t + 1);
        if (t >= kStages) smem.empty_k[stage].wait(freed);
        load_boxes(&maps.k, smem.full_k[stage], maps.rows, kv_head, here,
                   [&](int key, int column) { return &sK(key, column, stage); });
        if (t >= kStages) smem.empty_v[stage].wait(freed);
        load_boxes(&maps.v, smem.full_v[stage], maps.rows, kv_head, here,
                   [&](int key, int column) { return &sVt(column, key, stage); });
      }
    }
    cp_async_wait<0>();  // no copy outlives its thread
  }

 private:
  // A tile by TMA: every producer thread arrives on `full` (thread 0 also expecting the tile's
  // bytes), then lane i of warp 0 loads box i (`rows` keys at `loc`) in 64-column pieces.
  template <class Destination>
  __device__ __forceinline__ static void load_boxes(const CUtensorMap* map, StageBarrier& full, int rows, int kv_head,
                                                    PagedKv::TokenLocation loc, Destination&& destination) {
    if (threadIdx.x == 0)
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&full.bar, kBlockN * kHeadDim * sizeof(Element));
    else
      full.arrive();
    if (threadIdx.x < 32) {
      __syncwarp();  // the expected bytes are set before any box can complete
      if (threadIdx.x < kBlockN / rows) {
        CUTE_UNROLL
        for (int column = 0; column < kHeadDim; column += 64)
          tma_load_kv_box(map, &full.bar, destination(threadIdx.x * rows, column), column, kv_head, loc.slot,
                          loc.page);
      }
    }
  }

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
