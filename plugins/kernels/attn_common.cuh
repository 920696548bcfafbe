// Device helpers shared by the SoftmaxContext kernels (softmax_context*.cu). Internal header.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "softmax_context.h"

namespace dsattn {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;

// Kernel-side copy of the params: 32-bit sizes (validated host-side to fit), derived values.
struct Args {
  const void* qkv;
  void* kc;
  void* vc;
  const int32_t* seq_lens;
  const int32_t* start_pos;
  const float* alibi;
  void* ctx;
  int32_t* status;
  void* q_ws;  // rotated q (prefill paths only): T [B, H, S, D], or [B, S, H, D] when q_tok_major
  // FlashInfer prefill path only (else NULL): tok_flag int32 [B, S], written by the append kernel
  // (1: token s of row b makes row b unsafe for that kernel, see softmax_context.cu); row_flag int32
  // [B], the OR over the row: the mma.sync kernel then computes only the rows flagged there.
  int32_t* tok_flag;
  const int32_t* row_flag;
  int q_tok_major;
  int kv_tile;  // key tile of the FlashInfer kernel (rows past a row's end that its last tile reads)
  int B, S, H, Hkv, D, Tmax, group;
  float scale_log2;  // scale * log2(e): logits are kept in the log2 domain (exp2)
  float rope_theta;
  int layout, causal, window, rotary_dim, rotary_style;
};

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// 2^x with the hardware approximation (MUFU.EX2, ~2 ulp; -inf -> 0): the softmax exponent. The
// library is built without --use_fast_math, where exp2f adds range handling around MUFU.EX2.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Offsets of token (b, s)'s q head h / kv head hk inside qkv (elements).
__device__ __forceinline__ int64_t qkv_row(const Args& a, int b, int s) {
  return ((int64_t)b * a.S + s) * (int64_t)(a.H + 2 * a.Hkv) * a.D;
}
__device__ __forceinline__ int64_t q_off(const Args& a, int h) {
  return a.layout == 0 ? (int64_t)h * a.D : (int64_t)(3 * h) * a.D;
}
__device__ __forceinline__ int64_t k_off(const Args& a, int hk) {
  return a.layout == 0 ? (int64_t)(a.H + hk) * a.D : (int64_t)(3 * hk + 1) * a.D;
}
__device__ __forceinline__ int64_t v_off(const Args& a, int hk) {
  return a.layout == 0 ? (int64_t)(a.H + a.Hkv + hk) * a.D : (int64_t)(3 * hk + 2) * a.D;
}
__device__ __forceinline__ int64_t cache_off(const Args& a, int b, int hk, int j) {
  return (((int64_t)b * a.Hkv + hk) * a.Tmax + j) * a.D;
}

// The key range a prefill query tile sees (OPS.md masks), shared by the prefill kernels: query
// rows m0 .. m0+rows_here-1 of row b sit at absolute positions p_min .. p_max; visible keys lie in
// [lo, hi) (left padding start_pos, local window, causal), covered by nblk key blocks of BN from
// n_start.
struct TileKeys {
  int seq, s0, L, m0, rows_here, p_min, p_max, lo, hi, n_start, nblk;
};
template <int BM, int BN>
__device__ __forceinline__ TileKeys tile_keys(const Args& a, int b, int mb) {
  TileKeys t;
  t.seq = a.seq_lens[b];
  t.s0 = a.start_pos ? a.start_pos[b] : 0;
  t.L = t.seq + a.S;
  t.m0 = mb * BM;
  t.rows_here = min(BM, a.S - t.m0);
  t.p_min = t.seq + t.m0;
  t.p_max = t.seq + t.m0 + t.rows_here - 1;
  t.lo = t.s0;
  if (a.window > 0) t.lo = max(t.lo, t.p_min - a.window + 1);
  t.hi = a.causal ? min(t.L, t.p_max + 1) : t.L;
  t.n_start = t.lo / BN * BN;
  t.nblk = t.lo < t.hi ? (t.hi - 1) / BN - t.lo / BN + 1 : 0;
  return t;
}

// Element d of the rotated vector x (D elements of one head of one token) at rotary position pos.
// Mirrors the fp32 reference: inv_freq = 1 / theta^(2f / rotary_dim), angle = pos * inv_freq,
// precise sinf/cosf (angles reach thousands of radians: no fast intrinsics here).
template <typename T>
__device__ __forceinline__ float rope_elem(const T* x, int d, const Args& a, float pos) {
  float xd = to_f(x[d]);
  const int rd = a.rotary_dim;
  if (d >= rd) return xd;
  int f, partner;
  float sign;
  if (a.rotary_style == 0) {  // rotate_half: pairs (f, f + rd/2)
    const int half = rd >> 1;
    f = d < half ? d : d - half;
    partner = d < half ? d + half : d - half;
    sign = d < half ? -1.f : 1.f;
  } else {  // rotate_every_two: pairs (2f, 2f + 1)
    f = d >> 1;
    partner = d ^ 1;
    sign = (d & 1) ? 1.f : -1.f;
  }
  const float inv_freq = 1.0f / powf(a.rope_theta, (float)(2 * f) / (float)rd);
  const float ang = pos * inv_freq;
  float sn, cs;
  sincosf(ang, &sn, &cs);
  return xd * cs + sign * to_f(x[partner]) * sn;
}

// rope_elem split in two (decode path): the angle's cos and the signed sin of element d's pair,
// and the partner index, computed once and applied to several rows of the same token (q heads,
// the new key) -- same formula as rope_elem. Only for d < rotary_dim.
__device__ __forceinline__ void rope_cs(int d, const Args& a, float pos, float& cs, float& ssn, int& partner) {
  const int rd = a.rotary_dim;
  int f;
  float sign;
  if (a.rotary_style == 0) {
    const int half = rd >> 1;
    f = d < half ? d : d - half;
    partner = d < half ? d + half : d - half;
    sign = d < half ? -1.f : 1.f;
  } else {
    f = d >> 1;
    partner = d ^ 1;
    sign = (d & 1) ? 1.f : -1.f;
  }
  const float inv_freq = 1.0f / powf(a.rope_theta, (float)(2 * f) / (float)rd);
  float sn;
  sincosf(pos * inv_freq, &sn, &cs);
  ssn = sign * sn;
}

// Device-side row check (header: "Cache overflow"). Every thread of the block gets the same
// answer: -1 when all rows are fine, else the smallest bad row. Uses one int of shared memory.
__device__ __forceinline__ int first_bad_row(const Args& a, int* smem_flag) {
  if (threadIdx.x < 32) {
    int bad = 0x7fffffff;
    for (int b0 = 0; b0 < a.B; b0 += 32) {
      const int b = b0 + (int)threadIdx.x;
      bool row_bad = false;
      if (b < a.B) {
        const int len = a.seq_lens[b];
        const int st = a.start_pos ? a.start_pos[b] : 0;
        row_bad = len < 0 || (int64_t)len + a.S > a.Tmax || st < 0 || (int64_t)st > (int64_t)len + a.S;
      }
      const unsigned m = __ballot_sync(0xffffffffu, row_bad);
      if (m) { bad = b0 + __ffs(m) - 1; break; }
    }
    if (threadIdx.x == 0) *smem_flag = bad == 0x7fffffff ? -1 : bad;
  }
  __syncthreads();
  return *smem_flag;
}

// Whether key j is visible from absolute position p (start s0, L keys in the row).
__device__ __forceinline__ bool key_visible(const Args& a, int j, int p, int s0, int L) {
  return j >= s0 && j < L && (!a.causal || j <= p) && (a.window <= 0 || j > p - a.window);
}

// Non-finite values in the prefill kernels' P.V (OPS.md: masked keys are excluded, NaN in attended
// data propagates). A tensor-core P.V multiplies every key of a block by its probability, and
// 0 x NaN = NaN, so a masked key must not hold a non-finite value there. Keys outside the tile's
// visible range [lo, hi) are zero-filled when loaded. Inside it, only a "partial" block (causal
// diagonal, window edge: seen by some rows of the tile and not by others) can mix masked and
// visible keys; such a block is scanned in shared memory, and if it holds a NaN or inf value
// (rare), those values are zeroed before P.V and the outputs a visible one would have reached are
// set to NaN at the end (partial_value_nonfinite). Full blocks are visible to every row: their
// non-finite values reach the output through P.V itself.
template <int BN>
__device__ __forceinline__ bool block_partial(const Args& a, const TileKeys& t, int n0) {
  return (a.causal && n0 + BN - 1 > t.p_min) || (a.window > 0 && n0 <= t.p_max - a.window);
}

// 16-byte vector of eight 16-bit floats (half or bfloat16): a mask of the elements that are NaN or
// inf (all exponent bits set), 0xffff per such element in each 32-bit word. exp_mask is 0x7c00
// (half) or 0x7f80 (bfloat16); adding the exponent's lowest bit carries into bit 15 exactly when
// the exponent is all ones.
__device__ __forceinline__ uint4 nonfinite16_mask(uint4 v, uint32_t exp_mask) {
  const uint32_t m2 = exp_mask | (exp_mask << 16), lsb = (exp_mask & (0u - exp_mask)) * 0x10001u;
  auto w = [&](uint32_t x) { return ((((x & m2) + lsb) & 0x80008000u) >> 15) * 0xffffu; };
  return make_uint4(w(v.x), w(v.y), w(v.z), w(v.w));
}

// Rare path of the prefill kernels: whether element d of the value of a key of a partial block
// that position p sees is NaN or inf (read from the cache; those values were zeroed in shared
// memory before P.V).
template <int BN, typename T>
__device__ __forceinline__ bool partial_value_nonfinite(const Args& a, const TileKeys& t, const T* vg, int p, int d) {
  for (int it = 0; it < t.nblk; ++it) {
    const int n0 = t.n_start + it * BN;
    if (!block_partial<BN>(a, t, n0)) continue;
    const int j1 = min(n0 + BN, t.hi);
    for (int j = max(n0, t.lo); j < j1; ++j)
      if (key_visible(a, j, p, t.s0, t.L) && !isfinite(to_f(vg[(int64_t)j * a.D + d]))) return true;
  }
  return false;
}

}  // namespace attn
}  // namespace dsattn

