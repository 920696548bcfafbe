// Int8MatMul on sm_90a, f16, group scales (group_size % 64 == 0) in the mainloop:
// one CUTLASS instantiation (int8_gemm_sm90.cuh).
#include "int8_gemm_sm90.cuh"

namespace dsattn::int8_sm90 {
cudaError_t run_f16_group(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run<cutlass::half_t, true>(a, workspace, stream);
}
}  // namespace dsattn::int8_sm90
