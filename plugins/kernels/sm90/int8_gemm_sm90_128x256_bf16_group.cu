// Int8MatMul on sm_90a, bf16, group scales (group_size % 64 == 0) in the mainloop, configuration
// KernelId::k128x256: one CUTLASS instantiation (int8_gemm_sm90.cuh).
#include "int8_gemm_sm90.cuh"

namespace dsattn::int8_sm90 {
template cudaError_t run_bf16_group<KernelId::k128x256>(const GemmArgs&, void*, cudaStream_t);
}  // namespace dsattn::int8_sm90
