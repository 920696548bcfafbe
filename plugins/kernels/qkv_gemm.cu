// dsattn::QKVGemm (OPS.md §1): [LayerNorm | RMSNorm] -> x @ W -> + bias.
//
// Paths (see qkv_gemm.h):
//   quantized = 0  a norm kernel (CTA per row; warp per row with the row in registers from M = 256
//                  on) writes norm(x) once, then cuBLASLt matmul + CUBLASLT_EPILOGUE_BIAS with
//                  descriptors and algorithm cached per shape in the context.
//   quantized = 1  the norm kernel, then dsattn_int8_matmul (int8_matmul.h).
#include "qkv_gemm.h"
#include "pdl.cuh"

#ifndef DSATTN_HAVE_CUBLASLT
#define DSATTN_HAVE_CUBLASLT 1
#endif
#if DSATTN_HAVE_CUBLASLT
#include <cublasLt.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <tuple>
#include <vector>

#include "int8_matmul.h"

namespace {

constexpr size_t kAlign = 256;         // workspace sub-buffer alignment
constexpr int kNormThreads = 256;

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

size_t dtype_size(dsattn_dtype t) {
  switch (t) {
    case DSATTN_FLOAT32: return 4;
    case DSATTN_FLOAT16: return 2;
    case DSATTN_BFLOAT16: return 2;
  }
  return 0;
}

bool aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

// ------------------------------------------------------------------------------------------------
// Element conversions.
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ------------------------------------------------------------------------------------------------
// Row normalization. One CTA per row; three passes over the row (sum, centred sum of squares,
// write): the re-reads hit L1/L2 (a row is K*sizeof(T) bytes), and the two-pass variance keeps
// fp32 accuracy when |mean| >> std (a one-pass E[x^2]-E[x]^2 would cancel catastrophically).
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // red[] may still be read by the previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < nw; ++w) s += red[w];  // same order in every thread: identical result
  return s;
}

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f<T>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_f<T>(p[i]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) e[i] = from_f<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = from_f<T>(v[i]);
  }
}

// VEC elements per access (16 bytes when K and every pointer allow it, else 1).
template <typename T, int VEC>
__global__ void __launch_bounds__(kNormThreads)
norm_rows_kernel(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                 T* __restrict__ out, int64_t K, int norm_type, float eps) {
  __shared__ float red[kNormThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  T* orow = out + row * K;
  const int64_t nvec = K / VEC;

  float mean = 0.f;
  if (norm_type == DSATTN_NORM_LAYERNORM) {
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      float v[VEC];
      load_vec<T, VEC>(xr + i * VEC, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += v[j];
    }
    mean = block_sum(s, red) / static_cast<float>(K);
  }
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    float v[VEC];
    load_vec<T, VEC>(xr + i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = v[j] - mean;
      ss = fmaf(d, d, ss);
    }
  }
  // LayerNorm: biased variance; RMSNorm: mean of squares (mean = 0 above).
  const float rstd = 1.0f / sqrtf(block_sum(ss, red) / static_cast<float>(K) + eps);
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    float v[VEC], g[VEC], b[VEC];
    load_vec<T, VEC>(xr + i * VEC, v);
    if (norm_type != DSATTN_NORM_NONE) load_vec<T, VEC>(gamma + i * VEC, g);
    if (norm_type == DSATTN_NORM_LAYERNORM) load_vec<T, VEC>(beta + i * VEC, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float y = (v[j] - mean) * rstd;
      if (norm_type == DSATTN_NORM_LAYERNORM) y = fmaf(y, g[j], b[j]);
      else if (norm_type == DSATTN_NORM_RMSNORM) y = y * g[j];
      else y = v[j];
      v[j] = y;
    }
    store_vec<T, VEC>(orow + i * VEC, v);
  }
}

