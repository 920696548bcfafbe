// dsattn::Int8MatMul kernels (OPS.md §3): weight-only int8 matmul.
//
//   output[m, n] = sum_k input[m, k] * (weight_scale[n, k / group] * weight[n, k]) + bias[n]
//
// with group = K when group_size == 0 (per output channel). Accumulation is fp32. The dequantized
// weight is never written to device memory: int8 tiles are converted to T in registers / shared
// memory.
//
// Paths (chosen inside dsattn_int8_matmul by M and dtype; params.path forces one for tests):
//   - small M: weight-streaming tensor-core kernel (mma.sync, int8 converted in registers),
//     split-K through the workspace when N is small; also the path for group sizes that are not
//     multiples of 64. It runs M <= 32 (M <= 64 when N <= 4096) where the CUTLASS kernel below is
//     available, else M <= 160;
//   - larger M: tiled tensor-core kernel. On a compute capability 9.0 device, when the library was
//     built with the sm_90a CUTLASS sources and N % 8 == 0: CUTLASS's warp-specialised
//     mixed-input GEMM (TMA, register-sourced wgmma on the int8 weight converted in registers);
//     elsewhere an mma.sync kernel;
//   - float32 T: a simple CUDA-core path (correct, not tuned).
//
// Numerics (fp16 / bf16): int8 -> T conversion is exact. Per channel, every path multiplies the
// fp32 sum by the fp32 scale and adds the bias in fp32, rounding to T once. Group scales: the
// skinny and mma.sync kernels multiply fp32 per-group partial sums by the fp32 scale; the CUTLASS
// kernel normalises each row's scales by their largest magnitude smax[n] (fp32), multiplies each
// weight by rel = T(scale / smax[n]) in T (q * rel rounded to T once), accumulates in fp32 and
// applies smax[n] and the bias in fp32 at the end. rel lies in [-1, 1], so fp16 does not lose the
// bits of small raw scales to its subnormal range (only ratios below 2^-14 within one row would).
//
// CUDA headers only: no TensorRT, no PyTorch. Thread-safety: the functions keep no state; calls
// on different streams may run concurrently provided they do not share a workspace.
#pragma once
#include "dsattn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Restriction on group_size beyond OPS.md ("any divisor of K"): a nonzero group_size must be a
// multiple of DSATTN_INT8_GROUP_MULTIPLE (the kernels load 16 int8 weights per 16-byte vector and
// apply one scale per vector). K must be a multiple of DSATTN_INT8_K_MULTIPLE (16-byte rows of the
// int8 weight). Calls breaking either return cudaErrorInvalidValue; the plugin rejects such nodes
// at build time with a message.
#define DSATTN_INT8_GROUP_MULTIPLE 16
#define DSATTN_INT8_K_MULTIPLE 16

// Values of params.path. Every caller outside the tests and benchmarks passes AUTO (0:
// zero-initialised params), which chooses by dtype, M and group_size. The others force one kernel;
// a path that does not support the call's dtype / group_size is rejected (cudaErrorInvalidValue).
#define DSATTN_INT8_PATH_AUTO 0       // choose by dtype, M and group_size
// SKINNY: weight streaming; fp16/bf16, any valid group_size, any M (slow for large M).
// TILED: the best tiled kernel for the device and shape (CUTLASS on sm_90 where it applies, else
// mma.sync); fp16/bf16, group_size 0 or % 64 == 0.
// FP32: float32 T only.
// TILED_MMA: the mma.sync tiled kernel even where CUTLASS applies (keeps the sm_80 path testable
// on an H100); same conditions as TILED.
#define DSATTN_INT8_PATH_SKINNY 1
#define DSATTN_INT8_PATH_TILED 2
#define DSATTN_INT8_PATH_FP32 3
#define DSATTN_INT8_PATH_TILED_MMA 4

typedef struct dsattn_int8_matmul_params {
  const void* input;          // T [M, K] row-major, M = product of the leading dims of input
  const int8_t* weight;       // int8 [N, K] row-major (output-major: row n holds output feature n)
  const float* weight_scale;  // float32 [N, K / g] row-major, g = group_size ? group_size : K
  const void* bias;           // T [N], or NULL (no bias)
  void* output;               // T [M, N] row-major; must not alias input, weight, scale or bias
  int64_t M;                  // rows (>= 0; M == 0 is a no-op that succeeds)
  int64_t N;                  // output features (>= 1)
  int64_t K;                  // input features (>= 1, multiple of DSATTN_INT8_K_MULTIPLE)
  int64_t group_size;         // 0 = per output channel; else divides K, multiple of DSATTN_INT8_GROUP_MULTIPLE
  dsattn_dtype dtype;         // T of input, bias and output
  int32_t path;               // DSATTN_INT8_PATH_AUTO (0), or a forced kernel path (tests, benchmarks)
} dsattn_int8_matmul_params;

// Bytes of scratch device memory dsattn_int8_matmul needs: split-K partial sums of the small-M
// path (fp32; nonzero only when N is small, e.g. N 4096 at M <= 64) and, for group_size a multiple
// of 64 with N % 8 == 0 in a build with the sm_90a CUTLASS sources, the CUTLASS path's normalised
// group scales (4 N + 2 N K / group_size bytes, rounded up; at any M >= 1, since params.path may
// force that path). The value is an upper bound for every M' <= p->M with the same N, K,
// group_size and dtype, so a plugin can size it once for its largest M. Depends on those sizes
// only (not on pointers, not on the device). 0 when no scratch is needed and for params that
// dsattn_int8_matmul would reject. Any alignment of the workspace pointer is accepted.
size_t dsattn_int8_matmul_workspace_size(const dsattn_int8_matmul_params* p);

// Enqueues the matmul on `stream`. Validates host-side and returns cudaErrorInvalidValue (nothing
// launched) for: NULL p; path not one of DSATTN_INT8_PATH_* or not supporting the call; M < 0;
// N < 1; K < 1 or K % DSATTN_INT8_K_MULTIPLE; group_size < 0, not dividing K, or not a multiple of DSATTN_INT8_GROUP_MULTIPLE; unknown dtype; NULL input / weight /
// weight_scale / output when M > 0; input, weight or output not 16-byte aligned, weight_scale not
// 4-byte aligned, bias not aligned to its element size; workspace NULL or smaller than
// dsattn_int8_matmul_workspace_size(p) when that is > 0; sizes whose grid would exceed CUDA's
// limits (N or K > 2^30, ceil(N/32) * ceil(M/32) >= 2^31). Returns the launch error
// (cudaGetLastError) otherwise. Asynchronous: errors in the kernel itself surface later.
cudaError_t dsattn_int8_matmul(const dsattn_int8_matmul_params* p, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
