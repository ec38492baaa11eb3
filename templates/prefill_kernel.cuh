// Batch prefill (Ampere path) = work item -> rows and keys + shared K/V tile pipeline + warp
// mainloop (prefill_mainloop_sm80.cuh) + epilogue + split-KV merge kernel (merge.cuh). A work item
// is (request, kBlockM packed query rows, key range) from plan(); the grid is one CTA per unit
// (item, KV head), in plan()'s order (PrefillUnit, prefill_work.cuh). GQA packs a KV head's q heads
// into the tile's rows (row = token x group + head), so every K/V tile serves the whole group.
#pragma once
#include <cuda_runtime.h>
#include <cute/atom/mma_traits_sm80.hpp>
#include "fig_abi_prefill.h"
#include "launch.cuh"
#include "merge.cuh"
#include "prefill_epilogue.cuh"
#include "prefill_mainloop_sm80.cuh"
#include "prefill_work.cuh"
#include "variants.cuh"

namespace fig {

// The instance's numbers, all from the generator's table (generator/kind_prefill.py).
template <int kHeadDim_, int kMTiles_, int kBlockN_, int kStages_, int kWarps_, int kMinCtasPerSm_, int kSmemBytes_,
          int kSmemPerBlock_, int kRowPadding_, bool kFp8FromCodes_>
struct PrefillShape {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kRowPadding = kRowPadding_;     // bytes after each shared K/V row ldmatrix reads (smem_rows.cuh)
  static constexpr bool kFp8FromCodes = kFp8FromCodes_;  // the warps upcast K's and V's codes (kind_prefill.py)
  static constexpr int kBlockN = kBlockN_;             // keys per shared tile
  static constexpr int kStages = kStages_;             // tiles in flight
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kMTiles_;             // m16 tiles of query rows per warp
  static constexpr int kBlockM = kWarps * kMTiles * 16;  // packed query rows per CTA
  static constexpr int kMinCtasPerSm = kMinCtasPerSm_;
  static constexpr int kSmemBytes = kSmemBytes_;
  static constexpr int kSmemPerBlock = kSmemPerBlock_;
};

template <class QElement_, class Kv_, class Logits_, class Shape>
struct PrefillConfig : Shape {
  using QElement = QElement_;
  using OElement = QElement_;  // the output's type (the epilogue's and the merge's)
  using Kv = Kv_;
  using Logits = Logits_;
};

// Dynamic shared memory: the work item, then the mainloop's storage, which the epilogue reuses.
template <class Cfg>
struct PrefillSharedStorage {
  PrefillRows rows;
  union {
    typename PrefillMainloop<Cfg>::SharedStorage mainloop;
    typename PrefillEpilogue<Cfg>::SharedStorage epilogue;
  };
};

template <class Cfg>
constexpr size_t prefill_smem_bytes() {
  constexpr size_t kNeed = sizeof(PrefillSharedStorage<Cfg>);
  static_assert(kNeed == size_t(Cfg::kSmemBytes), "generator/kind_prefill.py smem_bytes() disagrees with the kernel");
  static_assert(Cfg::kSmemBytes <= Cfg::kSmemPerBlock, "the instance needs more shared memory than its arch has");
  using Atom = typename HalfRowsMma<typename Cfg::Kv::MmaElement>::Atom;
  using MmaShape = typename cute::MMA_Traits<Atom>::Shape_MNK;
  static_assert(Cfg::kBlockM == Cfg::kWarps * Cfg::kMTiles * cute::size<0>(MmaShape{}), "a warp owns kMTiles m16 tiles");
  return kNeed;
}

// Runs the tiles of keys [begin, end) through the pipeline: kStages - 1 tiles copied ahead, one
// barrier per tile (it also frees the stage the next copy overwrites), and each tile's page-table
// lookups issued a stage earlier still, their latency hidden under a tile's compute. An FP8 tile
// the warps do not read as codes is upcast by the CTA after that barrier, and a second barrier
// publishes the 16-bit rows.
template <class Cfg>
__device__ __forceinline__ void prefill_tiles(PrefillMainloop<Cfg>& ml, typename PrefillMainloop<Cfg>::SharedStorage& smem,
                                              const PagedKv& kv, const uint8_t* k_base, int64_t v_minus_k,
                                              int page_begin, int begin, int end, int hi_min, int lo_max,
                                              const typename Cfg::Logits& logits) {
  using Mainloop = PrefillMainloop<Cfg>;
  using Copy = typename Mainloop::TileCopy;
  using Kv = typename Cfg::Kv;
  constexpr int kN = Cfg::kBlockN;
  constexpr int kS = Cfg::kStages;
  const int tiles = (end - begin + kN - 1) / kN;
  auto lookup = [&](int t) { return Copy::lookup(kv, Kv::kBytes, k_base, page_begin, begin + t * kN, end); };
  auto copy = [&](int t) { Copy::copy(smem.k[t % kS], smem.v[t % kS], smem.row_addrs[t % kS], v_minus_k); };
  CUTE_UNROLL
  for (int t = 0; t < kS; ++t) Copy::store(smem.row_addrs[t], t < tiles ? lookup(t) : 0);
  __syncthreads();
  CUTE_UNROLL
  for (int t = 0; t < kS - 1; ++t) {
    if (t < tiles) copy(t);
    cute::cp_async_fence();
  }
#pragma unroll 1
  for (int t = 0; t < tiles; ++t) {
    const int64_t ahead = t + kS < tiles ? lookup(t + kS) : 0;  // used only after this tile's compute
    cute::cp_async_wait<kS - 2>();
    __syncthreads();
    if (t + kS - 1 < tiles) copy(t + kS - 1);
    cute::cp_async_fence();
    const uint8_t(*k_rows)[Mainloop::kMmaRowBytes];
    const uint8_t(*v_rows)[Mainloop::kMmaRowBytes];
    if constexpr (Kv::kIsFp8 && !Cfg::kFp8FromCodes) {
      // Every warp finished the previous tile before the barrier above, so the 16-bit rows are free.
      KvTileConvert<typename Kv::Converter, kN, Cfg::kHeadDim, typename Mainloop::CopyRows, typename Mainloop::Rows,
                    Cfg::kThreads>::run(smem.k[t % kS], smem.v[t % kS], smem.k16, smem.v16);
      __syncthreads();
      k_rows = smem.k16;
      v_rows = smem.v16;
    } else {
      k_rows = smem.k[t % kS];
      v_rows = smem.v[t % kS];
    }
    const int tile_begin = begin + t * kN;
    // Only tiles that reach past a row's last key or before its first need the per-key test.
    // Where kSettledTiles, the others are first taken against the rows' maxima as they stand (after
    // the first tile, which sets them), and run again with the maxima moved only where some row's
    // grew too far.
    if (tile_begin + kN - 1 > hi_min || tile_begin < lo_max) {
      ml.template compute_tile<true>(smem, k_rows, v_rows, tile_begin, logits);
    } else {
      bool settled = false;
      if constexpr (Mainloop::kSettledTiles) settled = t > 0 && ml.compute_settled_tile(smem, k_rows, v_rows, logits);
      if (!settled) ml.template compute_tile<false>(smem, k_rows, v_rows, tile_begin, logits);
    }
    // Slot t % kS last served tile t's copy, issued kS - 1 barriers ago; tile t + kS's copy reads
    // it after the next barrier.
    Copy::store(smem.row_addrs[t % kS], ahead);
  }
  cute::cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages before they are reused
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinCtasPerSm) prefill_kernel(const PrefillArgs args) {
  using Mainloop = PrefillMainloop<Cfg>;
  using Epilogue = PrefillEpilogue<Cfg>;
  using QElement = typename Cfg::QElement;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  auto& shared = *reinterpret_cast<PrefillSharedStorage<Cfg>*>(smem_raw);
  auto& smem = shared.mainloop;

  const FigPrefillParams& p = args.p;
  PrefillUnit unit;
  if (!PrefillUnit::of_grid(p, blockIdx.x, unit)) return;  // past the plan's live units (a capacity-sized grid)
  const PrefillItem work = PrefillItem::load(p, unit.item, unit.kv_head);
  const PrefillRows& rows = work.rows;
  const int begin = work.begin;
  const int end = work.end;
  auto key_range = [&](int r, int& lo, int& hi) {
    const int2 range = work.key_range(r, p.causal, p.window_left);
    lo = range.x;
    hi = range.y;
  };
  const int warp = threadIdx.x / 32;
  const int lane_g = (threadIdx.x % 32) / 4;
  const QElement* q_rows[Cfg::kMTiles][2];
  int2 bounds[Cfg::kMTiles][2];
  CUTE_UNROLL
  for (int m = 0; m < Cfg::kMTiles; ++m) {
    CUTE_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int r = rows.row_begin + (warp * Cfg::kMTiles + m) * 16 + lane_g + 8 * i;
      const bool valid = rows.has(r);
      q_rows[m][i] = valid ? static_cast<const QElement*>(p.q.data) +
                                 int64_t(rows.qo_start + rows.token(r)) * p.q.stride_row +
                                 int64_t(rows.qo_head(r)) * p.q.stride_head
                           : nullptr;
      key_range(valid ? r : rows.first_row(), bounds[m][i].x, bounds[m][i].y);
    }
  }
  // Bounds shared by every row of the CTA: tiles inside them need no per-key test.
  int lo_first, hi_first, lo_last, hi_last;
  key_range(rows.first_row(), lo_first, hi_first);
  key_range(min(rows.rows_total, rows.row_begin + Cfg::kBlockM) - 1, lo_last, hi_last);

