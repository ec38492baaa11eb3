// Decode mainloop of one warp (mma.sync, sm_80+): up to 8 q heads of one KV head against a
// slice of the request's tokens, 16 tokens per step, online softmax in registers.
//
// Loads: cp.async (global -> shared, no registers held) kStages steps ahead, into a per-warp
// ring whose 16-byte slots are lane-innermost (conflict-free reads). Each warp fills and reads
// only its own ring, so the pipeline needs cp.async.wait_group and __syncwarp, no CTA barrier.
// Fragments as kv_fragments.cuh defines them, each lane copying 16-byte vectors of whole token
// rows (lane (g, c) holds K rows g, g+8 and V rows 2c, 2c+1, 2c+8, 2c+9 of a step). Every KV byte is read once per request per KV head, as 16-byte loads (8 for FP8 with D=64).
// Registers: an mma's A and C/D operands are register quads, their zero / dropped rows 8..15
// included, so Q's fragment holds 4 registers per k-step and O 4 per n-tile, 3 D / 4 in all.
// At D=256 that is 192 of 255 and ptxas spilled (K and V words are read from shared memory
// just in time either way), so there Q's fragment lives in shared memory and is read back two
// k-steps (one 16-byte slot) at a time. The mma operands, and so the results, are unchanged.
#pragma once
#include <cuda_runtime.h>
#include <type_traits>
#include <cute/arch/copy_sm80.hpp>
#include "kv_fragments.cuh"
#include "mma_sm80.cuh"
#include "paged_kv.cuh"
#include "softmax.cuh"

namespace fig {

template <class Cfg>
struct DecodeMainloop {
  using QElement = typename Cfg::QElement;
  using Kv = typename Cfg::Kv;
  using MmaElement = typename Kv::MmaElement;
  using Logits = typename Cfg::Logits;

  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kBytes = Kv::kBytes;
  static constexpr int kStepTokens = Cfg::kStepTokens;  // k of the P.V mma
  using Frag = KvFragments<Kv, kHeadDim>;  // a whole 16-byte load of a K row per lane
  static constexpr int kVecK = Frag::kVecK;
  static constexpr int kVecV = Frag::kVecV;
  static constexpr int kKElems = Frag::kKElems;
  static constexpr int kVElems = Frag::kVElems;
  static constexpr int kKWords = Frag::kKWords;
  static constexpr int kVWords = Frag::kVWords;
  static constexpr int kKSteps = Frag::kKSteps;
  static constexpr int kNTiles = Frag::kNTiles;
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");

  // One 16-token step as a lane holds it: K rows of tokens g and g+8, V rows of 2c, 2c+1, 2c+8,
  // 2c+9. In shared memory word w of the step lives in 16-byte chunk w / 4 of the lane.
  static constexpr int kStageWords = 2 * kKWords + 4 * kVWords;
  static constexpr int kStageChunks = kStageWords / 4;
  static_assert(kStageWords % 4 == 0 && (2 * kKWords) % 4 == 0);

  // Q's fragment in shared memory where the register quads of Q and O would take more than half
  // of the 255 registers (D=256); below that, registers. The generator decides (it sizes the
  // shared memory): generator/kind_decode.py q_fragment_in_smem().
  static constexpr bool kQInSmem = Cfg::kQInSmem;
  static constexpr int kQChunks = kKSteps / 2;  // two k-steps (4 words) per 16-byte slot

  struct KvStorage {
    uint4 chunks[Cfg::kWarps][kStages][kStageChunks][32];  // (warp, stage, chunk, lane)
  };
  struct KvQStorage : KvStorage {
    uint4 q_chunks[Cfg::kWarps][kQChunks][32];  // (warp, chunk, lane); each lane its own slot
  };
  using SharedStorage = std::conditional_t<kQInSmem, KvQStorage, KvStorage>;

  struct KRows { uint32_t w[2][kKWords]; };
  struct VRows { uint32_t w[4][kVWords]; };

  __device__ __forceinline__ static int k_dim(int c, int e) { return Frag::k_dim(c, e); }
  __device__ __forceinline__ static int v_dim(int g, int e) { return Frag::v_dim(g, e); }

