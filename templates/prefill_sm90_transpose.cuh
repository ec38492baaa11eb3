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
// Work split, in units of 16 keys x 32 head-dim columns (512 bytes), a quarter of the tile a
// producer warp: 32 columns of all 128 keys at head dim 128, of 64 keys at head dim 64 (two warps
// a column group), twice 32 columns of all 64 keys at head dim 256 (64-key tiles), three times 32
// columns of half the keys at head dim 192 (six column groups over four warps). A unit is one
// ldmatrix.trans.x4, four byte permutes and one stmatrix.x4. Read as 16-bit elements,
// an 8-key x 16-byte block of V comes out of ldmatrix.trans with lane 4 g + c holding keys
// 2 c, 2 c + 1 of columns 2 g, 2 g + 1 (a 2 x 2 block of bytes); with the block of keys 8 .. 15
// beside it, one permute gives column 2 g's bytes at keys 2 c, 2 c + 1, 8 + 2 c, 9 + 2 c, which
// are the 4 consecutive positions 4 c .. 4 c + 3 of the order above, and another column 2 g + 1's:
// as 16-bit elements, the lane's two columns of one row of an 8 x 8 block of Vt, which is what
// stmatrix stores. Each matrix of the stmatrix takes 8 of the 16 head-dim rows, one of each pair
// 2 g, 2 g + 1 (matrices 0 and 2 the even one for g < 4 and the odd one after, matrices 1 and 3
// the other), so that its 8 rows fall in 8 different 16-byte chunk positions under the 128-byte
// swizzle, as the 8 consecutive keys of each ldmatrix block do (under the 64-byte swizzle too, of V
// at head dims 64 and 192 and of Vt in 64-key tiles: two rows a 128-byte line, the chunk XORed with row / 2):
// no bank conflict either way.
// Against blocks of 8 keys x 8 columns moved through registers as 8-byte words (32 shared
// accesses a thread and tile, their swizzled addresses computed each time, 48 permutes), this is
// 16 accesses and 32 permutes (at head dim 128; half that at 64); a thread's ldmatrix addresses
// differ by a constant a unit, its stmatrix addresses by the unit XORed into the chunk bits.
#pragma once
#include <cute/tensor.hpp>
#include "prefill_sm90_smem.cuh"
#include "mma_sm80.cuh"
#include "sm90_sync.cuh"

namespace fig {

// Lanes 8 i .. 8 i + 7 give the row addresses of matrix i, whose rows take d[i] (each lane's
// two 16-bit columns of the row lane / 4); sm_90.
__device__ __forceinline__ void stsm_x4(uint32_t addr, const uint32_t (&d)[4]) {
  asm volatile("stmatrix.sync.aligned.x4.m8n8.shared.b16 [%0], {%1, %2, %3, %4};\n"
               :: "r"(addr), "r"(d[0]), "r"(d[1]), "r"(d[2]), "r"(d[3]) : "memory");
}

template <class Cfg>
struct PrefillSm90TransposeV {
  using Smem = PrefillSm90Smem<Cfg>;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kStagesV = Cfg::kStagesV;
  static constexpr int kStagesVt = Cfg::kStagesVt;
  static constexpr int kWarps = Cfg::kProducerThreads / 32;
  static constexpr int kVAtom = kv_swizzle_bytes(kHeadDim);    // V's swizzle width (head-dim bytes)
  static constexpr int kVtAtom = kv_swizzle_bytes(kBlockN);    // Vt's (keys)
  static constexpr int kColumnGroups = kHeadDim / 32;          // of 32 head-dim columns
  // The tile in items of one column group by 1 / kKeyGroups of the keys, the fewest key groups
  // that deal the items evenly to the warps; a warp takes kGroups of them, items warp, warp +
  // kWarps, .. (item i: column group i % kColumnGroups, key group i / kColumnGroups).
  static constexpr int key_groups() {
    int k = 1;
    while (kColumnGroups * k % kWarps != 0) ++k;
    return k;
  }
  static constexpr int kKeyGroups = key_groups();
  static constexpr int kGroups = kColumnGroups * kKeyGroups / kWarps;
  static constexpr int kUnits = kBlockN / 16 / kKeyGroups;     // an item's 16-key units
  static_assert(kVtAtom == kBlockN && kHeadDim % kVAtom == 0,
                "Vt's rows (the keys) are one swizzle row, V's (the head dim) whole ones (the offsets below)");
  static_assert(kUnits * kKeyGroups * 16 == kBlockN, "whole 16-key units a key group");
  static constexpr int kTileBytes = kBlockN * kHeadDim;

