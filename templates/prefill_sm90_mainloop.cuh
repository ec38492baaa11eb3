// A consumer warpgroup of the Hopper prefill: kConsumerRows (64) packed query rows (token x q head
// of one KV head's group) against every tile of keys the producer publishes. Per tile, on WGMMA:
// S = Q K^T (both operands in shared memory), the online softmax in fp32 registers, P converted
// to 16 bits in the registers that held S, and O += P V with P as the register A operand.
//
// The accumulators of a 64 x N WGMMA put, per warp w of the warpgroup and lane 4 g + c, rows
// 16 w + g and 16 w + g + 8 (r = 0, 1), columns 8 j + 2 c + i, at fragment index 4 j + 2 r + i:
// the quad layout of mma.sync's m16n8 tiles, so softmax.cuh serves both families.
#pragma once
#include <cute/tensor.hpp>
#include "prefill_epilogue.cuh"
#include "prefill_sm90_load.cuh"
#include "prefill_sm90_smem.cuh"
#include "prefill_work.cuh"
#include "mma_sm80.cuh"
#include "softmax.cuh"
#include "wgmma.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90Mainloop {
  using Smem = PrefillSm90Smem<Cfg>;
  using Element = typename Cfg::QElement;
  using Logits = typename Cfg::Logits;
  static constexpr int kRows = Cfg::kConsumerRows;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesK = Cfg::kStagesK;
  static constexpr int kStagesV = Cfg::kStagesV;
  static constexpr int kSBlocks = kBlockN / 8;    // 8-column blocks of S
  static constexpr int kOBlocks = kHeadDim / 8;   // of O
  static_assert(kRows == 64, "one 64-row WGMMA per consumer warpgroup");

  using TiledMmaQK = decltype(cute::make_tiled_mma(cute::GMMA::ss_op_selector<
      Element, Element, float, cute::Shape<cute::Int<kRows>, cute::Int<kBlockN>, cute::Int<kHeadDim>>>()));
  using TiledMmaPV = decltype(cute::make_tiled_mma(cute::GMMA::rs_op_selector<
      Element, Element, float, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>, cute::Int<kBlockN>>,
      cute::GMMA::Major::K, cute::GMMA::Major::MN>()));
  using FragS = decltype(cute::partition_fragment_C(TiledMmaQK{}, cute::Shape<cute::Int<kRows>, cute::Int<kBlockN>>{}));
  using FragO = decltype(cute::partition_fragment_C(TiledMmaPV{}, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>>{}));
  // P as P V's A operand: ((2 columns, 2 rows, 2 halves of 16 keys), 1, k-block), which is S's
  // accumulator order, so P(i) is the 16-bit value of S(i).
  using LayoutP = cute::Layout<
      cute::Shape<cute::Shape<cute::_2, cute::_2, cute::_2>, cute::_1, cute::Int<kBlockN / 16>>,
      cute::Stride<cute::Stride<cute::_1, cute::_2, cute::_4>, cute::_0, cute::_8>>;
  static_assert(cute::size(FragS{}) == 4 * kSBlocks && cute::size(FragO{}) == 4 * kOBlocks, "quad layout");
  static_assert(cute::cosize_v<LayoutP> == 4 * kSBlocks, "P reuses S's order");

  FragO o;                        // O of the thread's rows, unnormalised
  OnlineSoftmaxRow softmax[2];    // rows r = 0, 1
  int2 bounds[2];                 // keys [x, y] rows r = 0, 1 see

  // Loads the warpgroup's packed Q rows into its shared slot (rows past the request: zeros) and
  // publishes them to its WGMMAs. thread: 0 ..< 128 within the warpgroup.
  __device__ __forceinline__ static void load_q(typename Smem::Storage& smem, int warpgroup, int thread,
                                                const PrefillItem& work, const FigPrefillParams& p) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Smem::LayoutQ{})(_, _, warpgroup);  // (row, d)
    constexpr int kChunk = 16 / sizeof(Element);
    constexpr int kChunksPerRow = kHeadDim / kChunk;
    const Element* q = static_cast<const Element*>(p.q.data);
    // 16-byte loads where every row start is 16-byte aligned (q only promises 4).
    const bool wide = (reinterpret_cast<uintptr_t>(q) | (p.q.stride_row * sizeof(Element)) |
                       (p.q.stride_head * sizeof(Element))) % 16 == 0;
    CUTE_UNROLL
    for (int i = 0; i < kRows * kChunksPerRow / 128; ++i) {
      const int idx = thread + 128 * i;
      const int local = idx / kChunksPerRow;
      const int column = kChunk * (idx % kChunksPerRow);
      const int r = work.rows.row_begin + warpgroup * kRows + local;
      uint4 chunk = make_uint4(0u, 0u, 0u, 0u);
      if (r < work.rows.rows_total) {
        const Element* src = q + int64_t(work.rows.qo_start + work.rows.token(r)) * p.q.stride_row +
                             int64_t(work.rows.qo_head(r)) * p.q.stride_head + column;
        if (wide) {
          chunk = *reinterpret_cast<const uint4*>(src);
        } else {
          const uint32_t* words = reinterpret_cast<const uint32_t*>(src);
          chunk = make_uint4(words[0], words[1], words[2], words[3]);
        }
      }
      *reinterpret_cast<uint4*>(&sQ(local, column)) = chunk;
    }
    fence_shared_for_wgmma();
    named_barrier_sync(Cfg::kQBarrier + warpgroup, 128);
  }

  // Every tile of keys [begin, end); tiles past hi_min or before lo_max need the per-key mask.
  // Software-pipelined by one tile inside the warpgroup: S(t) = Q K(t)^T and O += P(t-1) V(t-1)
  // are issued together, the softmax of S(t) runs while P V still does, and O is rescaled once
  // P V has landed. So the tensor cores get the next GEMM while the FP32 pipes run exp2.
  __device__ __forceinline__ void run(typename Smem::Storage& smem, int warpgroup, int thread, int begin, int end,
                                      int hi_min, int lo_max, const Logits& logits) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Smem::LayoutQ{})(_, _, warpgroup);  // (row, d)
    Tensor sK = make_tensor(make_smem_ptr(smem.kv.k), typename Smem::LayoutK{});                 // (key, d, stage)
    Tensor sVt = make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutVt{});               // (d, key, stage)
    TiledMmaQK mma_qk;
    TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread);
    auto thr_pv = mma_pv.get_thread_slice(thread);
    Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));   // descriptors (mma, 1, d k-block)
    Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));   // (mma, 1, d k-block, stage)
    Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (mma, 1, key k-block, stage)
    Tensor p_pairs = make_tensor<uint32_t>(Int<2 * kSBlocks>{});    // P: two 16-bit values each, in S's order
    Tensor p = make_tensor(recast_ptr<Element>(p_pairs.data()), LayoutP{});
    clear(o);
    softmax[0].init();
    softmax[1].init();
    const int lane = thread % 32;
    const int first = PrefillSm90Load<Cfg>::first_key(begin);
    const int tiles = PrefillSm90Load<Cfg>::tile_count(begin, end);
    if (tiles == 0) return;
    // K and V of a stage have barriers of their own: K(t) is freed once S(t) is done, a GEMM
    // before V(t), so the producer can refill it while P V still reads V.
    auto acquire = [&](StageBarrier* full, int stages, int t) {
      full[t % stages].wait((t / stages) & 1);
      fence_shared_for_wgmma();  // the producer's cp.async writes, seen by this thread, to WGMMA's reads
    };
    auto release = [&](StageBarrier* empty, int stages, int t) {
      __syncwarp();
      if (lane == 0) empty[t % stages].arrive();  // this warp's WGMMAs have read it
    };
    // Softmax of S(t) in place; returns through `rescale` O's factors. Masked tiles are a separate
    // instantiation: a run-time flag would put the per-key test into every tile.
    auto softmax_step = [&](FragS& s, int t, float (&rescale)[2]) {
      const int tile_begin = first + t * kBlockN;
      if (tile_begin + kBlockN - 1 > hi_min || tile_begin < lo_max)
        scores<true>(s, tile_begin, lane, logits, rescale);
      else
        scores<false>(s, tile_begin, lane, logits, rescale);
    };
    // Ping-pong: the two consumers take turns issuing their GEMMs (one turn = the GEMMs of one
    // step), so one's softmax runs on the FP32 pipes while the other's GEMMs hold the tensor
    // cores, instead of both competing for each at once. Warpgroup w waits on barrier
    // kTurnBarrier + w, which the other warpgroup arrives on after its own turn; warpgroup 0 goes
    // first. Each takes tiles + 1 turns, so warpgroup 1 skips its last arrival (no one waits).
    static_assert(Cfg::kConsumers == 2, "ping-pong between two consumer warpgroups");
    constexpr int kPair = 2 * 128;
    auto my_turn = [&] { named_barrier_sync(Cfg::kTurnBarrier + warpgroup, kPair); };
    auto your_turn = [&](bool last) {
      if (warpgroup == 0 || !last) named_barrier_arrive(Cfg::kTurnBarrier + 1 - warpgroup, kPair);
    };
    if (warpgroup == 1) named_barrier_arrive(Cfg::kTurnBarrier, kPair);
    auto to_p = [&](const FragS& s) {
      CUTE_UNROLL
      for (int i = 0; i < size(p_pairs); ++i) p_pairs(i) = HalfRowsMma<Element>::pack(s(2 * i), s(2 * i + 1));
    };
    {
      acquire(smem.full_k, kStagesK, 0);
      FragS s;
      my_turn();
      wgmma_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_qk, tSrQ, tSrK(_, _, _, 0), s);
      your_turn(false);
      warpgroup_wait<0>();
      release(smem.empty_k, kStagesK, 0);
      float rescale[2];  // O is 0: nothing to rescale
      softmax_step(s, 0, rescale);
      to_p(s);
    }
