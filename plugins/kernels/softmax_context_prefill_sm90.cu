// dsattn::SoftmaxContext prefill for Hopper (sm_90a): wgmma tensor cores, fp16/bf16, D = 128.
// Runs the cases FlashInfer's kernel (sm90/prefill_fa3.h) does not express: ALiBi, a local window,
// scale <= 0 (softmax_context.cu: fa3_route); the others take FlashInfer's kernel.
//
// Grid (H, ceil(S / 128), B), 256 threads = 2 warpgroups; warpgroup w owns query rows
// [64 w, 64 w + 64) of a 128-row tile. Q (rotated here, from qkv and the append kernel's cos/sin
// table: q never goes through device memory), K and V tiles of 128 keys live in shared memory in
// the 128-byte-swizzled layout the wgmma descriptors describe: a [128][128] tile is stored as two
// [128 rows][64 elements] atoms of 16 KiB (row r at 128 r bytes, 16-byte chunk c at (c ^ (r & 7))).
//   S = Q K^T : wgmma m64n128k16, A = Q (smem, K-major), B = K tile (smem, K-major), 8 k-steps;
//   online softmax in fp32 registers (log2 domain), masks only on tiles that straddle a boundary;
//   O += P V  : wgmma m64n128k16, A = P (registers: the accumulator layout of S is the A-fragment
//               layout, packed to T), B = V tile (smem, MN-major: transposed by the descriptor).
// K/V tiles stream through three stages (cp.async, 16-byte chunks, zero-fill outside the key
// range): the loads of tile j + 1 run while tile j is computed, and the softmax of tile j runs while
// P V of tile j - 1 is on the tensor cores. Semantics identical to
// softmax_context_prefill.cu (masks, ALiBi, start_pos, GQA, ragged rows; rows with no visible key
// get zeros). Built only for sm_90a (the body is empty elsewhere); the host checks the device and
// the binary before dispatching here (prefill_sm90_usable).
#include <type_traits>

#include "attn_common.cuh"
#include "sm90_ptx.cuh"

namespace dsattn {
namespace attn {
namespace {

using namespace dsattn::sm90;

constexpr int kBM = 128, kBN = 128, kD = 128, kThreads = 256;
constexpr int kTileBytes = 128 * kD * 2;          // one [128][128] 16-bit tile (two 16 KiB atoms)
constexpr int kAtomBytes = 128 * 128;             // [128 rows][64 elements] of 16-bit
// Three K/V stages: the softmax of tile j overlaps P V of tile j - 1 (see the main loop).
constexpr int kStages = 3;
constexpr int kSmem = (1 + 2 * kStages) * kTileBytes + 1024;  // Q + stages x (K, V) + 1 KiB alignment

#define DSATTN_PREFILL_SM90_DEVICE (defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#if !defined(__CUDA_ARCH__) || DSATTN_PREFILL_SM90_DEVICE

template <typename T>
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int acc_in);
template <typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db);

template <>
__device__ __forceinline__ void wgmma_ss<__half>(float (&d)[64], uint64_t da, uint64_t db, int acc_in) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(acc_in));
}

template <>
__device__ __forceinline__ void wgmma_rs<__half>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}

template <>
__device__ __forceinline__ void wgmma_ss<__nv_bfloat16>(float (&d)[64], uint64_t da, uint64_t db, int acc_in) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(acc_in));
}

template <>
__device__ __forceinline__ void wgmma_rs<__nv_bfloat16>(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
}

// Descriptors, 128-byte swizzle (bit 62), 8-row groups 1024 B apart (stride byte offset).
// K-major (Q, K): the leading byte offset is unused; a k-step of 16 elements adds 32 B.
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}
// MN-major (V as B of P V: N = head dim contiguous): leading byte offset = distance between the
// two 64-element atoms of N (16 KiB), stride byte offset = 8 key rows (1024 B); a k-step of 16
// keys adds 16 rows = 2048 B.
__device__ __forceinline__ uint64_t desc_mnmajor(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(kAtomBytes >> 4) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool ok) {
  const int n = ok ? 16 : 0;  // src-size 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void sts128(uint32_t addr, uint4 v) {
  asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}
// Byte offset of (row, 16-byte chunk c of 16) inside a swizzled [128][128] tile.
__device__ __forceinline__ uint32_t tile_off(int row, int c) {
  return (uint32_t)((c >> 3) * kAtomBytes + row * 128 + (((c & 7) ^ (row & 7)) << 4));
}

