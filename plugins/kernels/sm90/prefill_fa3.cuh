// The FlashInfer instantiation behind prefill_fa3.h, included by one translation unit per kernel
// (prefill_fa3_{f16,bf16}_{causal,full}.cu): the template and CUTLASS/CuTe headers are heavy, so each
// .cu compiles exactly one kernel.
#pragma once
#include <flashinfer/attention/hopper/prefill_sm90.cuh>
#include <flashinfer/attention/hopper/variants.cuh>

#include "prefill_fa3.h"

namespace dsattn {
namespace fa3 {

// The fields FlashInfer's ragged-KV batch prefill reads from its params (BatchPrefillRaggedParams).
// AdditionalParams holds only what StandardAttention reads; the multi-item-scoring pointers the kernel
// looks for are absent, so that mode is compiled out.
template <typename T>
struct RaggedParams {
  using DTypeQ = T;
  using DTypeKV = T;
  using DTypeO = T;
  using IdType = int32_t;
  T* q_ptr;
  T* k_ptr;
  T* v_ptr;
  T* o_ptr;
  float* lse_ptr;
  int32_t* qo_tile_indices;
  int32_t* qo_indptr;
  int32_t* kv_indptr;
  int32_t* qo_lens;
  int32_t* kv_lens;
  int32_t* head_indices;
  int32_t* work_indptr;
  int32_t* batch_indices;
  struct AdditionalParams {
    float logits_soft_cap;
    float sm_scale;
  } additional_params;
  int64_t q_stride_n, k_stride_n, v_stride_n, o_stride_n;
  int64_t q_stride_h, k_stride_h, v_stride_h, o_stride_h;
  int64_t nnz_qo, nnz_kv;
  int num_qo_heads, num_kv_heads, group_size, window_left;
  bool causal;
};

// T: cutlass::half_t or cutlass::bfloat16_t. Persistent scheduler (one CTA per SM walking the work
// list; heads are entries of the list), TMA loads of K/V, 2 pipeline stages, no LSE output.
template <typename T, bool CAUSAL>
cudaError_t run(const Args& a, cudaStream_t stream) {
  constexpr int kTileKv = CAUSAL ? kTileKvCausal : kTileKvFull;
  using Traits = flashinfer::AttentionKernelTraits</*USE_TMA_LOAD_KV=*/true, kHeadDim, kHeadDim, kTileQ, kTileKv,
                                                   /*NUM_STAGES=*/2, T, T, T, int32_t,
                                                   flashinfer::StandardAttention>;
  RaggedParams<T> p{};
  p.q_ptr = static_cast<T*>(const_cast<void*>(a.q));
  p.k_ptr = static_cast<T*>(const_cast<void*>(a.k));
  p.v_ptr = static_cast<T*>(const_cast<void*>(a.v));
  p.o_ptr = static_cast<T*>(a.o);
  p.lse_ptr = nullptr;
  p.qo_tile_indices = a.qo_tile_indices;
  p.qo_indptr = a.qo_indptr;
  p.kv_indptr = a.kv_indptr;
  p.qo_lens = a.qo_lens;
  p.kv_lens = a.kv_lens;
  p.head_indices = a.head_indices;
  p.work_indptr = a.work_indptr;
  p.batch_indices = a.batch_indices;
  p.additional_params.logits_soft_cap = 0.f;
  p.additional_params.sm_scale = a.scale;
  p.q_stride_n = a.q_stride_n;
  p.q_stride_h = a.q_stride_h;
  p.k_stride_n = p.v_stride_n = a.kv_stride_n;
  p.k_stride_h = p.v_stride_h = a.kv_stride_h;
  p.o_stride_n = a.o_stride_n;
  p.o_stride_h = a.o_stride_h;
  p.nnz_qo = a.nnz_qo;
  p.nnz_kv = a.nnz_kv;
  p.num_qo_heads = a.num_qo_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group_size = a.num_qo_heads / a.num_kv_heads;
  p.window_left = -1;
  p.causal = CAUSAL;
  cudaError_t e =
      flashinfer::BatchPrefillWithRaggedKVCacheKernelTraitsDispatched<Traits, /*LEFT_SLIDING_WINDOW=*/false, CAUSAL,
                                                                      /*SAME_SCHEDULE_FOR_ALL_HEADS=*/false>(p, stream);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

}  // namespace fa3
}  // namespace dsattn
