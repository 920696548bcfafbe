// FlashInfer FA3-style prefill, float16, non-causal, head size 128 (prefill_fa3.h): one instantiation per file.
#include "prefill_fa3.cuh"

cudaError_t dsattn::fa3::prefill_f16_full(const Args& a, cudaStream_t stream) {
  return run<cutlass::half_t, false>(a, stream);
}
