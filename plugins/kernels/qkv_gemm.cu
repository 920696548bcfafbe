// dsattn::QKVGemm (OPS.md §1): [LayerNorm | RMSNorm] -> x @ W -> + bias.
//
// Two kernels and one library call, chosen per call (see qkv_gemm.h):
//   norm_rows_kernel   one CTA per row: fp32 statistics, writes norm(x) rounded to T once.
//   stream_gemm_kernel small M (<= kSmallMaxM), fp16/bf16: the op is bound by reading W
//                      (K*N*2 bytes) once; each CTA streams a column slab W[:, n0:n0+BN] through a
//                      cp.async multi-stage pipeline and multiplies it with the (L2-resident)
//                      normalized rows on the tensor cores (mma.sync m16n8k16, roles swapped:
//                      the MMA's 16-row side is N, its 8-column side is M, so M=1 wastes 7/8 of
//                      an MMA, not 15/16). Launched with programmatic dependent launch after
//                      norm_rows_kernel: W prefetch (independent of the norm) starts before the
//                      norm finishes; x is read only after griddepcontrol.wait.
//   cuBLASLt           everything else (large M, fp32, unaligned): matmul + CUBLASLT_EPILOGUE_BIAS,
//                      descriptors and algorithm cached per shape in the context.
#include "qkv_gemm.h"

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
#include <type_traits>
#include <vector>

#include "int8_matmul.h"

// The int8 matmul lives in the K-int8 helper's int8_matmul*.cu. Weak references keep this file
// linkable (and quantized=1 answers cudaErrorNotSupported) in a tree where it is absent.
extern "C" cudaError_t dsattn_int8_matmul(const dsattn_int8_matmul_params*, void*, size_t,
                                          cudaStream_t) __attribute__((weak));
extern "C" size_t dsattn_int8_matmul_workspace_size(const dsattn_int8_matmul_params*)
    __attribute__((weak));

namespace {

constexpr int64_t kSmallMaxM = 64;     // largest M of the streaming kernel (8 MMA column tiles)
constexpr size_t kAlign = 256;         // workspace sub-buffer alignment
constexpr int kNormThreads = 256;

// Test / benchmark knob (dsattn_qkv_gemm_debug_force_path): 0 auto, 1 cuBLASLt, 2 streaming.
int g_force_path = 0;
int g_force_bn = 0;  // 0 auto, else BN of the streaming kernel (32 or 64)

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
                 T* __restrict__ out, int64_t K, int norm_type, float eps, int pdl_trigger) {
  // Let the dependent streaming GEMM start its weight prefetch now (it waits for this grid's
  // completion, with memory flushed, before it reads `out`: griddepcontrol.wait).
  if (pdl_trigger) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
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
// Streaming tensor-core GEMM for small M:  out[m, n] = sum_k a[m, k] * W[k, n] + bias[n].
// MMA roles: A(16x16) = W^T tile (rows n, cols k; smem holds W rows k -> ldmatrix.trans),
//            B(16x8)  = a^T tile (rows k, cols m; smem holds a rows m -> ldmatrix),
//            D(16x8)  = out^T tile (rows n, cols m), fp32.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 zero-fills the 16 bytes (tails in K, N and M) without reading memory.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                            uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                  uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t addr, uint32_t& r0, uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r0), "=r"(r1)
               : "r"(addr));
}
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Tile configuration. BN columns of W per CTA, BK rows of W per stage, MT 8-row tiles of a,
// WARPS warps each owning BN / WARPS columns (WN = that / 16 MMA row tiles). Shared-memory rows
// are padded by 8 elements (16 bytes) so the 8 row addresses of an ldmatrix hit distinct banks.
template <int BN_, int BK_, int MT_, int WARPS_, int STAGES_>
struct StreamCfg {
  static constexpr int BN = BN_, BK = BK_, MT = MT_, WARPS = WARPS_, STAGES = STAGES_;
  static constexpr int THREADS = WARPS * 32;
  static constexpr int WN = BN / WARPS / 16;
  static constexpr int W_LD = BN + 8;   // elements per smem row of the W tile
  static constexpr int A_LD = BK + 8;   // elements per smem row of the a tile
  static constexpr int W_STAGE = BK * W_LD;  // elements
  static constexpr int A_STAGE = MT * 8 * A_LD;
  static constexpr size_t SMEM = size_t(STAGES) * (W_STAGE + A_STAGE) * 2;
  static_assert(BN % (WARPS * 16) == 0, "each warp owns whole 16-column MMA tiles");
  static_assert(BK % 16 == 0, "BK is a multiple of the MMA k");
  static_assert(MT == 1 || MT % 2 == 0, "x4 ldmatrix loads two a tiles");
};

