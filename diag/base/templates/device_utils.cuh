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

// The same int, through a move ptxas cannot see into: it can no longer bound a loop whose trip
// count this is, so it keeps the loop's branch instead of predicating the body.
__device__ __forceinline__ int opaque_int(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace fig