// ------------------------------------------------------------------------------------------------
// Row normalization by warps.
//
// warp_norm_row: one warp normalizes one row held in registers (16-byte vectors, up to kRowVecs
// per lane), so HBM/L2 is read once and the two-pass variance (exact in fp32 even when
// |mean| >> std; a one-pass E[x^2]-E[x]^2 would cancel) costs no second read.
constexpr int kRowVecs = 16;  // 16 x 16 bytes per lane: K <= 4096 (16-bit T) / 2048 (fp32)
constexpr int64_t kWarpNormMinM = 256;  // standalone norm: warp-per-row kernel from this M on

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&f)[16 / sizeof(T)]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < (int)(16 / sizeof(T)); ++i) f[i] = to_f<T>(e[i]);
}

// Needs K <= 32*VEC*kRowVecs, K % VEC == 0 and every pointer 16-byte aligned (launch_norm checks).
// gamma / beta may point to shared memory (the caller stages them there once per CTA, so the
// write pass does not wait on one global load per vector).
template <typename T>
__device__ void warp_norm_row(const T* __restrict__ x, const T* __restrict__ gamma,
                              const T* __restrict__ beta, T* __restrict__ dst, int K, int norm_type,
                              float eps) {
  constexpr int VEC = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const float inv_k = 1.0f / static_cast<float>(K);
  const int nvec = K / VEC;
  uint4 buf[kRowVecs];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < kRowVecs; ++i) {
    const int c = lane + 32 * i;
    if (c < nvec) {
      buf[i] = __ldg(reinterpret_cast<const uint4*>(x) + c);
      float f[VEC];
      unpack<T>(buf[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += f[j];
    }
  }
  const float mean = norm_type == DSATTN_NORM_LAYERNORM ? warp_sum(s) * inv_k : 0.f;
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kRowVecs; ++i) {
    if (lane + 32 * i < nvec) {
      float f[VEC];
      unpack<T>(buf[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = f[j] - mean;
        ss = fmaf(d, d, ss);
      }
    }
  }
  const float rstd = 1.0f / sqrtf(warp_sum(ss) * inv_k + eps);
#pragma unroll
  for (int i = 0; i < kRowVecs; ++i) {
    const int c = lane + 32 * i;
    if (c < nvec) {
      float f[VEC], g[VEC], b[VEC];
      unpack<T>(buf[i], f);
      if (norm_type != DSATTN_NORM_NONE) unpack<T>(reinterpret_cast<const uint4*>(gamma)[c], g);
      if (norm_type == DSATTN_NORM_LAYERNORM) unpack<T>(reinterpret_cast<const uint4*>(beta)[c], b);
      uint4 o;
      T* oe = reinterpret_cast<T*>(&o);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float y = f[j];
        if (norm_type == DSATTN_NORM_LAYERNORM) y = fmaf((f[j] - mean) * rstd, g[j], b[j]);
        else if (norm_type == DSATTN_NORM_RMSNORM) y = (f[j] * rstd) * g[j];
        oe[j] = from_f<T>(y);
      }
      reinterpret_cast<uint4*>(dst)[c] = o;
    }
  }
}

