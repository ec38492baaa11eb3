// Batch prefill, Hopper path (sm_90a): the Ampere path's work items, ABI and split-KV merge, with
// the CTA split by role into warpgroups:
//   warpgroup 0, the producer (prefill_sm90_load.cuh): the K/V tile loads into rings of
//     kStagesK / kStagesV shared stages, each published through an mbarrier ("full") and freed by the
//     consumers through another ("empty"); with an FP8 cache it also transposes each V tile into a
//     ring of kStagesVt (prefill_sm90_transpose.cuh); it gives up most of its registers (setmaxnreg);
//   warpgroups 1 ..< 1 + kConsumers, the consumers (prefill_sm90_q.cuh, prefill_sm90_mainloop.cuh):
//     64 packed query rows each, WGMMA and the online softmax, then O stored from their registers.
// Persistent (kPersistent: up to head dim 128, but for three FP8 consumers): a grid of at most the
// CTAs the GPU holds at once, each taking work units (work item, KV head) in turn (see the
// kernel); otherwise one CTA per unit. plan() orders items longest first.
#pragma once
#include <cuda_runtime.h>
#include "fig_abi_prefill.h"
#include "launch.cuh"
#include "merge.cuh"
#include "prefill_sm90_load.cuh"
#include "prefill_sm90_mainloop.cuh"
#include "prefill_sm90_smem.cuh"
#include "prefill_work.cuh"
#include "sm90_sync.cuh"
#include "tma_paged_kv.cuh"
#include "variants.cuh"

