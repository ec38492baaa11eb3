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

// 2^x on the FMA pipe: 2^round(x) built in the exponent bits, times a cubic in the remainder f in
// [-0.5, 0.5] (a fit of 2^f through 1 at f = 0, so exact at integer x; relative error below
// 1.1e-4, under a 16-bit P's rounding: bf16 2^-9, fp16 2^-11). Ten instructions where ex2 is
// one, for callers whose exp2 stretch waits on the SFU (16 a cycle an SM) while issue slots go
// unused: some of their elements come from here. x is clamped to [-127, 127] first, since the
// exponent bits wrap outside it (+inf or a large x would come out tiny or negative, and a caller
// that tests P's size would take it): x below -126.5, -inf included, gives exactly 0 (2^-127's
// bits are those of +0, as ex2 flushes), so a masked key or a row with no key weighs nothing;
// +inf and x >= 127 give 2^127 (as large as any test of P's size needs); NaN stays NaN (the .NaN
// forms of min and max).
__device__ __forceinline__ float poly_exp2(float x) {
  float clamped;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(clamped) : "f"(x), "f"(-127.0f));
  asm("min.NaN.f32 %0, %0, %1;" : "+f"(clamped) : "f"(127.0f));
  const float rounded = clamped + 12582912.0f;  // 1.5 * 2^23: round(clamped) lands in the low mantissa bits
  const float f = clamped - (rounded - 12582912.0f);
  const float p = fmaf(fmaf(fmaf(0.055008706f, f, 0.24221054f), f, 0.69328290f), f, 1.0f);
  return p * __int_as_float((__float_as_int(rounded) << 23) + 0x3F800000);  // p * 2^round(clamped)
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