// Small M: one CTA per row holding the whole row in registers (R 16-byte vectors per thread), so
// the row is read once and gamma / beta are loaded while the reductions run: one load round trip
// and two block reductions instead of the three passes of norm_rows_kernel. Launched with PDL on
// sm_90 (at small M the launch is a large share of the kernel's time). Needs K % VEC == 0,
// K <= kNormThreads * VEC * R and 16-byte aligned pointers (launch_norm checks).
template <typename T, int R>
__global__ void __launch_bounds__(kNormThreads)
norm_rows_reg_kernel(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                     T* __restrict__ out, int K, int norm_type, float eps) {
  constexpr int VEC = 16 / sizeof(T);
  __shared__ float red[kNormThreads / 32];
  dsattn::pdl_wait();
  const int nvec = K / VEC;
  const float inv_k = 1.0f / static_cast<float>(K);
  const uint4* xr = reinterpret_cast<const uint4*>(x + (int64_t)blockIdx.x * K);
  uint4 buf[R], g[R], b[R];
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int c = threadIdx.x + i * kNormThreads;
    if (c < nvec) {
      buf[i] = __ldg(xr + c);
      if (norm_type != DSATTN_NORM_NONE) g[i] = __ldg(reinterpret_cast<const uint4*>(gamma) + c);
      if (norm_type == DSATTN_NORM_LAYERNORM) b[i] = __ldg(reinterpret_cast<const uint4*>(beta) + c);
    }
  }
  float mean = 0.f;
  if (norm_type == DSATTN_NORM_LAYERNORM) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (threadIdx.x + i * kNormThreads < nvec) {
        float f[VEC];
        unpack<T>(buf[i], f);
#pragma unroll
        for (int j = 0; j < VEC; ++j) s += f[j];
      }
    }
    mean = block_sum(s, red) * inv_k;
  }
  float ss = 0.f;  // two-pass variance on the registers: exact in fp32 when |mean| >> std
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if (threadIdx.x + i * kNormThreads < nvec) {
      float f[VEC];
      unpack<T>(buf[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = f[j] - mean;
        ss = fmaf(d, d, ss);
      }
    }
  }
  const float rstd = 1.0f / sqrtf(block_sum(ss, red) * inv_k + eps);
  uint4* orow = reinterpret_cast<uint4*>(out + (int64_t)blockIdx.x * K);
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int c = threadIdx.x + i * kNormThreads;
    if (c < nvec) {
      float f[VEC], gf[VEC], bf[VEC];
      unpack<T>(buf[i], f);
      if (norm_type != DSATTN_NORM_NONE) unpack<T>(g[i], gf);
      if (norm_type == DSATTN_NORM_LAYERNORM) unpack<T>(b[i], bf);
      uint4 o;
      T* oe = reinterpret_cast<T*>(&o);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        float y = f[j];
        if (norm_type == DSATTN_NORM_LAYERNORM) y = fmaf((f[j] - mean) * rstd, gf[j], bf[j]);
        else if (norm_type == DSATTN_NORM_RMSNORM) y = (f[j] * rstd) * gf[j];
        oe[j] = from_f<T>(y);
      }
      orow[c] = o;
    }
  }
}

template <typename T, int R>
cudaError_t launch_norm_reg(const T* x, const T* gamma, const T* beta, T* out, int64_t M, int K,
                            int norm_type, float eps, cudaStream_t s) {
  const bool pdl = dsattn::pdl_launch_ok<norm_rows_reg_kernel<T, R>>();
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)M);
  cfg.blockDim = dim3(kNormThreads);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  if (pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, norm_rows_reg_kernel<T, R>, x, gamma, beta, out, K, norm_type, eps);
}

// Copies gamma (and beta) [K] into shared memory with 16-byte vectors (K % VEC == 0, aligned),
// all loads in flight at once. Caller synchronizes.
template <typename T>
__device__ __forceinline__ void stage_affine(const T* __restrict__ gamma, const T* __restrict__ beta,
                                             T* sg, T* sb, int K, int norm_type) {
  const int nvec = K / (16 / (int)sizeof(T));
  for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
    if (norm_type != DSATTN_NORM_NONE) reinterpret_cast<uint4*>(sg)[c] = __ldg(reinterpret_cast<const uint4*>(gamma) + c);
    if (norm_type == DSATTN_NORM_LAYERNORM) reinterpret_cast<uint4*>(sb)[c] = __ldg(reinterpret_cast<const uint4*>(beta) + c);
  }
}

