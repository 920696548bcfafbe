// SoftmaxContext prefill attention on Hopper through FlashInfer's FA3-style kernel (warp-specialised:
// a TMA producer warp, two consumer warpgroups, wgmma, mbarrier pipelines, persistent CTAs walking a
// work list). Interface between softmax_context.cu (plain CUDA, no CUTLASS headers) and the sm_90a
// translation units prefill_fa3_*.cu, one kernel instantiation each (dtype x causal, head size 128).
// Present only in builds with DSATTN_HAVE_SM90_LIBS=1.
//
// The caller fills the work list on the device (softmax_context.cu: fa3_worklist_kernel): entry e is
// one query tile of CTA_Q rows of one (batch row, query head); CTA c of the persistent grid (one CTA
// per SM) runs entries work_indptr[c] .. work_indptr[c + 1] - 1 in order. For entry e:
//   qo_indptr[e]  first token row of the batch row in q / o (q, o rows are tokens: row = b * S + i),
//   kv_indptr[e]  first key row in the K/V row index space (see below),
//   qo_lens[e]    S, or 0 to skip the entry (its batch row is computed by another kernel),
//   kv_lens[e]    keys of the row; causal aligns the last query with the last key (bottom right),
//   qo_tile_indices[e], head_indices[e] (query head), batch_indices[e].
// K/V are addressed as rows n (stride kv_stride_n elements) of head h (stride kv_stride_h): element
// (n, d, h) at n * kv_stride_n + d + h * kv_stride_h, with n < nnz_kv checked by the TMA unit (rows past
// it read as zeros).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace dsattn {
namespace fa3 {

// Tile sizes of the instantiated kernels (FlashInfer's tuned choice for head size 128): query tiles of
// 128 rows; key tiles of 128 (causal) or 192 (non-causal) rows. The caller needs them to build the
// work list and to know which key rows past a row's end the last key tile reads.
constexpr int kHeadDim = 128;
constexpr int kTileQ = 128;
constexpr int kTileKvCausal = 128;
constexpr int kTileKvFull = 192;

struct Args {
  const void* q;  // T, element (n, d, h) at n * q_stride_n + d + h * q_stride_h
  int64_t q_stride_n, q_stride_h;
  void* o;  // T, same indexing as q with o's strides (rows n < nnz_qo)
  int64_t o_stride_n, o_stride_h;
  int64_t nnz_qo;  // token rows of q and o
  const void* k;
  const void* v;
  int64_t kv_stride_n, kv_stride_h;
  int64_t nnz_kv;
  int32_t* work_indptr;  // [num_ctas + 1], num_ctas = the device's SM count
  int32_t* head_indices;
  int32_t* qo_tile_indices;
  int32_t* qo_indptr;
  int32_t* kv_indptr;
  int32_t* qo_lens;
  int32_t* kv_lens;
  int32_t* batch_indices;
  int num_qo_heads, num_kv_heads;
  float scale;  // multiplies q.k; > 0 (a masked logit is -inf before scaling)
};

// T = float16 / bfloat16. Returns the launch error.
cudaError_t prefill_f16_causal(const Args& a, cudaStream_t stream);
cudaError_t prefill_f16_full(const Args& a, cudaStream_t stream);
cudaError_t prefill_bf16_causal(const Args& a, cudaStream_t stream);
cudaError_t prefill_bf16_full(const Args& a, cudaStream_t stream);

}  // namespace fa3
}  // namespace dsattn