namespace dsattn {
namespace attn {
// Tensor-core prefill (softmax_context_prefill.cu): fp16/bf16, D in {64, 128}; reads the rotated
// q from a.q_ws and K/V from the caches (the append kernel ran first). Returns
// cudaErrorNotSupported for other dtypes / head sizes (the caller then uses the generic kernel).
bool prefill_mma_supported(dsattn_dtype dtype, int D);
cudaError_t launch_prefill_mma(const Args& a, dsattn_dtype dtype, cudaStream_t stream);
}  // namespace attn
}  // namespace dsattn

namespace dsattn {
namespace attn {
// Hopper prefill (softmax_context_prefill_sm90.cu): fp16/bf16, D == 128, wgmma; the ALiBi / window /
// scale <= 0 cases, FlashInfer's kernel takes the rest (softmax_context.cu). Usable only when
// the current device is compute capability 9.0 and the build holds sm_90a code for it. Reads q from
// qkv and rotates it itself with the cos/sin table the append kernel wrote at a.q_ws
// (float2 {cos, sin} [B][S][rotary_dim / 2]); K/V from the caches (the append kernel ran first).
bool prefill_sm90_usable(dsattn_dtype dtype, int D);
cudaError_t launch_prefill_sm90(const Args& a, dsattn_dtype dtype, cudaStream_t stream);
}  // namespace attn
}  // namespace dsattn