#pragma unroll 1
    for (int t = 1; t < tiles; ++t) {
      acquire(smem.full_k, kStagesK, t);
      acquire(smem.full_v, kStagesV, t - 1);
      FragS s;
      my_turn();
      wgmma_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_qk, tSrQ, tSrK(_, _, _, t % kStagesK), s);
      wgmma_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(mma_pv, p, tOrV(_, _, _, (t - 1) % kStagesV), o);
      your_turn(false);
      warpgroup_wait<1>();  // S(t) is in; P(t-1) V(t-1) may still run
      release(smem.empty_k, kStagesK, t);
      float rescale[2];
      softmax_step(s, t, rescale);
      warpgroup_wait<0>();
      release(smem.empty_v, kStagesV, t - 1);
      // Once the rows' maxima settle (most tiles of a long row) every factor is 1: the warp then
      // skips O's multiplies.
      if (__any_sync(0xffffffffu, rescale[0] != 1.0f || rescale[1] != 1.0f)) {
        CUTE_UNROLL
        for (int j = 0; j < kOBlocks; ++j) {
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r) {
            o(4 * j + 2 * r) *= rescale[r];
            o(4 * j + 2 * r + 1) *= rescale[r];
          }
        }
      }
      to_p(s);
    }
    acquire(smem.full_v, kStagesV, tiles - 1);
    my_turn();
    wgmma_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(mma_pv, p, tOrV(_, _, _, (tiles - 1) % kStagesV), o);
    your_turn(true);
    warpgroup_wait<0>();
    release(smem.empty_v, kStagesV, tiles - 1);
  }

  // O normalised into the epilogue's fp32 rows (rows of warpgroup w start at 64 w), and the LSE.
  __device__ __forceinline__ void stage(typename PrefillEpilogue<Cfg>::SharedStorage& out, int warpgroup, int thread,
                                        float out_scale) const {
    const int g = (thread % 32) / 4;
    const int c = thread % 4;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float sum = softmax[r].row_sum();
      const int row = warpgroup * kRows + 16 * (thread / 32) + g + 8 * r;
      const float scale = sum > 0.0f ? out_scale / sum : 0.0f;
      CUTE_UNROLL
      for (int j = 0; j < kOBlocks; ++j) {
        *reinterpret_cast<float2*>(&out.o[row][8 * j + 2 * c]) =
            make_float2(o(4 * j + 2 * r) * scale, o(4 * j + 2 * r + 1) * scale);
      }
      if (c == 0) out.lse[row] = sum > 0.0f ? softmax[r].row_max + log2f(sum) : -INFINITY;
    }
  }

 private:
  // Logits (variant), mask and the online softmax of one tile's S, in place (S becomes P in fp32).
  template <bool kMask>
  __device__ __forceinline__ void scores(FragS& s, int tile_begin, int lane, const Logits& logits,
                                         float (&rescale)[2]) {
    using namespace cute;
    if constexpr (!Logits::kLinear) {
      CUTE_UNROLL
      for (int i = 0; i < size(s); ++i) s(i) = logits(s(i));
    }
    if constexpr (kMask) {
      const int key0 = tile_begin + 2 * (lane % 4);
      CUTE_UNROLL
      for (int j = 0; j < kSBlocks; ++j) {
        CUTE_UNROLL
        for (int r = 0; r < 2; ++r) {
          CUTE_UNROLL
          for (int i = 0; i < 2; ++i) {
            const int key = key0 + 8 * j + i;
            if (key < bounds[r].x || key > bounds[r].y) s(4 * j + 2 * r + i) = -INFINITY;
          }
        }
      }
    }
    float scale = 1.0f;
    if constexpr (Logits::kLinear) scale = logits.scale_log2;
    rescale[0] = softmax[0].template update_quad_row<kSBlocks>(s, 0, scale);
    rescale[1] = softmax[1].template update_quad_row<kSBlocks>(s, 1, scale);
  }
};

}  // namespace fig
