// dsattn::Int8MatMul kernels: y = x @ dequant(W)^T + bias with an int8 [N, K] weight (OPS.md §3).
//
// Three paths, chosen by dsattn_int8_matmul (see choose_path):
//  * skinny (where the CUTLASS kernel runs: M <= 32, or M <= 64 when N <= 4096; else M <= 160;
//    and the fallback for any valid group size): a weight-streaming kernel that
//    computes y^T = W x^T on the tensor cores ("swap AB": 16 weight rows are the mma's M side, up
//    to 8 tokens its N side). Each lane loads 16 contiguous int8 weights with one 16-byte
//    streaming load, converts them to T in registers (exact: |q| <= 128 fits T's mantissa) and
//    feeds mma.sync m16n8k16 with fp32 accumulation; the group scale multiplies the fp32 partial
//    sum of each group. Split-K across blocks through an fp32 workspace when N is too small to
//    fill the GPU.
//  * tiled (larger M, fp16/bf16, group_size 0 or a multiple of 64): on a compute capability 9.0
//    device, in a build with the sm_90a CUTLASS sources, and N % 8 == 0, CUTLASS's warp-specialised
//    mixed-input GEMM (sm90/int8_gemm_sm90.h: TMA, int8 tile converted in registers and fed to
//    register-sourced wgmma, scales and bias in the epilogue); elsewhere an mma.sync kernel
//    (128 x 128 tiles, int8 tile converted in registers, a cp.async ring, x tile XOR-swizzled,
//    per-channel scales on the fp32 sums in the epilogue).
//  * fp32 T: a plain CUDA-core kernel with fp32 FMA (correct, untuned).
//
// The k permutation shared by the two mma.sync kernels. The mma fragment of lane (g = lane/4,
// t = lane%4) holds k slots {2t, 2t+1, 2t+8, 2t+9} of each k16 step. A dot product may sum its k
// in any order, provided x and W use the same order, so a 64-wide k chunk is mapped as
//   mma step j (0..3), lane t, fragment element e (0..3)  <->  physical k = 16 t + 4 j + e,
// where e 0,1 are slots 2t,2t+1 and e 2,3 are slots 2t+8,2t+9. Then each lane's weights for the
// whole chunk are the 16 contiguous bytes [16t, 16t+16) of its row (one 16-byte load; step j uses
// word j), and its x values are the 16 contiguous elements of the same range (two 16-byte loads;
// step j uses elements 4j..4j+3). A k16 mma step therefore spans all 64 k of the chunk, which is
// why a scale applied to mma sums needs the chunk inside one group: group_size % 64 == 0 for one
// mma per step; 32- and 16-multiples use 2 or 4 masked mmas per step (skinny kernel only).
#include "int8_matmul.h"
#if DSATTN_HAVE_SM90_LIBS
#include "sm90/int8_gemm_sm90.h"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

namespace {

constexpr int kChunk = 64;  // k per chunk (see the permutation above)

// ---------------------------------------------------------------------------------------------
// small device helpers
// ---------------------------------------------------------------------------------------------

// Streaming load of weights: read once per kernel, keep them out of L1 (x and scales use it).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ uint4 ld_nc(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// 4 signed int8 (one 32-bit word, byte e = element e) -> T pairs lo = (e0, e1), hi = (e2, e3).
// Exact for every int8. fp16: the PRMT/magic-number trick (FasterTransformer): xor 0x80 makes the
// byte u = q + 128, 0x64uu is the fp16 number 1024 + u, and subtracting 1152 leaves q.
// bf16 has too few mantissa bits for that, so the bytes become fp32 2^23 + u (0x4B0000uu), minus
// 2^23 + 128, and the exact fp32 results are truncated to bf16 (exact: |q| <= 128).
template <typename T>
struct Cvt;

template <>
struct Cvt<__half> {
  __device__ __forceinline__ static void run(uint32_t w, uint32_t& lo, uint32_t& hi) {
    const uint32_t u = w ^ 0x80808080u;
    asm("prmt.b32 %0, %1, %2, 0x5150;" : "=r"(lo) : "r"(u), "r"(0x64646464u));
    asm("prmt.b32 %0, %1, %2, 0x5352;" : "=r"(hi) : "r"(u), "r"(0x64646464u));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(lo), "r"(0x64806480u));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(hi), "r"(0x64806480u));
  }
};

template <>
struct Cvt<__nv_bfloat16> {
  __device__ __forceinline__ static void run(uint32_t w, uint32_t& lo, uint32_t& hi) {
    const uint32_t u = w ^ 0x80808080u;
    const float magic = 8388736.0f;  // 2^23 + 128
    const float f0 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440)) - magic;
    const float f1 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7441)) - magic;
    const float f2 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7442)) - magic;
    const float f3 = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7443)) - magic;
    lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
    hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
  }
};

// d += A(16x16, row) * B(16x8, col), fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                 uint32_t a3, uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                        uint32_t a3, uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------------------------
// skinny path
// ---------------------------------------------------------------------------------------------

struct SkinnyArgs {
  const void* x;
  const int8_t* w;
  const float* scale;
  const void* bias;
  void* out;
  float* partial;   // [splits, M, N] fp32 when splits > 1, else unused
  int64_t M, N, K;
  int64_t group;    // effective group (K for per-channel)
  int64_t ngroups;  // K / group
  int chunks;       // ceil(K / 64)
  int chunks_per_split;
  int tok_groups;   // ceil(M / (8 * MT))
};