template <typename T, typename C>
__global__ void __launch_bounds__(C::THREADS)
stream_gemm_kernel(const T* __restrict__ a, const T* __restrict__ w, const T* __restrict__ bias,
                   T* __restrict__ out, int M, int N, int K, int wait_prior) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sw = reinterpret_cast<T*>(smem_raw);                    // [STAGES][BK][W_LD]
  T* sa = sw + C::STAGES * C::W_STAGE;                       // [STAGES][MT*8][A_LD]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n0 = blockIdx.x * C::BN;
  const int ktiles = (K + C::BK - 1) / C::BK;

  // W tile: BK rows x BN columns = BK * BN / 8 chunks of 16 bytes.
  auto load_w = [&](int kt, int slot) {
    constexpr int CPR = C::BN / 8;  // chunks per row
    T* dst = sw + slot * C::W_STAGE;
#pragma unroll
    for (int c = tid; c < C::BK * CPR; c += C::THREADS) {
      const int r = c / CPR, col = (c % CPR) * 8;
      const int k = kt * C::BK + r, n = n0 + col;
      const bool ok = (k < K) && (n < N);  // N % 8 == 0: a chunk is all in or all out
      cp_async16(smem_u32(dst + r * C::W_LD + col), ok ? (w + (int64_t)k * N + n) : w, ok);
    }
  };
  // a tile: MT*8 rows x BK columns.
  auto load_a = [&](int kt, int slot) {
    constexpr int CPR = C::BK / 8;
    T* dst = sa + slot * C::A_STAGE;
#pragma unroll
    for (int c = tid; c < C::MT * 8 * CPR; c += C::THREADS) {
      const int r = c / CPR, col = (c % CPR) * 8;
      const int k = kt * C::BK + col;
      const bool ok = (r < M) && (k < K);  // K % 8 == 0
      cp_async16(smem_u32(dst + r * C::A_LD + col), ok ? (a + (int64_t)r * K + k) : a, ok);
    }
  };

  // Prologue: W stages first (they do not depend on the norm kernel), then wait for the
  // programmatic dependency (no-op when launched normally), then the a stages.
  // Group s holds a stage s (and group 0 all prologue W stages), so "group s done" means
  // stage s is complete.
  for (int s = 0; s < C::STAGES - 1; ++s)
    if (s < ktiles) load_w(s, s);
  if (wait_prior) asm volatile("griddepcontrol.wait;" ::: "memory");
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < ktiles) load_a(s, s);
    cp_async_commit();
  }

  float acc[C::WN][C::MT][4];
#pragma unroll
  for (int i = 0; i < C::WN; ++i)
#pragma unroll
    for (int j = 0; j < C::MT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // ldmatrix row addresses. A (trans): matrix q = lane/8 covers k rows (q>=2 ? 8 : 0) + lane%8
  // and n columns (q&1 ? 8 : 0). B: matrix q covers a rows lane%8 (+8 per extra tile) and k
  // columns (q&1 ? 8 : 0) ... see the x4/x2 loads below.
  const int q = lane >> 3, r8 = lane & 7;
  const int a_k_off = ((q >> 1) << 3) + r8;     // k row inside a 16-k step
  const int a_n_off = (q & 1) << 3;             // n column inside a 16-n tile
  const int warp_n = warp * (C::BN / C::WARPS);

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    const int slot = kt % C::STAGES;
    const T* tw = sw + slot * C::W_STAGE;
    const T* ta = sa + slot * C::A_STAGE;
#pragma unroll
    for (int ks = 0; ks < C::BK / 16; ++ks) {
      uint32_t afrag[C::WN][4];
#pragma unroll
      for (int i = 0; i < C::WN; ++i)
        ldmatrix_x4_trans(smem_u32(tw + (ks * 16 + a_k_off) * C::W_LD + warp_n + i * 16 + a_n_off),
                          afrag[i][0], afrag[i][1], afrag[i][2], afrag[i][3]);
      if constexpr (C::MT == 1) {
        // x2: matrices (rows 0-7, k 0-7) and (rows 0-7, k 8-15); lanes 0-15 give addresses.
        uint32_t b0, b1;
        const int l = lane & 15;
        ldmatrix_x2(smem_u32(ta + (l & 7) * C::A_LD + ks * 16 + ((l >> 3) << 3)), b0, b1);
#pragma unroll
        for (int i = 0; i < C::WN; ++i) mma16816<T>(acc[i][0], afrag[i], b0, b1);
      } else {
#pragma unroll
        for (int j = 0; j < C::MT; j += 2) {
          // x4: (tile j, k 0-7), (tile j, k 8-15), (tile j+1, k 0-7), (tile j+1, k 8-15).
          uint32_t b0, b1, b2, b3;
          const int row = (j + (q >> 1)) * 8 + r8;
          ldmatrix_x4(smem_u32(ta + row * C::A_LD + ks * 16 + ((q & 1) << 3)), b0, b1, b2, b3);
#pragma unroll
          for (int i = 0; i < C::WN; ++i) {
            mma16816<T>(acc[i][j], afrag[i], b0, b1);
            mma16816<T>(acc[i][j + 1], afrag[i], b2, b3);
          }
        }
      }
    }
    // Refill the slot consumed in the previous iteration (every warp passed this iteration's
    // barrier, so nobody still reads it).
    const int nk = kt + C::STAGES - 1;
    if (nk < ktiles) {
      load_w(nk, nk % C::STAGES);
      load_a(nk, nk % C::STAGES);
    }
    cp_async_commit();
  }
  cp_async_wait<0>();

  // Epilogue: D fragment (rows n = g, g+8; cols m = 2c, 2c+1) -> out[m, n] + bias[n].
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int i = 0; i < C::WN; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + warp_n + i * 16 + g + h * 8;
      if (n >= N) continue;
      const float bv = bias ? to_f<T>(bias[n]) : 0.f;
