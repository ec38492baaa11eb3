// Decode mainloop of one warp (mma.sync, sm_80+): up to 8 q heads of one KV head against a
// slice of the request's tokens, 16 tokens per step, online softmax in registers.
//
// Fragments come straight from global memory. The reduction dims of both products may be
// permuted freely, so each lane loads 16-byte vectors of whole token rows and we *define* the
// mma's k index to be whatever the lane holds:
//   S = Q K^T: lane (g, c) = (lane / 4, lane % 4) owns token g (+8 for the 2nd n-tile) and the
//     head dims k_dim(c, e), e < D/4. Its k-step j uses its elements 4j..4j+3, which are one
//     32-bit word of FP8 codes -> exactly the two f16x2 B registers. Q's A fragment is loaded
//     with the same permutation, so the dot product is unchanged.
//   O = P V: lane (g, c) provides V[tokens 2c, 2c+1, 2c+8, 2c+9][dim v_dim(g, n-tile)], i.e. four
//     token rows of D/8 contiguous dims; token pairs are interleaved with one byte permute.
// Every KV byte is read once per request per KV head, as 16-byte loads (8 for FP8 with D=64).
#pragma once
#include <cuda_runtime.h>
#include "kv_types.cuh"
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
  static constexpr int kStepTokens = 16;   // k of the P.V mma
  static constexpr int kRowsPerWarp = 8;   // q heads per warp tile (rows 0..7 of m16)
  static constexpr int kVecK = cute::min(16 / kBytes, kHeadDim / 4);  // elements per K load
  static constexpr int kVecV = cute::min(16 / kBytes, kHeadDim / 8);  // elements per V load
  static constexpr int kKElems = kHeadDim / 4;  // K dims a lane owns per token
  static constexpr int kVElems = kHeadDim / 8;  // V dims a lane owns per token
  static constexpr int kKWords = kKElems * kBytes / 4;
  static constexpr int kVWords = kVElems * kBytes / 4;
  static constexpr int kKSteps = kHeadDim / 16;  // mma k-steps of Q K^T
  static constexpr int kNTiles = kHeadDim / 8;   // mma n-tiles of P V
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");

  // Registers of one 16-token step: K rows of tokens g and g+8, V rows of 2c, 2c+1, 2c+8, 2c+9.
  struct Stage {
    uint32_t k[2][kKWords];
    uint32_t v[4][kVWords];
  };

  __device__ __forceinline__ static int k_dim(int c, int e) {
    return ((e / kVecK) * 4 + c) * kVecK + e % kVecK;
  }
  __device__ __forceinline__ static int v_dim(int g, int e) {
    return ((e / kVecV) * 8 + g) * kVecV + e % kVecV;
  }

  template <int kLoadBytes>
  __device__ __forceinline__ static void load_vec(uint32_t* dst, const uint8_t* src) {
    if constexpr (kLoadBytes == 16) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
      dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
    } else {
      static_assert(kLoadBytes == 8);
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
      dst[0] = v.x; dst[1] = v.y;
    }
  }

  // Per-warp state.
  uint32_t q_frag[kKSteps][2];  // A fragment of Q (rows 0..7), mma element type
  float o_acc[kNTiles][2];      // O rows g, dims v_dim(2c, nt), v_dim(2c+1, nt)
  OnlineSoftmaxRow softmax;
  int lane_g, lane_c;

  __device__ __forceinline__ void init(const QElement* q_rows, int64_t q_stride_head, int valid_rows) {
    const int lane = threadIdx.x % 32;
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
    CUTE_UNROLL
    for (int nt = 0; nt < kNTiles; ++nt) o_acc[nt][0] = o_acc[nt][1] = 0.0f;
    softmax.init();
  }

  // Issues the loads of the step starting at token `tok0`; tokens past `end` re-read the last
  // valid token (masked later) so that no load leaves the request's pages.
  __device__ __forceinline__ void load_step(Stage& st, const PagedKv& kv, const uint8_t* k_base,
                                            const uint8_t* v_base, int page_begin, int kv_head,
                                            int tok0, int end) const {
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int tok = min(tok0 + lane_g + 8 * r, end - 1);
      const uint8_t* row = k_base + kv.token_offset(page_begin, tok, kv_head) * kBytes;
      CUTE_UNROLL
      for (int i = 0; i < kKElems / kVecK; ++i)
        load_vec<kVecK * kBytes>(&st.k[r][i * kVecK * kBytes / 4], row + k_dim(lane_c, i * kVecK) * kBytes);
    }
    CUTE_UNROLL
    for (int r = 0; r < 4; ++r) {
      const int slot = 2 * lane_c + (r & 1) + 8 * (r >> 1);
      const int tok = min(tok0 + slot, end - 1);
      const uint8_t* row = v_base + kv.token_offset(page_begin, tok, kv_head) * kBytes;
      CUTE_UNROLL
      for (int i = 0; i < kVElems / kVecV; ++i)
        load_vec<kVecV * kBytes>(&st.v[r][i * kVecV * kBytes / 4], row + v_dim(lane_g, i * kVecV) * kBytes);
    }
  }

  __device__ __forceinline__ void compute_step(const Stage& st, const Logits& logits, int tok0, int end) {
    // S = Q K^T, two n-tiles of 8 tokens; lane holds row g, token slots nt*8 + 2c + {0,1}.
    float s[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    CUTE_UNROLL
    for (int nt = 0; nt < 2; ++nt) {
      CUTE_UNROLL
      for (int j = 0; j < kKSteps; ++j) {
        uint32_t b0, b1;
        if constexpr (Kv::kIsFp8) {
          Kv::Converter::convert(st.k[nt][j], b0, b1);
        } else {
          b0 = st.k[nt][2 * j];
          b1 = st.k[nt][2 * j + 1];
        }
        mma_half_rows<MmaElement>(s[nt], q_frag[j][0], q_frag[j][1], b0, b1);
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

    if constexpr (Kv::kIsFp8) {
      // One permute gathers dims e, e+1 of token pairs (2c, 2c+1) -> b0 of n-tiles e and e+1.
      CUTE_UNROLL
      for (int e = 0; e < kNTiles; e += 2) {
        const int w = e / 4;
        const uint32_t sel = (e % 4) == 0 ? 0x5140u : 0x7362u;
        uint32_t b0_e, b0_e1, b1_e, b1_e1;
        Kv::Converter::convert(byte_perm(st.v[0][w], st.v[1][w], sel), b0_e, b0_e1);
        Kv::Converter::convert(byte_perm(st.v[2][w], st.v[3][w], sel), b1_e, b1_e1);
        mma_half_rows<MmaElement>(o_acc[e], p_lo, p_hi, b0_e, b1_e);
        mma_half_rows<MmaElement>(o_acc[e + 1], p_lo, p_hi, b0_e1, b1_e1);
      }
    } else {
      CUTE_UNROLL
      for (int e = 0; e < kNTiles; ++e) {
        const int w = e / 2;
        const uint32_t sel = (e % 2) == 0 ? 0x5410u : 0x7632u;
        const uint32_t b0 = byte_perm(st.v[0][w], st.v[1][w], sel);
        const uint32_t b1 = byte_perm(st.v[2][w], st.v[3][w], sel);
        mma_half_rows<MmaElement>(o_acc[e], p_lo, p_hi, b0, b1);
      }
    }
  }

  // Runs steps first_step, first_step + step_stride, ... over tokens [begin, end), keeping
  // kStages steps of loads in flight (stage indices are compile-time: the loop is unrolled).
  __device__ __forceinline__ void run(const PagedKv& kv, const uint8_t* k_base, const uint8_t* v_base,
                                      int page_begin, int kv_head, int begin, int end, int first_step,
                                      int step_stride, const Logits& logits) {
    const int num_steps_total = (end - begin + kStepTokens - 1) / kStepTokens;
    const int my_steps = first_step < num_steps_total
                             ? (num_steps_total - first_step + step_stride - 1) / step_stride : 0;
    auto step_tok0 = [&](int i) { return begin + (first_step + i * step_stride) * kStepTokens; };
    Stage stages[kStages];
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s)
      if (s < my_steps) load_step(stages[s], kv, k_base, v_base, page_begin, kv_head, step_tok0(s), end);
    for (int i0 = 0; i0 < my_steps; i0 += kStages) {
      CUTE_UNROLL
      for (int s = 0; s < kStages; ++s) {
        const int i = i0 + s;
        if (i < my_steps) {
          compute_step(stages[s], logits, step_tok0(i), end);
          if (i + kStages < my_steps)
            load_step(stages[s], kv, k_base, v_base, page_begin, kv_head, step_tok0(i + kStages), end);
        }
      }
    }
  }
};

}  // namespace fig
