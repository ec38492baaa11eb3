// Q of a Hopper prefill consumer warpgroup: its kConsumerRows (64) packed query rows (token x q
// head of one KV head's group) loaded from global memory into the warpgroup's shared slot, the
// K-major A operand of S = Q K^T (prefill_sm90_smem.cuh). A 16-bit q reaches 16-bit tiles as given,
// as does an e4m3 q (its per-tensor q_scale is in the logits scale); a 16-bit q with an FP8 cache
// (Cfg::kQuantiseQ) is quantised per packed row here, code = rne_satfinite(q * (448 / row amax)),
// and step() gives the mainloop each row's step, amax / 448, to multiply that row's logits by.
#pragma once
#include <cute/tensor.hpp>
#include "fp8_encode.cuh"
#include "prefill_sm90_load.cuh"
#include "prefill_sm90_smem.cuh"
#include "prefill_work.cuh"
#include "sm90_sync.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90Q {
  using Smem = PrefillSm90Smem<Cfg>;
  using Element = typename Cfg::QElement;  // q as given
  using MmaA = typename Cfg::MmaA;         // Q as the GEMM reads it
  static constexpr int kRows = Cfg::kConsumerRows;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  // The unit's tile count, which load() writes to shared memory for the mainloop to read back after
  // its loop (PrefillSm90Mainloop::run() says why): FP8 tiles with a 16-bit q, and with the mask
  // bounds in shared memory (head dims 192 and 256; at 256 an e4m3 q's consumers spilled it, 4 bytes).
  static constexpr bool kTilesInSmem = Cfg::kQuantiseQ || (Cfg::kFp8 && Cfg::kMaskInSmem);

  // Loads the warpgroup's packed Q rows into its shared slot (rows past the request: zeros) and
  // publishes them to its WGMMAs; a 16-bit q with FP8 tiles quantised per row (step(): each row's
  // step), an e4m3 q as given (its q_scale is in the logits scale).
  // thread: 0 ..< 128 within the warpgroup.
  __device__ __forceinline__ static void load(typename Smem::Storage& smem, int warpgroup, int thread,
                                              const PrefillItem& work, const FigPrefillParams& p) {
    using namespace cute;
    // A persistent CTA's earlier item: every thread of the warpgroup has read its rows' q_scale (an
    // item without tiles passes no other barrier of the warpgroup's before this one rewrites it;
    // its WGMMAs, which read Q, are waited for by each warp at the end of run()).
    if constexpr (Cfg::kPersistent) named_barrier_sync(Cfg::kQBarrier + warpgroup, 128);
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Smem::LayoutQ{})(_, _, warpgroup);  // (row, d)
    constexpr int kChunk = 16 / sizeof(Element);  // q's elements in 16 bytes
    // the thread's 16-byte chunks: a quantising thread's half row, else its share of the rows
    constexpr int kQChunks = Cfg::kQuantiseQ ? kHeadDim / 2 / kChunk : kRows * kHeadDim / kChunk / 128;
    const Element* q = static_cast<const Element*>(p.q.data);
    // 16-byte loads where every row start is 16-byte aligned (q only promises 4).
    const bool wide = (reinterpret_cast<uintptr_t>(q) | (p.q.stride_row * sizeof(Element)) |
                       (p.q.stride_head * sizeof(Element))) % 16 == 0;
    // q's 16-byte chunks (src: their addresses, nullptr past the rows: zeros), every load issued before
    // any is used (the prologue has the registers to spare): loaded one at a time, each waited for
    // before the next was issued, the quantising prologue waited out eight global loads in a row
    // (Nsight Compute, bf16 q on FP8 tiles: 9.8% of all stall samples in the consumers' prologue,
    // 3.9% with an e4m3 q's four).
    auto chunk_at = [&](int local, int column) -> const Element* {  // nullptr past the rows
      const int r = work.rows.row_begin + warpgroup * kRows + local;
      return work.rows.has(r) ? q + int64_t(work.rows.qo_start + work.rows.token(r)) * p.q.stride_row +
                                    int64_t(work.rows.qo_head(r)) * p.q.stride_head + column
                              : nullptr;
    };
    const Element* src[kQChunks];
    uint4 chunks[kQChunks];
    auto load_chunks = [&] {
      if (wide) {
        CUTE_UNROLL
        for (int i = 0; i < kQChunks; ++i)
          chunks[i] = src[i] != nullptr ? *reinterpret_cast<const uint4*>(src[i]) : make_uint4(0u, 0u, 0u, 0u);
      } else {
        CUTE_UNROLL
        for (int i = 0; i < kQChunks; ++i) {
          const uint32_t* words = reinterpret_cast<const uint32_t*>(src[i]);
          chunks[i] = src[i] != nullptr ? make_uint4(words[0], words[1], words[2], words[3]) : make_uint4(0u, 0u, 0u, 0u);
        }
      }
    };
    if constexpr (!Cfg::kQuantiseQ) {  // q as the GEMM reads it: 16-bit, or e4m3 given by the caller
      static_assert(std::is_same_v<Element, MmaA>, "copied as given");
      constexpr int kChunksPerRow = kHeadDim / kChunk;
      CUTE_UNROLL
      for (int i = 0; i < kQChunks; ++i) {
        const int idx = thread + 128 * i;
        src[i] = chunk_at(idx / kChunksPerRow, kChunk * (idx % kChunksPerRow));
      }
      load_chunks();
      CUTE_UNROLL
      for (int i = 0; i < kQChunks; ++i) {
        const int idx = thread + 128 * i;
        *reinterpret_cast<uint4*>(&sQ(idx / kChunksPerRow, kChunk * (idx % kChunksPerRow))) = chunks[i];
      }
    } else {
      // Two threads a row, each half the head dim: the row's amax (one shuffle), then the codes of
      // x * (448 / amax), 16 to a 16-byte store.
      static_assert(kRows * 2 == 128 && (kHeadDim / 2) % 16 == 0, "two threads a row, 16 codes a store");
      constexpr int kHalf = kHeadDim / 2;
      const int local = thread / 2;
      const int column0 = kHalf * (thread % 2);
      auto value = [](const uint4& chunk, int i) {
        return float(reinterpret_cast<const Element*>(&chunk)[i]);
      };
      const Element* row = chunk_at(local, column0);  // the thread's half row (one row's lookups)
      CUTE_UNROLL
      for (int i = 0; i < kQChunks; ++i) src[i] = row != nullptr ? row + kChunk * i : nullptr;
      load_chunks();
      float amax = 0.0f;
      CUTE_UNROLL
      for (int c = 0; c < kQChunks; ++c) {
        CUTE_UNROLL
        for (int i = 0; i < kChunk; ++i) amax = fmaxf(amax, fabsf(value(chunks[c], i)));
      }
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      // IEEE division (not the approximate one): the host reference repeats these steps exactly.
      // Capped at 2^126: a row whose amax is below 448 / FLT_MAX (bf16 holds such values) would
      // get an infinite factor, and its zeros NaN codes.
      const float inv = amax > 0.0f ? fminf(__fdiv_rn(Fp8Limits<Fp8Format::kE4M3>::kMax, amax), 0x1p126f) : 1.0f;
      CUTE_UNROLL
      for (int c = 0; c < kQChunks; c += 2) {
        float x[8];
        uint4 codes;
        CUTE_UNROLL
        for (int i = 0; i < 8; ++i) x[i] = __fmul_rn(value(chunks[c], i), inv);
        Fp8Encoder<Fp8Format::kE4M3, Conversion::kHardware>::encode8(x, codes.x, codes.y);
        CUTE_UNROLL
        for (int i = 0; i < 8; ++i) x[i] = __fmul_rn(value(chunks[c + 1], i), inv);
        Fp8Encoder<Fp8Format::kE4M3, Conversion::kHardware>::encode8(x, codes.z, codes.w);
        *reinterpret_cast<uint4*>(&sQ(local, column0 + kChunk * c)) = codes;
      }
      if (thread % 2 == 0) smem.q_scale[warpgroup * kRows + local] = __fdiv_rn(1.0f, inv);
    }
    if constexpr (kTilesInSmem) {  // see the mainloop's run()
      if (thread == 0) smem.unit_tiles[warpgroup] = PrefillSm90Load<Cfg>::tile_count(work.begin, work.end);
    }
    fence_shared_for_wgmma();
    named_barrier_sync(Cfg::kQBarrier + warpgroup, 128);
  }

  // Row r's q quantisation step (kQuantiseQ: load()'s per-row scale; 1 otherwise), read from
  // shared memory where it is used, once a tile: two registers held across the loop made the
  // consumers spill with O's rescale folded into P V's adds.
  __device__ __forceinline__ static float step(const typename Smem::Storage& smem, int r) {
    if constexpr (Cfg::kQuantiseQ) {
      const int consumer_thread = thread_index_here() - Cfg::kProducerThreads;  // 128 a warpgroup
      const int row = consumer_thread / 128 * kRows + 16 * (consumer_thread % 128 / 32) + consumer_thread % 32 / 4;
      return smem.q_scale[row + 8 * r];
    } else {
      return 1.0f;
    }
  }
};

}  // namespace fig