// One warp per row, 8 rows per CTA (K small enough for the register path; gamma / beta staged in
// shared memory, 2*K*sizeof(T) bytes of dynamic shared memory), or one CTA per row
// (norm_rows_kernel above) for long rows.
template <typename T>
__global__ void __launch_bounds__(256)
norm_rows_warp_kernel(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                      T* __restrict__ out, int64_t M, int K, int norm_type, float eps) {
  extern __shared__ __align__(16) unsigned char norm_smem[];
  T* sg = reinterpret_cast<T*>(norm_smem);
  T* sb = sg + K;
  stage_affine<T>(gamma, beta, sg, sb, K, norm_type);
  __syncthreads();
  const int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (row >= M) return;
  warp_norm_row<T>(x + row * K, sg, sb, out + row * K, K, norm_type, eps);
}

template <typename T>
cudaError_t launch_norm(const void* x, const void* gamma, const void* beta, void* out, int64_t M,
                        int64_t K, int norm_type, float eps, cudaStream_t s) {
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = (K % VEC == 0) && aligned(x, 16) && aligned(out, 16) &&
                   (norm_type == DSATTN_NORM_NONE || aligned(gamma, 16)) &&
                   (norm_type != DSATTN_NORM_LAYERNORM || aligned(beta, 16));
  // Measured on H100 (K 4096, in a CUDA graph before a GEMM): the three-pass CTA-per-row kernel
  // costs ~4 us at M <= 128, the warp-per-row kernel ~6-8 us there (its gamma/beta staging adds a
  // dependent round trip) but ~5-12 us vs ~13 us at M = 2048. Hence the warp kernel from M =
  // kWarpNormMinM on; below it the register-resident CTA-per-row kernel (one read of the row), and
  // the three-pass kernel only for rows too long for registers or unaligned data.
  if (vec && sizeof(T) == 2 && K <= 32 * VEC * kRowVecs && M >= kWarpNormMinM) {  // row in registers
    norm_rows_warp_kernel<T><<<(unsigned)((M + 7) / 8), 256, 2 * K * sizeof(T), s>>>(
        (const T*)x, (const T*)gamma, (const T*)beta, (T*)out, M, (int)K, norm_type, eps);
    return cudaGetLastError();
  }
  if (vec && M < kWarpNormMinM) {  // small M: the row in registers, one read
    const int64_t per_thread = (K / VEC + kNormThreads - 1) / kNormThreads;
    const T *xt = (const T*)x, *gt = (const T*)gamma, *bt = (const T*)beta;
    if (per_thread <= 1) return launch_norm_reg<T, 1>(xt, gt, bt, (T*)out, M, (int)K, norm_type, eps, s);
    if (per_thread <= 2) return launch_norm_reg<T, 2>(xt, gt, bt, (T*)out, M, (int)K, norm_type, eps, s);
    if (per_thread <= 4) return launch_norm_reg<T, 4>(xt, gt, bt, (T*)out, M, (int)K, norm_type, eps, s);
  }
  const int threads = K >= 2048 ? kNormThreads : (K >= 512 ? 128 : 64);
  const dim3 grid((unsigned)M);
  if (vec)
    norm_rows_kernel<T, VEC><<<grid, threads, 0, s>>>(
        (const T*)x, (const T*)gamma, (const T*)beta, (T*)out, K, norm_type, eps);
  else
    norm_rows_kernel<T, 1><<<grid, threads, 0, s>>>(
        (const T*)x, (const T*)gamma, (const T*)beta, (T*)out, K, norm_type, eps);
  return cudaGetLastError();
}

cudaError_t norm_dispatch(dsattn_dtype dt, const void* x, const void* gamma, const void* beta,
                          void* out, int64_t M, int64_t K, int norm_type, float eps, cudaStream_t s) {
  switch (dt) {
    case DSATTN_FLOAT32: return launch_norm<float>(x, gamma, beta, out, M, K, norm_type, eps, s);
    case DSATTN_FLOAT16: return launch_norm<__half>(x, gamma, beta, out, M, K, norm_type, eps, s);
    case DSATTN_BFLOAT16: return launch_norm<__nv_bfloat16>(x, gamma, beta, out, M, K, norm_type, eps, s);
  }
  return cudaErrorInvalidValue;
}

