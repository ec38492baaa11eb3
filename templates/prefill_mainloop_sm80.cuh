// Prefill mainloop of one warp (mma.sync, sm_80+): kMTiles x 16 packed query rows (token x q head
// of one KV head's group) against the CTA's shared K/V tiles, kBlockN tokens per tile, online softmax in
// registers. The CTA's warps share each tile, which every thread helped copy (paged_kv.cuh);
// fragments follow kv_fragments.cuh, so an FP8 row goes from shared memory to the tensor core
// through one conversion in registers.
//
// Shared rows are head-dim bytes plus 16 bytes of padding, so row r starts r 16-byte chunks further
// round the banks: a warp's K read (8 rows, the 4 lanes of a row on one contiguous k-step) and
// V read (4 rows, lane g at vectors g, g+8, ...) then touch every bank equally.
#pragma once
#include <cuda_runtime.h>
#include "kv_fragments.cuh"
#include "mma_sm80.cuh"
#include "paged_kv.cuh"
#include "softmax.cuh"

namespace fig {

template <class Cfg>
struct PrefillMainloop {
  using QElement = typename Cfg::QElement;
  using Kv = typename Cfg::Kv;
  using MmaElement = typename Kv::MmaElement;
  using Logits = typename Cfg::Logits;
  using Frag = KvFragments<Kv, Cfg::kHeadDim, /*kKVec=*/4>;  // one k-step per K read (bank spread)

  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kBytes = Kv::kBytes;
  static constexpr int kRowBytes = kHeadDim * kBytes + 16;
  static constexpr int kMTiles = Cfg::kMTiles;   // m16 tiles of rows per warp: each K/V fragment feeds kMTiles mma
  static constexpr int kSTiles = kBlockN / 8;    // n-tiles of S per tile
  static constexpr int kPvSteps = kBlockN / 16;  // k-steps of P.V per tile
  static_assert(kBlockN % 16 == 0 && kStages >= 2);

  using TileCopy = PagedKvTileCopy<kBlockN, kRowBytes, kHeadDim * kBytes, Cfg::kThreads>;

  // Q's A fragments live in shared memory, each lane's own 16-byte slot per m-tile and k-step,
  // read once per k-step of every tile: in registers they would take D / 4 more per thread and
  // m-tile, which with O's 4 per n-tile spilled at head dim 128 (255 registers, 48 B of stack).
  struct SharedStorage {
    uint8_t k[kStages][kBlockN][kRowBytes];
    uint8_t v[kStages][kBlockN][kRowBytes];
    uint4 q[Cfg::kWarps][kMTiles][Frag::kKSteps][32];  // (warp, m-tile, k-step, lane)
    int64_t row_offsets[kStages][kBlockN];             // page-table lookups of the tiles being copied
  };

  // Per-warp state. Rows of m-tile m: 16 m + lane_g (r = 0) and 16 m + lane_g + 8 (r = 1).
  float o_acc[kMTiles][Frag::kNTiles][4];  // O rows r = 0 / 1, columns v_dim(2c, 2c+1)
  OnlineSoftmaxRow softmax[kMTiles][2];
  int key_lo[kMTiles][2], key_hi[kMTiles][2];  // keys a row sees: [lo, hi] (causal, window, the item's range)
  uint32_t special_codes;                      // special_bits() of every FP8 word the fast path converted
  int lane, lane_g, lane_c;
  uint4 (*q_smem)[Frag::kKSteps][32];

  template <int kVecBytes>
  __device__ __forceinline__ static void load_words(const uint8_t* src, uint32_t* dst) {
    if constexpr (kVecBytes == 16) {
      const uint4 v = *reinterpret_cast<const uint4*>(src);
      dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
    } else if constexpr (kVecBytes == 8) {
      const uint2 v = *reinterpret_cast<const uint2*>(src);
      dst[0] = v.x; dst[1] = v.y;
    } else {
      static_assert(kVecBytes == 4);
      dst[0] = *reinterpret_cast<const uint32_t*>(src);
    }
  }