constexpr int kSkinnyWarps = 4;  // warps of one block, splitting the block's k range
constexpr int kSkinnyRT = 2;     // m16 weight-row tiles per warp (32 rows: x fragments reused twice)
constexpr int kSkinnyRows = 16 * kSkinnyRT;
constexpr int kSkinnyTargetBlocks = 264;  // 2 per SM of a 132-SM H100: enough bytes in flight

// A fragments of k16 step j from a lane's weights (row g: w[rt][0], row g+8: w[rt][1]); word j of
// the 16 bytes holds the step's slots 2t, 2t+1 (bytes 0, 1) and 2t+8, 2t+9 (bytes 2, 3).
template <typename T>
__device__ __forceinline__ void skinny_a_frags(const uint4 (&w)[kSkinnyRT][2], int j, uint32_t (&af)[kSkinnyRT][4]) {
#pragma unroll
  for (int rt = 0; rt < kSkinnyRT; ++rt) {
    const uint32_t w0 = j == 0 ? w[rt][0].x : j == 1 ? w[rt][0].y : j == 2 ? w[rt][0].z : w[rt][0].w;
    const uint32_t w1 = j == 0 ? w[rt][1].x : j == 1 ? w[rt][1].y : j == 2 ? w[rt][1].z : w[rt][1].w;
    Cvt<T>::run(w0, af[rt][0], af[rt][2]);
    Cvt<T>::run(w1, af[rt][1], af[rt][3]);
  }
}

// Block (row block rb, token group tg) = blockIdx.x = rb * tok_groups + tg, split = blockIdx.y:
// consecutive blocks share weight rows, so a weight tile read by one token group is an L2 hit for
// the next. Each warp walks chunks warp, warp + 4, ... of the split; the 4 warps' sums are added
// in shared memory. MT: n8 token tiles (8 * MT tokens per block); SUB: mmas per k16 step (1 when
// group % 64 == 0 or per channel, 2 for group % 32 == 0, 4 for group % 16 == 0); GROUPED: scale
// the sum of each group (else: one scale per row, applied at the end).
template <typename T, int MT, int SUB, bool GROUPED>
__global__ void __launch_bounds__(kSkinnyWarps * 32) int8_skinny_kernel(const SkinnyArgs a) {
  constexpr int U = MT <= 2 ? 2 : 1;  // chunks loaded before the first is used (bytes in flight)
  __shared__ float red[kSkinnyWarps][kSkinnyRows][MT * 8 + 1];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t rb = blockIdx.x / a.tok_groups;
  const int tg = blockIdx.x % a.tok_groups;
  const int split = blockIdx.y;
  const int64_t row0 = rb * kSkinnyRows;
  const int64_t tok0 = int64_t(tg) * MT * 8;
  const int c_begin = split * a.chunks_per_split;
  const int c_end = min(a.chunks, c_begin + a.chunks_per_split);

  const T* x = static_cast<const T*>(a.x);
  // Weight rows of this lane: rt * 16 + g and rt * 16 + g + 8 (clamped rows load row 0 and are
  // never stored, keeping every load in bounds).
  const int8_t* wrow[kSkinnyRT][2];
  int64_t rows[kSkinnyRT][2];
#pragma unroll
  for (int rt = 0; rt < kSkinnyRT; ++rt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      rows[rt][h] = row0 + rt * 16 + g + 8 * h;
      wrow[rt][h] = a.w + (rows[rt][h] < a.N ? rows[rt][h] : 0) * a.K;
    }
  const T* xrow[MT];
  bool tok_ok[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int64_t tok = tok0 + mt * 8 + g;
    tok_ok[mt] = tok < a.M;
    xrow[mt] = x + (tok_ok[mt] ? tok : 0) * a.K;
  }

  float acc[kSkinnyRT][MT][4];
#pragma unroll
  for (int rt = 0; rt < kSkinnyRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[rt][mt][e] = 0.f;

  for (int c0 = c_begin + warp; c0 < c_end; c0 += kSkinnyWarps * U) {
    uint4 wv[U][kSkinnyRT][2];
    uint4 xv[U][MT][2];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * kSkinnyWarps;
      const int64_t kk = int64_t(c) * kChunk + 16 * t;
      ok[u] = c < c_end && kk < a.K;  // K % 16 == 0: a lane's 16 k are all in or all out
#pragma unroll
      for (int rt = 0; rt < kSkinnyRT; ++rt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          wv[u][rt][h] = ok[u] ? ld_stream(wrow[rt][h] + kk) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const bool v = ok[u] && tok_ok[mt];
        xv[u][mt][0] = v ? ld_nc(xrow[mt] + kk) : make_uint4(0, 0, 0, 0);
        xv[u][mt][1] = v ? ld_nc(xrow[mt] + kk + 8) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * kSkinnyWarps;
      if (c >= c_end) break;  // uniform across the warp
      if constexpr (!GROUPED) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t af[kSkinnyRT][4];
          skinny_a_frags<T>(wv[u], j, af);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint4& xq = xv[u][mt][j >> 1];
#pragma unroll
            for (int rt = 0; rt < kSkinnyRT; ++rt)
              mma16816<T>(acc[rt][mt], af[rt][0], af[rt][1], af[rt][2], af[rt][3], (j & 1) ? xq.z : xq.x,
                          (j & 1) ? xq.w : xq.y);
          }
        }
      } else {
        // One pass per sub-chunk of 64 / SUB k (inside one group): lane t's 16 k lie in
        // sub-chunk t / (4 / SUB), so in pass s the other lanes feed zeros. The scale of (row,
        // group) multiplies the pass's fp32 sums.
#pragma unroll
        for (int s = 0; s < SUB; ++s) {
          const int64_t k_sub = int64_t(c) * kChunk + s * (kChunk / SUB);
          if (k_sub >= a.K) break;
          const bool mine = SUB == 1 || (t / (4 / SUB)) == s;
          float part[kSkinnyRT][MT][4];
#pragma unroll
          for (int rt = 0; rt < kSkinnyRT; ++rt)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int e = 0; e < 4; ++e) part[rt][mt][e] = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t af[kSkinnyRT][4];
            skinny_a_frags<T>(wv[u], j, af);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              const uint4& xq = xv[u][mt][j >> 1];
#pragma unroll
              for (int rt = 0; rt < kSkinnyRT; ++rt)
                mma16816<T>(part[rt][mt], mine ? af[rt][0] : 0u, mine ? af[rt][1] : 0u, mine ? af[rt][2] : 0u,
                            mine ? af[rt][3] : 0u, (j & 1) ? xq.z : xq.x, (j & 1) ? xq.w : xq.y);
            }
          }
          const int64_t grp = k_sub / a.group;