#pragma unroll
      for (int j = 0; j < C::MT; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int m = j * 8 + 2 * c + e;
          if (m < M) out[(int64_t)m * N + n] = from_f<T>(acc[i][j][h * 2 + e] + bv);
        }
      }
    }
  }
}

// Launch one streaming configuration; `pdl` = launched right after norm_rows_kernel on the same
// stream (programmatic dependent launch; the kernel waits before reading `a`).
template <typename T, typename C>
cudaError_t launch_stream(const T* a, const T* w, const T* bias, T* out, int M, int N, int K,
                          bool pdl, cudaStream_t stream) {
  // The >48 KB dynamic shared-memory opt-in is per device; benign race (setting it twice is harmless).
  static bool attr_done[64] = {};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 64 || !attr_done[dev]) {
    e = cudaFuncSetAttribute(stream_gemm_kernel<T, C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)C::SMEM);
    if (e != cudaSuccess) return e;
    if (dev < 64) attr_done[dev] = true;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)((N + C::BN - 1) / C::BN));
  cfg.blockDim = dim3(C::THREADS);
  cfg.dynamicSmemBytes = C::SMEM;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, stream_gemm_kernel<T, C>, a, w, bias, out, M, N, K, pdl ? 1 : 0);
}

template <typename T>
cudaError_t stream_gemm(const T* a, const T* w, const T* bias, T* out, int M, int N, int K,
                        bool pdl, cudaStream_t s) {
  // BN 32: N / 32 CTAs (384 for N = 12288, ~3 per SM) balance better over 132 SMs than BN 64.
  // Stages keep ~48-64 KB of W in flight per CTA.
  const int bn = g_force_bn ? g_force_bn : 64;
  if (bn == 32) {
    if (M <= 8) return launch_stream<T, StreamCfg<32, 64, 1, 2, 8>>(a, w, bias, out, M, N, K, pdl, s);
    if (M <= 16) return launch_stream<T, StreamCfg<32, 64, 2, 2, 8>>(a, w, bias, out, M, N, K, pdl, s);
    if (M <= 32) return launch_stream<T, StreamCfg<32, 64, 4, 2, 6>>(a, w, bias, out, M, N, K, pdl, s);
    return launch_stream<T, StreamCfg<32, 64, 8, 2, 5>>(a, w, bias, out, M, N, K, pdl, s);
  }
  if (M <= 8) return launch_stream<T, StreamCfg<64, 64, 1, 4, 8>>(a, w, bias, out, M, N, K, pdl, s);
  if (M <= 16) return launch_stream<T, StreamCfg<64, 64, 2, 4, 8>>(a, w, bias, out, M, N, K, pdl, s);
  if (M <= 32) return launch_stream<T, StreamCfg<64, 64, 4, 2, 6>>(a, w, bias, out, M, N, K, pdl, s);
  return launch_stream<T, StreamCfg<64, 64, 8, 2, 5>>(a, w, bias, out, M, N, K, pdl, s);
}