#if DSATTN_HAVE_CUBLASLT
// ------------------------------------------------------------------------------------------------
// cuBLASLt plans.
struct PlanKey {
  int device;
  int64_t M, N, K;
  int dtype;
  int has_bias;
  size_t ws;  // workspace bytes the algorithm may use
  int align;  // min alignment (bytes, <= 16) of the A, B, C/D and bias pointers
  bool operator<(const PlanKey& o) const {
    return std::tie(device, M, N, K, dtype, has_bias, ws, align) <
           std::tie(o.device, o.M, o.N, o.K, o.dtype, o.has_bias, o.ws, o.align);
  }
};

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  std::vector<cublasLtMatmulAlgo_t> algos;  // heuristic candidates, best first
  int chosen = 0;
  bool tuned = false;
  ~Plan() {
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
#endif

}  // namespace

struct dsattn_gemm_ctx {
#if DSATTN_HAVE_CUBLASLT
  cublasLtHandle_t lt = nullptr;
  std::mutex mu;
  std::map<PlanKey, Plan*> plans;
  ~dsattn_gemm_ctx() {
    for (auto& kv : plans) delete kv.second;
    if (lt) cublasLtDestroy(lt);
  }
#else
  int unused = 0;
#endif
};

namespace {

#if DSATTN_HAVE_CUBLASLT
cudaDataType_t cuda_type(dsattn_dtype t) {
  switch (t) {
    case DSATTN_FLOAT16: return CUDA_R_16F;
    case DSATTN_BFLOAT16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// Candidates kept for the one-time timing (only for shapes where a wrong pick costs real time).
constexpr int kMaxAlgos = 8;
constexpr double kTuneMinFlops = 2.0 * 256 * 4096 * 4096;

cudaError_t make_plan(dsattn_gemm_ctx* ctx, const PlanKey& key, Plan** out) {
  Plan* p = new (std::nothrow) Plan();
  if (!p) return cudaErrorMemoryAllocation;
  const cudaDataType_t t = cuda_type(static_cast<dsattn_dtype>(key.dtype));
  // Row-major out[M,N] = a[M,K] @ W[K,N] is column-major out^T[N,M] = W^T[N,K] * a^T[K,M]:
  // Lt A = W (N x K, ld N), Lt B = a (K x M, ld K), Lt C/D = out (N x M, ld N), both op N.
  // The bias epilogue adds a vector of length rows(D) = N: exactly bias[n].
  bool ok = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
  if (ok && key.has_bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    ok = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)) ==
         CUBLAS_STATUS_SUCCESS;
  }
  ok = ok && cublasLtMatrixLayoutCreate(&p->la, t, key.N, key.K, key.N) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p->lb, t, key.K, key.M, key.K) == CUBLAS_STATUS_SUCCESS;
  ok = ok && cublasLtMatrixLayoutCreate(&p->lc, t, key.N, key.M, key.N) == CUBLAS_STATUS_SUCCESS;
  if (!ok) {
    delete p;
    return cudaErrorUnknown;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) {
    delete p;
    return cudaErrorUnknown;
  }
  size_t ws = key.ws;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  // The heuristic assumes 256-byte aligned pointers unless told otherwise.
  const uint32_t al = (uint32_t)key.align;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof(al));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof(al));
  cublasLtMatmulHeuristicResult_t res[kMaxAlgos];
  int n = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->op, p->la, p->lb, p->lc, p->lc,
                                                           pref, kMaxAlgos, res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || n == 0) {
    delete p;
    return cudaErrorNotSupported;
  }
  for (int i = 0; i < n; ++i)
    if (res[i].state == CUBLAS_STATUS_SUCCESS) p->algos.push_back(res[i].algo);
  if (p->algos.empty()) {
    delete p;
    return cudaErrorNotSupported;
  }
  // Small problems: the heuristic's first choice is final (nothing to gain from timing).
  const double flops = 2.0 * key.M * key.N * key.K;
  p->tuned = (p->algos.size() == 1) || flops < kTuneMinFlops;
  *out = p;
  return cudaSuccess;
}