#endif

// Rotated q chunk (elements d0 .. d0 + 7 of q head h of token s), rounded to T exactly as the
// append kernel rounds it for the mma.sync path; cos/sin from the append kernel's table.
template <typename T>
__device__ __forceinline__ uint4 q_chunk(const Args& a, const T* src, const float2* tab, int d0) {
  union { uint4 u; T e[8]; } in, pin, out;
  in.u = *reinterpret_cast<const uint4*>(src + d0);
  const int rd = a.rotary_dim;
  if (d0 >= rd) return in.u;
  const int half = rd >> 1;
  const bool chunk_pair = a.rotary_style == 0 && (half & 7) == 0;  // partner chunk 16-byte aligned
  if (chunk_pair) pin.u = *reinterpret_cast<const uint4*>(src + (d0 < half ? d0 + half : d0 - half));
  out.u = in.u;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int d = d0 + e;
    if (d < rd) {
      int f;
      float sign, xp;
      if (a.rotary_style == 0) {
        f = d < half ? d : d - half;
        sign = d < half ? -1.f : 1.f;
        xp = chunk_pair ? to_f(pin.e[e]) : to_f(src[d < half ? d + half : d - half]);
      } else {
        f = d >> 1;
        sign = (d & 1) ? 1.f : -1.f;
        xp = to_f(in.e[e ^ 1]);
      }
      const float2 cs = tab[f];
      out.e[e] = from_f<T>(to_f(in.e[e]) * cs.x + sign * xp * cs.y);
    }
  }
  return out.u;
}

#if !defined(__CUDA_ARCH__) || DSATTN_PREFILL_SM90_DEVICE
// Online-softmax step for one S tile held in the wgmma accumulator layout (thread rows r0, r0 + 8;
// element 4 nt + e is key n0 + 8 nt + 2 (lane & 3) + (e & 1), row e >> 1). On return s holds the
// unnormalised probabilities exp2(x - m), mrow / lrow are updated and corr is the factor the
// caller applies to O (after the previous P V has landed).
// kGeneral (ALiBi, or a scale <= 0): x = scale_log2 s + slope (j - s0), as the mma.sync kernel.
// Otherwise the scale is folded into the exponent (scale_log2 > 0 keeps the order of the raw
// scores): max over raw scores, p = exp2(fma(s, scale_log2, -m)): no per-score bias, conversion or
// separate scaling. Masks only on tiles that straddle a boundary, as a separate pass.
template <bool kGeneral>
__device__ __forceinline__ void softmax_tile(const Args& a, float (&s)[64], int n0, int s0, int L, int p_min,
                                             int p_max, const int (&prow)[2], float slope, float (&mrow)[2],
                                             float (&lrow)[2], float (&corr)[2], int lane) {
  const bool need_mask = n0 < s0 || n0 + kBN > L || (a.causal && n0 + kBN - 1 > p_min) ||
                         (a.window > 0 && n0 <= p_max - a.window);
  const int c0 = (lane & 3) << 1;
  if (kGeneral) {
    // (float)(j - s0) as an exact float sum (|j - s0| < 2^24): one conversion per tile, not per score.
    const float cb = (float)(n0 - s0 + c0);
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[4 * nt + e] = fmaf(s[4 * nt + e], a.scale_log2, slope * (cb + (float)(nt * 8 + (e & 1))));
    }
  }
  if (need_mask) {
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!key_visible(a, n0 + nt * 8 + c0 + (e & 1), prow[e >> 1], s0, L)) s[4 * nt + e] = -INFINITY;
    }
  }
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < kBN / 8; ++nt) {
    mx[0] = fmaxf(mx[0], fmaxf(s[4 * nt + 0], s[4 * nt + 1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
  }
  float ms[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    if (!kGeneral) mx[i] *= a.scale_log2;  // raw -> log2 domain (-inf stays -inf: scale > 0)
    mx[i] = fmaxf(mx[i], mrow[i]);
    ms[i] = mx[i] == -INFINITY ? 0.f : mx[i];
    corr[i] = fast_exp2(mrow[i] - ms[i]);
    mrow[i] = mx[i];
  }
  const float nms[2] = {-ms[0], -ms[1]};
  float ls[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // two partial sums per row: shorter add chains
#pragma unroll
  for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float x = kGeneral ? s[4 * nt + e] + nms[e >> 1] : fmaf(s[4 * nt + e], a.scale_log2, nms[e >> 1]);
      const float p = fast_exp2(x);
      s[4 * nt + e] = p;
      ls[e >> 1][nt & 1] += p;
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) lrow[i] = lrow[i] * corr[i] + (ls[i][0] + ls[i][1]);
}

template <typename T>
__device__ __forceinline__ void pack_p(uint32_t (&pf)[kBN / 16][4], const float (&s)[64]) {
#pragma unroll
  for (int nt = 0; nt < kBN / 8; ++nt) {
    pf[nt >> 1][(nt & 1) * 2 + 0] = pack2<T>(s[4 * nt + 0], s[4 * nt + 1]);
    pf[nt >> 1][(nt & 1) * 2 + 1] = pack2<T>(s[4 * nt + 2], s[4 * nt + 3]);
  }
}
__device__ __forceinline__ void scale_o(float (&o)[64], const float (&corr)[2]) {
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd) {
    o[4 * nd + 0] *= corr[0];
    o[4 * nd + 1] *= corr[0];
    o[4 * nd + 2] *= corr[1];
    o[4 * nd + 3] *= corr[1];
  }
}
// Keeps P's registers allocated until the wgmma that reads them has been waited for.
__device__ __forceinline__ void fence_pf(uint32_t (&pf)[kBN / 16][4]) {
#pragma unroll
  for (int i = 0; i < kBN / 16; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(pf[i][j])::"memory");
}
template <typename T>
__device__ __forceinline__ void issue_s(float (&s)[64], uint32_t qa, uint32_t kb) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    const uint32_t koff = (kk >> 2) * kAtomBytes + (kk & 3) * 32;
    wgmma_ss<T>(s, desc_kmajor(qa + koff), desc_kmajor(kb + koff), kk > 0);
  }
}
template <typename T>
__device__ __forceinline__ void issue_pv(float (&o)[64], const uint32_t (&pf)[kBN / 16][4], uint32_t vb) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T>(o, pf[kk], desc_mnmajor(vb + kk * 2048));
}
#endif

