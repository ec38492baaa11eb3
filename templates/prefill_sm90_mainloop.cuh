// A consumer warpgroup of the Hopper prefill: kConsumerRows (64) packed query rows (token x q head
// of one KV head's group) against every tile of keys the producer publishes. Per tile, on WGMMA:
// S = Q K^T (both operands in shared memory), the online softmax in fp32 registers, P converted
// to the A operand's type in registers, and O += P V with P as the register A operand (16-bit
// tiles: a 16-key block at a time, see run()).
//
// FP8 cache (Cfg::kFp8): both GEMMs on e4m3 x e4m3/e5m2 tiles. A 16-bit Q is quantised per packed
// row as it is loaded (prefill_sm90_q.cuh), the row's step amax / 448 multiplying that row's logits
// (so a row's step adapts to its own range: q heads of a group differ widely); an e4m3 Q is read as
// given, its per-tensor q_scale folded into the logits scale.
// P is offset by 2^8 (exp2 of the logit minus the row max plus 8, up to 256 of e4m3's 448), so
// its small values stay normal codes; the row sum carries the same factor, the LSE subtracts it.
// P goes to e4m3 in register order, which Vt's key order matches (prefill_sm90_transpose.cuh).
//
// The accumulators of a 64 x N WGMMA put, per warp w of the warpgroup and lane 4 g + c, rows
// 16 w + g and 16 w + g + 8 (r = 0, 1), columns 8 j + 2 c + i, at fragment index 4 j + 2 r + i:
// the quad layout of mma.sync's m16n8 tiles, so softmax.cuh serves both families.
#pragma once
#include <cute/tensor.hpp>
#include "prefill_sm90_load.cuh"
#include "prefill_sm90_q.cuh"
#include "prefill_sm90_smem.cuh"
#include "prefill_work.cuh"
#include "fp8_encode.cuh"
#include "mma_sm80.cuh"
#include "softmax.cuh"
#include "wgmma.cuh"

namespace fig {

// FP8 P V on a chunk of kColumns of O's columns (PrefillSm90Mainloop::kOChunk): its MMA, its rows
// of Vt (head-dim rows, keys contiguous, one stage) and its accumulator fragment.
template <class MmaA, class KvElement, int kRows, int kColumns, int kBlockN>
struct Fp8PvChunk {
  using TiledMma = decltype(cute::make_tiled_mma(cute::GMMA::rs_op_selector<
      MmaA, KvElement, float, cute::Shape<cute::Int<kRows>, cute::Int<kColumns>, cute::Int<kBlockN>>,
      cute::GMMA::Major::K, cute::GMMA::Major::K>()));
  using LayoutVt = decltype(cute::tile_to_shape(KMajorAtom<KvElement, kBlockN>{},
                                                cute::Shape<cute::Int<kColumns>, cute::Int<kBlockN>>{}));
  using Frag = decltype(cute::partition_fragment_C(TiledMma{}, cute::Shape<cute::Int<kRows>, cute::Int<kColumns>>{}));
};

template <class Cfg>
struct PrefillSm90Mainloop {
  using Smem = PrefillSm90Smem<Cfg>;
  using Element = typename Cfg::QElement;  // q as given (16-bit tiles: P's type too)
  using MmaA = typename Cfg::MmaA;         // Q and P as the GEMMs read them
  using KvElement = typename Cfg::KvElement;
  using Logits = typename Cfg::Logits;
  static constexpr bool kFp8 = Cfg::kFp8;
  static constexpr int kRows = Cfg::kConsumerRows;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesK = Cfg::kStagesK;
  static constexpr int kStagesV = kFp8 ? Cfg::kStagesVt : Cfg::kStagesV;  // the ring P V reads
  static constexpr float kPOffset = kFp8 ? 8.0f : 0.0f;  // log2 of P's headroom factor (see above)
  using Q = PrefillSm90Q<Cfg>;  // Q's load (and a 16-bit q's quantisation) into the warpgroup's slot
  static constexpr bool kTilesInSmem = Q::kTilesInSmem;  // the unit's tile count read back after the loop
  static constexpr int kSoftmaxChains = 4;  // independent max chains per row (and sum chains, FP8: softmax.cuh)
  // 16-bit tiles keep a row's running max while no logit passes it by more than 2^8 (softmax.cuh,
  // rebase_quad_rows): P up to 2^8, which 16-bit P and fp32 O hold with their usual relative
  // precision, and no quad shuffle or rescale of O in most tiles of a long row (H200, ragged
  // bf16: +3%).
  static constexpr float kMaxSlack = 8.0f;
  static constexpr int kSBlocks = kBlockN / 8;    // 8-column blocks of S
  static constexpr int kOBlocks = kHeadDim / 8;   // of O
  static_assert(kRows == 64, "one 64-row WGMMA per consumer warpgroup");
  static_assert(kFp8 || Cfg::kMaskInSmem == Cfg::kPInS, "16-bit tiles read the mask bounds per tile with P over S");

