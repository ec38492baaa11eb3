// Prefill mainloop of one warp (mma.sync, sm_80+): kMTiles x 16 packed query rows (token x q head
// of one KV head's group) against the CTA's shared K/V tiles, kBlockN tokens per tile, online
// softmax in registers. The CTA's warps share each tile, which every thread helped copy
// (paged_kv.cuh); an FP8 tile is first upcast once, by the whole CTA, into 16-bit rows
// (kv_tile_convert.cuh), so every KV dtype reaches the tensor cores through the same loads.
// Except where PrefillShape::kFp8FromCodes: there each warp reads K's and V's codes with ldmatrix
// and upcasts them in registers (qk(), pv(); `cvt`, or e5m2's byte permutes), which halves their
// shared-memory reads and leaves the CTA no upcast and one barrier a tile.
//
// Fragments come from ldmatrix: K rows (tokens) as the B operand of S = Q K^T, and V rows,
// transposed in the load, as the B operand of O += P V. One ldmatrix.x4 feeds two n-tiles (four
// from FP8 codes), and each fragment feeds kMTiles mma (FA2's 32 rows a warp at kMTiles = 2), so
// shared-memory traffic per mma halves against one m-tile. Shared 16-bit rows are XOR-swizzled, or padded
// where a row is not a whole number of 128-byte lines (smem_rows.cuh): either way the 8 row
// addresses of one 8x8 matrix fall on 8 different chunk positions of the 128-byte bank window.
//
// Once a tile has set the rows' maxima, the unmasked tiles are taken against them as they stand
// (compute_settled_tile: no max update, quad shuffle or rescale of O; 629 SASS instructions a tile
// body against the exact one's 854 at head dim 128, bf16) and run again through the exact body
// only where a row's max grew too far; where kSettledTiles.
#pragma once
#include <cuda_runtime.h>
#include "kv_tile_convert.cuh"
#include "kv_types.cuh"
#include "mma_sm80.cuh"
#include "paged_kv.cuh"
#include "smem_rows.cuh"
#include "softmax.cuh"

namespace fig {

// The 16-bit tiles an FP8 tile is converted into by the CTA; a 16-bit cache, or FP8 codes that
// the warps upcast themselves, are read from the copy ring.
template <bool kUpcastByCta, int kRows, int kRowBytes>
struct ConvertedKvTile {
  uint8_t k16[kRows][kRowBytes];
  uint8_t v16[kRows][kRowBytes];
};
template <int kRows, int kRowBytes>
struct ConvertedKvTile<false, kRows, kRowBytes> {};

template <class Cfg>
struct PrefillMainloop {
  using QElement = typename Cfg::QElement;
  using Kv = typename Cfg::Kv;
  using MmaElement = typename Kv::MmaElement;
  using Logits = typename Cfg::Logits;

  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kMTiles = Cfg::kMTiles;     // m16 tiles of rows per warp
  static constexpr int kKSteps = kHeadDim / 16;    // k-steps of Q K^T
  static constexpr int kNTiles = kHeadDim / 8;     // n-tiles of P V (O's columns)
  static constexpr int kSTiles = kBlockN / 8;      // n-tiles of S per tile
  static constexpr int kPvSteps = kBlockN / 16;    // k-steps of P V per tile
  static constexpr bool kBranchOverRescale = kMTiles * kSTiles * 4 <= 32;  // S's registers per thread
  // Unmasked tiles first tried against the rows' maxima as they stand (compute_settled_tile), except
  // where a third tile body spilled (local ptxas, every instance of every arch): beside the warps'
  // own upcast of FP8 codes at head dim 128 (168 to 420 bytes, and as much with that body in place
  // of the unmasked exact one; at 64 they fit), and at head dims 80 and 96 (4 to 160 bytes in 28
  // of their 128 instances, on sm_80 and sm_90a).
  static constexpr bool kSettledTiles =
      !(Cfg::kFp8FromCodes && kHeadDim == 128) && kHeadDim != 80 && kHeadDim != 96;
  // FP8 codes read by the warps (kind_prefill.py fp8_from_codes): the ring's 8-bit rows are then
  // laid out for ldmatrix like the 16-bit ones, and each conversion feeds kMTiles mma.
  static constexpr bool kFromCodes = Cfg::kFp8FromCodes;
  static_assert(!kFromCodes || (Kv::kIsFp8 && !Kv::kHasSpecialCodes && kBlockN % 32 == 0 && kHeadDim % 32 == 0),
                "codes are upcast with the exact routine, by 32 keys of K or 32 dims of V (four n-tiles) an ldmatrix");
  // The rows qk() and pv() read with ldmatrix, swizzled or padded as Cfg::kRowPadding says
  // (smem_rows.cuh): 16-bit ones (a 16-bit cache's ring, or the tiles the CTA upcasts FP8 into),
  // or, where kFromCodes, the ring's rows of codes.
  using Rows = LdmatrixRows<kHeadDim * (kFromCodes ? 1 : 2), Cfg::kRowPadding>;
  using CopyRows = std::conditional_t<!Kv::kIsFp8 || kFromCodes, Rows, PlainRows<kHeadDim>>;  // rows as copied
  static constexpr int kMmaRowBytes = Rows::kRowBytes;
  static constexpr int kCopyRowBytes = CopyRows::kRowBytes;
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0 && kStages >= 2, "x4 loads cover two n-tiles");

