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

// Whether `kernel` may be launched with programmatic stream serialization on the current device:
// compute capability >= 9.0 and a binary built for it (the sm_80 build of a fat binary has no
// griddepcontrol.wait). Cached per device and kernel by the caller's static.
inline bool pdl_ok(const void* kernel) {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9)
    return false;
  cudaFuncAttributes fa = {};
  const bool ok = cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.binaryVersion >= 90;
  cudaGetLastError();
  return ok;
}

}  // namespace dsattn
