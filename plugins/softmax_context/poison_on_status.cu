// Plugin glue for SoftmaxContext's cache-overflow report (see softmax_context_plugin.cpp): TensorRT
// gives a plugin no way to return an error found on the device, so when the kernels set their
// status the plugin fills `context` with NaN (all-ones bytes are NaN in fp32, fp16 and bf16) to make
// the failure visible downstream instead of leaving stale contents.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {
__global__ void poisonOnStatusKernel(int32_t const* __restrict__ status, uint4* __restrict__ out16, int64_t n16,
                                     uint8_t* __restrict__ tail, int64_t nTail) {
  if (*status == 0) return;  // the common case: one load per block, nothing written
  uint4 const ones = make_uint4(0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n16; i += int64_t(gridDim.x) * blockDim.x) {
    out16[i] = ones;
  }
  if (blockIdx.x == 0) {
    for (int64_t i = threadIdx.x; i < nTail; i += blockDim.x) tail[i] = 0xFF;
  }
}
}  // namespace

// `context` must be 16-byte aligned (TensorRT tensors are 256-byte aligned).
cudaError_t dsattnPoisonOnStatus(int32_t const* status, void* context, int64_t bytes, cudaStream_t stream) {
  if (bytes <= 0) return cudaSuccess;
  int64_t const n16 = bytes / 16;
  int64_t const nTail = bytes - n16 * 16;
  // A few blocks only: on success each block reads `status` and exits, so the launch is almost free;
  // on failure 64 blocks x 256 threads fill the context at a fraction of bandwidth (an error path).
  int const blocks = static_cast<int>(n16 / 256 + 1 < 64 ? n16 / 256 + 1 : 64);
  poisonOnStatusKernel<<<blocks, 256, 0, stream>>>(status, static_cast<uint4*>(context), n16,
                                                   static_cast<uint8_t*>(context) + n16 * 16, nTail);
  return cudaGetLastError();
}