  using TileCopy = PagedKvTileCopy<kBlockN, CopyRows, kHeadDim * Kv::kBytes, Cfg::kThreads>;

  // Q's A fragments live in shared memory, each lane's own 16-byte slot per m-tile and k-step,
  // read once per k-step of every tile: in registers they would take D / 2 per thread at two
  // m-tiles, next to O's D and S's kBlockN / 2. Aligned to a 128-byte line, as the swizzled
  // tiles must start on one (every tile below is a whole number of lines).
  struct alignas(128) SharedStorage : ConvertedKvTile<Kv::kIsFp8 && !kFromCodes, kBlockN, kMmaRowBytes> {
    uint8_t k[kStages][kBlockN][kCopyRowBytes];  // the cp.async ring, as the cache stores it
    uint8_t v[kStages][kBlockN][kCopyRowBytes];
    uint4 q[Cfg::kWarps][kMTiles][kKSteps][32];  // (warp, m-tile, k-step, lane)
    int64_t row_addrs[kStages][kBlockN];         // K row addresses of the tiles being copied
    int2 key_bounds[kBlockM];                    // keys [x, y] each packed row sees, for masked tiles
  };

  // Per-warp state. Rows of m-tile m: 16 m + g and 16 m + g + 8 (r = 0, 1) for lane = 4 g + c;
  // O's n-tile e holds columns o_column(e, 0 | 1). Nothing else is held across tiles:
  // what derives from the thread index is recomputed per tile (thread_index_here(), paged_kv.cuh),
  // which keeps two m-tiles of O and 64 keys of S within the 255 registers without spills.
  float o_acc[kMTiles][kNTiles][4];
  OnlineSoftmaxRow softmax[kMTiles][2];