  using TiledMmaQK = decltype(cute::make_tiled_mma(cute::GMMA::ss_op_selector<
      MmaA, KvElement, float, cute::Shape<cute::Int<kRows>, cute::Int<kBlockN>, cute::Int<kHeadDim>>>()));
  using TiledMmaPV = decltype(cute::make_tiled_mma(cute::GMMA::rs_op_selector<
      MmaA, KvElement, float, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>, cute::Int<kBlockN>>,
      cute::GMMA::Major::K, kFp8 ? cute::GMMA::Major::K : cute::GMMA::Major::MN>()));
  using LayoutVt = std::conditional_t<kFp8, typename Smem::LayoutVt8, typename Smem::LayoutVt16>;
  // FP8: P V into a fragment of its own that joins O in fp32 (see run()), Cfg::kOChunk columns of
  // O at a time (the generator's o_chunk(): with three consumers, or O of 96 or 128 registers at
  // head dims 192 and 256, less than the head dim, so that the fragment fits next to O and S). A chunk's rows of
  // Vt are an offset of kOChunk * kBlockN bytes into the stage, with the chunk's own layout: the
  // stage's swizzle atoms are 8 head-dim rows of all kBlockN keys (128 or 64 bytes: one atom
  // wide), so a chunk of rows is a run of whole atoms.
  static constexpr int kOChunk = Cfg::kOChunk;
  static constexpr int kOChunks = kHeadDim / kOChunk;
  static constexpr bool kFoldRescale = kFp8 && kOChunks > 1;  // see run()
  static_assert(kOChunks * kOChunk == kHeadDim &&
                    (kOChunks == 1 || (kFp8 && kv_swizzle_bytes(kBlockN) == kBlockN && kOChunk % 8 == 0)),
                "chunks of whole atoms of Vt's one-atom-wide stage");
  // (a 16-bit instance names a shape the chunk types tile, never its own: it runs no chunks)
  using PvChunk = std::conditional_t<kFp8, Fp8PvChunk<MmaA, KvElement, kRows, kOChunk, kBlockN>,
                                     Fp8PvChunk<cute::float_e4m3_t, cute::float_e4m3_t, 64, 64, 128>>;
  using TiledMmaPVChunk = typename PvChunk::TiledMma;
  using LayoutVtChunk = typename PvChunk::LayoutVt;
  using FragOChunk = typename PvChunk::Frag;
  using FragS = decltype(cute::partition_fragment_C(TiledMmaQK{}, cute::Shape<cute::Int<kRows>, cute::Int<kBlockN>>{}));
  using FragO = decltype(cute::partition_fragment_C(TiledMmaPV{}, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>>{}));
  // P as P V's A operand. 16-bit: ((2 columns, 2 rows, 2 halves of 16 keys), 1, k-block), which
  // is S's accumulator order, so P(i) is the 16-bit value of S(i). e4m3: ((4 keys, 2 rows, 2
  // halves of 16 keys), 1, 32-key k-block), GMMA::ALayout_64x32's register order (see to_p).
  using LayoutP16 = cute::Layout<
      cute::Shape<cute::Shape<cute::_2, cute::_2, cute::_2>, cute::_1, cute::Int<kBlockN / 16>>,
      cute::Stride<cute::Stride<cute::_1, cute::_2, cute::_4>, cute::_0, cute::_8>>;
  using LayoutP8 = cute::Layout<
      cute::Shape<cute::Shape<cute::_4, cute::_2, cute::_2>, cute::_1, cute::Int<kBlockN / 32>>,
      cute::Stride<cute::Stride<cute::_1, cute::_4, cute::_8>, cute::_0, cute::_16>>;
  using LayoutP = std::conditional_t<kFp8, LayoutP8, LayoutP16>;
  static constexpr int kPWords = 4 * kSBlocks * int(sizeof(MmaA)) / 4;  // P's 32-bit registers
  static_assert(cute::size(FragS{}) == 4 * kSBlocks && cute::size(FragO{}) == 4 * kOBlocks, "quad layout");
  static_assert(cute::cosize_v<LayoutP> == 4 * kSBlocks, "P has one value per S value");