#pragma unroll
          for (int rt = 0; rt < kSkinnyRT; ++rt) {
            const float s0 = rows[rt][0] < a.N ? __ldg(a.scale + rows[rt][0] * a.ngroups + grp) : 0.f;
            const float s1 = rows[rt][1] < a.N ? __ldg(a.scale + rows[rt][1] * a.ngroups + grp) : 0.f;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              acc[rt][mt][0] = fmaf(s0, part[rt][mt][0], acc[rt][mt][0]);
              acc[rt][mt][1] = fmaf(s0, part[rt][mt][1], acc[rt][mt][1]);
              acc[rt][mt][2] = fmaf(s1, part[rt][mt][2], acc[rt][mt][2]);
              acc[rt][mt][3] = fmaf(s1, part[rt][mt][3], acc[rt][mt][3]);
            }
          }
        }
      }
    }
  }

  // C fragment: c0,c1 = (weight row g, tokens 2t, 2t+1), c2,c3 = (row g+8, same tokens).
#pragma unroll
  for (int rt = 0; rt < kSkinnyRT; ++rt)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      red[warp][rt * 16 + g][mt * 8 + 2 * t] = acc[rt][mt][0];
      red[warp][rt * 16 + g][mt * 8 + 2 * t + 1] = acc[rt][mt][1];
      red[warp][rt * 16 + g + 8][mt * 8 + 2 * t] = acc[rt][mt][2];
      red[warp][rt * 16 + g + 8][mt * 8 + 2 * t + 1] = acc[rt][mt][3];
    }
  __syncthreads();
  // Row index fastest: consecutive threads store consecutive outputs of one token.
  for (int i = threadIdx.x; i < kSkinnyRows * MT * 8; i += blockDim.x) {
    const int r = i % kSkinnyRows, j = i / kSkinnyRows;
    const int64_t n = row0 + r, tok = tok0 + j;
    if (n >= a.N || tok >= a.M) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kSkinnyWarps; ++w) v += red[w][r][j];
    if constexpr (!GROUPED) v *= __ldg(a.scale + n);  // per channel: scale[n, 0]
    if (gridDim.y > 1) {
      a.partial[(int64_t(split) * a.M + tok) * a.N + n] = v;
    } else {
      if (a.bias) v += to_f32<T>(static_cast<const T*>(a.bias)[n]);
      static_cast<T*>(a.out)[tok * a.N + n] = from_f32<T>(v);
    }
  }
}

// out[m, n] = sum over splits of partial[s, m, n] + bias[n], in T.
template <typename T>
__global__ void int8_splitk_reduce_kernel(const float* __restrict__ partial, const T* __restrict__ bias,
                                          T* __restrict__ out, int64_t M, int64_t N, int splits) {
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += partial[s * total + i];
    if (bias) v += to_f32<T>(bias[i % N]);
    out[i] = from_f32<T>(v);
  }
}

struct SkinnyPlan {
  int mt;          // n8 token tiles per block
  int tok_groups;  // blocks along M
  int64_t row_blocks;
  int chunks;
  int splits;
  int chunks_per_split;
};

SkinnyPlan skinny_plan(int64_t M, int64_t N, int64_t K) {
  SkinnyPlan p{};
  p.mt = M <= 8 ? 1 : M <= 16 ? 2 : 4;
  p.tok_groups = int((M + 8 * p.mt - 1) / (8 * p.mt));
  if (p.tok_groups < 1) p.tok_groups = 1;
  p.row_blocks = (N + kSkinnyRows - 1) / kSkinnyRows;
  p.chunks = int((K + kChunk - 1) / kChunk);
  const int64_t base = p.row_blocks * p.tok_groups;
  // Split K across blocks only when the grid would leave SMs idle, and keep >= 4 chunks per warp.
  int64_t s = base >= kSkinnyTargetBlocks ? 1 : (kSkinnyTargetBlocks + base - 1) / base;
  const int64_t s_max = std::max<int64_t>(1, p.chunks / (kSkinnyWarps * 4));
  s = std::min<int64_t>(std::min<int64_t>(s, s_max), 64);
  p.chunks_per_split = int((p.chunks + s - 1) / s);
  p.splits = int((p.chunks + p.chunks_per_split - 1) / p.chunks_per_split);
  return p;
}

