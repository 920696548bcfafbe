// Programmatic dependent launch (sm_90): a kernel launched with it is scheduled while the previous
// grid of the stream is still finishing, so its launch latency hides behind that grid's tail. The
// kernel must call pdl_wait() before its first global-memory access: griddepcontrol.wait returns
// once the previous grid has completed and its writes are visible. CUDA headers only.
#pragma once
#include <cuda_runtime.h>

namespace dsattn {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next PDL-launched grid of the stream be scheduled before this one ends.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether Kernel may be launched with programmatic stream serialization on the current device:
// compute capability >= 9.0 and the code that will run compiled for sm_90+ (a fat binary's sm_80
// code, which a newer GPU could JIT, has no griddepcontrol.wait). Cached per device.
template <auto Kernel>
bool pdl_launch_ok() {
  static int cached[64] = {};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cached[dev]) return cached[dev] == 2;
  int major = 0;
  cudaFuncAttributes fa = {};
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  major >= 9 && cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(Kernel)) == cudaSuccess &&
                  fa.ptxVersion >= 90 && fa.binaryVersion >= 90;
  cudaGetLastError();
  cached[dev] = ok ? 2 : 1;
  return ok;
}

}  // namespace dsattn