  __device__ __forceinline__ static int lane() { return thread_index_here() % 32; }
  __device__ __forceinline__ static int lane_g() { return lane() / 4; }
  __device__ __forceinline__ static int lane_c() { return lane() % 4; }
  __device__ __forceinline__ static int first_row() { return thread_index_here() / 32 * kMTiles * 16; }
  // The column (dim) of O that o_acc[m][e][2 r + i] holds: 8 e + 2 c + i; from V's codes, where
  // one ldmatrix.trans word holds two keys of two adjacent dims (pv()), the even dims of
  // each 16 make n-tile 2 f and the odd ones 2 f + 1, so 16 f + 4 c + 2 i + e % 2.
  __device__ __forceinline__ static int o_column(int e, int i) {
    return kFromCodes ? 16 * (e / 2) + 4 * lane_c() + 2 * i + e % 2 : 8 * e + 2 * lane_c() + i;
  }
  // Shared address of the lane's Q slot of (m-tile 0, k-step 0).
  __device__ __forceinline__ static uint32_t q_addr(const SharedStorage& smem) {
    return smem_address(&smem.q[thread_index_here() / 32][0][0][lane()]);
  }
  // Byte offset of the lane's ldmatrix row in a K tile: matrices (tokens 0-7 | 8-15 of two
  // n-tiles) x (dims 0-7 | 8-15 of a k-step); k-step j is Rows::step(.., 2 j) of it.
  __device__ __forceinline__ static uint32_t k_lane() {
    return Rows::offset(lane() % 8 + 8 * (lane() / 16), (lane() / 8) % 2);
  }
  // In K's codes (kFromCodes): matrices (tokens 0-7 | 8-15 | 16-23 | 24-31, four n-tiles) x 16
  // codes (dims) of a k-step, so lane l names token l; k-step j is CopyRows::step(.., j) of it.
  __device__ __forceinline__ static uint32_t k_codes_lane() { return CopyRows::offset(lane(), 0); }
  // In V's codes (kFromCodes): matrices (tokens 0-7 | 8-15 of a k-step) x (16 dims | the next
  // 16), as v_lane() with 16 dims a chunk; dims 16 f on (f even) are CopyRows::step(.., f) of it.
  __device__ __forceinline__ static uint32_t v_codes_lane() {
    return CopyRows::offset(lane() % 8 + 8 * ((lane() / 8) % 2), lane() / 16);
  }
  // And in a V tile: matrices (tokens 0-7 | 8-15 of a k-step) x (dims of two n-tiles); n-tiles
  // e, e + 1 are Rows::step(.., e) of it.
  __device__ __forceinline__ static uint32_t v_lane() {
    return Rows::offset(lane() % 8 + 8 * ((lane() / 8) % 2), lane() / 16);
  }