cudaError_t lt_run(dsattn_gemm_ctx* ctx, Plan* p, int algo, const void* a, const void* w,
                   const void* bias, void* out, void* ws, size_t ws_bytes, cudaStream_t s) {
  const float one = 1.f, zero = 0.f;
  if (bias &&
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) !=
          CUBLAS_STATUS_SUCCESS)
    return cudaErrorUnknown;
  const cublasStatus_t st = cublasLtMatmul(ctx->lt, p->op, &one, w, p->la, a, p->lb, &zero, out, p->lc,
                                           out, p->lc, &p->algos[algo], ws, ws_bytes, s);
  if (st == CUBLAS_STATUS_SUCCESS) return cudaGetLastError();
  return st == CUBLAS_STATUS_NOT_SUPPORTED ? cudaErrorNotSupported : cudaErrorUnknown;
}

// One-time choice among the heuristic's candidates by timing them on this call's own buffers
// (the output is rewritten by the real call afterwards). Skipped while the stream is being
// captured (no synchronization allowed there): the heuristic's first choice is used and the
// timing happens on the first uncaptured call.
void lt_tune(dsattn_gemm_ctx* ctx, Plan* p, const void* a, const void* w, const void* bias, void* out,
             void* ws, size_t ws_bytes, cudaStream_t s) {
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) return;
  cudaEvent_t e0, e1;
  if (cudaEventCreate(&e0) != cudaSuccess) return;
  if (cudaEventCreate(&e1) != cudaSuccess) {
    cudaEventDestroy(e0);
    return;
  }
  float best = 1e30f;
  int best_i = 0;
  for (int i = 0; i < (int)p->algos.size(); ++i) {
    if (lt_run(ctx, p, i, a, w, bias, out, ws, ws_bytes, s) != cudaSuccess) continue;  // warm-up
    cudaEventRecord(e0, s);
    constexpr int reps = 5;
    bool ok = true;
    for (int r = 0; r < reps && ok; ++r) ok = lt_run(ctx, p, i, a, w, bias, out, ws, ws_bytes, s) == cudaSuccess;
    cudaEventRecord(e1, s);
    float ms = 0.f;
    if (ok && cudaEventSynchronize(e1) == cudaSuccess && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess &&
        ms < best) {
      best = ms;
      best_i = i;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  p->chosen = best_i;
  p->tuned = true;
}

cudaError_t lt_gemm(dsattn_gemm_ctx* ctx, dsattn_dtype dt, const void* a, const void* w, const void* bias,
                    void* out, int64_t M, int64_t N, int64_t K, void* ws, size_t ws_bytes, cudaStream_t s) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  int al = 16;
  for (const void* q : {a, w, bias, (const void*)out})
    while (q && al > 1 && !aligned(q, (size_t)al)) al >>= 1;
  PlanKey key{dev, M, N, K, (int)dt, bias ? 1 : 0, ws_bytes, al};
  // The mutex covers lookup, creation, the one-time tuning and the matmul call itself: the plan's
  // descriptor carries the bias pointer, so two threads must not interleave set-attribute and
  // matmul on one plan.
  std::lock_guard<std::mutex> lock(ctx->mu);
  Plan*& slot = ctx->plans[key];
  if (!slot) {
    Plan* p = nullptr;
    e = make_plan(ctx, key, &p);
    if (e != cudaSuccess) {
      ctx->plans.erase(key);
      return e;
    }
    slot = p;
  }
  Plan* p = slot;
  if (!p->tuned) lt_tune(ctx, p, a, w, bias, out, ws, ws_bytes, s);
  return lt_run(ctx, p, p->chosen, a, w, bias, out, ws, ws_bytes, s);
}

