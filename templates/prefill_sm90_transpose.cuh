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
// Work split: lane l of every warp owns the four keys 32 b + 16 h + 2 c + {0, 1, 8, 9} (l = 8 b +
// 4 h + c; so a tile has 128 keys) and, per pass, four head-dim columns 4 q .. 4 q + 3; it reads
// one 32-bit word from each of the four key rows, transposes the 4 x 4 bytes in registers
// (byte_perm) and writes four words, one per head-dim row, at positions 32 b + 16 h + 4 c. q is
// XORed with an even lane-dependent value (< 16), so a pass's 32 loads spread over 16 banks (two
// lanes a bank, not eight); its stores keep one row parity, which with the 128-byte swizzle puts
// the 32 lanes' words in 32 different banks.
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
  static constexpr int kColumnQuads = kHeadDim / 4;
  static constexpr int kPasses = kColumnQuads / kWarps;  // column quads per warp
  static_assert(kBlockN == 128, "a lane per group of four keys, 32 groups");
  static_assert(kColumnQuads % kWarps == 0 && kColumnQuads % 16 == 0,
                "XOR with a lane's spread (< 16) permutes the column quads, so each lane still sees each once");

  // Tile t: waits until V(t) has landed and Vt's stage is free, transposes, publishes Vt(t) and
  // frees V(t)'s stage. Called by every producer thread, for t = 0, 1, ... in order.
  __device__ __forceinline__ static void tile(typename Smem::Storage& smem, int t) {
    using namespace cute;
    const int v_stage = t % kStagesV;
    const int vt_stage = t % kStagesVt;
    smem.full_v[v_stage].wait((t / kStagesV) & 1);  // TMA's bytes, or every producer thread's cp.async
    if (t >= kStagesVt) smem.empty_vt[vt_stage].wait(((t / kStagesVt) & 1) ^ 1);  // P V(t - kStagesVt) done
    Tensor sV = make_tensor(make_smem_ptr(smem.kv.v), typename Smem::LayoutV8{})(_, _, v_stage);     // (key, d)
    Tensor sVt = make_tensor(make_smem_ptr(smem.kv.vt), typename Smem::LayoutVt8{})(_, _, vt_stage); // (d, key)
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int c = lane % 4, h = (lane / 4) % 2, b = lane / 8;
    const int key = 32 * b + 16 * h + 2 * c;   // rows key, key + 1, key + 8, key + 9
    const int position = 32 * b + 16 * h + 4 * c;
    const int spread = 2 * h + 4 * b;           // even, < 16
#pragma unroll 4  // fully unrolled, the addresses of 8 passes spilled the producer's 56 registers
    for (int i = 0; i < kPasses; ++i) {
      const int column = 4 * ((warp * kPasses + i) ^ spread);
      const uint32_t w0 = *reinterpret_cast<const uint32_t*>(&sV(key, column));
      const uint32_t w1 = *reinterpret_cast<const uint32_t*>(&sV(key + 1, column));
      const uint32_t w2 = *reinterpret_cast<const uint32_t*>(&sV(key + 8, column));
      const uint32_t w3 = *reinterpret_cast<const uint32_t*>(&sV(key + 9, column));
      // 4 x 4 bytes: out[j] byte e = w_e byte j
      const uint32_t lo01 = __byte_perm(w0, w1, 0x5140), hi01 = __byte_perm(w0, w1, 0x7362);
      const uint32_t lo23 = __byte_perm(w2, w3, 0x5140), hi23 = __byte_perm(w2, w3, 0x7362);
      *reinterpret_cast<uint32_t*>(&sVt(column + 0, position)) = __byte_perm(lo01, lo23, 0x5410);
      *reinterpret_cast<uint32_t*>(&sVt(column + 1, position)) = __byte_perm(lo01, lo23, 0x7632);
      *reinterpret_cast<uint32_t*>(&sVt(column + 2, position)) = __byte_perm(hi01, hi23, 0x5410);
      *reinterpret_cast<uint32_t*>(&sVt(column + 3, position)) = __byte_perm(hi01, hi23, 0x7632);
    }
    fence_shared_for_wgmma();  // this thread's stores, to the consumers' WGMMA (async-proxy) reads
    smem.full_vt[vt_stage].arrive();
    __syncwarp();
    if (lane == 0) smem.empty_v[v_stage].arrive();  // this warp has read V(t): the stage may be refilled
  }
};

}  // namespace fig
