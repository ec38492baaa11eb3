// m16n8k16 mma.sync (through CuTe's SM80 atoms) and the ldmatrix loads that feed it.
// Decode uses the atom with only rows 0..7 of A populated: it has one query row per q head and at most 8 q heads per warp tile, so rows 8..15 of
// A are zero registers and the matching accumulator outputs are dropped. The zero and dropped
// rows still occupy registers: A and C/D are register quads in SASS (decode_mainloop_sm80.cuh
// says how head dim 256 fits nevertheless).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cute/arch/mma_sm80.hpp>
#include <cute/numeric/numeric_types.hpp>

namespace fig {

template <class MmaElement>
struct HalfRowsMma;

template <>
struct HalfRowsMma<cute::half_t> {
  using Atom = cute::SM80_16x8x16_F32F16F16F32_TN;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <>
struct HalfRowsMma<cute::bfloat16_t> {
  using Atom = cute::SM80_16x8x16_F32BF16BF16F32_TN;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// acc[0..1] += A(row g, k = 2c..2c+1 | 2c+8..2c+9) * B, for lane = 4 g + c.
template <class MmaElement>
__device__ __forceinline__ void mma_half_rows(float (&acc)[2], uint32_t a_lo, uint32_t a_hi,
                                              uint32_t b0, uint32_t b1) {
  float dropped_row8, dropped_row8_next;
  HalfRowsMma<MmaElement>::Atom::fma(acc[0], acc[1], dropped_row8, dropped_row8_next,
                                     a_lo, 0u, a_hi, 0u, b0, b1, acc[0], acc[1], 0.0f, 0.0f);
}

// The whole m16n8k16 tile (prefill: 16 query rows per warp). a[0..3] = A(row g, k lo), A(row g+8,
// k lo), A(row g, k hi), A(row g+8, k hi); acc[0..1] row g, acc[2..3] row g+8, columns 2c, 2c+1.
template <class MmaElement>
__device__ __forceinline__ void mma_rows16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  HalfRowsMma<MmaElement>::Atom::fma(acc[0], acc[1], acc[2], acc[3], a[0], a[1], a[2], a[3], b0, b1,
                                     acc[0], acc[1], acc[2], acc[3]);
}

// ldmatrix.x4 of 16-bit rows in shared memory (`addr`: this lane's row address, a shared-window
// offset). Plain: lane (g, c) gets row g, elements 2c, 2c+1 of each 8x8 matrix, i.e. the B
// fragment of an n-tile whose tokens are the rows (K). Transposed: it gets elements (rows 2c,
// 2c+1; column g), the B fragment of a k-step whose tokens are the rows (V). Lanes 8i..8i+7 give
// the row addresses of matrix i, which lands in d[i].
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&d)[4]) {
  asm volatile("ldmatrix.sync.aligned.x4.m8n8.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&d)[4]) {
  asm volatile("ldmatrix.sync.aligned.x4.trans.m8n8.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(addr));
}
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Converts a pair of q elements (as stored) into the mma element type.
template <class MmaElement, class QElement>
__device__ __forceinline__ uint32_t q_pair_to_mma(uint32_t bits) {
  if constexpr (std::is_same_v<MmaElement, QElement>) {
    return bits;
  } else {
    static_assert(std::is_same_v<MmaElement, cute::half_t> && std::is_same_v<QElement, cute::bfloat16_t>);
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
    return HalfRowsMma<cute::half_t>::pack(f.x, f.y);
  }
}

}  // namespace fig