template <typename T, bool kGeneral>
__global__ void __launch_bounds__(kThreads, 1) prefill_kernel_sm90(Args a) {
#if DSATTN_PREFILL_SM90_DEVICE
  extern __shared__ unsigned char smem_raw[];
  __shared__ int s_flag;
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t sQ = (raw + 1023u) & ~1023u;  // swizzle atoms are 1024-byte aligned
  const uint32_t sK0 = sQ + kTileBytes;        // K stage s at sK0 + 2 s tiles, V right after it
  if (first_bad_row(a, &s_flag) >= 0) return;

  // Heads fastest in the grid, heaviest (causal) tiles first: every head's heaviest tiles run in the
  // first wave (a longest-first schedule). Query tiles fastest (K/V reuse in L2) measured 13 % slower
  // at batch 1 and 1 % faster at batch 8 on the H100.
  const int mb = gridDim.y - 1 - blockIdx.y;
  const int h = blockIdx.x, b = blockIdx.z, hk = h / a.group;
  const TileKeys tk = tile_keys<kBM, kBN>(a, b, mb);
  const int seq = tk.seq, s0 = tk.s0, L = tk.L, m0 = tk.m0, rows_here = tk.rows_here;
  const int p_min = tk.p_min, p_max = tk.p_max, n_start = tk.n_start, nblk = tk.nblk;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2, wq = warp & 3;
  const T* kg = static_cast<const T*>(a.kc) + cache_off(a, b, hk, 0);
  const T* vg = static_cast<const T*>(a.vc) + cache_off(a, b, hk, 0);

  auto load_kv = [&](int stage, int n0) {
    const uint32_t dk = sK0 + stage * 2 * kTileBytes, dv = dk + kTileBytes;
#pragma unroll 4
    for (int c = tid; c < kBN * (kD / 8); c += kThreads) {
      const int r = c >> 4, ch = c & 15, j = n0 + r;
      // zero-fill outside the tile's visible keys: what a masked cache row holds (even NaN) never
      // enters P V (attn_common.cuh: non-finite values)
      const bool ok = j >= tk.lo && j < tk.hi;
      const int64_t off = (ok ? (int64_t)j * kD : 0) + ch * 8;
      cp_async16(dk + tile_off(r, ch), kg + off, ok);
      cp_async16(dv + tile_off(r, ch), vg + off, ok);
    }
  };
  if (nblk > 0) load_kv(0, n_start);
  cp_async_commit();

  // Q tile: read from qkv, rotated, rounded to T, stored swizzled (rows past S: zeros).
  {
    const T* qkv = static_cast<const T*>(a.qkv);
    const float2* tab = static_cast<const float2*>(a.q_ws);
    const int hr = a.rotary_dim >> 1;
#pragma unroll 4
    for (int c = tid; c < kBM * (kD / 8); c += kThreads) {
      const int r = c >> 4, ch = c & 15;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows_here) {
        const int s = m0 + r;
        v = q_chunk<T>(a, qkv + qkv_row(a, b, s) + q_off(a, h), tab + ((int64_t)b * a.S + s) * hr, ch * 8);
      }
      sts128(sQ + tile_off(r, ch), v);
    }
    fence_proxy_async();  // generic-proxy stores, read next by the tensor cores
  }

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const float slope = a.alibi ? a.alibi[h] * kLog2e : 0.f;
  const int r0 = wg * 64 + wq * 16 + (lane >> 2);  // tile rows of this thread: r0 and r0 + 8
  const int prow[2] = {seq + m0 + r0, seq + m0 + r0 + 8};
  const uint32_t qa = sQ + wg * 64 * 128;  // this warpgroup's 64 rows (inside each atom)
  float s[64], corr[2];
  uint32_t pf[kBN / 16][4];
  constexpr uint32_t kExpMask = std::is_same<T, __nv_bfloat16>::value ? 0x7f80u : 0x7c00u;  // exponent bits of T
  bool nonfinite_zeroed = false;  // a partial tile's NaN / inf values were zeroed (rare path)

  // Three K/V stages. Step it: S(it) = Q K(it)^T and O += P(it-1) V(it-1) are issued together;
  // the softmax of S(it) runs while P V is still on the tensor cores (wgmma.wait_group 1), then O
  // is rescaled after wait_group 0. At the barrier of step it every warpgroup has waited for
  // P(it-2) V(it-2), so tile it+1 may overwrite stage (it+1) % 3 = (it-2) % 3.
  int st = 0;  // stage of tile it
  for (int it = 0; it < nblk; ++it) {
    const int n0 = n_start + it * kBN;
    const int stp = st == 0 ? 2 : st - 1, stn = st == 2 ? 0 : st + 1;
    cp_async_wait0();
    fence_proxy_async();
    __syncthreads();
    if (it + 1 < nblk) load_kv(stn, n0 + kBN);
    cp_async_commit();
    if (block_partial<kBN>(a, tk, n0)) {
      // Keys seen by some rows only (attn_common.cuh): scan V of this tile for NaN / inf; in the
      // rare case, zero those values before P V of this tile is issued (next step, or after the
      // loop: both after this proxy fence and barrier).
      const uint32_t vt = sK0 + st * 2 * kTileBytes + kTileBytes;
      uint32_t bad = 0;
#pragma unroll 4
      for (int c = tid; c < kBN * (kD / 8); c += kThreads) {
        const uint4 m = nonfinite16_mask(lds128(vt + c * 16), kExpMask);
        bad |= m.x | m.y | m.z | m.w;
      }
      if (__syncthreads_or(bad != 0)) {
        for (int c = tid; c < kBN * (kD / 8); c += kThreads) {
          const uint4 v = lds128(vt + c * 16), m = nonfinite16_mask(v, kExpMask);
          sts128(vt + c * 16, make_uint4(v.x & ~m.x, v.y & ~m.y, v.z & ~m.z, v.w & ~m.w));
        }
        nonfinite_zeroed = true;
        fence_proxy_async();
        __syncthreads();
      }
    }
    const uint32_t kb = sK0 + st * 2 * kTileBytes;
    wg_fence();
    issue_s<T>(s, qa, kb);
    wg_commit();
    if (it > 0) {
      issue_pv<T>(o, pf, sK0 + stp * 2 * kTileBytes + kTileBytes);
      wg_commit();
      wg_wait<1>();
    } else {
      wg_wait<0>();
    }
    fence_regs(s);
    softmax_tile<kGeneral>(a, s, n0, s0, L, p_min, p_max, prow, slope, mrow, lrow, corr, lane);
    wg_wait<0>();
    fence_regs(o);
    fence_pf(pf);
    scale_o(o, corr);
    pack_p<T>(pf, s);
    st = stn;
  }
  if (nblk > 0) {
    const int stp = st == 0 ? 2 : st - 1;
    fence_regs(o);
    wg_fence();
    issue_pv<T>(o, pf, sK0 + stp * 2 * kTileBytes + kTileBytes);
    wg_commit();
    wg_wait<0>();
    fence_regs(o);
  }
  cp_async_wait0();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
  }
  // No visible key: zeros. A NaN sum (NaN logit) propagates.
  const float inv[2] = {lrow[0] == 0.f ? 0.f : 1.f / lrow[0], lrow[1] == 0.f ? 0.f : 1.f / lrow[1]};
  if (nonfinite_zeroed) {  // uniform over the CTA
    const TileKeys tk2 = tile_keys<kBM, kBN>(a, b, mb);  // reloaded: nothing stays live for this path
    // bit 2 nd + e of poison0 / poison1 (hf 0 / 1): element 4 nd + 2 hf + e of o (column 8 nd + 2 (lane & 3) + e)
    uint32_t poison0 = 0u, poison1 = 0u;
#pragma unroll 1
    for (int k = 0; k < 2 * (kD / 4); ++k) {
      const int hf = k / (kD / 4), bit = k % (kD / 4);
      if (r0 + hf * 8 < rows_here &&
          partial_value_nonfinite<kBN>(a, tk2, vg, hf ? prow[1] : prow[0], (bit >> 1) * 8 + ((lane & 3) << 1) + (bit & 1)))
        (hf ? poison1 : poison0) |= 1u << bit;
    }
#pragma unroll
    for (int i = 0; i < 64; ++i)
      if ((((i >> 1) & 1 ? poison1 : poison0) >> ((i >> 2) * 2 + (i & 1))) & 1u) o[i] = NAN;
  }
  T* out = static_cast<T*>(a.ctx);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = r0 + hf * 8;
    if (r < rows_here) {
      T* orow = out + (((int64_t)b * a.S + m0 + r) * a.H + h) * kD + ((lane & 3) << 1);
#pragma unroll
      for (int nd = 0; nd < kD / 8; ++nd)
        *reinterpret_cast<uint32_t*>(orow + nd * 8) = pack2<T>(o[4 * nd + 2 * hf] * inv[hf], o[4 * nd + 2 * hf + 1] * inv[hf]);
    }
  }