size_t skinny_workspace(int64_t M, int64_t N, int64_t K) {
  const SkinnyPlan p = skinny_plan(M, N, K);
  return p.splits > 1 ? size_t(p.splits) * size_t(M) * size_t(N) * sizeof(float) : 0;
}

template <typename T, int MT, int SUB, bool GROUPED>
cudaError_t launch_skinny_t(const SkinnyArgs& a, const SkinnyPlan& p, cudaStream_t stream) {
  const dim3 grid(unsigned(p.row_blocks * p.tok_groups), unsigned(p.splits));
  int8_skinny_kernel<T, MT, SUB, GROUPED><<<grid, kSkinnyWarps * 32, 0, stream>>>(a);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.splits == 1) return e;
  const int64_t total = a.M * a.N;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 132 * 8);
  int8_splitk_reduce_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(
      a.partial, static_cast<const T*>(a.bias), static_cast<T*>(a.out), a.M, a.N, p.splits);
  return cudaGetLastError();
}

template <typename T, int MT>
cudaError_t launch_skinny_mt(const SkinnyArgs& a, const SkinnyPlan& p, int64_t group_size, cudaStream_t s) {
  if (group_size == 0) return launch_skinny_t<T, MT, 1, false>(a, p, s);
  if (group_size % 64 == 0) return launch_skinny_t<T, MT, 1, true>(a, p, s);
  if (group_size % 32 == 0) return launch_skinny_t<T, MT, 2, true>(a, p, s);
  return launch_skinny_t<T, MT, 4, true>(a, p, s);
}

template <typename T>
cudaError_t launch_skinny(const dsattn_int8_matmul_params& prm, void* ws, cudaStream_t s) {
  const SkinnyPlan p = skinny_plan(prm.M, prm.N, prm.K);
  SkinnyArgs a{};
  a.x = prm.input;
  a.w = prm.weight;
  a.scale = prm.weight_scale;
  a.bias = prm.bias;
  a.out = prm.output;
  a.partial = static_cast<float*>(ws);
  a.M = prm.M;
  a.N = prm.N;
  a.K = prm.K;
  a.group = prm.group_size ? prm.group_size : prm.K;
  a.ngroups = prm.K / a.group;
  a.chunks = p.chunks;
  a.chunks_per_split = p.chunks_per_split;
  a.tok_groups = p.tok_groups;
  switch (p.mt) {
    case 1: return launch_skinny_mt<T, 1>(a, p, prm.group_size, s);
    case 2: return launch_skinny_mt<T, 2>(a, p, prm.group_size, s);
    default: return launch_skinny_mt<T, 4>(a, p, prm.group_size, s);
  }
}

// ---------------------------------------------------------------------------------------------
// tiled path
// ---------------------------------------------------------------------------------------------

// mma.sync tiled kernel (the tiled path where no sm_90a code is available, e.g. sm_80 builds).
// 8 warps as 2 (M) x 4 (N); warp tile 64 x (8 NT): 4 m16 tiles x NT n8 tiles. Block tile
// 128 x 32 NT, k chunk 64, STAGES-deep cp.async ring. DSATTN_INT8_PATH_TILED_MMA forces it on
// sm_90 too (tests).
constexpr int kBM = 128, kTiledThreads = 256;
constexpr int kXTileBytes = kBM * kChunk * 2;  // T elements, rows of 128 bytes (XOR-swizzled chunks)
constexpr int kRasterGroup = 16;               // M tiles per raster group (L2 reuse)

template <int NT, int STAGES>
struct TileCfg {
  static constexpr int kBN = 4 * NT * 8;
  static constexpr int kWTileBytes = kBN * kChunk;  // int8, rows of 64 bytes
  static constexpr int kStageBytes = kXTileBytes + kWTileBytes;
  static constexpr int kSmem = STAGES * kStageBytes;
};

struct TiledArgs {
  const void* x;
  const int8_t* w;
  const float* scale;
  const void* bias;
  void* out;
  int64_t M, N, K;
  int64_t group;  // effective group (K for per-channel), a multiple of 64 when GROUPED
  int64_t ngroups;
  int chunks;
  int m_tiles, n_tiles;
};

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 zero-fills the 16 bytes (rows past M/N, k past K) without reading global memory.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(addr));
  return r;
}

template <bool FIRST, typename A, typename B>
__device__ __forceinline__ auto& pick(A& a, B& b) {
  if constexpr (FIRST) return a; else return b;
}

