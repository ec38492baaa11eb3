// Small device helpers several headers share: reads and moves that steer ptxas, the SFU exp2, and
// how a CTA's threads share a tile's chunks.
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

// How a CTA's kThreads threads share a tile of kRows rows of kChunksPerRow chunks, one chunk a
// thread and pass: pass i of thread t takes chunk t + i kThreads in row-major order. Where the
// threads cover whole rows, a thread keeps its column and each pass is a constant number of rows
// further, so addresses made from row() and column() are the first pass's plus constants (from a
// recomputed signed index they cost about 20 integer instructions a pass: SASS of 5a1bb92).
// thread: thread_index_here(), read once by the caller.
template <int kRows, int kChunksPerRow, int kThreads>
struct TilePasses {
  static constexpr int kChunks = kRows * kChunksPerRow;
  static constexpr int kPasses = (kChunks + kThreads - 1) / kThreads;
  static constexpr bool kWholeRows = kThreads % kChunksPerRow == 0;
  __device__ __forceinline__ static int row(uint32_t thread, int i) {
    if constexpr (kWholeRows) return int(thread / kChunksPerRow) + i * (kThreads / kChunksPerRow);
    else return int((thread + i * kThreads) / kChunksPerRow);
  }
  __device__ __forceinline__ static int column(uint32_t thread, int i) {
    if constexpr (kWholeRows) return int(thread % kChunksPerRow);
    else return int((thread + i * kThreads) % kChunksPerRow);
  }
  __device__ __forceinline__ static bool valid(uint32_t thread, int i) {
    return kChunks % kThreads == 0 || thread + i * kThreads < uint32_t(kChunks);
  }
};

// The same int, through a move ptxas cannot see into: it can no longer bound a loop whose trip
// count this is, so it keeps the loop's branch instead of predicating the body.
__device__ __forceinline__ int opaque_int(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace fig
