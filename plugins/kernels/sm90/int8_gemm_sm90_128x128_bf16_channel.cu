// Int8MatMul on sm_90a, bf16, per-channel scales in the epilogue, configuration
// KernelId::k128x128: one CUTLASS instantiation (int8_gemm_sm90.cuh).
#include "int8_gemm_sm90.cuh"

namespace dsattn::int8_sm90 {
template cudaError_t run_bf16_channel<KernelId::k128x128>(const GemmArgs&, void*, cudaStream_t);
}  // namespace dsattn::int8_sm90