template <typename T, bool GROUPED, int NT, int STAGES, int MINB>
__global__ void __launch_bounds__(kTiledThreads, MINB) int8_tiled_kernel(const TiledArgs a) {
  using C = TileCfg<NT, STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp >> 2, wn = warp & 3;

  // Grouped raster: blocks of one group sweep up to 16 M tiles for each N tile, so the weight
  // tile is read from HBM once and the x panel stays in L2.
  int m_tile, n_tile;
  {
    const int per_group = kRasterGroup * a.n_tiles;
    const int grp = blockIdx.x / per_group;
    const int first_m = grp * kRasterGroup;
    const int gsize = min(a.m_tiles - first_m, kRasterGroup);
    const int r = blockIdx.x % per_group;
    m_tile = first_m + r % gsize;
    n_tile = r / gsize;
  }
  const int64_t m0 = int64_t(m_tile) * kBM, n0 = int64_t(n_tile) * C::kBN;
  const T* x = static_cast<const T*>(a.x);

  auto load_stage = [&](int slot, int kc) {
    const uint32_t xs = smem_base + slot * C::kStageBytes;
    const uint32_t ws = xs + kXTileBytes;
    const int64_t k0 = int64_t(kc) * kChunk;
#pragma unroll
    for (int i = 0; i < (kBM * 8) / kTiledThreads; ++i) {  // x: 128 rows x 8 chunks of 16 B
      const int id = tid + i * kTiledThreads;
      const int row = id >> 3, ch = id & 7;
      const int64_t m = m0 + row, k = k0 + ch * 8;
      const bool v = m < a.M && k < a.K;
      cp_async16(xs + row * 128 + ((ch ^ (row & 7)) << 4), v ? static_cast<const void*>(x + m * a.K + k) : a.x, v);
    }
#pragma unroll
    for (int i = 0; i < (C::kBN * 4) / kTiledThreads; ++i) {  // w: kBN rows x 4 chunks of 16 B
      const int id = tid + i * kTiledThreads;
      const int row = id >> 2, ch = id & 3;
      const int64_t n = n0 + row, k = k0 + ch * 16;
      const bool v = n < a.N && k < a.K;
      cp_async16(ws + row * 64 + (ch << 4), v ? static_cast<const void*>(a.w + n * a.K + k) : a.w, v);
    }
  };

  float acc[4][NT][4];
  float part[GROUPED ? 4 : 1][GROUPED ? NT : 1][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  if constexpr (GROUPED) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[i][j][e] = 0.f;
  }

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < a.chunks) load_stage(s, s);
    cp_async_commit();
  }

  for (int kc = 0; kc < a.chunks; ++kc) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kc landed for every thread; slot (kc-1) % S is free again
    {
      const int pre = kc + STAGES - 1;
      if (pre < a.chunks) load_stage(pre % STAGES, pre);
      cp_async_commit();
    }
    const uint32_t xs = smem_base + (kc % STAGES) * C::kStageBytes;
    const uint32_t ws = xs + kXTileBytes;
    uint4 braw[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) braw[nt] = lds128(ws + (wn * NT * 8 + nt * 8 + g) * 64 + t * 16);
#pragma unroll
    for (int p = 0; p < 2; ++p) {  // steps 2p, 2p+1 use x elements 16t + 8p .. + 8
      uint32_t bf[2][NT][2];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int j = 2 * p + jj;
          const uint32_t wword = j == 0 ? braw[nt].x : j == 1 ? braw[nt].y : j == 2 ? braw[nt].z : braw[nt].w;
          Cvt<T>::run(wword, bf[jj][nt][0], bf[jj][nt][1]);
        }
      auto& dst = pick<GROUPED>(part, acc);  // grouped: the current group's sums
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const int ra = wm * 64 + mi * 16 + g, rb = ra + 8;
        const uint4 xa = lds128(xs + ra * 128 + (((2 * t + p) ^ (ra & 7)) << 4));
        const uint4 xb = lds128(xs + rb * 128 + (((2 * t + p) ^ (rb & 7)) << 4));
#pragma unroll
        for (int jj = 0; jj < 2; ++jj)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            mma16816<T>(dst[mi][nt], jj ? xa.z : xa.x, jj ? xb.z : xb.x, jj ? xa.w : xa.y, jj ? xb.w : xb.y,
                        bf[jj][nt][0], bf[jj][nt][1]);
      }
    }
    if constexpr (GROUPED) {
      const int64_t kend = int64_t(kc + 1) * kChunk;
      if (kend % a.group == 0 || kc + 1 == a.chunks) {  // last chunk of a group
        const int64_t grp = (int64_t(kc) * kChunk) / a.group;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int64_t n = n0 + wn * NT * 8 + nt * 8 + 2 * t;
          const float s0 = n < a.N ? __ldg(a.scale + n * a.ngroups + grp) : 0.f;
          const float s1 = n + 1 < a.N ? __ldg(a.scale + (n + 1) * a.ngroups + grp) : 0.f;
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) {
            acc[mi][nt][0] = fmaf(s0, part[mi][nt][0], acc[mi][nt][0]);
            acc[mi][nt][1] = fmaf(s1, part[mi][nt][1], acc[mi][nt][1]);
            acc[mi][nt][2] = fmaf(s0, part[mi][nt][2], acc[mi][nt][2]);
            acc[mi][nt][3] = fmaf(s1, part[mi][nt][3], acc[mi][nt][3]);
#pragma unroll
            for (int e = 0; e < 4; ++e) part[mi][nt][e] = 0.f;
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue. C fragment: c0,c1 = (token g, features 2t, 2t+1), c2,c3 = (token g+8, same).
  T* out = static_cast<T*>(a.out);
  const T* bias = static_cast<const T*>(a.bias);
  const bool pair_store = (a.N % 2) == 0;  // T2 stores need even rows (output base is 16-aligned)
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int64_t n = n0 + wn * NT * 8 + nt * 8 + 2 * t;
    if (n >= a.N) continue;
    const bool n1 = n + 1 < a.N;
    float s0 = 1.f, s1 = 1.f;
    if constexpr (!GROUPED) {
      s0 = __ldg(a.scale + n);
      s1 = n1 ? __ldg(a.scale + n + 1) : 0.f;
    }
    const float b0 = bias ? to_f32<T>(bias[n]) : 0.f;
    const float b1 = (bias && n1) ? to_f32<T>(bias[n + 1]) : 0.f;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm * 64 + mi * 16 + g + 8 * h;
        if (m >= a.M) continue;
        const T v0 = from_f32<T>(fmaf(acc[mi][nt][2 * h], s0, b0));
        const T v1 = from_f32<T>(fmaf(acc[mi][nt][2 * h + 1], s1, b1));
        T* o = out + m * a.N + n;
        if (pair_store) {
          struct __align__(4) T2 { T lo, hi; };
          *reinterpret_cast<T2*>(o) = T2{v0, v1};
        } else {
          o[0] = v0;
          if (n1) o[1] = v1;
        }
      }
  }
}