template <typename T>
cudaError_t launch_norm(const void* x, const void* gamma, const void* beta, void* out, int64_t M,
                        int64_t K, int norm_type, float eps, bool pdl_trigger, cudaStream_t s) {
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = (K % VEC == 0) && aligned(x, 16) && aligned(out, 16) &&
                   (norm_type == DSATTN_NORM_NONE || aligned(gamma, 16)) &&
                   (norm_type != DSATTN_NORM_LAYERNORM || aligned(beta, 16));
  const int threads = K >= 2048 ? kNormThreads : (K >= 512 ? 128 : 64);
  const dim3 grid((unsigned)M);
  if (vec)
    norm_rows_kernel<T, VEC><<<grid, threads, 0, s>>>(
        (const T*)x, (const T*)gamma, (const T*)beta, (T*)out, K, norm_type, eps, pdl_trigger);
  else
    norm_rows_kernel<T, 1><<<grid, threads, 0, s>>>(
        (const T*)x, (const T*)gamma, (const T*)beta, (T*)out, K, norm_type, eps, pdl_trigger);
  return cudaGetLastError();
}

cudaError_t norm_dispatch(dsattn_dtype dt, const void* x, const void* gamma, const void* beta,
                          void* out, int64_t M, int64_t K, int norm_type, float eps,
                          bool pdl_trigger, cudaStream_t s) {
  switch (dt) {
    case DSATTN_FLOAT32: return launch_norm<float>(x, gamma, beta, out, M, K, norm_type, eps, pdl_trigger, s);
    case DSATTN_FLOAT16: return launch_norm<__half>(x, gamma, beta, out, M, K, norm_type, eps, pdl_trigger, s);
    case DSATTN_BFLOAT16: return launch_norm<__nv_bfloat16>(x, gamma, beta, out, M, K, norm_type, eps, pdl_trigger, s);
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

}  // namespace

struct dsattn_gemm_ctx {
  cublasLtHandle_t lt = nullptr;
  std::mutex mu;
  std::map<PlanKey, Plan*> plans;
  ~dsattn_gemm_ctx() {
    for (auto& kv : plans) delete kv.second;
    if (lt) cublasLtDestroy(lt);
  }
};

namespace {

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
}  // namespace
struct dsattn_gemm_ctx {
  int unused = 0;
};
namespace {
cudaError_t lt_gemm(dsattn_gemm_ctx*, dsattn_dtype, const void*, const void*, const void*, void*, int64_t,
                    int64_t, int64_t, void*, size_t, cudaStream_t) {
  return cudaErrorNotSupported;
}
#endif  // DSATTN_HAVE_CUBLASLT

// ------------------------------------------------------------------------------------------------
// Validation and the workspace layout.
enum class Path { kNone, kStream, kLt, kInt8 };

bool valid_params(const dsattn_qkv_gemm_params* p) {
  if (!p) return false;
  if (p->M < 0 || p->N < 1 || p->K < 1) return false;
  if (dtype_size(p->dtype) == 0) return false;
  if (p->norm_type < 0 || p->norm_type > 2) return false;
  if ((p->quantized != 0 && p->quantized != 1) || (p->emit_normed != 0 && p->emit_normed != 1)) return false;
  if (!std::isfinite(p->epsilon) || p->epsilon < 0.f) return false;
  if (p->group_size < 0 || (p->quantized == 0 && p->group_size != 0)) return false;
  // Row indices are int64 everywhere except the streaming kernel's int sizes (checked there).
  if (p->M > INT32_MAX) return false;  // one norm CTA per row (grid.x limit 2^31 - 1)
  return true;
}

// Size-only path choice (workspace sizing must not depend on pointers).
Path size_path(const dsattn_qkv_gemm_params* p) {
  if (p->M == 0) return Path::kNone;
  if (p->quantized) return Path::kInt8;
  if (g_force_path == 1) return Path::kLt;
  const bool small_ok = p->dtype != DSATTN_FLOAT32 && p->M <= kSmallMaxM && p->N % 8 == 0 &&
                        p->K % 8 == 0 && p->N <= INT32_MAX && p->K <= INT32_MAX;
  if (g_force_path == 2 && small_ok) return Path::kStream;
  return small_ok ? Path::kStream : Path::kLt;
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

Layout layout(const dsattn_qkv_gemm_params* p) {
  Layout L;
  if (needs_norm_buffer(p)) L.norm_bytes = round_up((size_t)p->M * p->K * dtype_size(p->dtype), kAlign);
  L.rest_off = L.norm_bytes;
  switch (size_path(p)) {
    case Path::kLt: L.rest_bytes = DSATTN_QKV_GEMM_LT_WORKSPACE_BYTES; break;
    case Path::kInt8: {
      if (dsattn_int8_matmul_workspace_size) {
        dsattn_int8_matmul_params q = int8_params(p, nullptr);
        L.rest_bytes = round_up(dsattn_int8_matmul_workspace_size(&q), kAlign);
      }
      break;
    }
    default: break;
  }
  L.total = L.norm_bytes + L.rest_bytes;
  return L;
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

// Testing / benchmarking only (not part of the op's contract): process-wide override of the path
// choice. path 0 automatic, 1 cuBLASLt, 2 streaming kernel where its size conditions hold;
// stream_bn 0 automatic, or 32 / 64. Not thread-safe; set it before issuing calls.
cudaError_t dsattn_qkv_gemm_debug_force_path(int32_t path, int32_t stream_bn) {
  if (path < 0 || path > 2 || (stream_bn != 0 && stream_bn != 32 && stream_bn != 64))
    return cudaErrorInvalidValue;
  g_force_path = path;
  g_force_bn = stream_bn;
  return cudaSuccess;
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
  const Layout L = layout(p);
  if (L.total > 0 && (!workspace || workspace_bytes < L.total)) return cudaErrorInvalidValue;
  if (workspace && !aligned(workspace, kAlign)) return cudaErrorInvalidValue;
  if (p->quantized && (!dsattn_int8_matmul || !dsattn_int8_matmul_workspace_size))
    return cudaErrorNotSupported;  // built without int8_matmul*.cu

  Path path = size_path(p);

  // 1. The GEMM's left operand: input itself, or norm(input) in `normed` / the workspace.
  const void* a = p->input;
  bool normalized = false;
  if (p->norm_type != DSATTN_NORM_NONE) {
    void* dst = p->emit_normed ? p->normed : static_cast<char*>(workspace) + L.norm_off;
    a = dst;
    normalized = true;
  }
  if (path == Path::kStream) {
    const bool al = aligned(a, 16) && aligned(p->weight, 16);  // 16-byte cp.async of a and W
    if (!al) path = Path::kLt;  // sized without the Lt workspace: Lt runs with what is left
  }
  cudaError_t e = cudaSuccess;
  if (normalized) {
    e = norm_dispatch(p->dtype, p->input, p->gamma, p->beta, const_cast<void*>(a), p->M, p->K, p->norm_type,
                      p->epsilon, path == Path::kStream, stream);
    if (e != cudaSuccess) return e;
  } else if (p->emit_normed) {
    e = cudaMemcpyAsync(p->normed, p->input, (size_t)p->M * p->K * es, cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) return e;
  }

  // 2. The GEMM.
  char* rest = workspace ? static_cast<char*>(workspace) + L.rest_off : nullptr;
  const size_t rest_bytes = workspace ? workspace_bytes - L.rest_off : 0;
  switch (path) {
    case Path::kInt8: {
      dsattn_int8_matmul_params q = int8_params(p, a);
      return dsattn_int8_matmul(&q, rest_bytes ? rest : nullptr, rest_bytes, stream);
    }
    case Path::kStream: {
      const int M = (int)p->M, N = (int)p->N, K = (int)p->K;
      if (p->dtype == DSATTN_FLOAT16)
        return stream_gemm<__half>((const __half*)a, (const __half*)p->weight, (const __half*)p->bias,
                                   (__half*)p->qkv, M, N, K, normalized, stream);
      return stream_gemm<__nv_bfloat16>((const __nv_bfloat16*)a, (const __nv_bfloat16*)p->weight,
                                        (const __nv_bfloat16*)p->bias, (__nv_bfloat16*)p->qkv, M, N, K,
                                        normalized, stream);
    }
    case Path::kLt: {
      // Lt workspace: what the layout reserved; the cache key includes it, so a fallback call
      // with less workspace gets its own plan.
      const size_t lt_bytes = std::min(rest_bytes, DSATTN_QKV_GEMM_LT_WORKSPACE_BYTES);
      return lt_gemm(ctx, p->dtype, a, p->weight, p->bias, p->qkv, p->M, p->N, p->K, lt_bytes ? rest : nullptr,
                     lt_bytes, stream);
    }
    default: return cudaSuccess;
  }
}

}  // extern "C"
