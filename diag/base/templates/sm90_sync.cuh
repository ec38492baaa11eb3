// Warpgroup synchronisation on sm_90a, named once: shared-memory mbarriers (a stage's "full" and
// "empty" signals), named barriers for subsets of the CTA's threads, the proxy fence that makes
// generic-proxy shared writes (cp.async, st.shared) visible to WGMMA's async-proxy reads, and the
// register hand-over between warpgroups (setmaxnreg).
#pragma once
#include <cstdint>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

namespace fig {

struct StageBarrier {
  uint64_t bar;

  __device__ __forceinline__ void init(uint32_t arrivals) { cutlass::arch::ClusterBarrier::init(&bar, arrivals); }
  // Blocks until the barrier's phase of this parity has completed (a fresh barrier is in phase 0).
  __device__ __forceinline__ void wait(uint32_t parity) const { cutlass::arch::ClusterBarrier::wait(&bar, parity); }
  __device__ __forceinline__ void arrive() const { cutlass::arch::ClusterBarrier::arrive(&bar); }
};

// Publishes mbarrier.init to the other threads (and the async proxy); then a CTA-wide barrier.
__device__ __forceinline__ void publish_barrier_init() { cutlass::arch::fence_barrier_init(); }

// A proxy fence between generic-proxy shared-memory writes and async-proxy reads (wgmma operands):
// by a writer before it signals (its own st.shared), or by a reader after a barrier wait showed
// it other threads' writes (cp.async that arrived on an mbarrier), before its WGMMAs read them.
__device__ __forceinline__ void fence_shared_for_wgmma() { cutlass::arch::fence_view_async_shared(); }

// bar.sync on a named barrier (id 1..15; 0 is __syncthreads) among `threads` threads (whole warps).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace fig