// Kernel arguments of both tiled paths (mma.sync and wgmma), for block tiles kBM x bn.
TiledArgs tiled_args(const dsattn_int8_matmul_params& prm, int bn) {
  TiledArgs a{};
  a.x = prm.input;
  a.w = prm.weight;
  a.scale = prm.weight_scale;
  a.bias = prm.bias;
  a.out = prm.output;
  a.M = prm.M;
  a.N = prm.N;
  a.K = prm.K;
  a.group = prm.group_size ? prm.group_size : prm.K;
  a.ngroups = prm.K / a.group;
  a.chunks = int((prm.K + kChunk - 1) / kChunk);
  a.m_tiles = int((prm.M + kBM - 1) / kBM);
  a.n_tiles = int((prm.N + bn - 1) / bn);
  return a;
}

template <typename T, bool GROUPED, int NT, int STAGES, int MINB>
cudaError_t launch_tiled_t(const dsattn_int8_matmul_params& prm, cudaStream_t s) {
  using C = TileCfg<NT, STAGES>;
  const TiledArgs a = tiled_args(prm, C::kBN);
  auto kern = int8_tiled_kernel<T, GROUPED, NT, STAGES, MINB>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (e != cudaSuccess) return e;
  const int64_t blocks = int64_t(a.m_tiles) * a.n_tiles;
  kern<<<unsigned(blocks), kTiledThreads, C::kSmem, s>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tiled_mma(const dsattn_int8_matmul_params& prm, cudaStream_t s) {
  if (prm.group_size != 0) return launch_tiled_t<T, true, 4, 4, 1>(prm, s);
  return launch_tiled_t<T, false, 4, 4, 2>(prm, s);
}

// ---------------------------------------------------------------------------------------------
// tiled path on Hopper: CUTLASS's warp-specialised mixed-input GEMM (sm90/int8_gemm_sm90.h), in
// sm_90a code only, built when the CUTLASS headers were found (DSATTN_HAVE_SM90_LIBS).
// ---------------------------------------------------------------------------------------------

// True when the CUTLASS kernels can run this call: built, compute capability 9.0 (their only
// code is sm_90a), and a shape they take (N % 8 == 0, group_size 0 or % 64 == 0).
bool cutlass_usable(const dsattn_int8_matmul_params& p) {
#if DSATTN_HAVE_SM90_LIBS
  if (!dsattn::int8_sm90::shape_supported(p.M, p.N, p.K, p.group_size)) return false;
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  (void)p;
  return false;
#endif
}

// Scratch of the CUTLASS path for these sizes (0 where it can never run them).
size_t cutlass_workspace(const dsattn_int8_matmul_params& p) {
#if DSATTN_HAVE_SM90_LIBS
  const int64_t m = std::max<int64_t>(p.M, 1);  // the need does not depend on M
  if (p.dtype == DSATTN_FLOAT32 || !dsattn::int8_sm90::shape_supported(m, p.N, p.K, p.group_size)) return 0;
  return dsattn::int8_sm90::workspace_size(p.N, p.K, p.group_size);
#else
  (void)p;
  return 0;
#endif
}

#if DSATTN_HAVE_SM90_LIBS
// The kernel of configuration K for the call's dtype and scale mode.
template <dsattn::int8_sm90::KernelId K>
cudaError_t run_cutlass_kernel(const dsattn::int8_sm90::GemmArgs& a, bool f16, void* ws, cudaStream_t s) {
  namespace c = dsattn::int8_sm90;
  if (a.group_size == 0) return f16 ? c::run_f16_channel<K>(a, ws, s) : c::run_bf16_channel<K>(a, ws, s);
  return f16 ? c::run_f16_group<K>(a, ws, s) : c::run_bf16_group<K>(a, ws, s);
}
#endif

// The CUTLASS kernel of the call's scale mode and dtype, in the configuration int8_gemm_sm90.h's
// table gives its M and N (cutlass_usable(prm) was checked). A KernelId added there gets its case.
template <typename T>
cudaError_t launch_cutlass(const dsattn_int8_matmul_params& prm, void* ws, cudaStream_t s) {
#if DSATTN_HAVE_SM90_LIBS
  namespace c = dsattn::int8_sm90;
  const c::GemmArgs a{prm.input, prm.weight, prm.weight_scale, prm.bias, prm.output,
                      prm.M, prm.N, prm.K, prm.group_size};
  constexpr bool f16 = std::is_same<T, __half>::value;
  switch (c::choose_kernel(prm.M, prm.N)) {
    case c::KernelId::k128x128: return run_cutlass_kernel<c::KernelId::k128x128>(a, f16, ws, s);
    case c::KernelId::k128x256: return run_cutlass_kernel<c::KernelId::k128x256>(a, f16, ws, s);
  }
  return cudaErrorInvalidValue;
#else
  (void)prm;
  (void)ws;
  (void)s;
  return cudaErrorNotSupported;
#endif
}

// ---------------------------------------------------------------------------------------------
// fp32 path: one warp per (row n, 4 tokens); lanes stride over 16-k pieces (one scale each).
// ---------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(256) int8_fp32_kernel(const float* __restrict__ x, const int8_t* __restrict__ w,
                                                        const float* __restrict__ scale,
                                                        const float* __restrict__ bias, float* __restrict__ out,
                                                        int64_t M, int64_t N, int64_t K, int64_t group) {
  const int lane = threadIdx.x & 31;
  const int64_t gw = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t tok_groups = (M + 3) / 4;
  if (gw >= N * tok_groups) return;
  const int64_t n = gw / tok_groups, tok0 = (gw % tok_groups) * 4;
  const int64_t ngroups = K / group;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t k = int64_t(lane) * 16; k < K; k += 32 * 16) {
    const int4 q = __ldg(reinterpret_cast<const int4*>(w + n * K + k));
    const float s = __ldg(scale + n * ngroups + k / group);
    const int8_t* qb = reinterpret_cast<const int8_t*>(&q);
    float wf[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) wf[e] = s * float(qb[e]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (tok0 + i >= M) break;
      const float4* xp = reinterpret_cast<const float4*>(x + (tok0 + i) * K + k);
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const float4 xv = __ldg(xp + v);
        acc[i] = fmaf(xv.x, wf[4 * v], acc[i]);
        acc[i] = fmaf(xv.y, wf[4 * v + 1], acc[i]);
        acc[i] = fmaf(xv.z, wf[4 * v + 2], acc[i]);
        acc[i] = fmaf(xv.w, wf[4 * v + 3], acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
  }
  if (lane < 4 && tok0 + lane < M) {
    const float v = lane == 0 ? acc[0] : lane == 1 ? acc[1] : lane == 2 ? acc[2] : acc[3];
    out[(tok0 + lane) * N + n] = v + (bias ? bias[n] : 0.f);
  }
}

cudaError_t launch_fp32(const dsattn_int8_matmul_params& p, cudaStream_t s) {
  const int64_t warps = p.N * ((p.M + 3) / 4);
  const int64_t blocks = (warps + 7) / 8;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  int8_fp32_kernel<<<unsigned(blocks), 256, 0, s>>>(
      static_cast<const float*>(p.input), p.weight, p.weight_scale, static_cast<const float*>(p.bias),
      static_cast<float*>(p.output), p.M, p.N, p.K, p.group_size ? p.group_size : p.K);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------
// host API
// ---------------------------------------------------------------------------------------------

bool aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

size_t elem_size(dsattn_dtype d) { return d == DSATTN_FLOAT32 ? 4 : 2; }

// Shape / attribute checks that do not involve pointers (shared by the workspace query).
bool shape_ok(const dsattn_int8_matmul_params* p) {
  if (!p) return false;
  if (p->dtype != DSATTN_FLOAT32 && p->dtype != DSATTN_FLOAT16 && p->dtype != DSATTN_BFLOAT16) return false;
  if (p->M < 0 || p->N < 1 || p->K < 1 || p->K % DSATTN_INT8_K_MULTIPLE != 0) return false;
  if (p->group_size < 0) return false;
  if (p->group_size > 0 && (p->K % p->group_size != 0 || p->group_size % DSATTN_INT8_GROUP_MULTIPLE != 0))
    return false;
  // Grid limits: skinny blocks = ceil(N/32) * ceil(M/8..32), tiled blocks = ceil(M/128) * ceil(N/128).
  const int64_t lim = 0x7fffffff;
  if (p->N > lim / 2 || p->K > lim / 2) return false;
  if (p->M > 0 && (p->N + kSkinnyRows - 1) / kSkinnyRows > lim / ((p->M + 31) / 32 + 1)) return false;
  return true;
}

bool tiled_supported(const dsattn_int8_matmul_params* p) {
  return p->dtype != DSATTN_FLOAT32 && (p->group_size == 0 || p->group_size % 64 == 0);
}

// Crossovers between the weight-streaming skinny kernel and the tiled kernels: the largest M that
// runs skinny, by N. Up to 32 tokens one skinny block holds every token (4 n8 tiles), so the
// weights stream from HBM once at the full rate (1.7-1.8x cuBLAS fp16 at M <= 16); past 32 it
// reads each weight tile again per 32-token group. The CUTLASS kernel's time stays nearly flat up
// to its token tile, but with few output features it has few tiles for 132 SMs: at N 4096, M 64
// the skinny kernel took 17.8 us against the CUTLASS kernel's 27.2 us (H100, fp16 per channel),
// while at N 12288 the CUTLASS kernel is ahead from M 64 on. First row with N <= max_n wins.
struct SkinnyCrossover {
  int64_t max_n, max_m;
};
constexpr SkinnyCrossover kSkinnyMaxMCutlass[] = {
    {4096, 64},
    {INT64_MAX, 32},
};
int64_t skinny_max_m_cutlass(int64_t N) {
  for (const SkinnyCrossover& c : kSkinnyMaxMCutlass)
    if (N <= c.max_n) return c.max_m;
  return kSkinnyMaxMCutlass[sizeof(kSkinnyMaxMCutlass) / sizeof(kSkinnyMaxMCutlass[0]) - 1].max_m;
}
// Where the CUTLASS kernel cannot run (no sm_90a build, another device, N % 8 != 0), the tiled
// path is the mma.sync kernel; 160 is the crossover measured on the H100 against the earlier
// (faster) wgmma tiled kernel, so it is a lower bound for the mma.sync kernel's crossover.
constexpr int64_t kSkinnyMaxM = 160;

int choose_path(const dsattn_int8_matmul_params* p, bool cutlass) {
  if (p->dtype == DSATTN_FLOAT32) return DSATTN_INT8_PATH_FP32;
  if (!tiled_supported(p) || p->M <= (cutlass ? skinny_max_m_cutlass(p->N) : kSkinnyMaxM))
    return DSATTN_INT8_PATH_SKINNY;
  return DSATTN_INT8_PATH_TILED;
}

}  // namespace

extern "C" size_t dsattn_int8_matmul_workspace_size(const dsattn_int8_matmul_params* p) {
  if (!shape_ok(p) || p->dtype == DSATTN_FLOAT32 || p->M == 0) return 0;
  // For a fixed token-group count the split count is fixed and the need grows with M, so the
  // maximum over M' <= M is at the largest M' of each token-group count; splits stop once the
  // grid is big enough (at most kSkinnyTargetBlocks token groups).
  size_t need = 0;
  const int64_t cands[2] = {8, 16};
  for (int64_t m : cands) need = std::max(need, skinny_workspace(std::min(m, p->M), p->N, p->K));
  for (int64_t tg = 1; tg <= kSkinnyTargetBlocks; ++tg) {
    const int64_t m = std::min<int64_t>(tg * 32, p->M);
    need = std::max(need, skinny_workspace(m, p->N, p->K));
    if (m == p->M) break;
  }
  // The CUTLASS path's scratch (group scales) does not depend on M; required for every M, since
  // params.path may force the tiled path at any M.
  return std::max(need, cutlass_workspace(*p));
}

extern "C" cudaError_t dsattn_int8_matmul(const dsattn_int8_matmul_params* p, void* workspace, size_t workspace_bytes,
                                          cudaStream_t stream) {
  if (!shape_ok(p)) return cudaErrorInvalidValue;
  int path = p->path;
  if (path < DSATTN_INT8_PATH_AUTO || path > DSATTN_INT8_PATH_TILED_MMA) return cudaErrorInvalidValue;
  if (p->M == 0) return cudaSuccess;
  if (!p->input || !p->weight || !p->weight_scale || !p->output) return cudaErrorInvalidValue;
  const size_t es = elem_size(p->dtype);
  if (!aligned(p->input, 16) || !aligned(p->weight, 16) || !aligned(p->output, 16) ||
      !aligned(p->weight_scale, 4) || (p->bias && !aligned(p->bias, es)))
    return cudaErrorInvalidValue;
  const bool cutlass = (path == DSATTN_INT8_PATH_AUTO || path == DSATTN_INT8_PATH_TILED) && tiled_supported(p) &&
                       cutlass_usable(*p);
  if (path == DSATTN_INT8_PATH_AUTO) path = choose_path(p, cutlass);
  if ((path == DSATTN_INT8_PATH_FP32) != (p->dtype == DSATTN_FLOAT32)) return cudaErrorInvalidValue;
  if ((path == DSATTN_INT8_PATH_TILED || path == DSATTN_INT8_PATH_TILED_MMA) && !tiled_supported(p))
    return cudaErrorInvalidValue;
  // One rule for every path and device (the plugin sizes the workspace once): the scratch this M
  // needs on any path, which dsattn_int8_matmul_workspace_size bounds.
  const size_t need =
      p->dtype == DSATTN_FLOAT32 ? 0 : std::max(skinny_workspace(p->M, p->N, p->K), cutlass_workspace(*p));
  if (need > 0 && (!workspace || workspace_bytes < need)) return cudaErrorInvalidValue;
  const bool f16 = p->dtype == DSATTN_FLOAT16;
  switch (path) {
    case DSATTN_INT8_PATH_FP32: return launch_fp32(*p, stream);
    case DSATTN_INT8_PATH_TILED:
      if (cutlass)
        return f16 ? launch_cutlass<__half>(*p, workspace, stream) : launch_cutlass<__nv_bfloat16>(*p, workspace, stream);
      return f16 ? launch_tiled_mma<__half>(*p, stream) : launch_tiled_mma<__nv_bfloat16>(*p, stream);
    case DSATTN_INT8_PATH_TILED_MMA:
      return f16 ? launch_tiled_mma<__half>(*p, stream) : launch_tiled_mma<__nv_bfloat16>(*p, stream);
    default:
      return f16 ? launch_skinny<__half>(*p, workspace, stream) : launch_skinny<__nv_bfloat16>(*p, workspace, stream);
  }
}