  FragO o;                        // O of the thread's rows, unnormalised
  OnlineSoftmaxRow softmax[2];    // rows r = 0, 1
  int2 bounds[2];                 // keys [x, y] rows r = 0, 1 see

  // Every tile of keys [begin, end) the producer publishes; tiles past hi_min or before lo_max
  // need the per-key mask, and tiles past hi_max (keys no row of the warpgroup sees: past the
  // causal diagonal of its last row, or every tile for a warpgroup with no rows, in an item's
  // last, partial row tile) are only waited for and freed. The consumer warpgroups run without
  // turns: each one's GEMMs fill the tensor cores while another makes P (see the 16-bit loop), so
  // a tile one skips speeds the others. (Skipping the tiles before a sliding window's first key
  // as well made the three-consumer 16-bit instances spill or serialise their WGMMAs.) ring: the
  // tiles of the CTA's earlier items (the producer's count: prefill_sm90_load.cuh); rows, kv_len:
  // the cache's TMA box rows and the request's keys, which say what tiles the producer gathered
  // with cp.async (Load::gathered).
  __device__ __forceinline__ void run(typename Smem::Storage& smem, int warpgroup, int thread, int begin, int end,
                                      int hi_min, int lo_max, int hi_max, const Logits& logits, int ring,
                                      int rows, int kv_len) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Smem::LayoutQ{})(_, _, warpgroup);  // (row, d)
    Tensor sK = make_tensor(make_smem_ptr(smem.kv.k), typename Smem::LayoutK{});                 // (key, d, stage)
    auto vt_base = [&] {  // P V's B operand: V transposed by the producer (FP8), or as stored
      if constexpr (kFp8) return smem.kv.vt;
      else return smem.kv.v;
    };
    Tensor sVt = make_tensor(make_smem_ptr(vt_base()), LayoutVt{});                              // (d, key, stage)
    StageBarrier* full_v = kFp8 ? smem.full_vt : smem.full_v;
    StageBarrier* empty_v = kFp8 ? smem.empty_vt : smem.empty_v;
    TiledMmaQK mma_qk;
    TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread);
    auto thr_pv = mma_pv.get_thread_slice(thread);
    Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));   // descriptors (mma, 1, d k-block)
    Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));   // (mma, 1, d k-block, stage)
    Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (mma, 1, key k-block, stage)
    Tensor p_words = make_tensor<uint32_t>(Int<kPWords>{});         // P: 16-bit pairs, or e4m3 quads
    Tensor p = make_tensor(recast_ptr<MmaA>(p_words.data()), LayoutP{});
    clear(o);
    softmax[0].init();
    softmax[1].init();
    const int lane = thread % 32;
    const int first = PrefillSm90Load<Cfg>::first_key(begin);
    const int tiles = PrefillSm90Load<Cfg>::tile_count(begin, end);
    if (tiles == 0) return;
    // The tiles [0, t1) this warpgroup computes: none where its rows see no key of the item
    // (hi_max < begin).
    const int t1 = hi_max >= begin ? (hi_max - first) / kBlockN + 1 : 0;
    // K and V of a stage have barriers of their own: K(t) is freed once S(t) is done, before P V
    // reads V(t), so the producer can refill it meanwhile. The item's tile t is the rings' tile
    // ring + t. A TMA tile lands in the async proxy that WGMMA reads; a gathered one (cp.async,
    // the generic proxy) needs a proxy fence by the reader after the wait (H200, ragged bf16:
    // fencing every tile cost 2-3%). The transposed V of FP8 tiles is fenced by the producer
    // threads that wrote it.
    auto acquire = [&](StageBarrier* full, int stages, int t, bool gathered) {
      full[(ring + t) % stages].wait(((ring + t) / stages) & 1);
      if (gathered) fence_shared_for_wgmma();
    };
    auto gathered = [&](int t) { return PrefillSm90Load<Cfg>::gathered(rows, kv_len, first, t); };
    auto release = [&](StageBarrier* empty, int stages, int t) {
      __syncwarp();
      if (lane == 0) empty[(ring + t) % stages].arrive();  // this warp's WGMMAs have read it
    };
    // A tile past t1: freed unread, after its full barrier's phase (an arrival before it would
    // count towards the stage's previous use).
    auto pass = [&](int t) {
      acquire(smem.full_k, kStagesK, t, false);
      release(smem.empty_k, kStagesK, t);
      acquire(full_v, kStagesV, t, false);
      release(empty_v, kStagesV, t);
    };
    // Whether tile t needs the per-key mask. Masked tiles are a separate instantiation: a run-time
    // flag would put the per-key test into every tile.
    auto masked = [&](int t) {
      const int tile_begin = first + t * kBlockN;
      return tile_begin + kBlockN - 1 > hi_min || tile_begin < lo_max;
    };
    // Logits and mask of tile t's S (16-bit tiles).
    auto logits_and_mask = [&](FragS& s, int t, float (&scale)[2]) {
      if (masked(t))
        logits_masked<true>(smem, s, first + t * kBlockN, lane, logits, scale);
      else
        logits_masked<false>(smem, s, first + t * kBlockN, lane, logits, scale);
    };
    // Softmax of S(t) in place (FP8 tiles); returns through `rescale` O's factors. (The mask test
    // is masked()'s, written out: through masked() ptxas orders the FP8 instances' code otherwise.)
    // With Cfg::kMaskInSmem the bounds come from the warp's slot in shared memory, once a tile
    // (held across the loop, they spilled the head-dim-256 consumers).
    constexpr bool kFp8MaskInSmem = kFp8 && Cfg::kMaskInSmem;
    int2* fp8_mask_keys = &smem.fp8_mask_keys[kFp8MaskInSmem ? warpgroup : 0][kFp8MaskInSmem ? thread / 32 : 0];
    if constexpr (kFp8MaskInSmem) {
      __syncwarp();  // the warp's reads of the previous item's bounds are done
      if (lane == 0) *fp8_mask_keys = make_int2(hi_min, lo_max);
      __syncwarp();
    }
    // The FP8 loop's gathered-tile test. For the soft-cap with the mask bounds in shared memory
    // (head dims 192 and 256) from what the loop holds anyway: where
    // the cache has TMA boxes only a request's last tile is gathered (first + (t + 1) kBlockN past
    // kv_len, while every tile before t1 - 1 ends at or before hi_max < kv_len), so of the tiles a
    // warpgroup reads only its last, t1 - 1, can be that one, and that one is fenced, gathered or
    // not (a fence an item); kv_len held across the loop was 4 bytes too many for those
    // consumers. Elsewhere the exact test: the other form changes ptxas's schedule, and the
    // bf16-q rows at head dim 128 ran 1-2% slower (H100, rotated A/B of f07bff8 against 78763ed).
    constexpr bool kFenceLastTile = kFp8MaskInSmem && !Logits::kLinear;
    auto fp8_gathered = [&](int t) { return kFenceLastTile ? rows == 0 || t + 1 == t1 : gathered(t); };
    auto softmax_step = [&](FragS& s, int t, float (&rescale)[2]) {
      const int tile_begin = first + t * kBlockN;
      const int2 keys = kFp8MaskInSmem ? *fp8_mask_keys : make_int2(hi_min, lo_max);
      if (tile_begin + kBlockN - 1 > keys.x || tile_begin < keys.y)
        scores<true>(smem, s, tile_begin, lane, logits, rescale);
      else
        scores<false>(smem, s, tile_begin, lane, logits, rescale);
    };
    // FP8 P in P V's register order.
    auto to_p = [&](const FragS& s) {
      // Register 4 b + r + 2 h holds, in bytes e = 0..3, the columns 8 j + 2 c + {0, 1} of
      // j = 4 b + 2 h and 4 b + 2 h + 1 of row r: S(4 j + 2 r + {0, 1}) then S(4 (j + 1) + 2 r + {0, 1}).
      CUTE_UNROLL
      for (int b = 0; b < kBlockN / 32; ++b) {
        CUTE_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int j = 4 * b + 2 * h;
          const float x[8] = {s(4 * j), s(4 * j + 1), s(4 * j + 4), s(4 * j + 5),           // r = 0
                              s(4 * j + 2), s(4 * j + 3), s(4 * j + 6), s(4 * j + 7)};      // r = 1
          Fp8Encoder<Fp8Format::kE4M3, Conversion::kHardware>::encode8(x, p_words(4 * b + 2 * h),
                                                                        p_words(4 * b + 2 * h + 1));
        }
      }
    };
    if constexpr (kFp8) {
      // FP8: one tile at a time inside the warpgroup (the other warpgroups' GEMMs can fill the
      // tensor cores during this one's softmax), so that each tile's P V goes to a fragment of its own,
      // in the registers S had, and joins O in fp32. Chained into O by FP8 WGMMA, whose adds keep
      // ~14 bits, a long request's O drifted low (39% at 32768 keys of V with mean 3,
      // bench/check_fp8_accumulation.py); and the pipelined step's S, O and a per-tile fragment
      // together spilled the consumers' registers. With three consumers the fragment is a chunk of
      // O's columns (kOChunk), P V issued and waited for per chunk.
      TiledMmaPVChunk mma_pvc;
      auto thr_pvc = mma_pvc.get_thread_slice(thread);
#pragma unroll 1
      for (int t = 0; t < t1; ++t) {
        acquire(smem.full_k, kStagesK, t, fp8_gathered(t));
        float rescale[2];
        {
          FragS s;
          wgmma_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_qk, tSrQ, tSrK(_, _, _, (ring + t) % kStagesK), s);
          warpgroup_wait<0>();
          release(smem.empty_k, kStagesK, t);
          softmax_step(s, t, rescale);
          to_p(s);
        }
        // O's rescale: with more than one chunk (three consumers, kFoldRescale) folded into the
        // chunks' adds, else apart, before P V. Apart, it is a branch the warp takes whenever one
        // of its 16 rows' max grew, which on most of a long row's first tiles is every tile: the
        // fold took a 16-bit q's FP8 rows up 3-5% (570f5a4; with the rows' q steps held in
        // registers rather than read per tile, those consumers spilled). (rescale is +0, never
        // NaN, for a row with no key yet, whose O is 0: 1 at t == 0 only mirrors rescale_o's skip.)
        if constexpr (kFoldRescale) {
          if (t == 0) rescale[0] = rescale[1] = 1.0f;
        } else if (t > 0) {
          rescale_o(rescale);
        }
        acquire(full_v, kStagesV, t, false);
        const int stage = (ring + t) % kStagesV;
        CUTE_UNROLL
        for (int c = 0; c < kOChunks; ++c) {
          FragOChunk o_part;
          Tensor sVt_c = make_tensor(make_smem_ptr(vt_base() + stage * (kHeadDim * kBlockN) + c * (kOChunk * kBlockN)),
                                     LayoutVtChunk{});                                       // (d chunk, key)
          Tensor tOrV_c = thr_pvc.make_fragment_B(thr_pvc.partition_B(sVt_c));              // (mma, 1, key k-block)
          wgmma_gemm</*kZeroInit=*/true, /*kARegisters=*/true>(mma_pvc, p, tOrV_c, o_part);
          warpgroup_wait<0>();
          CUTE_UNROLL
          for (int i = 0; i < size(o_part); ++i) {
            if constexpr (kFoldRescale)
              o(size(o_part) * c + i) = fmaf(o(size(o_part) * c + i), rescale[(i / 2) % 2], o_part(i));
            else
              o(size(o_part) * c + i) += o_part(i);
          }
        }
        release(empty_v, kStagesV, t);
      }
    } else {
      // 16-bit tiles. Per tile, S = Q K^T, the rows' max, then P = exp2 with P V issued a
      // 16-key block at a time as its P comes out of exp2: the tensor cores run P V while the MUFU
      // pipe makes the rest of P. A warp that issues WGMMAs faster than they run waits at the
      // issue, so P V issued whole, after the softmax or together with the next Q K^T (the
      // software pipeline this replaced), held the warp there past its own softmax (H200 clock64
      // traces, README). The next tile's Q K^T follows P V on the tensor cores; its wait covers
      // both, and the other warpgroups' GEMMs fill the tensor cores meanwhile.
      //
      // kPInS (three 16-bit consumer warpgroups at head dims 128 and 192: O and S fill the generator's
      // WIDE_ACCUMULATOR_REGISTERS, with no room for a P of its own): P(kb)'s four words go into
      // S's words 8 kb .. 8 kb + 3 (consecutive, as P V's register operand needs; word w packs
      // s(8 kb + 2 w + {0, 1}), so S's word 8 kb + w has been read by then), and the next tile's
      // Q K^T, which overwrites S, is issued only once P V is done: each warpgroup's tile is
      // serial, and the other two fill the tensor cores meanwhile. The rows' sums add exp2's fp32
      // values in eight chains (fewer held them longer: ptxas spilled 8-52 bytes), and the item's
      // bounds shared by every row are read per tile from shared memory (in registers they were
      // what spilled; the read stays in the loop because the WGMMA fences before it clobber
      // memory, and hoisted it would spill again). Sums of P as bf16 (after the wait, from S's
      // registers) spilled nothing but put the LSE 2e-3 to 4e-3 off (H100, 06a4bb1).
      constexpr bool kPInS = Cfg::kPInS;
      using LayoutPInS = cute::Layout<
          cute::Shape<cute::Shape<cute::_2, cute::_2, cute::_2>, cute::_1, cute::Int<kBlockN / 16>>,
          cute::Stride<cute::Stride<cute::_1, cute::_2, cute::_4>, cute::_0, cute::_16>>;
      constexpr int kSumChains = kPInS ? 8 : 2;  // chain 2 w + i (kPInS) or w % 2 adds row w % 2's values
      int2& mask_keys = smem.mask_keys[warpgroup][thread / 32];
      if constexpr (kPInS) {
        __syncwarp();  // the warp's reads of the previous item's bounds are done
        if (lane == 0) mask_keys = make_int2(hi_min, lo_max);
        __syncwarp();
      }
      warpgroup_fence_operand(o);
#pragma unroll 1
      for (int t = 0; t < t1; ++t) {
        acquire(smem.full_k, kStagesK, t, gathered(t));
        FragS s;
        wgmma_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_qk, tSrQ, tSrK(_, _, _, (ring + t) % kStagesK), s);
        warpgroup_wait<0>();  // S(t) is in (and P(t-1) V(t-1) is done)
        release(smem.empty_k, kStagesK, t);
        if (t > 0) release(empty_v, kStagesV, t - 1);
        float scale[2], shift[2], rescale[2];
        if constexpr (kPInS) {
          const int2 keys = mask_keys;
          const int tile_begin = first + t * kBlockN;
          if (tile_begin + kBlockN - 1 > keys.x || tile_begin < keys.y)
            logits_masked<true>(smem, s, tile_begin, lane, logits, scale);
          else
            logits_masked<false>(smem, s, tile_begin, lane, logits, scale);
        } else {
          logits_and_mask(s, t, scale);
        }
        OnlineSoftmaxRow::rebase_quad_rows<kSBlocks, kSoftmaxChains>(softmax, s, scale, kPOffset, kMaxSlack, rescale,
                                                                     shift);
        rescale_o(rescale);
        acquire(full_v, kStagesV, t, gathered(t));
        const int stage = (ring + t) % kStagesV;
        uint32_t* s_words = reinterpret_cast<uint32_t*>(s.data());
        Tensor p_in_s = make_tensor(recast_ptr<MmaA>(s.data()), LayoutPInS{});
        float tile_sum[kSumChains] = {};
        CUTE_UNROLL
        for (int kb = 0; kb < kBlockN / 16; ++kb) {
          // P(_, _, kb) is S(8 kb + 2 w + {0, 1}), w = 0..3: row (w % 2), keys 16 kb + 8 (w / 2) + 2 c + {0, 1}
          CUTE_UNROLL
          for (int w = 0; w < 4; ++w) {
            float pair[2];
            CUTE_UNROLL
            for (int i = 0; i < 2; ++i) {
              pair[i] = fast_exp2(fmaf(s(8 * kb + 2 * w + i), scale[w % 2], -shift[w % 2]));
              tile_sum[kPInS ? 2 * w + i : w % 2] += pair[i];
            }
            uint32_t& word = kPInS ? s_words[8 * kb + w] : p_words(4 * kb + w);
            word = HalfRowsMma<Element>::pack(pair[0], pair[1]);
            warpgroup_fence_operand(word);
          }
          warpgroup_arrive();
          if constexpr (kPInS)
            gemm(mma_pv, p_in_s(_, _, kb), tOrV(_, _, kb, stage), o);
          else
            gemm(mma_pv, p(_, _, kb), tOrV(_, _, kb, stage), o);
          warpgroup_commit_batch();
        }
        if constexpr (kPInS) {
          warpgroup_wait<0>();  // P(t) V(t): P's registers are S(t + 1)'s
          warpgroup_fence_operand(o);
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r)
            softmax[r].lane_sum += (tile_sum[2 * r] + tile_sum[2 * r + 1]) + (tile_sum[2 * r + 4] + tile_sum[2 * r + 5]);
        } else {
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r) softmax[r].lane_sum += tile_sum[r];
        }
      }
      if constexpr (!kPInS) {
        warpgroup_wait<0>();
        warpgroup_fence_operand(o);
      }
      if (t1 > 0) release(empty_v, kStagesV, t1 - 1);
    }
    // The tiles past t1, freed unread. With kTilesInSmem (FP8 tiles with a 16-bit q, and at head
    // dims 192 and 256) the tile count comes back from shared memory (Q::load): held in a register across
    // the loop it spilled those consumers (4 bytes), while read back it spilled the 16-bit
    // three-consumer ones (16).
    const int unit_tiles = kTilesInSmem ? smem.unit_tiles[warpgroup] : tiles;