namespace fig {

// The instance's numbers, all from the generator's table (generator/kind_prefill_sm90.py).
template <int kHeadDim_, int kBlockN_, int kStagesK_, int kStagesV_, int kStagesVt_, int kConsumers_, int kConsumerRows_,
          int kProducerRegisters_, int kConsumerRegisters_, int kSmemBytes_, int kSmemPerBlock_, bool kPersistent_,
          bool kPInS_, int kOChunk_, bool kMaskInSmem_>
struct PrefillSm90Shape {
  static constexpr bool kPersistent = kPersistent_;           // CTAs loop over work units (the kernel)
  static constexpr bool kPInS = kPInS_;                       // 16-bit P over S's registers (the mainloop)
  static constexpr bool kMaskInSmem = kMaskInSmem_;           // the item's mask bounds read per tile (the mainloop)
  static constexpr int kOChunk = kOChunk_;                     // columns of O per FP8 P V (the mainloop)
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;                     // keys per stage
  static constexpr int kStagesK = kStagesK_;                   // K tiles in the ring
  static constexpr int kStagesV = kStagesV_;                   // V tiles (as the cache stores them)
  static constexpr int kStagesVt = kStagesVt_;                 // transposed V tiles (FP8 only, else 0)
  static constexpr int kConsumers = kConsumers_;               // consumer warpgroups
  static constexpr int kConsumerRows = kConsumerRows_;         // packed query rows per consumer
  static constexpr int kBlockM = kConsumers * kConsumerRows;   // packed query rows per CTA
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kProducerRegisters = kProducerRegisters_;
  static constexpr int kConsumerRegisters = kConsumerRegisters_;
  static constexpr int kSmemBytes = kSmemBytes_;
  static constexpr int kSmemPerBlock = kSmemPerBlock_;
  // Named barriers (0 is __syncthreads): the producer's, and one per consumer's Q.
  static constexpr int kProducerBarrier = 1;
  static constexpr int kQBarrier = 2;
  static_assert(kQBarrier + kConsumers <= 16, "16 named barriers");
  // setmaxnreg moves registers within the CTA's launch allocation (65536 / kThreads a thread,
  // rounded down to 8): what the producer gives up is all the consumers can take.
  static_assert(kProducerRegisters + kConsumers * kConsumerRegisters <= (65536 / kThreads) / 8 * 8 * (1 + kConsumers),
                "setmaxnreg cannot hand out more registers than the CTA was launched with");
};

// QElement: q's type as given (16-bit, or e4m3 with an FP8 cache); OElement: the output's 16-bit
// type. KvElement: the cache's; with an FP8 cache the GEMMs run on FP8 tiles (kFp8): a 16-bit Q
// quantised per packed row as it is loaded (kQuantiseQ), an e4m3 Q as given, P to e4m3 (MmaA), K
// and V as stored.
template <class QElement_, class KvElement_, class OElement_, class Logits_, class Shape>
struct PrefillSm90Config : Shape {
  using QElement = QElement_;
  using KvElement = KvElement_;
  using OElement = OElement_;
  using Logits = Logits_;
  static constexpr bool kFp8 = sizeof(KvElement) == 1;
  static constexpr bool kQuantiseQ = kFp8 && sizeof(QElement) == 2;
  using MmaA = std::conditional_t<kFp8, cute::float_e4m3_t, QElement>;  // Q and P as the GEMMs read them
  static_assert(kFp8 || std::is_same_v<QElement, KvElement>, "a 16-bit cache has q's dtype");
  static_assert(sizeof(QElement) == 2 || (kFp8 && std::is_same_v<QElement, cute::float_e4m3_t>),
                "an 8-bit q is e4m3, with an FP8 cache");
  static_assert(sizeof(OElement) == 2 && (sizeof(QElement) == 1 || std::is_same_v<OElement, QElement>),
                "a 16-bit q writes its own dtype; an FP8 q a 16-bit one");
  static_assert(kFp8 == (Shape::kStagesVt > 0), "a transposed-V ring exactly with FP8 tiles");
};

template <class Cfg>
constexpr size_t prefill_sm90_smem_bytes() {
  constexpr size_t kNeed = sizeof(typename PrefillSm90Smem<Cfg>::Storage);
  static_assert(kNeed == size_t(Cfg::kSmemBytes), "generator/kind_prefill_sm90.py smem_bytes() disagrees with the kernel");
  static_assert(Cfg::kSmemBytes <= Cfg::kSmemPerBlock, "the instance needs more shared memory than its arch has");
  return kNeed;
}

// The Ampere kernel's arguments plus the cache's TMA tensor maps, which must live in the kernel's
// parameter space (__grid_constant__) for TMA to read them.
struct PrefillSm90Args {
  PrefillArgs base;
  KvTensorMaps maps;
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) prefill_sm90_kernel(const __grid_constant__ PrefillSm90Args all) {
  const PrefillArgs& args = all.base;
  using Smem = PrefillSm90Smem<Cfg>;
  using Mainloop = PrefillSm90Mainloop<Cfg>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<typename Smem::Storage*>(smem_raw);

  const FigPrefillParams& p = args.p;
  // Persistent (kPersistent): the grid is at most what the GPU holds at once, and each CTA walks
  // the list of work units (item, KV head) that plan() dealt it: by sections of KV heads whose
  // K/V rows fit in L2, so that the CTAs running at once re-read rows L2 holds, longest first
  // within a section and balanced across the CTAs (prefill.py, cta_unit_lists). The producer and the
  // consumers walk the same list, each counting the tiles they put through the rings (`ring`), so
  // stages and barrier phases run on across items, and the producer loads an item's first tiles
  // while the consumers finish the last one. Where the registers leave no room for that loop (the
  // consumers' past head dim 128, the producer's with three FP8 consumers:
  // generator/kind_prefill_sm90.py), one CTA per unit, in plan()'s grid order (PrefillUnit::of_grid),
  // skipping a capacity-sized plan's unused units.
  if (threadIdx.x == 0) {
    CUTE_UNROLL
    for (int s = 0; s < Cfg::kStagesK; ++s) {
      smem.full_k[s].init(Cfg::kProducerThreads);
      smem.empty_k[s].init(Cfg::kConsumers * 4);
    }
    CUTE_UNROLL
    for (int s = 0; s < Cfg::kStagesV; ++s) {
      smem.full_v[s].init(Cfg::kProducerThreads);
      // freed by each consumer warp, or with FP8 by each producer warp once it transposed the tile
      smem.empty_v[s].init(Cfg::kFp8 ? Cfg::kProducerThreads / 32 : Cfg::kConsumers * 4);
    }
    CUTE_UNROLL
    for (int s = 0; s < Cfg::kStagesVt; ++s) {
      smem.full_vt[s].init(Cfg::kProducerThreads);
      smem.empty_vt[s].init(Cfg::kConsumers * 4);
    }
    publish_barrier_init();
  }
  __syncthreads();

  // The CTA's units, body(item, KV head, ring) returning the item's tiles: with kPersistent the
  // list plan() made for this CTA (live units only, balanced across the CTAs: prefill.py,
  // cta_unit_lists), else the grid's unit blockIdx.x (one CTA per unit).
  auto for_each_unit = [&](auto&& body) {
    if constexpr (Cfg::kPersistent) {
      int ring = 0;
      for (int i = p.work.cta_indptr[blockIdx.x]; i < p.work.cta_indptr[blockIdx.x + 1]; ++i) {
        const PrefillUnit unit = PrefillUnit::of(p, p.work.cta_units[i]);
        ring += body(unit.item, unit.kv_head, ring);
      }
    } else {
      PrefillUnit unit;
      if (PrefillUnit::of_grid(p, blockIdx.x, unit)) body(unit.item, unit.kv_head, 0);
    }
  };

  // From lane 0, so that the compiler knows it warp-uniform: the warpgroup's shared-memory
  // descriptors (Q's slot) then live in uniform registers, not in each thread's.
  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);
  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegisters>();
    const int64_t v_minus_k = static_cast<const uint8_t*>(p.kv.v_cache) - static_cast<const uint8_t*>(p.kv.k_cache);
    for_each_unit([&](int item, int kv_head, int ring) {
      const PrefillItem work = PrefillItem::load(p, item, kv_head);
      const int64_t head_bytes = args.kv.head_offset(kv_head) * int64_t(sizeof(typename Cfg::KvElement));
      const uint8_t* k_base = static_cast<const uint8_t*>(p.kv.k_cache) + head_bytes;
      return PrefillSm90Load<Cfg>::run(smem, args.kv, all.maps, kv_head, k_base, v_minus_k,
                                       __ldg(p.kv.indptr + work.rows.request), work.begin, work.end, work.kv_len, ring);
    });
    cute::cp_async_wait<0>();  // no copy outlives its thread
    return;
  }
  cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int thread = threadIdx.x % 128;
  for_each_unit([&](int item, int kv_head, int ring) {
    Mainloop ml;
    int begin, end, hi_min, lo_max, hi_max, kv_len;  // what the mainloop needs of the item; the rest is reloaded after it
    {
      const PrefillItem work = PrefillItem::load(p, item, kv_head);
      Mainloop::Q::load(smem, consumer, thread, work, p);
      const int first = work.rows.row_begin + consumer * Cfg::kConsumerRows;
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r)
        ml.bounds[r] = work.key_range(first + 16 * (thread / 32) + (thread % 32) / 4 + 8 * r, p.causal,
                                      p.window_left);
      // Bounds shared by every row of the warpgroup that is the request's, [lo_row, hi_row]
      // (tiles inside [lo_max, hi_min] need no per-key test), and the last key any of them sees
      // (rows are in token order: the last row's), begin - 1 for a warpgroup with none of the
      // request's rows (past its last, or below its first in a partial first tile).
      const int lo_row = max(first, 0);
      const int hi_row = min(work.rows.rows_total, first + Cfg::kConsumerRows) - 1;
      hi_min = work.key_range(lo_row, p.causal, p.window_left).y;
      lo_max = work.key_range(max(lo_row, hi_row), p.causal, p.window_left).x;
      hi_max = lo_row <= hi_row ? work.key_range(hi_row, p.causal, p.window_left).y : work.begin - 1;
      begin = work.begin;
      end = work.end;
      kv_len = work.kv_len;
    }
    const typename Cfg::Logits logits(args.logits_scale * device_scale(p.scales.q_scale_device, true) *
                                          device_scale(p.scales.k_scale_device, true),
                                      p.scales.logits_soft_cap);
    ml.run(smem, consumer, thread, begin, end, hi_min, lo_max, hi_max, logits, ring, all.maps.rows, kv_len);
    // The item's rows, read again (held across the mainloop, they spilled)
    ml.store(PrefillItem::load(p, item, kv_head).rows, p, consumer, thread,
             args.out_scale * device_scale(p.scales.v_scale_device, false));
    return PrefillSm90Load<Cfg>::tile_count(begin, end);
  });
  launch_dependents();  // the merge kernel may be scheduled now (see decode_kernel.cuh)
}

