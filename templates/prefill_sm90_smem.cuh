// Shared memory of the Hopper prefill CTA: the WGMMA operand layouts (swizzled atoms, 128 bytes
// wide, or 64 where rows are not whole 128-byte lines: FP8 Q, K and V at head dims 64 and 192, the
// transposed V of 64-key tiles at 192 and 256; a warpgroup's descriptor reads are then free of
// bank conflicts) and the storage they live in.
//   Q  (64 packed rows, head dim, consumer warpgroup): K-major A operand of S = Q K^T, in MmaA
//      (q's 16-bit type, or e4m3 with an FP8 cache: the consumers quantise it per row).
//   K  (keys, head dim, stage): K-major B operand of S = Q K^T.
//   16-bit cache: V as the cache stores it (head dim contiguous) is the MN-major B operand of
//      O = P V, which 16-bit WGMMA reads directly: Vt (head dim, keys, stage), no transpose.
//   FP8 cache: FP8 WGMMA reads only K-major operands, so V lands as stored in V (keys, head dim,
//      stage; K's layout) and the producer transposes it into Vt (head dim, keys, stage), keys
//      contiguous (prefill_sm90_transpose.cuh), in the key order that P's registers have.
// The producer writes K and V rows through the same layouts the consumers' descriptors read.
#pragma once
#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include "prefill_work.cuh"
#include "sm90_sync.cuh"
#include "tma_paged_kv.cuh"

namespace fig {

// The K-major operand atom for rows of kRowElements: swizzled over kv_swizzle_bytes (the width of
// the TMA boxes that fill K and V, tma_paged_kv.cuh).
template <class Element, int kRowElements>
using KMajorAtom = std::conditional_t<kv_swizzle_bytes(kRowElements * int(sizeof(Element))) == 128,
                                      cute::GMMA::Layout_K_SW128_Atom<Element>, cute::GMMA::Layout_K_SW64_Atom<Element>>;

// The FP8 V layouts of PrefillSm90Smem: V as landed (K's layout) and transposed (head dim rows of
// kBlockN keys, 128 or 64 bytes, contiguous). Apart so that a 16-bit instance names them at a
// shape they tile (a one-byte atom is 64 or 128 columns wide), never with its own.
template <class Element, int kBlockN, int kHeadDim, int kStagesV, int kStagesVt>
struct Fp8VLayouts {
  using V = decltype(cute::tile_to_shape(KMajorAtom<Element, kHeadDim>{},
                                         cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStagesV>>{}));
  using Vt = decltype(cute::tile_to_shape(KMajorAtom<Element, kBlockN>{},
                                          cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStagesVt>>{}));
};

// The 16-bit V layout of PrefillSm90Smem (see LayoutVt16), named only where it is used.
template <class Element, int kHeadDim, int kBlockN, int kStagesV>
struct Vt16Layout {
  using type = decltype(cute::tile_to_shape(cute::GMMA::Layout_MN_SW128_Atom<Element>{},
                                            cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>, cute::Int<kStagesV>>{},
                                            cute::Step<cute::_2, cute::_1, cute::_3>{}));
};

template <class Cfg>
struct PrefillSm90Smem {
  using MmaA = typename Cfg::MmaA;
  using KvElement = typename Cfg::KvElement;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesK = Cfg::kStagesK;
  static constexpr int kStagesV = Cfg::kStagesV;
  static constexpr int kStagesVt = Cfg::kStagesVt;
  static constexpr int kConsumerRows = Cfg::kConsumerRows;

