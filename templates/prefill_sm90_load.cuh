// The producer warpgroup of the Hopper prefill: loads each tile's kBlockN keys of K and V (one KV
// head) from the paged cache, or from contiguous K/V described as one page per request, into
// shared rings: by TMA boxes of whole page runs (tma_paged_kv.cuh) where the page size allows,
// else by a cp.async gather. Gather, per tile: each of the first kBlockN threads looks up one
// key's row address (page table, paged_kv.cuh), the warpgroup shares them through shared memory,
// and every thread copies 16-byte chunks into the swizzled K and Vt layouts. Keys at or past `end`
// re-read key end - 1 (as the Ampere path): finite values that the consumers mask, so no load
// leaves the request's pages and no stale NaN reaches P V.
//
// FP8 cache: V lands as stored (K's layout, in the V ring) and the producer transposes each tile
// into the Vt ring (prefill_sm90_transpose.cuh), a tile behind its loads, so the transpose of V(t)
// waits for loads issued an iteration earlier; the V stage is freed by the producer's own warps.
//
// K and V have rings and barriers of their own: the consumers free K(t) once S = Q K^T is done,
// V(t) only after P V, a GEMM later; with one shared ring (two stages at head dim 128), K waited
// on V and the consumers on K. K gets the deeper ring (generator/kind_prefill_sm90.py) and is
// loaded a tile ahead. Each thread's loads complete a "full" barrier on their own (TMA's byte
// count, or cp.async.mbarrier.arrive.noinc), so the producer never waits for its own loads, only
// for free stages; after the wait for a gathered tile (gathered()) the consumers fence its rows
// for WGMMA's async-proxy reads, as cp.async writes through the generic proxy (TMA tiles land in
// the async proxy and need none).
#pragma once
#include <cute/arch/copy_sm80.hpp>
#include "paged_kv.cuh"
#include "prefill_sm90_smem.cuh"
#include "prefill_sm90_transpose.cuh"
#include "tma_paged_kv.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90Load {
  using Smem = PrefillSm90Smem<Cfg>;
  using Element = typename Cfg::KvElement;
  static constexpr int kThreads = Cfg::kProducerThreads;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesK = Cfg::kStagesK;
  static constexpr int kStagesV = Cfg::kStagesV;
  // Row-address slots: one more than K stages, so the slot V(t) reads is not rewritten (by K of
  // tile t + kRowSlots, stored before its barrier) while a slower thread still reads it.
  static constexpr int kRowSlots = kStagesK + 1;
  static constexpr int kChunkElements = 16 / sizeof(Element);
  static constexpr int kChunksPerRow = kHeadDim / kChunkElements;
  static constexpr int kPasses = kBlockN * kChunksPerRow / kThreads;
  static_assert(kBlockN * kChunksPerRow % kThreads == 0, "every thread copies the same number of chunks");
  // a box row is one swizzle row of the shared layouts (tma_paged_kv.cuh: 128 bytes, or 64)
  static constexpr int kBoxColumns = kv_swizzle_bytes(kHeadDim * int(sizeof(Element))) / int(sizeof(Element));
  static constexpr int kPieces = kHeadDim / kBoxColumns;      // TMA instructions per box
  static_assert(kThreads == 128 && kHeadDim % kBoxColumns == 0 && kBlockN / 8 * kPieces <= kThreads,
                "a TMA instruction per producer thread at most: boxes of >= 8 keys, one swizzle row a piece, four warps");
  using Lookup = PagedKvTileCopy<kBlockN, PlainRows<kHeadDim * sizeof(Element)>, kHeadDim * sizeof(Element), kThreads>;

  // The first key of the item's first tile: tiles start on multiples of kBlockN, so a TMA box
  // never straddles a page; the keys before `begin` are the request's own, masked by the consumers.
  __device__ __forceinline__ static int first_key(int begin) { return begin - begin % kBlockN; }
  __device__ __forceinline__ static int tile_count(int begin, int end) {
    return end > begin ? (end - first_key(begin) + kBlockN - 1) / kBlockN : 0;
  }
  // Whether the item's tile t (keys from `first`) is gathered with cp.async rather than loaded by
  // TMA: every tile without TMA boxes (rows == 0), and a request's last, partial tile, whose
  // rows past kv_len TMA would read from the next request or past the cache.
  __device__ __forceinline__ static bool gathered(int rows, int kv_len, int first, int t) {
    return rows == 0 || first + (t + 1) * kBlockN > kv_len;
  }

  // One work item's tiles, called by the producer warpgroup, warpgroup 0 (so threadIdx.x <
  // kThreads), for each of the CTA's items in turn. `ring`: the tiles the CTA's earlier items put
  // through the rings, so that stages and barrier phases run on across items (the consumers
  // count the same); the item's tile t is the rings' tile ring + t. Returns the item's tiles.
  __device__ __forceinline__ static int run(typename Smem::Storage& smem, const PagedKv& kv, const KvTensorMaps& maps,
                                            int kv_head, const uint8_t* k_base, int64_t v_minus_k, int page_begin,
                                            int begin, int end, int kv_len, int ring) {
    using namespace cute;
    Tensor sK = make_tensor(make_smem_ptr(smem.kv.k), typename Smem::LayoutK{});  // (key, d, K stage)
    // where V's row `key`, column `column` of stage `stage` lands: V as stored (FP8), or the
    // MN-major 16-bit operand itself
    auto v_at = [&](int key, int column, int stage) {
      if constexpr (Cfg::kFp8)
        return &make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutV8{})(key, column, stage);
      else
        return &make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutVt16{})(column, key, stage);
    };
    const int first = first_key(begin);
    const int tiles = tile_count(begin, end);
    // TMA where the cache allows it (maps.rows > 0) and the tile lies within the request's keys:
    // a tile reaching past them would read a page's unused slots, whose stale values (NaN, say)
    // P = 0 does not cancel in P V; the gather re-reads the last key there instead. So with TMA
    // only an item's last tile may be gathered.
    auto gathered = [&](int t) { return PrefillSm90Load::gathered(maps.rows, kv_len, first, t); };
    // Each tile's lookups (rows to gather, or the TMA boxes' pages) are issued a tile ahead, so
    // their latency (a page-table read) hides under the previous tile's loads and stage waits.
    int64_t k_row = 0;
    PagedKv::TokenLocation next_box = {0, 0};
    auto look_ahead = [&](int t) {
      if (t >= tiles) return;
      if (gathered(t))
        k_row = Lookup::lookup(kv, sizeof(Element), k_base, page_begin, first + t * kBlockN, end);
      else if (tma_box() * maps.rows < kBlockN)  // box < kBlockN / rows (rows divides it), no ~23-instruction division
        next_box = kv.locate(page_begin, first + t * kBlockN + tma_box() * maps.rows);
    };
    // K of tile t into stage r % kStagesK (r = ring + t): a gathered tile's row addresses go to slot
    // r % kRowSlots first, which V's copy of the same tile reads an iteration later. Returns the
    // tile's boxes.
    auto produce_k = [&](int t) {
      const int r = ring + t;
      const int stage = r % kStagesK;
      const PagedKv::TokenLocation here = next_box;
      if (r >= kStagesK) smem.empty_k[stage].wait(((r / kStagesK) & 1) ^ 1);  // consumers done with r - kStagesK
      if (gathered(t)) {
        Lookup::store(smem.row_addrs[r % kRowSlots], k_row);
        named_barrier_sync(Cfg::kProducerBarrier, kThreads);
        look_ahead(t + 1);
        copy_rows(smem.row_addrs[r % kRowSlots], 0, [&](int key, int column) { return &sK(key, column, stage); });
        cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_k[stage].bar);
      } else {
        look_ahead(t + 1);
        load_boxes(&maps.k, smem.full_k[stage], maps.rows, kv_head, here,
                   [&](int key, int column) { return &sK(key, column, stage); });
      }
      return here;
    };
    auto produce_v = [&](int t, PagedKv::TokenLocation here) {
      const int r = ring + t;
      const int stage = r % kStagesV;
      if (r >= kStagesV) smem.empty_v[stage].wait(((r / kStagesV) & 1) ^ 1);
      if (gathered(t)) {
        copy_rows(smem.row_addrs[r % kRowSlots], v_minus_k, [&](int key, int column) { return v_at(key, column, stage); });
        cutlass::arch::cpasync_barrier_arrive_noinc(&smem.full_v[stage].bar);
      } else {
        load_boxes(&maps.v, smem.full_v[stage], maps.rows, kv_head, here,
                   [&](int key, int column) { return v_at(key, column, stage); });
      }
    };
    // K runs a tile ahead of V: the consumers need K(t + 1) for S(t + 1) while V(t) is still being
    // read by P V(t), so K(t + 1) must not queue behind the wait for V's stage. Each barrier
    // completes once every producer thread's loads before it have landed; the producer never
    // waits for its own loads, only for free stages.
    if (tiles == 0) return 0;
    // Every producer thread is done with the previous item. Defensive: a row-address slot is
    // rewritten only after the consumers freed a later K stage, whose "full" barrier every producer
    // thread arrives on after its reads of that slot, so the rings already order it.
    named_barrier_sync(Cfg::kProducerBarrier, kThreads);
    look_ahead(0);
    PagedKv::TokenLocation box = produce_k(0);
    if constexpr (Cfg::kFp8) {
      // The transpose of V(t) waits for V(t) to land, the one wait of the producer on its own
      // loads: so K and V run kAhead tiles ahead of it (as deep as their rings allow), and
      // the wait finds loads issued that many iterations earlier. (With one tile ahead it stalled
      // the producer on load latency every tile, and the loads behind it: e4m3 ran at 0.87x bf16.)
      constexpr int kAhead = (kStagesK < kStagesV ? kStagesK : kStagesV) - 1;
      static_assert(kAhead >= 1, "at least two K and two V stages");
      produce_v(0, box);
      for (int t = 1; t < kAhead && t < tiles; ++t) produce_v(t, produce_k(t));
#pragma unroll 1
      for (int t = 0; t < tiles; ++t) {
        if (t + kAhead < tiles) produce_v(t + kAhead, produce_k(t + kAhead));
        PrefillSm90TransposeV<Cfg>::tile(smem, ring + t);
      }
    } else {
#pragma unroll 1
      for (int t = 0; t < tiles; ++t) {
        const PagedKv::TokenLocation v_box = box;
        if (t + 1 < tiles) box = produce_k(t + 1);
        produce_v(t, v_box);
      }
    }
    return tiles;
  }

 private:
  // The tile's TMA instructions (a box of `rows` keys and a swizzle row of head dim each) are spread
  // over the producer's four warps, each on a scheduler of its own: instruction i = 4 lane + warp
  // loads piece i % kPieces of box i / kPieces. Issued by lanes of warp 0 alone, each instruction
  // added ~25 ns to every tile step (H200, bf16 d128 B4 S4096: paged16 at 0.75x contiguous; spread,
  // 0.90-0.97x, and contiguous itself +3-7%): we read it as that scheduler's consumer warps held
  // up, and through them every consumer warpgroup, whose WGMMAs wait for their slowest warp.
  __device__ __forceinline__ static int tma_instruction() { return 4 * (threadIdx.x % 32) + threadIdx.x / 32; }
  __device__ __forceinline__ static int tma_box() { return tma_instruction() / kPieces; }

  // A tile by TMA: each thread that has an instruction (tma_instruction()) arrives on `full`
  // expecting its box's bytes and issues it, with `loc` the box's page and slot; the others
  // arrive. The phase cannot complete before the last thread arrives, by when every byte is expected.
  template <class Destination>
  __device__ __forceinline__ static void load_boxes(const CUtensorMap* map, StageBarrier& full, int rows, int kv_head,
                                                    PagedKv::TokenLocation loc, Destination&& destination) {
    const int box = tma_box();
    if (box * rows < kBlockN) {  // box < kBlockN / rows, as in run()'s look_ahead
      const int column = kBoxColumns * (tma_instruction() % kPieces);
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&full.bar, rows * kBoxColumns * sizeof(Element));
      tma_load_kv_box(map, &full.bar, destination(box * rows, column), column, kv_head, loc.slot, loc.page);
    } else {
      full.arrive();
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