  if (threadIdx.x == 0) shared.rows = rows;  // published by the pipeline's first barrier
  Mainloop ml;
  ml.init(smem, q_rows, bounds);
  const int64_t head_bytes = args.kv.head_offset(rows.kv_head) * Cfg::Kv::kBytes;
  const uint8_t* k_base = static_cast<const uint8_t*>(p.kv.k_cache) + head_bytes;
  const int64_t v_minus_k = static_cast<const uint8_t*>(p.kv.v_cache) - static_cast<const uint8_t*>(p.kv.k_cache);
  const int page_begin = __ldg(p.kv.indptr + rows.request);
  const typename Cfg::Logits logits(args.logits_scale * device_scale(p.scales.q_scale_device, true) *
                                        device_scale(p.scales.k_scale_device, true),
                                    p.scales.logits_soft_cap);
  prefill_tiles<Cfg>(ml, smem, args.kv, k_base, v_minus_k, page_begin, begin, end, hi_first, lo_last, logits);
  launch_dependents();  // the merge kernel may be scheduled now (see decode_kernel.cuh)
  const PrefillRows item_rows = shared.rows;  // after prefill_tiles' last barrier, before the epilogue's writes
  Epilogue::stage(shared.epilogue, ml, args.out_scale * device_scale(p.scales.v_scale_device, false));
  __syncthreads();
  Epilogue::template write<Cfg::kThreads>(shared.epilogue, item_rows, p, threadIdx.x);
}

template <class Cfg>
int prefill_run(const FigPrefillParams* p, cudaStream_t stream) {
  using Kv = typename Cfg::Kv;
  PrefillArgs args;
  args.p = *p;
  args.kv = PagedKv::from(p->kv);
  args.logits_scale = p->scales.sm_scale * p->scales.k_scale * Kv::kScale;
  args.out_scale = p->scales.v_scale * Kv::kScale;
  if (p->work.num_items > 0) {
    const int err = launch_with_smem(prefill_kernel<Cfg>, dim3(p->work.num_items * p->kv.num_kv_heads), Cfg::kThreads,
                                     prefill_smem_bytes<Cfg>(), stream, args);
    if (err != 0) return err;
  }
  return launch_merge<typename Cfg::OElement, Cfg::kHeadDim>(p->merge, p->out, stream);
}

template <class Cfg>
int prefill_occupancy(int* ctas_per_sm, int* num_sms) {
  return kernel_occupancy(prefill_kernel<Cfg>, Cfg::kThreads, prefill_smem_bytes<Cfg>(), ctas_per_sm, num_sms);
}

}  // namespace fig