#else  // !DSATTN_HAVE_CUBLASLT: built without cuBLAS (see CMakeLists.txt)
cudaError_t lt_gemm(dsattn_gemm_ctx*, dsattn_dtype, const void*, const void*, const void*, void*, int64_t,
                    int64_t, int64_t, void*, size_t, cudaStream_t) {
  return cudaErrorNotSupported;
}
#endif  // DSATTN_HAVE_CUBLASLT

// ------------------------------------------------------------------------------------------------
// Validation and the workspace layout.
bool valid_params(const dsattn_qkv_gemm_params* p) {
  if (!p) return false;
  if (p->M < 0 || p->N < 1 || p->K < 1) return false;
  if (dtype_size(p->dtype) == 0) return false;
  if (p->norm_type < 0 || p->norm_type > 2) return false;
  if ((p->quantized != 0 && p->quantized != 1) || (p->emit_normed != 0 && p->emit_normed != 1)) return false;
  if (!std::isfinite(p->epsilon) || p->epsilon < 0.f) return false;
  if (p->group_size < 0 || (p->quantized == 0 && p->group_size != 0)) return false;
  if (p->M > INT32_MAX) return false;  // grid-size limits of the norm kernels
  return true;
}

bool needs_norm_buffer(const dsattn_qkv_gemm_params* p) {
  return p->norm_type != DSATTN_NORM_NONE && !p->emit_normed;
}

dsattn_int8_matmul_params int8_params(const dsattn_qkv_gemm_params* p, const void* a) {
  dsattn_int8_matmul_params q;
  std::memset(&q, 0, sizeof(q));
  q.input = a;
  q.weight = static_cast<const int8_t*>(p->weight);
  q.weight_scale = p->weight_scale;
  q.bias = p->bias;
  q.output = p->qkv;
  q.M = p->M;
  q.N = p->N;
  q.K = p->K;
  q.group_size = p->group_size;
  q.dtype = p->dtype;
  return q;
}

struct Layout {
  size_t norm_off = 0, norm_bytes = 0, rest_off = 0, rest_bytes = 0, total = 0;
};

// Sizes only (not pointers, not the device): the buffer for norm(x) when it has nowhere else to
// go, plus the cuBLASLt workspace (quantized=0) or the int8 matmul's workspace.
Layout layout(const dsattn_qkv_gemm_params* p) {
  Layout L;
  if (needs_norm_buffer(p)) L.norm_bytes = round_up((size_t)p->M * p->K * dtype_size(p->dtype), kAlign);
  L.rest_off = L.norm_bytes;
  if (!p->quantized) {
    L.rest_bytes = DSATTN_QKV_GEMM_LT_WORKSPACE_BYTES;
  } else {
    dsattn_int8_matmul_params q = int8_params(p, nullptr);
    L.rest_bytes = round_up(dsattn_int8_matmul_workspace_size(&q), kAlign);
  }
  L.total = L.norm_bytes + L.rest_bytes;
  return L;
}

struct Call {
  dsattn_gemm_ctx* ctx;
  const dsattn_qkv_gemm_params* p;
  void* ws;
  size_t ws_bytes;
  Layout L;
};

