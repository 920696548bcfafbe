// Int8MatMul on sm_90a, f16, per-channel scales in the epilogue, configuration
// KernelId::k128x256: one CUTLASS instantiation (int8_gemm_sm90.cuh).
#include "int8_gemm_sm90.cuh"

namespace dsattn::int8_sm90 {
template cudaError_t run_f16_channel<KernelId::k128x256>(const GemmArgs&, void*, cudaStream_t);
}  // namespace dsattn::int8_sm90