  // q_rows[m][r]: that row of Q (head dim contiguous), or nullptr for a row past the request's;
  // bounds[m][r]: its keys. Each lane writes only the slots it reads back later; the bounds are
  // read by other lanes of the warp after the pipeline's first barrier.
  __device__ __forceinline__ void init(SharedStorage& smem, const QElement* const (&q_rows)[kMTiles][2],
                                       const int2 (&bounds)[kMTiles][2]) {
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int j = 0; j < kKSteps; ++j) {
        // a[2 half + r] = Q(row r, dims 16 j + 8 half + 2 c, +1), the layout K's fragments expect.
        // From K's codes a lane gets dims 16 j + 4 c .. + 3 of its token (one 32-bit word of an
        // 8-bit ldmatrix), whose halves take the places of 16 j + 2 c and 16 j + 8 + 2 c: the
        // k-step's dims permuted alike in Q and K, which leaves Q K^T as it was.
        uint32_t a[4];
        CUTE_UNROLL
        for (int half = 0; half < 2; ++half) {
          const int dim = kFromCodes ? 16 * j + 4 * lane_c() + 2 * half : 16 * j + 8 * half + 2 * lane_c();
          CUTE_UNROLL
          for (int r = 0; r < 2; ++r) {
            const QElement* row = q_rows[m][r];
            uint32_t bits = 0;
            if (row != nullptr) bits = *reinterpret_cast<const uint32_t*>(row + dim);
            a[2 * half + r] = row != nullptr ? q_pair_to_mma<MmaElement, QElement>(bits) : 0u;
          }
        }
        smem.q[warp][m][j][lane] = make_uint4(a[0], a[1], a[2], a[3]);
      }
      if (lane_c() == 0) {
        smem.key_bounds[first_row() + 16 * m + lane_g()] = bounds[m][0];
        smem.key_bounds[first_row() + 16 * m + lane_g() + 8] = bounds[m][1];
      }
    }
    reset();
  }

  __device__ __forceinline__ void reset() {
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int e = 0; e < kNTiles; ++e) o_acc[m][e][0] = o_acc[m][e][1] = o_acc[m][e][2] = o_acc[m][e][3] = 0.0f;
      softmax[m][0].init();
      softmax[m][1].init();
    }
  }

  __device__ __forceinline__ void rescale_o(int m, const float (&rescale)[2]) {
    CUTE_UNROLL
    for (int e = 0; e < kNTiles; ++e) {
      o_acc[m][e][0] *= rescale[0];
      o_acc[m][e][1] *= rescale[0];
      o_acc[m][e][2] *= rescale[1];
      o_acc[m][e][3] *= rescale[1];
    }
  }

  __device__ __forceinline__ static void q_fragment(uint32_t q_addr, int m, int j, uint32_t (&a)[4]) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(q_addr + (m * kKSteps + j) * 32 * 16));
    a[0] = v.x; a[1] = v.y; a[2] = v.z; a[3] = v.w;
  }

  // One tile of kBlockN keys starting at token tile_begin, from 16-bit rows k_rows / v_rows (the
  // codes where kFromCodes).
  // kMask: some key of the tile is outside some row's bounds (the caller knows which tiles). A
  // run-time flag instead made ptxas predicate the whole per-key test into every tile.
  template <bool kMask>
  __device__ __forceinline__ void compute_tile(const SharedStorage& smem, const uint8_t (*k_rows)[kMmaRowBytes],
                                               const uint8_t (*v_rows)[kMmaRowBytes], int tile_begin,
                                               const Logits& logits) {
    float s[kMTiles][kSTiles][4];  // S = Q K^T; lane holds rows (m, r), tokens 8 nt + 2c + {0, 1}
    qk(smem, k_rows, s);
    // Online softmax per row; P in place of S. A linear logit (no soft-cap) stays a raw product
    // here and its scale is folded into the softmax's exp2 (softmax.cuh).
    float rescale[kMTiles][2];  // factors for O's rows
    bool changed = false;
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      apply_logits(s[m], logits);
      if constexpr (kMask) {
        CUTE_UNROLL
        for (int r = 0; r < 2; ++r) {
          const int2 bounds = smem.key_bounds[first_row() + 16 * m + lane_g() + 8 * r];
          CUTE_UNROLL
          for (int nt = 0; nt < kSTiles; ++nt) {
            CUTE_UNROLL
            for (int i = 0; i < 2; ++i) {
              const int token = tile_begin + 8 * nt + 2 * lane_c() + i;
              if (token < bounds.x || token > bounds.y) s[m][nt][2 * r + i] = -INFINITY;
            }
          }
        }
      }
      const float scale = exp2_scale(logits);
      rescale[m][0] = softmax[m][0].update_rows(s[m], 0, scale);
      rescale[m][1] = softmax[m][1].update_rows(s[m], 1, scale);
      changed |= rescale[m][0] != 1.0f || rescale[m][1] != 1.0f;
      if constexpr (!kBranchOverRescale) {
        if (__any_sync(0xffffffffu, rescale[m][0] != 1.0f || rescale[m][1] != 1.0f)) rescale_o(m, rescale[m]);
      }
    }
    // Once the rows' maxima settle (most tiles of a long row), no factor differs from 1 and the
    // warp may skip O's multiplies. ptxas turns an `if` (or a loop it can see runs at most once)
    // into predicated multiplies, issued on every tile anyway; a trip count it cannot bound
    // (opaque_int) keeps the branch. The branch needs every m-tile's factors at once, which with
    // S at 64 registers a thread (two m-tiles of 64 keys) spilled, as did unconditional
    // multiplies; there each m-tile keeps its own (predicated) test, the form that fit. Where
    // kSettledTiles, most tiles take compute_settled_tile() instead, which issues no rescale.
    if constexpr (kBranchOverRescale) {
#pragma unroll 1
      for (int pass = 0, passes = opaque_int(__any_sync(0xffffffffu, changed) ? 1 : 0); pass < passes; ++pass) {
        CUTE_UNROLL
        for (int m = 0; m < kMTiles; ++m) rescale_o(m, rescale[m]);
      }
    }
    pv(v_rows, s);
  }

  // An unmasked tile taken against the rows' running maxima as they stand, for rows whose maxima
  // have settled (most tiles of a long row): P = exp2(logit - row_max), with no max update, no
  // quad shuffle and no rescale of O. Valid while each lane's sum of a row's P in the tile stays
  // within kSettledBound, which bounds every one of those P (they are >= 0): a fixed offset of a
  // row's P changes neither O / sum nor the LSE (row_max + log2 of the sum), and P up to 2^8 keeps
  // the same relative step in bf16 / fp16 and in the fp32 sums. The warp votes on it before P V
  // touches O. Returns false, with nothing changed, where some sum passes it (logits past their
  // row's max by 4 to 8 in log2 units at 64 keys a tile, 16 P a lane and row: as many of a lane's
  // as it takes; a row with no max yet (-inf); +inf or NaN logits): the caller then runs the tile
  // again through compute_tile(), which moves the maxima (and carries a NaN into O and the sum).
  // The Hopper consumers vote before exp2, on the maxima, and move them in place
  // (OnlineSoftmaxRow::rebase_quad_rows); here that form spilled, and running the tile again
  // needs no registers beyond the exact body's.
  __device__ __forceinline__ bool compute_settled_tile(const SharedStorage& smem, const uint8_t (*k_rows)[kMmaRowBytes],
                                                       const uint8_t (*v_rows)[kMmaRowBytes], const Logits& logits) {
    float s[kMTiles][kSTiles][4];
    qk(smem, k_rows, s);
    const float scale = exp2_scale(logits);
    float tile_sum[kMTiles][2];  // this lane's sum of each row's P in the tile
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      apply_logits(s[m], logits);
      tile_sum[m][0] = softmax[m][0].exp2_rows_as_they_stand(s[m], 0, scale);
      tile_sum[m][1] = softmax[m][1].exp2_rows_as_they_stand(s[m], 1, scale);
    }
    bool within = true;
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m)
      within = within && tile_sum[m][0] <= kSettledBound && tile_sum[m][1] <= kSettledBound;
    // A loop whose trip count ptxas cannot bound keeps both ways branches (as an `if`, it
    // predicated the rest of the tile, which spilled O).
    const int settled = opaque_int(__all_sync(0xffffffffu, within) ? 1 : 0);