#endif
}

template <typename T>
bool usable_t() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return false;
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, prefill_kernel_sm90<T, false>) != cudaSuccess) return false;
  return attr.binaryVersion == 90;  // sm_90a machine code present (not a PTX JIT of another arch)
}

template <typename T, bool kGeneral>
cudaError_t launch_tg(const Args& a, cudaStream_t st) {
  cudaError_t e = cudaFuncSetAttribute(prefill_kernel_sm90<T, kGeneral>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return e;
  dim3 grid(a.H, (a.S + kBM - 1) / kBM, a.B);
  prefill_kernel_sm90<T, kGeneral><<<grid, kThreads, kSmem, st>>>(a);
  return cudaGetLastError();
}
template <typename T>
cudaError_t launch_t(const Args& a, cudaStream_t st) {
  // The folded-scale softmax needs scale > 0 (it takes the max of the raw scores) and no ALiBi.
  if (a.alibi || !(a.scale_log2 > 0.f)) return launch_tg<T, true>(a, st);
  return launch_tg<T, false>(a, st);
}

}  // namespace

bool prefill_sm90_usable(dsattn_dtype dtype, int D) {
  if (D != kD) return false;
  // Per device (cached): compute capability 9.0 and sm_90a code in this build.
  static int cached[2][64] = {};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return false;
  const int t = dtype == DSATTN_BFLOAT16 ? 1 : 0;
  if (dtype != DSATTN_FLOAT16 && dtype != DSATTN_BFLOAT16) return false;
  if (dev < 64 && cached[t][dev]) return cached[t][dev] == 2;
  const bool ok = t ? usable_t<__nv_bfloat16>() : usable_t<__half>();
  if (dev < 64) cached[t][dev] = ok ? 2 : 1;
  return ok;
}

cudaError_t launch_prefill_sm90(const Args& a, dsattn_dtype dtype, cudaStream_t st) {
  if (a.D != kD) return cudaErrorNotSupported;
  if (dtype == DSATTN_FLOAT16) return launch_t<__half>(a, st);
  if (dtype == DSATTN_BFLOAT16) return launch_t<__nv_bfloat16>(a, st);
  return cudaErrorNotSupported;
}

}  // namespace attn
}  // namespace dsattn