  // q_rows[m][r]: that row of Q (head dim contiguous), or nullptr for a row past the request's.
  // Each lane writes only the shared slots it reads back later: no barrier needed.
  __device__ __forceinline__ void init(SharedStorage& smem, const QElement* const (&q_rows)[kMTiles][2],
                                       const int (&lo)[kMTiles][2], const int (&hi)[kMTiles][2]) {
    lane = threadIdx.x % 32;
    lane_g = lane / 4;
    lane_c = lane % 4;
    q_smem = smem.q[threadIdx.x / 32];
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int j = 0; j < Frag::kKSteps; ++j) {
        uint32_t a[4];
        CUTE_UNROLL
        for (int half = 0; half < 2; ++half) {
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r) {
            const QElement* row = q_rows[m][r];
            uint32_t bits = 0;
            if (row != nullptr) bits = *reinterpret_cast<const uint32_t*>(row + Frag::k_dim(lane_c, 4 * j + 2 * half));
            a[2 * half + r] = row != nullptr ? q_pair_to_mma<MmaElement, QElement>(bits) : 0u;
          }
        }
        q_smem[m][j][lane] = make_uint4(a[0], a[1], a[2], a[3]);
      }
      CUTE_UNROLL
      for (int r = 0; r < 2; ++r) {
        key_lo[m][r] = lo[m][r];
        key_hi[m][r] = hi[m][r];
      }
    }
    reset();
  }

  __device__ __forceinline__ void reset() {
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int e = 0; e < Frag::kNTiles; ++e) o_acc[m][e][0] = o_acc[m][e][1] = o_acc[m][e][2] = o_acc[m][e][3] = 0.0f;
      softmax[m][0].init();
      softmax[m][1].init();
    }
    special_codes = 0;
  }

  __device__ __forceinline__ void q_fragment(int m, int j, uint32_t (&a)[4]) const {
    const uint4 v = q_smem[m][j][lane];
    a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
  }

  // One tile of kBlockN keys starting at token tile_begin, from stage `stage`. kMask: some key
  // of the tile is outside some row's [key_lo, key_hi] (the caller knows which tiles).
  template <bool kExact, bool kMask>
  __device__ __forceinline__ void compute_tile(const SharedStorage& smem, int stage, int tile_begin,
                                               const Logits& logits) {
    // S = Q K^T; lane holds rows (m, r), tokens 8 nt + 2c + {0, 1}. k-steps outermost, so Q's
    // fragments are read once per k-step; a k-step's four K elements are contiguous in a row.
    float s[kMTiles][kSTiles][4];
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
    }
    CUTE_UNROLL
    for (int j = 0; j < Frag::kKSteps; ++j) {
      uint32_t a[kMTiles][4];
      CUTE_UNROLL
      for (int m = 0; m < kMTiles; ++m) q_fragment(m, j, a[m]);
      CUTE_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) {
        uint32_t k_words[Frag::kIsFp8Words ? 1 : 2];
        load_words<4 * kBytes>(smem.k[stage][8 * nt + lane_g] + Frag::k_dim(lane_c, 4 * j) * kBytes, k_words);
        uint32_t b0, b1;
        Frag::template k_fragment<kExact>(k_words, 0, b0, b1, special_codes);
        CUTE_UNROLL
        for (int m = 0; m < kMTiles; ++m) mma_rows16<MmaElement>(s[m][nt], a[m], b0, b1);
      }
    }
    // Online softmax per row; P in place of S.
    float x[kMTiles][2][2 * kSTiles];
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) {
        CUTE_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int r = i / 2;
          const int token = tile_begin + 8 * nt + 2 * lane_c + (i % 2);
          const float logit = logits(s[m][nt][i]);
          x[m][r][2 * nt + i % 2] =
              (!kMask || (token >= key_lo[m][r] && token <= key_hi[m][r])) ? logit : -INFINITY;
        }
      }
      const float rescale[2] = {softmax[m][0].update(x[m][0]), softmax[m][1].update(x[m][1])};
      CUTE_UNROLL
      for (int e = 0; e < Frag::kNTiles; ++e) {
        o_acc[m][e][0] *= rescale[0];
        o_acc[m][e][1] *= rescale[0];
        o_acc[m][e][2] *= rescale[1];
        o_acc[m][e][3] *= rescale[1];
      }
    }
    // O += P V. S's accumulators of n-tiles 2t, 2t+1 are the A fragment of k-step t.
    CUTE_UNROLL
    for (int t = 0; t < kPvSteps; ++t) {
      uint32_t a[kMTiles][4];
      CUTE_UNROLL
      for (int m = 0; m < kMTiles; ++m) {
        a[m][0] = HalfRowsMma<MmaElement>::pack(x[m][0][4 * t], x[m][0][4 * t + 1]);
        a[m][1] = HalfRowsMma<MmaElement>::pack(x[m][1][4 * t], x[m][1][4 * t + 1]);
        a[m][2] = HalfRowsMma<MmaElement>::pack(x[m][0][4 * t + 2], x[m][0][4 * t + 3]);
        a[m][3] = HalfRowsMma<MmaElement>::pack(x[m][1][4 * t + 2], x[m][1][4 * t + 3]);
      }
      // V one load (kVecV elements, as many n-tiles) at a time: tokens 2c, 2c+1, 2c+8, 2c+9 of the
      // k-step. The lane's whole D/8 at once would hold D/4 more registers.
      constexpr int kVecBytes = Frag::kVecV * kBytes;
      CUTE_UNROLL
      for (int i = 0; i < Frag::kVElems / Frag::kVecV; ++i) {
        uint32_t v_rows[4][kVecBytes / 4];
        CUTE_UNROLL
        for (int r = 0; r < 4; ++r)
          load_words<kVecBytes>(smem.v[stage][16 * t + 2 * lane_c + (r & 1) + 8 * (r >> 1)] +
                                    Frag::v_dim(lane_g, i * Frag::kVecV) * kBytes,
                                v_rows[r]);
        if constexpr (Kv::kIsFp8) {
          CUTE_UNROLL
          for (int e = 0; e < Frag::kVecV; e += 2) {
            uint32_t b0_e, b0_e1, b1_e, b1_e1;
            Frag::template v_fragments8<kExact>(v_rows, e, b0_e, b0_e1, b1_e, b1_e1, special_codes);
            CUTE_UNROLL
            for (int m = 0; m < kMTiles; ++m) {
              mma_rows16<MmaElement>(o_acc[m][i * Frag::kVecV + e], a[m], b0_e, b1_e);
              mma_rows16<MmaElement>(o_acc[m][i * Frag::kVecV + e + 1], a[m], b0_e1, b1_e1);
            }
          }
        } else {
          CUTE_UNROLL
          for (int e = 0; e < Frag::kVecV; ++e) {
            uint32_t b0, b1;
            Frag::v_fragment16(v_rows, e, b0, b1);
            CUTE_UNROLL
            for (int m = 0; m < kMTiles; ++m) mma_rows16<MmaElement>(o_acc[m][i * Frag::kVecV + e], a[m], b0, b1);
          }
        }
      }
    }
  }
};

}  // namespace fig
