// FlashInfer FA3-style prefill, bfloat16, causal, head size 128 (prefill_fa3.h): one instantiation per file.
#include "prefill_fa3.cuh"

cudaError_t dsattn::fa3::prefill_bf16_causal(const Args& a, cudaStream_t stream) {
  return run<cutlass::bfloat16_t, true>(a, stream);
}
