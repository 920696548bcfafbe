// Int8MatMul on sm_90a, bf16, per-channel scales in the epilogue:
// one CUTLASS instantiation (int8_gemm_sm90.cuh).
#include "int8_gemm_sm90.cuh"

namespace dsattn::int8_sm90 {
cudaError_t run_bf16_channel(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run<cutlass::bfloat16_t, false>(a, workspace, stream);
}
}  // namespace dsattn::int8_sm90
