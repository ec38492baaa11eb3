// Shared memory of the Hopper prefill CTA: the WGMMA operand layouts (128-byte swizzled atoms, so
// a warpgroup's descriptor reads are free of bank conflicts) and the storage they live in.
//   Q  (64 packed rows, head dim, consumer warpgroup): K-major A operand of S = Q K^T.
//   K  (keys, head dim, stage): K-major B operand of S = Q K^T.
//   Vt (head dim, keys, stage): V as the cache stores it (head dim contiguous) is the MN-major B
//      operand of O = P V, which 16-bit WGMMA reads directly; no transpose.
// The producer writes K and V rows through the same layouts the consumers' descriptors read.
#pragma once
#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include "prefill_epilogue.cuh"
#include "prefill_work.cuh"
#include "sm90_sync.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90Smem {
  using Element = typename Cfg::QElement;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesK = Cfg::kStagesK;
  static constexpr int kStagesV = Cfg::kStagesV;
  static constexpr int kConsumerRows = Cfg::kConsumerRows;

  using LayoutQ = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kConsumerRows>, cute::Int<kHeadDim>, cute::Int<Cfg::kConsumers>>{}));
  using LayoutK = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_K_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStagesK>>{}));
  // Keys tiled before head-dim blocks: V's bytes then sit exactly where K's layout puts them
  // (row of 64 head-dim elements per key, keys of a 64-column block contiguous), so one TMA box
  // or gather fills either.
  using LayoutVt = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_MN_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStagesV>>{},
      cute::Step<cute::_2, cute::_1, cute::_3>{}));

  struct KvRing {
    alignas(1024) Element k[cute::cosize_v<LayoutK>];
    alignas(1024) Element v[cute::cosize_v<LayoutVt>];
  };

  // SW128 operands need 1024-byte aligned bases: they come first, at offset 0 of the dynamic
  // shared memory (the kernel has no static shared memory). The epilogue's fp32 staging reuses
  // the K/V ring once every tile is consumed.
  struct Storage {
    alignas(1024) Element q[cute::cosize_v<LayoutQ>];
    union {
      KvRing kv;
      typename PrefillEpilogue<Cfg>::SharedStorage epilogue;
    };
    // K row addresses of a gathered tile, from the producer's lookups (prefill_sm90_load.cuh)
    int64_t row_addrs[kStagesK + 1][kBlockN];
    // K and V are filled and freed apart (prefill_sm90_load.cuh says why).
    StageBarrier full_k[kStagesK];        // the producer's 128 threads arrive once their copies landed
    StageBarrier empty_k[kStagesK];       // each consumer warp arrives once its WGMMAs read the stage
    StageBarrier full_v[kStagesV];
    StageBarrier empty_v[kStagesV];
    PrefillRows rows;  // the work item, for the epilogue: in registers across the mainloop it spilled

  };
};

}  // namespace fig
