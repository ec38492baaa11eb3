// Small device helpers several headers share: reads and moves that steer ptxas, and the SFU exp2.
#pragma once
#include <cuda_runtime.h>

namespace fig {

// threadIdx.x, read where it is used. An asm volatile read stays inside the loop that contains it,
// so what the copy derives from the thread index is recomputed each tile (a few integer ops)
// instead of being hoisted and held in registers, or spilled, across the whole mainloop.
__device__ __forceinline__ int thread_index_here() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}

// 2^x on the SFU. exp2f() without fast-math wraps the same instruction in range fix-ups (about
// three more instructions per element). Subnormal results flush to 0: in the softmax (inputs
// <= 0) such a term is that far below the row's largest, which is 1; the soft-cap's tanh only
// needs 2^x + 1, where they vanish anyway.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 2^x on the FMA pipe, to relieve the SFU where exp2 competes with the tensor cores for time (the
// Hopper FP8 prefill makes one exp2 per FP8 multiply-add of a 128-wide head: at 16 a cycle an SM,
// the SFU takes as long as the FP8 GEMMs). 2^round(x) from the bits of a rounding add, times
// 1 + f (c1 + f (c2 + f c3)), a fit of 2^f on [-0.5, 0.5] exact at f = 0 (so at integer x, as
// ex2) with relative error below 1.1e-4: far below an e4m3 P's rounding (2^-4), and an LSE whose
// terms take it in part stays within 1e-4 (log2 units) of ex2's. Nine instructions where ex2 is
// one, so only some elements take it. x below -126 gives 0 or a tiny value (as ex2's flushed
// subnormals: far below the row's largest term); NaN stays NaN (the clamp propagates it, as ex2).
__device__ __forceinline__ float poly_exp2(float x) {
  float clamped;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(clamped) : "f"(x), "f"(-126.0f));
  const float rounded = clamped + 12582912.0f;  // 1.5 * 2^23: round(x) in the low mantissa bits
  const float f = clamped - (rounded - 12582912.0f);
  const float p = fmaf(fmaf(fmaf(0.055008706f, f, 0.24221054f), f, 0.69328290f), f, 1.0f);
  return p * __int_as_float((__float_as_int(rounded) << 23) + 0x3F800000);  // p * 2^round(x)
}

// The same int, through a move ptxas cannot see into: it can no longer bound a loop whose trip
// count this is, so it keeps the loop's branch instead of predicating the body.
__device__ __forceinline__ int opaque_int(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace fig