  // Where the vectors of lane (g, c) live among a chunk's 32 16-byte slots. cp.async merges two
  // lanes' accesses of one 32-byte sector only when consecutive lanes also write consecutive
  // shared slots; so each slot is filled by the lane whose global vector continues its
  // neighbour's. K: lanes (g, 0..3) hold consecutive vectors of token g, slot = lane. V: lanes
  // (0..7, c) hold consecutive vectors of one token row, so V's slot is c * 8 + g and the copy
  // of slot L is made by lane L for the reader (g, c) = (L % 8, L / 8). (With slot = lane for
  // V, ncu counted every V sector requested twice from L2.) A read of a whole chunk is still one
  // permutation of 32 slots: conflict-free.
  __device__ __forceinline__ static int k_slot(int g, int c) { return 4 * g + c; }
  __device__ __forceinline__ static int v_slot(int g, int c) { return 8 * c + g; }

  // Copies kLoadBytes of global memory to word `word` of shared slot `lane` of stage `stage`.
  template <int kLoadBytes>
  __device__ __forceinline__ void copy_async(int stage, int word, const uint8_t* src) const {
    uint32_t* dst = reinterpret_cast<uint32_t*>(&warp_smem[stage][word / 4][lane]) + word % 4;
    if constexpr (kLoadBytes == 16) {
      cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                                                             *reinterpret_cast<cute::uint128_t*>(dst));
    } else {
      static_assert(kLoadBytes == 8);
      cute::SM80_CP_ASYNC_CACHEALWAYS<uint64_t>::copy(*reinterpret_cast<const uint64_t*>(src),
                                                      *reinterpret_cast<uint64_t*>(dst));
    }
  }

  template <int kWords>
  __device__ __forceinline__ void read_words(int stage, int first_word, int slot, uint32_t* dst) const {
    static_assert(kWords % 4 == 0);
    CUTE_UNROLL
    for (int c = 0; c < kWords / 4; ++c) {
      const uint4 v = warp_smem[stage][first_word / 4 + c][slot];
      dst[4 * c] = v.x; dst[4 * c + 1] = v.y; dst[4 * c + 2] = v.z; dst[4 * c + 3] = v.w;
    }
  }
  __device__ __forceinline__ KRows read_k(int stage) const {
    KRows k;
    read_words<2 * kKWords>(stage, 0, k_slot(lane_g, lane_c), &k.w[0][0]);
    return k;
  }
  __device__ __forceinline__ VRows read_v(int stage) const {
    VRows v;
    read_words<4 * kVWords>(stage, 2 * kKWords, v_slot(lane_g, lane_c), &v.w[0][0]);
    return v;
  }

  // Q's A fragment (rows 0..7) of k-steps 2 i and 2 i + 1.
  __device__ __forceinline__ void read_q(int i, uint32_t (&a)[2][2]) const {
    if constexpr (kQInSmem) {
      const uint4 v = q_smem[i][lane];
      a[0][0] = v.x; a[0][1] = v.y; a[1][0] = v.z; a[1][1] = v.w;
    } else {
      a[0][0] = q_frag[2 * i][0]; a[0][1] = q_frag[2 * i][1];
      a[1][0] = q_frag[2 * i + 1][0]; a[1][1] = q_frag[2 * i + 1][1];
    }
  }

  // Per-warp state.
  uint32_t q_frag[kKSteps][2];  // A fragment of Q (rows 0..7), mma element type; init() only if kQInSmem
  float o_acc[kNTiles][2];      // O rows g, dims v_dim(2c, nt), v_dim(2c+1, nt)
  OnlineSoftmaxRow softmax;
  uint32_t special_codes;  // special_bits() of every FP8 word the fast path converted
  int lane, lane_g, lane_c;
  uint4 (*warp_smem)[kStageChunks][32];  // this warp's [kStages][kStageChunks][32] chunks
  uint4 (*q_smem)[32];                   // this warp's [kQChunks][32] Q slots (kQInSmem)

  __device__ __forceinline__ void init(SharedStorage& smem, const QElement* q_rows, int64_t q_stride_head,
                                       int valid_rows) {
    lane = threadIdx.x % 32;
    warp_smem = smem.chunks[threadIdx.x / 32];
    lane_g = lane / 4;
    lane_c = lane % 4;
    const bool row_ok = lane_g < valid_rows;
    const QElement* q_row = q_rows + int64_t(lane_g) * q_stride_head;
    CUTE_UNROLL
    for (int j = 0; j < kKSteps; ++j) {
      CUTE_UNROLL
      for (int half = 0; half < 2; ++half) {
        uint32_t bits = 0;
        if (row_ok) bits = *reinterpret_cast<const uint32_t*>(q_row + k_dim(lane_c, 4 * j + 2 * half));
        q_frag[j][half] = row_ok ? q_pair_to_mma<MmaElement, QElement>(bits) : 0u;
      }
    }
    if constexpr (kQInSmem) {
      // Each lane reads back only the slots it wrote: no synchronisation needed.
      q_smem = smem.q_chunks[threadIdx.x / 32];
      CUTE_UNROLL
      for (int i = 0; i < kQChunks; ++i)
        q_smem[i][lane] = make_uint4(q_frag[2 * i][0], q_frag[2 * i][1], q_frag[2 * i + 1][0], q_frag[2 * i + 1][1]);
    }
    reset();
  }