  using LayoutQ = decltype(cute::tile_to_shape(
      KMajorAtom<MmaA, kHeadDim>{},
      cute::Shape<cute::Int<kConsumerRows>, cute::Int<kHeadDim>, cute::Int<Cfg::kConsumers>>{}));
  using LayoutK = decltype(cute::tile_to_shape(
      KMajorAtom<KvElement, kHeadDim>{},
      cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStagesK>>{}));
  // 16-bit: keys tiled before head-dim blocks, so V's bytes sit exactly where K's layout puts them
  // (a row of 64 head-dim elements per key, keys of a 64-column block contiguous) and one TMA box
  // or gather fills either. (An FP8 instance names it at a 16-bit shape it tiles, and uses it not.)
  using LayoutVt16 = typename std::conditional_t<Cfg::kFp8, Vt16Layout<cute::half_t, 64, 64, 1>,
                                                 Vt16Layout<KvElement, kHeadDim, kBlockN, kStagesV>>::type;
  // FP8: V as landed and transposed (a placeholder shape for 16-bit instances, which use neither)
  using Fp8V = std::conditional_t<Cfg::kFp8, Fp8VLayouts<KvElement, kBlockN, kHeadDim, kStagesV, kStagesVt>,
                                  Fp8VLayouts<uint8_t, 128, 128, 1, 1>>;
  using LayoutV8 = typename Fp8V::V;
  using LayoutVt8 = typename Fp8V::Vt;

  struct KvRing16 {
    alignas(1024) KvElement k[cute::cosize_v<LayoutK>];
    alignas(1024) KvElement v[cute::cosize_v<LayoutVt16>];
  };
  struct KvRing8 {
    alignas(1024) KvElement k[cute::cosize_v<LayoutK>];
    alignas(1024) KvElement v[cute::cosize_v<LayoutV8>];
    alignas(1024) KvElement vt[cute::cosize_v<LayoutVt8>];
  };
  using KvRing = std::conditional_t<Cfg::kFp8, KvRing8, KvRing16>;

  // Swizzled operands need aligned bases (1024 bytes for SW128): they come first, at offset 0 of the dynamic
  // shared memory (the kernel has no static shared memory). The consumers store O from their
  // registers (a persistent CTA's producer fills the ring with the next item's tiles meanwhile),
  // so nothing else shares the ring.
  struct Storage {
    alignas(1024) MmaA q[cute::cosize_v<LayoutQ>];
    KvRing kv;
    // K row addresses of a gathered tile, from the producer's lookups (prefill_sm90_load.cuh)
    int64_t row_addrs[kStagesK + 1][kBlockN];
    // K and V are filled and freed apart (prefill_sm90_load.cuh says why).
    StageBarrier full_k[kStagesK];        // the producer's 128 threads arrive once their copies landed
    StageBarrier empty_k[kStagesK];       // each consumer warp arrives once its WGMMAs read the stage
    StageBarrier full_v[kStagesV];
    StageBarrier empty_v[kStagesV];       // FP8: each producer warp, once it transposed the stage
    StageBarrier full_vt[kStagesVt == 0 ? 1 : kStagesVt];  // FP8 only (one unused pair otherwise)
    StageBarrier empty_vt[kStagesVt == 0 ? 1 : kStagesVt];
    // One or the other: q_scale with FP8 tiles, mask_keys with 16-bit ones (asserted below).
    union {
      float q_scale[Cfg::kBlockM];        // FP8: each packed row's q quantisation step (row amax / 448)
      // 16-bit tiles with P over S (the mainloop): each consumer warp's copy of its item's bounds
      // shared by every row, (hi_min, lo_max), read per tile rather than held in registers
      int2 mask_keys[Cfg::kConsumers][4];
    };
    // FP8 tiles with a 16-bit q, and all of them at head dims 192 and 256: each consumer warpgroup's unit's
    // tile count (PrefillSm90Q::load), read again after its mainloop to free the tiles past its rows
    // (PrefillSm90Q::kTilesInSmem says which).
    int unit_tiles[Cfg::kConsumers];
    // FP8 tiles with kMaskInSmem (head dims 192, 256): each consumer warp's mask bounds, as mask_keys
    // (one unused slot otherwise)
    int2 fp8_mask_keys[Cfg::kFp8 && Cfg::kMaskInSmem ? Cfg::kConsumers : 1][4];
  };
  static_assert(!(Cfg::kFp8 && Cfg::kPInS), "q_scale and mask_keys share their storage");
  static_assert(sizeof(int2[Cfg::kConsumers][4]) <= sizeof(float[Cfg::kBlockM]),
                "the mask bounds fit in the q scales' place (the generator counts the latter)");
};

}  // namespace fig