template <class Cfg>
int prefill_sm90_run(const FigPrefillParams* p, cudaStream_t stream) {
  PrefillSm90Args args;
  args.base.p = *p;
  args.base.kv = PagedKv::from(p->kv);
  args.base.logits_scale = p->scales.sm_scale * p->scales.k_scale;
  args.base.out_scale = p->scales.v_scale;
  args.maps = KvTensorMaps::cached(p->kv, Cfg::kHeadDim, Cfg::kBlockN, tma_element<typename Cfg::KvElement>());
  if (p->work.num_items > 0) {
    // a persistent instance's grid is plan()'s (work.ctas: at most the CTAs the GPU holds at once)
    const int grid = Cfg::kPersistent ? p->work.ctas : p->work.num_items * p->kv.num_kv_heads;
    if (grid <= 0) return int(cudaErrorInvalidValue);
    const int err = launch_with_smem(prefill_sm90_kernel<Cfg>, dim3(grid),
                                     Cfg::kThreads, prefill_sm90_smem_bytes<Cfg>(), stream, args);
    if (err != 0) return err;
  }
  return launch_merge<typename Cfg::OElement, Cfg::kHeadDim>(p->merge, p->out, stream);
}

template <class Cfg>
int prefill_sm90_occupancy(int* ctas_per_sm, int* num_sms) {
  return kernel_occupancy(prefill_sm90_kernel<Cfg>, Cfg::kThreads, prefill_sm90_smem_bytes<Cfg>(), ctas_per_sm,
                          num_sms);
}

}  // namespace fig
