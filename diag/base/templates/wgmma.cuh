// One warpgroup-wide GEMM on WGMMA through CuTe's tiled MMA: every k-block of A (shared-memory
// descriptors or registers) and B (descriptors) into the fp32 accumulators C, issued as one
// batch. The caller waits (cute::warpgroup_wait<N>) before it reads C or reuses A's registers.
#pragma once
#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

namespace fig {

// kZeroInit: C = A B (the first k-block's scale-out of 0 discards C's old values in the
// instruction itself, with no register writes outside WGMMA); else C += A B. kARegisters: A is a
// register fragment (fenced like C), not shared-memory descriptors.
template <bool kZeroInit, bool kARegisters, class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, TA& a, const TB& b, TC& c) {
  using namespace cute;
  if constexpr (kARegisters) warpgroup_fence_operand(a);
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  mma.accumulate_ = kZeroInit ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    gemm(mma, a(_, _, k), b(_, _, k), c);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(c);
  if constexpr (kARegisters) warpgroup_fence_operand(a);
}

}  // namespace fig