cudaError_t run(const Call& c, cudaStream_t stream) {
  const dsattn_qkv_gemm_params* p = c.p;
  // 1. The GEMM's left operand: input itself, or norm(input) in `normed` / the workspace.
  const void* a = p->input;
  cudaError_t e = cudaSuccess;
  if (p->norm_type != DSATTN_NORM_NONE) {
    void* dst = p->emit_normed ? p->normed : static_cast<char*>(c.ws) + c.L.norm_off;
    e = norm_dispatch(p->dtype, p->input, p->gamma, p->beta, dst, p->M, p->K, p->norm_type, p->epsilon, stream);
    if (e != cudaSuccess) return e;
    a = dst;
  } else if (p->emit_normed) {
    e = cudaMemcpyAsync(p->normed, p->input, (size_t)p->M * p->K * dtype_size(p->dtype),
                        cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) return e;
  }
  // 2. The GEMM.
  char* rest = static_cast<char*>(c.ws) + c.L.rest_off;
  const size_t rest_bytes = c.ws_bytes - c.L.rest_off;
  if (p->quantized) {
    dsattn_int8_matmul_params q = int8_params(p, a);
    return dsattn_int8_matmul(&q, rest_bytes ? rest : nullptr, rest_bytes, stream);
  }
  const size_t lt_bytes = std::min(rest_bytes, DSATTN_QKV_GEMM_LT_WORKSPACE_BYTES);
  return lt_gemm(c.ctx, p->dtype, a, p->weight, p->bias, p->qkv, p->M, p->N, p->K, rest, lt_bytes, stream);
}

}  // namespace

extern "C" {

cudaError_t dsattn_gemm_ctx_create(dsattn_gemm_ctx** out) {
  if (!out) return cudaErrorInvalidValue;
  *out = nullptr;
  dsattn_gemm_ctx* c = new (std::nothrow) dsattn_gemm_ctx();
  if (!c) return cudaErrorMemoryAllocation;
#if DSATTN_HAVE_CUBLASLT
  if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
    c->lt = nullptr;
    delete c;
    return cudaErrorNotSupported;
  }
#endif
  *out = c;
  return cudaSuccess;
}

cudaError_t dsattn_gemm_ctx_destroy(dsattn_gemm_ctx* ctx) {
  delete ctx;
  return cudaSuccess;
}

size_t dsattn_qkv_gemm_workspace_size(const dsattn_qkv_gemm_params* p) {
  if (!valid_params(p)) return 0;
  if (p->M == 0) return 0;
  return layout(p).total;
}

cudaError_t dsattn_qkv_gemm(dsattn_gemm_ctx* ctx, const dsattn_qkv_gemm_params* p, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream) {
  if (!ctx || !valid_params(p)) return cudaErrorInvalidValue;
  if (p->M == 0) return cudaSuccess;
  const size_t es = dtype_size(p->dtype);
  // Required pointers and their alignment (element size; 16-byte vectors are used where the
  // pointers happen to allow it).
  if (!p->input || !p->weight || !p->qkv) return cudaErrorInvalidValue;
  if (p->norm_type != DSATTN_NORM_NONE && !p->gamma) return cudaErrorInvalidValue;
  if (p->norm_type == DSATTN_NORM_LAYERNORM && !p->beta) return cudaErrorInvalidValue;
  if (p->emit_normed && !p->normed) return cudaErrorInvalidValue;
  if (p->quantized && !p->weight_scale) return cudaErrorInvalidValue;
  // Only the pointers this call uses (ignored fields may hold anything).
  const void* elem_ptrs[] = {p->input, p->bias, p->norm_type != DSATTN_NORM_NONE ? p->gamma : nullptr,
                             p->norm_type == DSATTN_NORM_LAYERNORM ? p->beta : nullptr, p->qkv,
                             p->emit_normed ? p->normed : nullptr, p->quantized ? nullptr : p->weight};
  for (const void* q : elem_ptrs)
    if (q && !aligned(q, es)) return cudaErrorInvalidValue;
  if (p->quantized && !aligned(p->weight_scale, 4)) return cudaErrorInvalidValue;
  if (p->emit_normed && p->normed == p->input) return cudaErrorInvalidValue;
  Call c{ctx, p, workspace, workspace_bytes, layout(p)};
  if (c.L.total > 0 && (!workspace || workspace_bytes < c.L.total)) return cudaErrorInvalidValue;
  if (workspace && !aligned(workspace, kAlign)) return cudaErrorInvalidValue;
  return run(c, stream);
}

}  // extern "C"