#pragma unroll 1
    for (int pass = 0; pass < settled; ++pass) {
      CUTE_UNROLL
      for (int m = 0; m < kMTiles; ++m) {
        softmax[m][0].lane_sum += tile_sum[m][0];
        softmax[m][1].lane_sum += tile_sum[m][1];
      }
      pv(v_rows, s);
    }
    return settled != 0;
  }

 private:
  static constexpr float kSettledBound = 256.0f;  // compute_settled_tile's bound on a lane's sum of a row's P

  __device__ __forceinline__ static void apply_logits(float (&s)[kSTiles][4], const Logits& logits) {
    if constexpr (!Logits::kLinear) {
      CUTE_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) {
        CUTE_UNROLL
        for (int i = 0; i < 4; ++i) s[nt][i] = logits(s[nt][i]);
      }
    }
  }
  // The factor exp2's argument takes the logits by: a linear logit is still the raw product.
  __device__ __forceinline__ static float exp2_scale(const Logits& logits) {
    if constexpr (Logits::kLinear) return logits.scale_log2;
    else return 1.0f;
  }

  // S = Q K^T for the tile; k-steps outermost, so Q's fragments are read once per k-step.
  __device__ __forceinline__ static void qk(const SharedStorage& smem, const uint8_t (*k_rows)[kMmaRowBytes],
                                            float (&s)[kMTiles][kSTiles][4]) {
    const uint32_t k_addr = smem_address(k_rows) + (kFromCodes ? k_codes_lane() : k_lane());
    const uint32_t q_base = q_addr(smem);
    CUTE_UNROLL
    for (int m = 0; m < kMTiles; ++m) {
      CUTE_UNROLL
      for (int nt = 0; nt < kSTiles; ++nt) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
    }
    CUTE_UNROLL
    for (int j = 0; j < kKSteps; ++j) {
      uint32_t a[kMTiles][4];
      CUTE_UNROLL
      for (int m = 0; m < kMTiles; ++m) q_fragment(q_base, m, j, a[m]);
      if constexpr (kFromCodes) {
        CUTE_UNROLL
        for (int nt = 0; nt < kSTiles; nt += 4) {
          uint32_t codes[4];  // n-tile nt + i: token g's dims 16 j + 4 c .. + 3
          ldsm_x4(CopyRows::step(k_addr, j) + 8 * nt * kCopyRowBytes, codes);
          CUTE_UNROLL
          for (int i = 0; i < 4; ++i) {
            uint32_t b0, b1;
            Kv::Converter::convert(codes[i], b0, b1);
            CUTE_UNROLL
            for (int m = 0; m < kMTiles; ++m) mma_rows16<MmaElement>(s[m][nt + i], a[m], b0, b1);
          }
        }
      } else {
        CUTE_UNROLL
        for (int nt = 0; nt < kSTiles; nt += 2) {
          uint32_t b[4];  // b0, b1 of n-tile nt, then of nt + 1
          ldsm_x4(Rows::step(k_addr, 2 * j) + 8 * nt * kMmaRowBytes, b);
          CUTE_UNROLL
          for (int m = 0; m < kMTiles; ++m) {
            mma_rows16<MmaElement>(s[m][nt], a[m], b[0], b[1]);
            mma_rows16<MmaElement>(s[m][nt + 1], a[m], b[2], b[3]);
          }
        }
      }
    }
  }

  // O += P V, P in S's accumulators: n-tiles 2t, 2t+1 are the A fragment of k-step t.
  __device__ __forceinline__ void pv(const uint8_t (*v_rows)[kMmaRowBytes], const float (&s)[kMTiles][kSTiles][4]) {
    const uint32_t v_addr = smem_address(v_rows) + (kFromCodes ? v_codes_lane() : v_lane());
    CUTE_UNROLL
    for (int t = 0; t < kPvSteps; ++t) {
      uint32_t a[kMTiles][4];
      CUTE_UNROLL
      for (int m = 0; m < kMTiles; ++m) {
        a[m][0] = HalfRowsMma<MmaElement>::pack(s[m][2 * t][0], s[m][2 * t][1]);
        a[m][1] = HalfRowsMma<MmaElement>::pack(s[m][2 * t][2], s[m][2 * t][3]);
        a[m][2] = HalfRowsMma<MmaElement>::pack(s[m][2 * t + 1][0], s[m][2 * t + 1][1]);
        a[m][3] = HalfRowsMma<MmaElement>::pack(s[m][2 * t + 1][2], s[m][2 * t + 1][3]);
      }
      if constexpr (kFromCodes) {
        CUTE_UNROLL
        for (int f = 0; f < kHeadDim / 16; f += 2) {
          // codes[2 h] (codes[2 h + 1]): tokens 2c, 2c+1 (2c+8, 2c+9) of the k-step at dims
          // 16 (f + h) + 2g, +1, by bytes (2c, 2g), (2c, 2g+1), (2c+1, 2g), (2c+1, 2g+1). Taken by
          // dim (convert_dim_pairs), a word upcasts to b0 (b1) of n-tiles 2 (f + h), the even dims,
          // and 2 (f + h) + 1, the odd ones (o_column).
          uint32_t codes[4];
          ldsm_x4_trans(CopyRows::step(v_addr, f) + 16 * t * kCopyRowBytes, codes);
          CUTE_UNROLL
          for (int h = 0; h < 2; ++h) {
            uint32_t even_b0, odd_b0, even_b1, odd_b1;
            Kv::Converter::convert_dim_pairs(codes[2 * h], even_b0, odd_b0);
            Kv::Converter::convert_dim_pairs(codes[2 * h + 1], even_b1, odd_b1);
            CUTE_UNROLL
            for (int m = 0; m < kMTiles; ++m) {
              mma_rows16<MmaElement>(o_acc[m][2 * (f + h)], a[m], even_b0, even_b1);
              mma_rows16<MmaElement>(o_acc[m][2 * (f + h) + 1], a[m], odd_b0, odd_b1);
            }
          }
        }
      } else {
        CUTE_UNROLL
        for (int e = 0; e < kNTiles; e += 2) {
          uint32_t b[4];  // b0, b1 of n-tile e, then of e + 1
          ldsm_x4_trans(Rows::step(v_addr, e) + 16 * t * kMmaRowBytes, b);
          CUTE_UNROLL
          for (int m = 0; m < kMTiles; ++m) {
            mma_rows16<MmaElement>(o_acc[m][e], a[m], b[0], b[1]);
            mma_rows16<MmaElement>(o_acc[m][e + 1], a[m], b[2], b[3]);
          }
        }
      }
    }
  }
};

}  // namespace fig
