// The FP8 V transpose of the Hopper prefill, run by the producer warpgroup: FP8 WGMMA reads only
// K-major operands, and in O = P V the keys are the K dimension, while the cache stores V with the
// head dim contiguous. So each V tile, landed as stored (keys x head dim, K's layout), is rewritten
// as Vt (head dim x keys, keys contiguous), the B operand the consumers' descriptors read.
//
// The keys are reordered within each group of 32 on the way, to the order P's registers have:
// a 64 x N fp32 accumulator gives lane 4 g + c the columns 8 j + 2 c + {0, 1}, while the e4m3 A
// operand of a k32 WGMMA wants in each register the four k indices 4 c + {0..3} (+16 for the
// upper half; cute's GMMA::ALayout_64x32). Packing S's values in register order puts at k index
// 16 h + 4 c + e of a 32-key block the key 16 h + 8 (e / 2) + 2 c + e % 2, and Vt stores that
// key's row there; the sum over keys does not care in which order the GEMM meets them. So P
// needs no shuffle between lanes (prefill_sm90_mainloop.cuh packs it).
//
// Work split, in blocks of 8 keys x 8 head-dim columns: block (u, g, o) takes the keys 32 b + 16 h
// + 4 g + {0, 1, 2, 3, 8, 9, 10, 11} (u = 2 b + h; they land at the 8 consecutive positions 32 b +
// 16 h + 8 g ..) and the columns 8 o .. 8 o + 7. A thread reads its 8 key rows as 8-byte words,
// transposes them in registers (byte_perm, four 4 x 4 transposes) and writes 8 head-dim rows of 8
// bytes. Lane l has (u, g) = (l % 16 / 2, l % 2) and octet o = base ^ (2 u ^ g), base running over
// the warps, half-warps and passes: then each half-warp's 16 loads and 16 stores fall in 16
// different 8-byte bank pairs under the 128-byte swizzle (no conflict). Against the first version
// (4 x 4 blocks, 32-bit accesses, cute's layout arithmetic per access: 32 + 32 shared accesses a
// thread and tile) this halves the accesses and their address arithmetic; with the transpose
// skipped altogether (a wrong answer, as an experiment) e4m3 prefill ran 1.3x faster, which is
// what it cost.
#pragma once
#include <cute/tensor.hpp>
#include "prefill_sm90_smem.cuh"
#include "sm90_sync.cuh"

namespace fig {

template <class Cfg>
struct PrefillSm90TransposeV {
  using Smem = PrefillSm90Smem<Cfg>;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesV = Cfg::kStagesV;
  static constexpr int kStagesVt = Cfg::kStagesVt;
  static constexpr int kWarps = Cfg::kProducerThreads / 32;
  static constexpr int kOctets = kHeadDim / 8;             // 8-column blocks of the head dim
  static constexpr int kPasses = kOctets / (2 * kWarps);   // per thread: 16 key groups x kOctets blocks
  static_assert(kBlockN == 128 && kHeadDim == 128, "one 128 x 128-byte swizzled tile each (the offsets below)");
  static_assert(kPasses * 2 * kWarps == kOctets, "whole passes");
  static constexpr int kTileBytes = kBlockN * kHeadDim;

  // Byte offset of (row, column) in a tile of 128-byte rows in 8-row atoms with the 128-byte
  // swizzle (16-byte chunk c of row r at chunk c ^ (r % 8)): GMMA::Layout_K_SW128_Atom of one-byte
  // elements tiled down the rows, which is LayoutV8's and LayoutVt8's stage at a 128-byte width.
  __device__ __forceinline__ static int offset(int row, int column) {
    return row * 128 + ((((column >> 4) ^ row) & 7) << 4) + (column & 15);
  }

  // Tile t of the rings (counted across the CTA's items): waits until V(t) has landed and Vt's
  // stage is free, transposes, publishes Vt(t) and frees V(t)'s stage. Called by every producer
  // thread, for t = 0, 1, ... in order.
  __device__ __forceinline__ static void tile(typename Smem::Storage& smem, int t) {
    const int v_stage = t % kStagesV;
    const int vt_stage = t % kStagesVt;
    smem.full_v[v_stage].wait((t / kStagesV) & 1);  // TMA's bytes, or every producer thread's cp.async
    if (t >= kStagesVt) smem.empty_vt[vt_stage].wait(((t / kStagesVt) & 1) ^ 1);  // P V(t - kStagesVt) done
    const uint8_t* v = reinterpret_cast<const uint8_t*>(smem.kv.v) + v_stage * kTileBytes;   // (key, d)
    uint8_t* vt = reinterpret_cast<uint8_t*>(smem.kv.vt) + vt_stage * kTileBytes;            // (d, position)
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int u = (lane % 16) / 2, g = lane % 2;
    const int key = 16 * u + 4 * g;        // = 32 b + 16 h + 4 g
    const int position = 16 * u + 8 * g;
#pragma unroll 1  // unrolled, the two passes' words spilled the producer's 56 registers
    for (int pass = 0; pass < kPasses; ++pass) {
      const int base = (pass * kWarps + warp) * 2 + lane / 16;
      const int column = 8 * (base ^ (2 * u) ^ g);
      uint2 in[8];  // rows key + {0, 1, 8, 9, 2, 3, 10, 11}: the order their bytes take in Vt
      CUTE_UNROLL
      for (int r = 0; r < 8; ++r) {
        const int row = key + (r / 2 % 2) * 8 + (r / 4) * 2 + r % 2;
        in[r] = *reinterpret_cast<const uint2*>(v + offset(row, column));
      }
      // column j of the 8: bytes j of rows in[0..3] (the low word at Vt), of in[4..7] (the high);
      // columns 0..3 come from the rows' low words, 4..7 from their high words
      CUTE_UNROLL
      for (int half = 0; half < 2; ++half) {
        uint32_t lo[4], hi[4];
        transpose4(half ? in[0].y : in[0].x, half ? in[1].y : in[1].x, half ? in[2].y : in[2].x,
                   half ? in[3].y : in[3].x, lo);
        transpose4(half ? in[4].y : in[4].x, half ? in[5].y : in[5].x, half ? in[6].y : in[6].x,
                   half ? in[7].y : in[7].x, hi);
        CUTE_UNROLL
        for (int j = 0; j < 4; ++j)
          *reinterpret_cast<uint2*>(vt + offset(column + 4 * half + j, position)) = make_uint2(lo[j], hi[j]);
      }
    }
    fence_shared_for_wgmma();  // this thread's stores, to the consumers' WGMMA (async-proxy) reads
    smem.full_vt[vt_stage].arrive();
    __syncwarp();
    if (threadIdx.x % 32 == 0) smem.empty_v[v_stage].arrive();  // this warp has read V(t): refill it
  }

 private:
  // 4 x 4 bytes: out_j byte e = w_e byte j
  __device__ __forceinline__ static void transpose4(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3,
                                                    uint32_t (&out)[4]) {
    const uint32_t lo01 = __byte_perm(w0, w1, 0x5140), hi01 = __byte_perm(w0, w1, 0x7362);
    const uint32_t lo23 = __byte_perm(w2, w3, 0x5140), hi23 = __byte_perm(w2, w3, 0x7362);
    out[0] = __byte_perm(lo01, lo23, 0x5410);
    out[1] = __byte_perm(lo01, lo23, 0x7632);
    out[2] = __byte_perm(hi01, hi23, 0x5410);
    out[3] = __byte_perm(hi01, hi23, 0x7632);
  }
};

}  // namespace fig