  // Byte offset of (row, column) in a tile of kBytes-long rows in 8-row atoms of the kBytes-wide
  // swizzle (16-byte chunk c of row r at chunk c ^ (r % 8) at 128 bytes, c ^ (r / 2 % 4) at 64):
  // KMajorAtom of one-byte elements tiled down the rows, which is LayoutVt8's stage (kBytes: the
  // keys) and each kVAtom-wide column block of LayoutV8's.
  template <int kBytes>
  __device__ __forceinline__ static int swizzled(int row, int column) {
    if constexpr (kBytes == 128) return row * 128 + ((((column >> 4) ^ row) & 7) << 4) + (column & 15);
    else return row * 64 + ((((column >> 4) ^ (row >> 1)) & 3) << 4) + (column & 15);
  }
  // V as landed: its atoms tiled down the keys first, then across the head dim (LayoutV8's stage).
  __device__ __forceinline__ static int v_offset(int key, int column) {
    return int(unsigned(column) / kVAtom) * (kBlockN * kVAtom) + swizzled<kVAtom>(key, int(unsigned(column) % kVAtom));
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
    // stmatrix: lane l gives row j = l % 8 of matrix l / 8; matrix 0 holds the rows 2 j (j < 4) and
    // 2 j + 1 (j >= 4) of its 16, matrix 1 the others, matrices 2 and 3 the same 16 columns on
    const int j8 = lane % 8;
    const int st_d16 = 16 * (lane / 16) + 2 * j8 + ((j8 >= 4) != (lane / 8 % 2 == 1) ? 1 : 0);
    // this lane's data: g = lane / 4 gives the rows 2 g (bytes 0, 2 of the two blocks' words) and
    // 2 g + 1 (bytes 1, 3), in matrix 0 or 1 as above
    const uint32_t sel0 = lane / 4 < 4 ? 0x6420u : 0x7531u;
    const uint32_t sel1 = sel0 ^ 0x1111u;
    // Units (keys 16 unit .., positions 16 unit ..) in batches of kBatch loads, then their stores:
    // the asm statements keep their order, so one unit at a time would wait out each load.
    constexpr int kBatch = 2;
    static_assert(kUnits % kBatch == 0);
    CUTE_UNROLL
    for (int g = 0; g < kGroups; ++g) {
      const int item = warp + kWarps * g;
      const int columns = 32 * (kKeyGroups > 1 ? item % kColumnGroups : item);  // its 32 head-dim columns
      const int unit0 = kKeyGroups > 1 ? item / kColumnGroups * kUnits : 0;     // and first 16-key unit
      // ldmatrix: lane l gives row l % 8 of matrix l / 8: keys + 8 in matrices 1 and 3, columns +
      // 16 in 2 and 3. The key's residue mod 16 is the same in every unit, so the swizzled chunk is fixed.
      const int ld_key = 16 * unit0 + lane % 8 + 8 * (lane / 8 % 2);
      const uint32_t ld_addr = smem_address(v) + v_offset(ld_key, columns + 16 * (lane / 16));
      const int st_d = columns + st_d16;
      CUTE_UNROLL
      for (int first = 0; first < kUnits; first += kBatch) {
        uint32_t in[kBatch][4];
        CUTE_UNROLL
        for (int b = 0; b < kBatch; ++b) ldsm_x4_trans(ld_addr + (first + b) * 16 * kVAtom, in[b]);
        CUTE_UNROLL
        for (int b = 0; b < kBatch; ++b) {
          const uint32_t out[4] = {__byte_perm(in[b][0], in[b][1], sel0), __byte_perm(in[b][0], in[b][1], sel1),
                                   __byte_perm(in[b][2], in[b][3], sel0), __byte_perm(in[b][2], in[b][3], sel1)};
          stsm_x4(smem_address(vt) + swizzled<kVtAtom>(st_d, 16 * (unit0 + first + b)), out);
        }
      }
    }
    fence_shared_for_wgmma();  // this thread's stores, to the consumers' WGMMA (async-proxy) reads
    smem.full_vt[vt_stage].arrive();
    __syncwarp();
    if (threadIdx.x % 32 == 0) smem.empty_v[v_stage].arrive();  // this warp has read V(t): refill it
  }
};

}  // namespace fig
