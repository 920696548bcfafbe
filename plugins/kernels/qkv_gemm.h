// dsattn::QKVGemm kernels (OPS.md §1): optional pre-normalization, one GEMM, bias.
//
//   qkv    = norm(input) @ W + bias          (quantized = 0: W is T [K, N], input-major, x @ W)
//   qkv    = norm(input) @ dequant(W)^T + bias (quantized = 1: W is int8 [N, K], output-major)
//   normed = norm(input)                      (only when emit_normed = 1)
//
// norm: 0 none; 1 LayerNorm (x - mean) / sqrt(var + eps) * gamma + beta (biased variance);
// 2 RMSNorm x / sqrt(mean(x^2) + eps) * gamma. Statistics and the normalization are computed in
// fp32; the normalized row is rounded to T once (exactly what the GEMM consumes and what `normed`
// holds). The GEMM accumulates in fp32 (float32 T: true fp32, no TF32).
//
// Path (automatic): a normalize kernel writes norm(input) once (to `normed`, or the workspace),
// then a cuBLASLt matmul with the bias epilogue (per-shape plan in the context; for large shapes
// the first uncaptured call times the heuristic's candidates once and keeps the fastest).
// quantized = 1: the normalize kernel, then dsattn_int8_matmul (int8_matmul.h).
// (Fusing the norm into a weight-streaming kernel of our own measured slower than this on the
// H100 at every M: docs/KERNELS.md.)
// With norm_type = 0 and no emit_normed the input is used directly (no normalize kernel).
//
// CUDA headers only: no TensorRT, no PyTorch.
#pragma once
#include "dsattn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Opaque per-user context: owns the cuBLASLt handle and a cache of (M, N, K, dtype, bias?) ->
// cuBLASLt matmul descriptors, layouts and the chosen algorithm, so a call does no heuristic
// query after the first call of a shape. Thread-safety: one context may be used from several
// host threads at once (the cache is guarded by a mutex; cuBLASLt matmul calls do not mutate the
// handle). Calls on different streams may run concurrently provided they use different workspaces.
typedef struct dsattn_gemm_ctx dsattn_gemm_ctx;

// Creates a context (initializes cuBLASLt on the current device). Returns cudaErrorInvalidValue
// for a NULL out pointer, cudaErrorNotSupported if cuBLASLt cannot be initialized.
cudaError_t dsattn_gemm_ctx_create(dsattn_gemm_ctx** out);
// Destroys a context (NULL is allowed). The caller ensures no call using it is still being enqueued.
cudaError_t dsattn_gemm_ctx_destroy(dsattn_gemm_ctx* ctx);

// Scratch size helpers for callers that size their buffers up front (TensorRT's
// getWorkspaceSize): the cuBLASLt workspace share of dsattn_qkv_gemm_workspace_size.
#define DSATTN_QKV_GEMM_LT_WORKSPACE_BYTES ((size_t)32 << 20)

// norm_type values (OPS.md attribute norm_type).
#define DSATTN_NORM_NONE 0
#define DSATTN_NORM_LAYERNORM 1
#define DSATTN_NORM_RMSNORM 2

typedef struct dsattn_qkv_gemm_params {
  const void* input;          // T [M, K] row-major contiguous (M = B*S rows, K = hidden)
  const void* weight;         // quantized=0: T [K, N] row-major; quantized=1: int8 [N, K] row-major
  const void* bias;           // T [N], or NULL (no bias)
  const void* gamma;          // T [K]; required when norm_type != 0, ignored otherwise
  const void* beta;           // T [K]; required when norm_type == 1, ignored otherwise
  const float* weight_scale;  // float32 [N, K / g] (g = group_size ? group_size : K); quantized=1 only
  void* qkv;                  // T [M, N] row-major output; must not alias any input
  void* normed;               // T [M, K] row-major output when emit_normed=1 (must not alias input); else ignored
  int64_t M;                  // rows (>= 0; M == 0 is a no-op that succeeds)
  int64_t N;                  // output features (>= 1)
  int64_t K;                  // hidden (>= 1; quantized=1 adds int8_matmul.h's K / group restrictions)
  int64_t group_size;         // quantized=1: 0 = per output channel, else a divisor of K; must be 0 when quantized=0
  int32_t norm_type;          // DSATTN_NORM_NONE / _LAYERNORM / _RMSNORM
  int32_t quantized;          // 0 or 1
  int32_t emit_normed;        // 0 or 1
  float epsilon;              // norm epsilon (> 0 or == 0, finite; OPS.md default 1e-5)
  dsattn_dtype dtype;         // T of input, weight (quantized=0), bias, gamma, beta, qkv, normed
} dsattn_qkv_gemm_params;

// Bytes of scratch device memory dsattn_qkv_gemm needs for these params (normalized input, the
// cuBLASLt workspace, the int8 matmul's workspace). Depends on sizes, flags and dtype only (not
// on pointers). Returns 0 for params that dsattn_qkv_gemm would reject.
size_t dsattn_qkv_gemm_workspace_size(const dsattn_qkv_gemm_params* p);

// Enqueues the op on `stream`. Validates host-side and returns cudaErrorInvalidValue (nothing
// launched) for: NULL ctx or p; M < 0; N < 1; K < 1; unknown dtype / norm_type; quantized or
// emit_normed not 0/1; epsilon negative or not finite; group_size != 0 with quantized=0; NULL
// input / weight / qkv when M > 0; NULL gamma (norm_type != 0) or beta (norm_type == 1); NULL
// normed with emit_normed=1; NULL weight_scale with quantized=1; pointers not aligned to their
// element size; workspace NULL or smaller than dsattn_qkv_gemm_workspace_size(p) when that is > 0,
// or not 256-byte aligned.
// quantized=1 with dtype or sizes int8_matmul rejects: its error. cuBLASLt failures:
// cudaErrorNotSupported (no algorithm) or cudaErrorUnknown. Otherwise the launch error.
// Asynchronous: errors in the kernels themselves surface later.
cudaError_t dsattn_qkv_gemm(dsattn_gemm_ctx* ctx, const dsattn_qkv_gemm_params* p, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