#pragma unroll 1
    for (int t = t1; t < unit_tiles; ++t) pass(t);
  }

  // The thread's two rows of O, normalised, and their LSE (base 2), from its registers to global
  // memory: the output (OElement), or a split-KV piece's fp32 partial for the merge kernel. A row
  // that saw no key (an empty piece) stores O = 0 and LSE = -inf, which the merge weighs as
  // nothing. Each quad's 4 threads store a row's 8 consecutive columns of each 8-column block, so
  // a warp's store covers 8 rows x 16 bytes (32 for the fp32 partials): no shared-memory staging,
  // which would need the ring the producer is filling with the CTA's next item.
  __device__ __forceinline__ void store(const PrefillRows& rows, const FigPrefillParams& p, int warpgroup, int thread,
                                        float out_scale) const {
    using OElement = typename Cfg::OElement;
    const int g = (thread % 32) / 4;
    const int c = thread % 4;
    // pairs of OElement as one 4-byte store where every row start allows it (out promises 2 bytes)
    const bool pairs = ((reinterpret_cast<uintptr_t>(p.out.data) | (p.out.stride_row * sizeof(OElement)) |
                         (p.out.stride_head * sizeof(OElement))) % 4) == 0;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      // row_sum() shuffles within the quad under a full-warp mask: every lane calls it before the
      // rows past the item branch off (a lane that skipped it left the others waiting, and a
      // persistent CTA, which goes on to its next unit, hung there: a warp of 4 valid rows in 8)
      const float sum = softmax[r].row_sum();
      const int packed = rows.row_begin + warpgroup * kRows + 16 * (thread / 32) + g + 8 * r;
      if (!rows.has(packed)) continue;
      const float scale = sum > 0.0f ? out_scale / sum : 0.0f;
      const float lse = sum > 0.0f ? softmax[r].row_max + (log2f(sum) - kPOffset) : -INFINITY;
      const int head = rows.qo_head(packed);
      const int qtoken = rows.token(packed);
      if (rows.pieces == 1) {  // not split (a split item's `partial` may be below 0: prefill.py)
        const int64_t token = rows.qo_start + qtoken;
        OElement* dst = static_cast<OElement*>(p.out.data) + token * p.out.stride_row + head * p.out.stride_head + 2 * c;
        CUTE_UNROLL
        for (int j = 0; j < kOBlocks; ++j) {
          const OElement lo = OElement(o(4 * j + 2 * r) * scale), hi = OElement(o(4 * j + 2 * r + 1) * scale);
          if (pairs) {
            *reinterpret_cast<uint32_t*>(dst + 8 * j) =
                uint32_t(reinterpret_cast<const uint16_t&>(lo)) | (uint32_t(reinterpret_cast<const uint16_t&>(hi)) << 16);
          } else {
            dst[8 * j] = lo;
            dst[8 * j + 1] = hi;
          }
        }
        if (c == 0 && p.out.lse != nullptr) p.out.lse[token * p.out.num_heads + head] = lse;
      } else {
        // Slots are token-major, so a token's pieces are the merge kernel's contiguous range.
        const int64_t index = (int64_t(rows.partial) + int64_t(qtoken) * rows.pieces) * p.out.num_heads + head;
        float* dst = p.merge.partial_out + index * kHeadDim + 2 * c;
        CUTE_UNROLL
        for (int j = 0; j < kOBlocks; ++j)
          *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o(4 * j + 2 * r) * scale, o(4 * j + 2 * r + 1) * scale);
        if (c == 0) p.merge.partial_lse[index] = lse;
      }
    }
  }

 private:
  // O's rows times their softmax factors. Once the rows' maxima settle (most tiles of a long
  // row) every factor is 1: the warp then skips O's multiplies.
  __device__ __forceinline__ void rescale_o(const float (&rescale)[2]) {
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
  }

  // Logits (variant) and mask of one tile's S, in place: the row's logit is then scale[r] * s
  // (linear logits: the folded scale, times an FP8 q's row step; otherwise 1, the variant's
  // logits already in s).
  template <bool kMask>
  __device__ __forceinline__ void logits_masked(const typename Smem::Storage& smem, FragS& s, int tile_begin, int lane,
                                                const Logits& logits, float (&scale)[2]) {
    using namespace cute;
    if constexpr (!Logits::kLinear) {
      const float step[2] = {Q::step(smem, 0), Q::step(smem, 1)};
      CUTE_UNROLL
      for (int i = 0; i < size(s); ++i) s(i) = logits(kFp8 ? s(i) * step[(i / 2) % 2] : s(i));
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
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      if constexpr (Logits::kLinear) scale[r] = logits.scale_log2 * Q::step(smem, r);
      else scale[r] = 1.0f;
    }
  }

  // Logits (variant), mask and the online softmax of one tile's S, in place (S becomes P in fp32).
  template <bool kMask>
  __device__ __forceinline__ void scores(const typename Smem::Storage& smem, FragS& s, int tile_begin, int lane,
                                         const Logits& logits, float (&rescale)[2]) {
    float scale[2];
    logits_masked<kMask>(smem, s, tile_begin, lane, logits, scale);
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r)
      rescale[r] = softmax[r].template update_quad_row<kSBlocks, kSoftmaxChains>(s, r, scale[r], kPOffset);
  }
};

}  // namespace fig
