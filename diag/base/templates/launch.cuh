// Programmatic dependent launch (PDL, sm_90+): lets the split-KV merge kernel be scheduled while
// the decode kernel's last CTAs finish, instead of after a launch gap. The primary
// grid signals with launch_dependents(); the dependent grid's wait_for_primary() returns once
// the primary grid has completed and its writes are visible, so correctness never depends on
// where the signal is. On sm_80 both are no-ops and the launch is an ordinary stream-ordered one.
#pragma once
#include <cuda_runtime.h>
#include <utility>

namespace fig {

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_primary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether the current device runs PDL (compute capability 9.0+); asked once per process and
// device ordinal, since run() must not query the driver on every call.
inline bool device_has_pdl() {
  static int cached[64];  // 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  if (cached[device] == 0) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cached[device] = major >= 9 ? 2 : 1;
  }
  return cached[device] == 2;
}

// Launches `kernel` after the previous work on `stream`, as a programmatic dependent where the
// device has PDL (the kernel must call wait_for_primary() before reading the primary's output).
template <class... KernelArgs, class... Args>
cudaError_t launch_dependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = device_has_pdl() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// Launches `kernel` on `grid` with `smem` bytes of dynamic shared memory, raising the CTA's limit
// first on the current device, once per device and kernel (a driver call saved on every launch).
// Returns a cudaError_t value.
template <class Args>
int launch_with_smem(void (*kernel)(Args), dim3 grid, int threads, size_t smem, cudaStream_t stream,
                     const Args& args) {
  // Per device ordinal: the kernel whose limit was last raised there, and to what (per thread, so
  // threads launching at once never race on it; a new thread raises the limit once more). Two
  // kernels of one Args type would only take turns re-raising theirs.
  thread_local const void* raised_kernel[64];
  thread_local size_t raised_smem[64];
  const void* key = reinterpret_cast<const void*>(kernel);
  int device = 0;
  const bool known = cudaGetDevice(&device) == cudaSuccess && device >= 0 && device < 64;
  if (!known || raised_kernel[device] != key || raised_smem[device] != smem) {
    const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (attr != cudaSuccess) return int(attr);
    if (known) {
      raised_kernel[device] = key;
      raised_smem[device] = smem;
    }
  }
  kernel<<<grid, threads, smem, stream>>>(args);
  return int(cudaGetLastError());
}

// CTAs of `kernel` that fit one SM of the current device, and its SM count.
template <class Args>
int kernel_occupancy(void (*kernel)(Args), int threads, size_t smem, int* ctas_per_sm, int* num_sms) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, kernel, threads, smem);
  return int(err);
}

}  // namespace fig