  __device__ __forceinline__ void reset() {
    CUTE_UNROLL
    for (int nt = 0; nt < kNTiles; ++nt) o_acc[nt][0] = o_acc[nt][1] = 0.0f;
    softmax.init();
    special_codes = 0;
  }

  // Each lane locates token slot lane % 16 of a step (one page-table load per lane per step,
  // issued a step before its rows are loaded); load_step() hands the row offsets around with
  // shuffles. Tokens past `end` re-read the last valid token (masked later), so no load leaves
  // the request's pages.
  __device__ __forceinline__ PagedKv::TokenLocation locate_step(const PagedKv& kv, int page_begin, int tok0,
                                                                int end) const {
    return kv.locate(page_begin, min(tok0 + (threadIdx.x % kStepTokens), end - 1));
  }

  __device__ __forceinline__ void load_step(int stage, const PagedKv& kv, PagedKv::TokenLocation loc,
                                            const uint8_t* k_base, const uint8_t* v_base) const {
    const long long my_row = static_cast<long long>(kv.offset(loc) * kBytes);  // token slot lane % 16
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const uint8_t* row = k_base + __shfl_sync(0xffffffffu, my_row, lane_g + 8 * r);
      CUTE_UNROLL
      for (int i = 0; i < kKElems / kVecK; ++i)
        copy_async<kVecK * kBytes>(stage, r * kKWords + i * kVecK * kBytes / 4, row + k_dim(lane_c, i * kVecK) * kBytes);
    }
    // This lane fills V slot `lane`, which reader (g, c) = (lane % 8, lane / 8) reads back.
    const int reader_g = lane % 8, reader_c = lane / 8;
    CUTE_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int token_slot = 2 * reader_c + (r & 1) + 8 * (r >> 1);
      const uint8_t* row = v_base + __shfl_sync(0xffffffffu, my_row, token_slot);
      CUTE_UNROLL
      for (int i = 0; i < kVElems / kVecV; ++i)
        copy_async<kVecV * kBytes>(stage, 2 * kKWords + r * kVWords + i * kVecV * kBytes / 4,
                                   row + v_dim(reader_g, i * kVecV) * kBytes);
    }
  }

  static constexpr bool kMayReplay = Frag::kMayReplay;

  template <bool kExact>
  __device__ __forceinline__ void compute_step(int stage, const Logits& logits, int tok0, int end) {
    // S = Q K^T, two n-tiles of 8 tokens; lane holds row g, token slots nt*8 + 2c + {0,1}.
    const KRows k = read_k(stage);
    float s[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    CUTE_UNROLL
    for (int nt = 0; nt < 2; ++nt) {
      CUTE_UNROLL
      for (int i = 0; i < kKSteps / 2; ++i) {
        // Both n-tiles read the same Q slots; ptxas merges the reads (one LDS.128 per slot and
        // step), and this loop order keeps the register path's code as it was.
        uint32_t a[2][2];
        read_q(i, a);
        CUTE_UNROLL
        for (int h = 0; h < 2; ++h) {
          uint32_t b0, b1;
          Frag::template k_fragment<kExact>(k.w[nt], 2 * i + h, b0, b1, special_codes);
          mma_half_rows<MmaElement>(s[nt], a[h][0], a[h][1], b0, b1);
        }
      }
    }
    float x[4];
    CUTE_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int slot = (i / 2) * 8 + 2 * lane_c + (i % 2);
      x[i] = tok0 + slot < end ? logits(s[i / 2][i % 2]) : -INFINITY;
    }
    const float rescale = softmax.update(x);
    CUTE_UNROLL
    for (int nt = 0; nt < kNTiles; ++nt) {
      o_acc[nt][0] *= rescale;
      o_acc[nt][1] *= rescale;
    }
    // The S accumulator layout of two n-tiles is the A layout of one k16 step.
    const uint32_t p_lo = HalfRowsMma<MmaElement>::pack(x[0], x[1]);
    const uint32_t p_hi = HalfRowsMma<MmaElement>::pack(x[2], x[3]);
    const VRows v = read_v(stage);

    if constexpr (Kv::kIsFp8) {
      // One permute gathers dims e, e+1 of token pairs (2c, 2c+1) -> b0 of n-tiles e and e+1.
      CUTE_UNROLL
      for (int e = 0; e < kNTiles; e += 2) {
        uint32_t b0_e, b0_e1, b1_e, b1_e1;
        Frag::template v_fragments8<kExact>(v.w, e, b0_e, b0_e1, b1_e, b1_e1, special_codes);
        mma_half_rows<MmaElement>(o_acc[e], p_lo, p_hi, b0_e, b1_e);
        mma_half_rows<MmaElement>(o_acc[e + 1], p_lo, p_hi, b0_e1, b1_e1);
      }
    } else {
      CUTE_UNROLL
      for (int e = 0; e < kNTiles; ++e) {
        uint32_t b0, b1;
        Frag::v_fragment16(v.w, e, b0, b1);
        mma_half_rows<MmaElement>(o_acc[e], p_lo, p_hi, b0, b1);
      }
    }
  }

  // Runs steps first_step, first_step + step_stride, ... over tokens [begin, end) with kStages
  // steps of copies in flight. Exactly one cp.async group is committed per step slot (empty
  // ones included), so "step i has landed" is always wait_group<kStages - 1>.
  // k_base / v_base already point at this KV head.
  template <bool kExact>
  __device__ __forceinline__ void run_range(const PagedKv& kv, const uint8_t* k_base, const uint8_t* v_base,
                                            int page_begin, int begin, int end, int first_step, int my_steps,
                                            int step_stride, const Logits& logits) {
    // Steps past my_steps clamp to the last token, so locating them is harmless and branch-free.
    auto step_tok0 = [&](int i) { return begin + (first_step + i * step_stride) * kStepTokens; };
    PagedKv::TokenLocation next = locate_step(kv, page_begin, step_tok0(0), end);
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      if (s < my_steps) load_step(s, kv, next, k_base, v_base);
      cute::cp_async_fence();
      next = locate_step(kv, page_begin, step_tok0(s + 1), end);
    }
    auto step = [&](int i, int stage) {
      cute::cp_async_wait<kStages - 1>();
      __syncwarp();  // V slots were copied by other lanes: their waits come first
      compute_step<kExact>(stage, logits, step_tok0(i), end);
      if (i + kStages < my_steps) {
        __syncwarp();  // and every lane has read this stage before any lane refills it
        load_step(stage, kv, next, k_base, v_base);
        next = locate_step(kv, page_begin, step_tok0(i + kStages + 1), end);
      }
      cute::cp_async_fence();
    };
    if constexpr (kExact) {
      // The rare exact replay runs rolled (the stage is in shared memory, so a run-time index is
      // fine): one copy of its body leaves the instruction cache to the unrolled fast loop.
      int stage = 0;
#pragma unroll 1
      for (int i = 0; i < my_steps; ++i) {
        step(i, stage);
        stage = stage + 1 == kStages ? 0 : stage + 1;
      }
    } else {
      // Unrolled by the stage count so that consecutive steps overlap (a rolled fast loop
      // measured 10-15% slower on the H100).
      for (int i0 = 0; i0 < my_steps; i0 += kStages) {
        CUTE_UNROLL
        for (int s = 0; s < kStages; ++s) {
          if (i0 + s < my_steps) step(i0 + s, s);
        }
      }
    }
    cute::cp_async_wait<0>();
  }

  __device__ __forceinline__ void run(const PagedKv& kv, const uint8_t* k_base, const uint8_t* v_base,
                                      int page_begin, int begin, int end, int first_step, int step_stride,
                                      const Logits& logits) {
    const int num_steps_total = (end - begin + kStepTokens - 1) / kStepTokens;
    const int my_steps = first_step < num_steps_total
                             ? (num_steps_total - first_step + step_stride - 1) / step_stride : 0;
    if (my_steps == 0) return;
    run_range<false>(kv, k_base, v_base, page_begin, begin, end, first_step, my_steps, step_stride, logits);
    if constexpr (kMayReplay) {
      // A NaN code makes the fast conversion wrong: start over with the exact one (rare).
      if (__any_sync(0xffffffffu, special_codes != 0)) {
        reset();
        run_range<true>(kv, k_base, v_base, page_begin, begin, end, first_step, my_steps, step_stride, logits);
      }
    }
  }
};

}  // namespace fig
