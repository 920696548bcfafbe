// dsattn::SoftmaxContext: host API, append kernel, fused decode kernel (split-KV, merged in-launch),
// generic CUDA-core attention kernel. The tensor-core prefill lives in softmax_context_prefill.cu.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "attn_common.cuh"
#include "pdl.cuh"
#if DSATTN_HAVE_SM90_LIBS
#include "sm90/prefill_fa3.h"
#endif

namespace dsattn {
namespace attn {
namespace {

// Decode split-KV: chunks per row, keys per thread in flight, waves of chunks.
constexpr int kMaxSplits = 64;      // decode split-KV: upper bound on chunks per row
constexpr int kMinSplitKeys = 64;   // never cut a row into chunks shorter than this
constexpr int kDecodeMaxRows = 8;   // decode path: S * (H / Hkv) query rows per CTA at most
// Keys per thread in flight per step at one query row (more rows: 2). 8 measured worse on H100
// (192 registers, 2 CTAs per SM).
constexpr int kDecodeUnrollOneRow = 4;
// One wave of chunks (decode_splits). Several waves of shorter chunks, so that the block scheduler
// hands later chunks to the SMs that finish first, measured slower at batch 8 on the H100 with the
// in-launch merge too (past 2048: 1 wave 95.0 us, 2 waves 96.3, 4 waves 97.0; batch 1 and 64
// unchanged).
// Chunks the merging CTA reads per round trip (decode_kernel's epilogue): batch 1 (16 chunks)
// merges in one round trip.
constexpr int kMergeBatch = 16;
// Arrival word of one (b, kv head) in the workspace (decode_arrive): the top 48 bits hold this
// tag, the low 16 bits the CTAs of the current launch that have arrived. The word's top 32 bits
// are a signalling NaN in fp32 and its top 16 bits a non-canonical NaN in fp16 / bf16, patterns
// that no arithmetic produces: data other kernels leave in the scratch workspace does not look
// like an arrival word.
constexpr unsigned long long kArriveTag = 0x7FA5C3D1E29Bull << 16;
constexpr unsigned long long kArriveCountMask = 0xffffull;

// ---------------------------------------------------------------------------------------------
// Append: one block per new token (b, s). Rotates k (and q unless q_mode is kQTable), cos/sin table
// of this token's position in shared memory (one sincosf per frequency instead of one per element),
// writes k, v to the caches and, by q_mode: the rotated q to the workspace as [B, H, S, D]
// (kQHeadMajor: the mma.sync / generic prefill kernels) or [B, S, H, D] (kQTokenMajor: the FlashInfer
// kernel, whose q rows are tokens like its output rows), or this token's cos/sin table (kQTable,
// float2 [B][S][rotary_dim / 2]: our Hopper kernel rotates q itself, so q skips a round trip through
// device memory). 16-byte vectors throughout; the rotary partner of an element comes from the same
// vector (rotate_every_two) or from one more 16-byte load (rotate_half with rotary_dim / 2 a multiple
// of the vector), else element by element.
//
// With a.tok_flag (FlashInfer path) the block also writes tok_flag[b * S + s]: 1 when a NaN / inf
// value could reach row b's context through a masked key there. That kernel multiplies the values of
// every key of a loaded tile by its probability, 0 for a masked key, and 0 x NaN = NaN (OPS.md: masked
// keys are excluded). Its key range for row b is [start_pos, L) (left padding is never loaded), so the
// only masked keys it loads are this call's new tokens on the causal diagonal, and the rows past L up
// to the end of the last key tile (other cache rows, or another head's). The block checks the value
// of its own token (causal only: without causal every new token is visible to every query row) and
// overhang rows L + s, L + s + S, ...; keys need no check, the kernel replaces a masked logit by -inf.
enum QMode { kQTable = 0, kQHeadMajor = 1, kQTokenMajor = 2 };

template <typename T>
__global__ void __launch_bounds__(256) append_kernel(Args a, int q_mode) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr uint32_t kExpMask = sizeof(T) == 2 ? (std::is_same<T, __half>::value ? 0x7c00u : 0x7f80u) : 0u;
  __shared__ int s_flag;
  __shared__ float s_cos[DSATTN_ATTN_MAX_HEAD_SIZE / 2], s_sin[DSATTN_ATTN_MAX_HEAD_SIZE / 2];
  const int s = blockIdx.x, b = blockIdx.y;
  const int bad = first_bad_row(a, &s_flag);
  if (s == 0 && b == 0 && threadIdx.x == 0) *a.status = bad < 0 ? 0 : bad + 1;
  if (bad >= 0) return;
  const int seq = a.seq_lens[b];
  const int s0 = a.start_pos ? a.start_pos[b] : 0;
  const int rd = a.rotary_dim;
  const bool write_q = q_mode != kQTable;
  if (rd > 0) {
    const float pos = (float)(seq + s - s0);
    float2* tab = write_q ? nullptr : static_cast<float2*>(a.q_ws) + ((int64_t)b * a.S + s) * (rd / 2);
    for (int f = threadIdx.x; f < rd / 2; f += blockDim.x) {
      const float inv_freq = 1.0f / powf(a.rope_theta, (float)(2 * f) / (float)rd);
      float sn, cs;
      sincosf(pos * inv_freq, &sn, &cs);
      s_sin[f] = sn;
      s_cos[f] = cs;
      if (tab) tab[f] = make_float2(cs, sn);
    }
    __syncthreads();
  }
  const T* row = static_cast<const T*>(a.qkv) + qkv_row(a, b, s);
  const int D = a.D, cpr = D / VEC;  // 16-byte chunks per head
  const int qh = write_q ? a.H : 0;  // q heads handled here
  const int nchunks = (qh + 2 * a.Hkv) * cpr;
  const int half = rd >> 1;
  const bool chunk_pair = a.rotary_style == 0 && half % VEC == 0;
  const bool check_v = a.tok_flag && a.causal;
  uint32_t nonfinite = 0;
  for (int c = threadIdx.x; c < nchunks; c += blockDim.x) {
    const int i = c / cpr, d0 = (c % cpr) * VEC;
    // i -> (kind 0 q / 1 k / 2 v, head): q heads first (when written), then k, then v heads
    int kind, head;
    if (i < qh) {
      kind = 0;
      head = i;
    } else {
      kind = i - qh < a.Hkv ? 1 : 2;
      head = kind == 1 ? i - qh : i - qh - a.Hkv;
    }
    const int64_t src_off = kind == 0 ? q_off(a, head) : (kind == 1 ? k_off(a, head) : v_off(a, head));
    const T* src = row + src_off;
    union { uint4 u; T e[VEC]; } in, pin, out;
    in.u = *reinterpret_cast<const uint4*>(src + d0);
    out.u = in.u;
    if (kind < 2 && d0 < rd) {
      if (chunk_pair) pin.u = *reinterpret_cast<const uint4*>(src + (d0 < half ? d0 + half : d0 - half));
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
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
          out.e[e] = from_f<T>(to_f(in.e[e]) * s_cos[f] + sign * xp * s_sin[f]);
        }
      }
    }
    if (kExpMask && check_v && kind == 2) {
      const uint4 m = nonfinite16_mask(in.u, kExpMask);
      nonfinite |= m.x | m.y | m.z | m.w;
    }
    T* dst;
    if (kind == 0)
      dst = static_cast<T*>(a.q_ws) + (q_mode == kQTokenMajor ? (((int64_t)b * a.S + s) * a.H + head) * D
                                                              : (((int64_t)b * a.H + head) * a.S + s) * D);
    else
      dst = static_cast<T*>(kind == 1 ? a.kc : a.vc) + cache_off(a, b, head, seq + s);
    *reinterpret_cast<uint4*>(dst + d0) = out.u;
  }
  if (kExpMask && a.tok_flag) {
    // Overhang rows of the last key tile: [L, end) with end = s0 + the key range rounded up to whole
    // tiles. The kernel reads them at row n = b * Hkv * Tmax + j of its K/V view (past Tmax: the next
    // head's rows), zeros from n = nnz_kv on (the last batch row's end of the cache).
    const int L = seq + a.S;
    const int64_t end = s0 + ((int64_t)(L - s0) + a.kv_tile - 1) / a.kv_tile * a.kv_tile;
    const int64_t nnz_kv = ((int64_t)(a.B - 1) * a.Hkv + 1) * a.Tmax;
    const T* vc = static_cast<const T*>(a.vc);
    for (int64_t j = (int64_t)L + s; j < end; j += a.S) {
      const int64_t n = (int64_t)b * a.Hkv * a.Tmax + j;
      if (n >= nnz_kv) break;
      // Past Tmax the rows belong to another (row, KV head), whose new tokens this very launch may be
      // writing: what they will hold is unknown here, so the row takes the exact kernel (only rows
      // within a key tile of the cache's capacity).
      if (j >= a.Tmax) {
        nonfinite = 1;
        break;
      }
      for (int c = threadIdx.x; c < a.Hkv * cpr; c += blockDim.x) {
        const int hk = c / cpr, d0 = (c % cpr) * VEC;
        const uint4 v = *reinterpret_cast<const uint4*>(vc + (n + (int64_t)hk * a.Tmax) * D + d0);
        const uint4 m = nonfinite16_mask(v, kExpMask);
        nonfinite |= m.x | m.y | m.z | m.w;
      }
    }
    const int any = __syncthreads_or(nonfinite != 0);
    if (threadIdx.x == 0) a.tok_flag[(int64_t)b * a.S + s] = any ? 1 : 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Fused decode: grid (nsplit, Hkv, B), 4 warps. Each CTA takes the S * group query rows that share
// KV head hk (GQA: K/V are read once for the group), rotates q on the fly, and streams one chunk of
// the row's keys: TX threads per key row, 16 bytes each, UNROLL keys per thread in flight. Keys of
// the new tokens (j >= seq_lens[b]) are taken from qkv (rotated), never from the cache, so the
// split-0 CTA can write the new cache rows in the same launch without a race. Online softmax in
// fp32 (log2 domain), merged across the CTA's key slots in shared memory, then either written to
// the context (one chunk) or as (normalized partial o, log2-sum-exp) to the workspace, where the
// last CTA of the (b, hk) group to finish merges the chunks (decode_arrive).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  // Streaming loads: K/V are read once per call. __ldg and ld.lu measured the same at batch 8 / 64
  // and slower at batch 1 on the H100.
  return __ldcs(reinterpret_cast<const uint4*>(p));
}

// 16-byte vector (dims d0 .. d0+VEC-1) of new token s's key (rotated, rounded to T exactly as the
// cache will hold it) or value, read from qkv.
template <typename T, int VEC>
__device__ __noinline__ uint4 new_token_vec(const Args a, int b, int hk, int s, int seq, int s0, int d0, bool key) {
  union { uint4 u; T e[VEC]; } r;
  const T* row = static_cast<const T*>(a.qkv) + qkv_row(a, b, s) + (key ? k_off(a, hk) : v_off(a, hk));
  const float pos = (float)(seq + s - s0);
#pragma unroll
  for (int e = 0; e < VEC; ++e)
    r.e[e] = key && a.rotary_dim ? from_f<T>(rope_elem(row, d0 + e, a, pos)) : row[d0 + e];
  return r.u;
}

// Split merge in the decode launch: which CTA of a (b, hk) group arrives last. One arrival word per
// group in the workspace, which is scratch: between two calls the caller (a TensorRT engine) may
// have written anything there. Invariant: at the start of every call each arrival word is either
// (kArriveTag, 0) -- the last CTA of the previous call that used the word left it so -- or not
// tagged (anything else); both read as "no CTA of this launch has arrived". Every CTA of the group
// arrives exactly once (rejected calls return before arriving, uniformly), so the counts of one
// launch run 1..nsplit and the CTA that counts nsplit is the last; it resets the word to
// (kArriveTag, 0) before the launch ends. The next call on the same workspace starts after this
// launch has completed (stream order; a PDL-launched successor waits in pdl_wait before any
// access), so it sees either that state or whatever another user wrote since. Only data holding
// the tag in its top 48 bits with a count below nsplit would be miscounted; the tag is a NaN
// pattern that arithmetic never produces.
// The common case, an untouched word, costs one atomic add. Any other state takes a CAS loop that
// treats an untagged word, or a tagged one whose count is out of range, as zero arrivals (the first
// add may already have bumped such a word: it still counts for nothing).
// Called by one thread after a __threadfence() that releases the CTA's partial results.
__device__ __forceinline__ bool decode_arrive(unsigned long long* w, int nsplit) {
  const unsigned long long n = (unsigned long long)nsplit;
  auto counted = [&](unsigned long long v) {
    return (v & ~kArriveCountMask) == kArriveTag && (v & kArriveCountMask) < n;
  };
  unsigned long long old = atomicAdd(w, 1ull), cnt;
  if (counted(old)) {
    cnt = (old & kArriveCountMask) + 1;
  } else {
    unsigned long long cur = old + 1;  // the value the add left, unless another CTA moved it since
    for (;;) {
      const unsigned long long next = counted(cur) ? cur + 1 : (kArriveTag | 1ull);
      const unsigned long long got = atomicCAS(w, cur, next);
      if (got == cur) {
        cnt = next & kArriveCountMask;
        break;
      }
      cur = got;
    }
  }
  if (cnt != n) return false;
  atomicExch(w, kArriveTag);  // every CTA of this launch has arrived: leave the word clean
  return true;
}

// Partial results of VM consecutive dims (fp32, L2 only: written by other CTAs of this launch).
template <int VM> struct PartVec { float v[VM]; };
template <int VM>
__device__ __forceinline__ PartVec<VM> ld_part(const float* p) {
  PartVec<VM> r;
  if constexpr (VM == 4) {
    const float4 x = __ldcg(reinterpret_cast<const float4*>(p));
    r.v[0] = x.x; r.v[1] = x.y; r.v[2] = x.z; r.v[3] = x.w;
  } else if constexpr (VM == 2) {
    const float2 x = __ldcg(reinterpret_cast<const float2*>(p));
    r.v[0] = x.x; r.v[1] = x.y;
  } else {
    r.v[0] = __ldcg(p);
  }
  return r;
}

// nsplit == 1: the CTA writes the context. nsplit > 1: the CTA writes its (o, lse) partials to
// part_o / part_lse and arrives on arrive[b * Hkv + hk]; the last CTA of the group merges.
template <typename T, int D, int RMAX>
__global__ void __launch_bounds__(128) decode_kernel(Args a, float* part_o, float* part_lse,
                                                     unsigned long long* arrive, int nsplit) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int TX = D / VEC;
  static_assert(TX <= 32 && 32 % TX == 0, "head size must map onto a warp");
  constexpr int TY = 32 / TX;
  constexpr int NW = 4;
  constexpr int KSTEP = TY * NW;  // keys per CTA step == number of partial states to merge
  constexpr int UNROLL = RMAX <= 1 ? kDecodeUnrollOneRow : 2;
  __shared__ int s_flag;
  __shared__ float s_q[RMAX * D];
  __shared__ float s_m[KSTEP][RMAX], s_l[KSTEP][RMAX];
  __shared__ float s_acc[KSTEP][RMAX][D];
  __shared__ int s_last;
  // This call's new tokens (S <= RMAX of them), rotated k and v, for the CTA whose chunk holds
  // them: filled in the prologue so the epilogue (on the critical path of the last chunk) reads
  // shared memory instead of recomputing the key rotary per element. v only where it fits the
  // 48 KB of static shared memory (else read from qkv in the epilogue, as before).
  constexpr bool VNEW_SMEM = RMAX * D * sizeof(T) <= 2048;
  __shared__ __align__(16) T s_knew[RMAX * D];
  __shared__ __align__(16) T s_vnew[VNEW_SMEM ? RMAX * D : VEC];

  // Launched as a programmatic dependent on sm_90 (its CTAs may be scheduled while the previous
  // kernel of the stream drains): nothing of the previous kernel is read before this wait.
  pdl_wait();
  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  // Prologue ordered to overlap latencies: the row's own seq_lens / start_pos are loaded, the first
  // K/V steps are issued when this row itself is valid (reads inside the cache only), then the row
  // check of all rows runs while they are in flight; nothing is written before it passes.
  const int seq_raw = a.seq_lens[b];
  const int s0_raw = a.start_pos ? a.start_pos[b] : 0;
  const bool own_ok = seq_raw >= 0 && (int64_t)seq_raw + a.S <= a.Tmax && s0_raw >= 0 &&
                      (int64_t)s0_raw <= (int64_t)seq_raw + a.S;
  const int seq = own_ok ? seq_raw : 0;
  const int s0 = own_ok ? s0_raw : 0;
  const int L = seq + a.S;
  const int g = a.group, R = g * a.S;
  const T* qkv = static_cast<const T*>(a.qkv);
  T* kc = static_cast<T*>(a.kc);
  T* vc = static_cast<T*>(a.vc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tx = lane % TX, ty = lane / TX, slot = warp * TY + ty;

  // Keys any row of this CTA can see: [lo, hi). The chunk of this split: [c_lo, c_hi), of which
  // [c_lo, c_mid) is cached and [c_mid, c_hi) are this call's new tokens (read from qkv).
  int lo = s0;
  if (a.window > 0) lo = max(lo, seq - a.window + 1);
  const int hi = max(L, lo);
  const int per = (hi - lo + nsplit - 1) / nsplit;
  const int chunk = (per + KSTEP - 1) / KSTEP * KSTEP;
  const int c_lo = lo + split * chunk;
  const int c_hi = min(hi, c_lo + chunk);
  const int c_mid = own_ok ? min(c_hi, max(c_lo, seq)) : c_lo;  // bad row: no loads
  const int64_t cache_base = cache_off(a, b, hk, 0) + tx * VEC;

  union V16 { uint4 u; T e[VEC]; };
  constexpr int STEP = KSTEP * UNROLL;  // keys per CTA per step; UNROLL keys per thread
  auto load_cached = [&](int base, V16 (&kr)[UNROLL], V16 (&vr)[UNROLL]) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int j = base + u * KSTEP + slot;
      if (j < c_mid) {
        kr[u].u = ld_stream(kc + cache_base + (int64_t)j * D);
        vr[u].u = ld_stream(vc + cache_base + (int64_t)j * D);
      } else {
        kr[u].u = make_uint4(0, 0, 0, 0);
        vr[u].u = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // Two register buffers, used alternately (no copies: a register copy of a pending load would
  // wait for it), so the next step's loads are in flight during this step's math.
  // The first two steps are issued before the q prologue below (rotary math + a barrier).
  V16 ka[UNROLL], va[UNROLL], kb[UNROLL], vb[UNROLL];
  if (c_lo < c_mid) load_cached(c_lo, ka, va);
  if (c_lo + STEP < c_mid) load_cached(c_lo + STEP, kb, vb);

  const int bad = first_bad_row(a, &s_flag);
  if (split == 0 && hk == 0 && b == 0 && threadIdx.x == 0) *a.status = bad < 0 ? 0 : bad + 1;
  if (bad >= 0) return;  // uniform over the grid: no CTA arrives, no arrival word is touched

  // q rows r = s * g + gi, rotated; the rows with gi == 0 also rotate token s's key with the same
  // cos / sin (one powf + sincosf per element for q and k together): split 0 appends the new rows
  // of KV head hk, the CTA holding the new tokens keeps them in shared memory.
  const bool has_new = c_mid < c_hi;
  for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
    const int r = e / D, d = e % D, s = r / g, gi = r % g, h = hk * g + gi;
    const T* row = qkv + qkv_row(a, b, s);
    const T* qrow = row + q_off(a, h);
    float cs = 1.f, ssn = 0.f;
    int p = d;
    const bool rot = d < a.rotary_dim;
    if (rot) rope_cs(d, a, (float)(seq + s - s0), cs, ssn, p);
    const float qd = to_f(qrow[d]);
    const float qv = rot ? qd * cs + ssn * to_f(qrow[p]) : qd;
    s_q[e] = qv * a.scale_log2;
    if (gi == 0 && (split == 0 || has_new)) {
      const T* krow = row + k_off(a, hk);
      const float kd = to_f(krow[d]);
      const T kv = rot ? from_f<T>(kd * cs + ssn * to_f(krow[p])) : krow[d];
      const T vv = row[v_off(a, hk) + d];
      if (split == 0) {
        kc[cache_off(a, b, hk, seq + s) + d] = kv;
        vc[cache_off(a, b, hk, seq + s) + d] = vv;
      }
      if (has_new) {
        s_knew[s * D + d] = kv;
        if (VNEW_SMEM) s_vnew[s * D + d] = vv;
      }
    }
  }
  __syncthreads();

  float q[RMAX][VEC], acc[RMAX][VEC], m[RMAX], l[RMAX], slope[RMAX];
  int pr[RMAX];
#pragma unroll
  for (int r = 0; r < RMAX; ++r) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      q[r][e] = r < R ? s_q[r * D + tx * VEC + e] : 0.f;
      acc[r][e] = 0.f;
    }
    m[r] = -INFINITY;
    l[r] = 0.f;
    const int h = hk * g + (r < R ? r % g : 0);
    slope[r] = a.alibi ? a.alibi[h] * kLog2e : 0.f;
    pr[r] = seq + (r < R ? r / g : 0);
  }

  // One step of keys [base, base + STEP) (those < lim): logits, online softmax, P.V, all fp32.
  // A masked key (x = -inf, p = 0) is skipped in P.V, not multiplied by zero: its value may be NaN
  // or inf (OPS.md: masked keys are excluded). Only the rows of a multi-token call (RMAX > 1) mask
  // keys inside the chunk (causal, window); with one row every key of [lo, hi) is visible and keys
  // past the chunk's end are zeros, so RMAX = 1 (the hot single-token path) keeps its plain FMAs.
  auto consume = [&](const V16 (&kr)[UNROLL], const V16 (&vr)[UNROLL], int base, int lim) {
    float x[UNROLL][RMAX];
    bool vis[UNROLL][RMAX];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float kf[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) kf[e] = to_f(kr[u].e[e]);
      const int j = base + u * KSTEP + slot;
#pragma unroll
      for (int r = 0; r < RMAX; ++r) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot = fmaf(q[r][e], kf[e], dot);
#pragma unroll
        for (int off = TX / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        const bool ok = r < R && j < lim && key_visible(a, j, pr[r], s0, L);
        vis[u][r] = ok;
        x[u][r] = ok ? fmaf(slope[r], (float)(j - s0), dot) : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < RMAX; ++r) {
      float mx = m[r];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) mx = fmaxf(mx, x[u][r]);
      const float ms = mx == -INFINITY ? 0.f : mx;  // all masked so far: keep exp2 finite
      const float c = fast_exp2(m[r] - ms);
      l[r] *= c;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[r][e] *= c;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const float pu = fast_exp2(x[u][r] - ms);
        l[r] += pu;
        if (RMAX == 1 || vis[u][r]) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[r][e] = fmaf(pu, to_f(vr[u].e[e]), acc[r][e]);
        }
      }
      m[r] = mx;
    }
  };

  for (int base = c_lo; base < c_mid; base += 2 * STEP) {
    consume(ka, va, base, c_mid);
    if (base + 2 * STEP < c_mid) load_cached(base + 2 * STEP, ka, va);
    if (base + STEP >= c_mid) break;
    consume(kb, vb, base + STEP, c_mid);
    if (base + 3 * STEP < c_mid) load_cached(base + 3 * STEP, kb, vb);
  }
  pdl_trigger();  // every load of the cache is done: the next grid may be scheduled
  // This call's new tokens inside the chunk (at most S keys): rotated k / v straight from qkv.
  for (int base = c_mid; base < c_hi; base += STEP) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int j = base + u * KSTEP + slot;
      ka[u].u = make_uint4(0, 0, 0, 0);
      va[u].u = make_uint4(0, 0, 0, 0);
      if (j < c_hi) {
        ka[u].u = *reinterpret_cast<const uint4*>(&s_knew[(j - seq) * D + tx * VEC]);
        va[u].u = VNEW_SMEM ? *reinterpret_cast<const uint4*>(&s_vnew[(j - seq) * D + tx * VEC])
                            : new_token_vec<T, VEC>(a, b, hk, j - seq, seq, s0, tx * VEC, false);
      }
    }
    consume(ka, va, base, c_hi);
  }

  // Merge the KSTEP key slots of the CTA.
#pragma unroll
  for (int r = 0; r < RMAX; ++r) {
    if (r < R) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) s_acc[slot][r][tx * VEC + e] = acc[r][e];
      if (tx == 0) {
        s_m[slot][r] = m[r];
        s_l[slot][r] = l[r];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
    const int r = e / D, d = e % D, s = r / g, h = hk * g + r % g;
    float M = -INFINITY;
#pragma unroll
    for (int k = 0; k < KSTEP; ++k) M = fmaxf(M, s_m[k][r]);
    // No finite logit in any slot: shift by 0 (weights 2^-inf = 0). A NaN logit leaves m at -inf
    // (fmaxf drops NaN) but l = NaN, which the sums carry: NaN propagates, lsum == 0 means no key.
    const float Ms = M == -INFINITY ? 0.f : M;
    float o = 0.f, lsum = 0.f;
#pragma unroll
    for (int k = 0; k < KSTEP; ++k) {
      const float w = fast_exp2(s_m[k][r] - Ms);
      lsum = fmaf(w, s_l[k][r], lsum);
      o = fmaf(w, s_acc[k][r][d], o);
    }
    o = lsum == 0.f ? 0.f : o / lsum;
    const int64_t orow = ((int64_t)b * a.S + s) * a.H + h;
    if (nsplit == 1) {
      static_cast<T*>(a.ctx)[orow * D + d] = from_f<T>(o);
    } else {
      part_o[(orow * nsplit + split) * D + d] = o;
      if (d == 0) part_lse[orow * nsplit + split] = lsum == 0.f ? -INFINITY : Ms + log2f(lsum);
    }
  }
  if (nsplit == 1) return;

  // Split merge in this launch (no combine kernel): the last CTA of (b, hk) to finish reads every
  // chunk's partials. Release (fence after the CTA's writes) / acquire (fence after the arrival)
  // by thread 0 around the barrier, as a grid-wide barrier does.
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const bool last = decode_arrive(arrive + (int64_t)b * a.Hkv + hk, nsplit);
    if (last) __threadfence();
    s_last = last;
  }
  __syncthreads();
  if (!s_last) return;
  // VM consecutive dims per thread, so that the R x D outputs take one pass of the CTA where they
  // can (a pass costs a round trip to L2); chunk weights 2^(lse_i - max lse), zeros when no chunk
  // has a key, kMergeBatch chunks per round trip with an online rescale across batches.
  constexpr int VM = RMAX * D >= 512 ? 4 : (RMAX * D >= 256 ? 2 : 1);
  for (int e = threadIdx.x * VM; e < R * D; e += blockDim.x * VM) {
    const int r = e / D, d = e % D, s = r / g, h = hk * g + r % g;
    const int64_t orow = ((int64_t)b * a.S + s) * a.H + h;
    const float* pl = part_lse + orow * nsplit;
    const float* po = part_o + orow * nsplit * D + d;
    float M = -INFINITY, sum = 0.f, o[VM];
#pragma unroll
    for (int v = 0; v < VM; ++v) o[v] = 0.f;
    for (int i0 = 0; i0 < nsplit; i0 += kMergeBatch) {
      float li[kMergeBatch];
      PartVec<VM> oi[kMergeBatch];
#pragma unroll
      for (int k = 0; k < kMergeBatch; ++k) {
        const int i = i0 + k;
        li[k] = i < nsplit ? __ldcg(pl + i) : -INFINITY;
        if (i < nsplit) {
          oi[k] = ld_part<VM>(po + (int64_t)i * D);
        } else {
#pragma unroll
          for (int v = 0; v < VM; ++v) oi[k].v[v] = 0.f;
        }
      }
      float mc = M;
#pragma unroll
      for (int k = 0; k < kMergeBatch; ++k) mc = fmaxf(mc, li[k]);
      // As in the slot merge: shift by 0 while no chunk has a key; a NaN lse (NaN logit) or a NaN
      // partial propagates through the sums.
      const float ms = mc == -INFINITY ? 0.f : mc;
      const float c = fast_exp2(M - ms);
      sum *= c;
#pragma unroll
      for (int v = 0; v < VM; ++v) o[v] *= c;
#pragma unroll
      for (int k = 0; k < kMergeBatch; ++k) {
        const float w = fast_exp2(li[k] - ms);
        sum += w;
#pragma unroll
        for (int v = 0; v < VM; ++v) o[v] = fmaf(w, oi[k].v[v], o[v]);
      }
      M = mc;
    }
    T* out = static_cast<T*>(a.ctx) + orow * D + d;
#pragma unroll
    for (int v = 0; v < VM; ++v) out[v] = from_f<T>(sum == 0.f ? 0.f : o[v] / sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Generic attention (fp32 prefill, head sizes without a tuned kernel): one warp per query row,
// keys one at a time (warp dot product + shuffles), online softmax in fp32. Correct, not fast.
template <typename T>
__global__ void __launch_bounds__(128) generic_kernel(Args a) {
  constexpr int PER_LANE = DSATTN_ATTN_MAX_HEAD_SIZE / 32;
  __shared__ int s_flag;
  if (first_bad_row(a, &s_flag) >= 0) return;
  const int lane = threadIdx.x & 31;
  const int s = blockIdx.x * 4 + (threadIdx.x >> 5), h = blockIdx.y, b = blockIdx.z;
  if (s >= a.S) return;
  const int D = a.D, hk = h / a.group;
  const int seq = a.seq_lens[b];
  const int s0 = a.start_pos ? a.start_pos[b] : 0;
  const int L = seq + a.S, p = seq + s;
  const T* qrow = static_cast<const T*>(a.q_ws) + (((int64_t)b * a.H + h) * a.S + s) * D;
  float q[PER_LANE], acc[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int d = lane + 32 * i;
    q[i] = d < D ? to_f(qrow[d]) * a.scale_log2 : 0.f;
    acc[i] = 0.f;
  }
  const float slope = a.alibi ? a.alibi[h] * kLog2e : 0.f;
  int lo = s0, hi = a.causal ? min(L, p + 1) : L;
  if (a.window > 0) lo = max(lo, p - a.window + 1);
  const T* kbase = static_cast<const T*>(a.kc) + cache_off(a, b, hk, 0);
  const T* vbase = static_cast<const T*>(a.vc) + cache_off(a, b, hk, 0);
  float m = -INFINITY, l = 0.f;
  for (int j = lo; j < hi; ++j) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = lane + 32 * i;
      if (d < D) dot = fmaf(q[i], to_f(kbase[(int64_t)j * D + d]), dot);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float x = fmaf(slope, (float)(j - s0), dot);
    const float mn = fmaxf(m, x);
    const float ms = mn == -INFINITY ? 0.f : mn;  // only -inf logits so far: weights 0, no -inf - -inf
    const float c = fast_exp2(m - ms), pj = fast_exp2(x - ms);
    l = l * c + pj;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * c + (d < D ? pj * to_f(vbase[(int64_t)j * D + d]) : 0.f);
    }
    m = mn;
  }
  T* out = static_cast<T*>(a.ctx) + (((int64_t)b * a.S + s) * a.H + h) * D;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int d = lane + 32 * i;
    if (d < D) out[d] = from_f<T>(l == 0.f ? 0.f : acc[i] / l);  // no key: zeros; NaN stays NaN
  }
}

// ---------------------------------------------------------------------------------------------
// FlashInfer prefill path (sm90/prefill_fa3.h): its work list, filled on the device so that the call
// needs no host copy of seq_lens / start_pos (CUDA-graph capturable). Its structure follows from B, S,
// H. The (row, head) pairs q = b * H + h are taken in groups of P consecutive pairs whose keys and
// values fit in L2 together (fa3_group_pairs): the CTAs then work on one group at a time and re-read
// its K/V from L2. (A heavy-first order over all pairs at once has every head in flight: at batch 8
// x 32 heads x 2048 keys, 256 MB, K/V came from HBM again for every query tile: 0.61x cuDNN on the
// H100; groups of 8 heads, one CTA band each, fixed that (0.83x) but left too few tiles per group to
// balance batch 1: 0.65x, against 1.05x with all 32 heads, 32 MB, in one group.) Inside a group of
// Pg pairs starting at pair q0 the order is heavy-first: entry i = q0 * T + (T - 1 - t) * Pg + (q - q0)
// is query tile t of pair q (causal: the last tiles see the most keys). The persistent grid has G
// CTAs (one per SM); band k = i / G of the order goes to CTA i % G (k even) or G - 1 - i % G (k
// odd), so every CTA gets one entry of each band and the snake evens the sums out. CTA c holds n_c =
// nb (+ 1 for the CTAs of the last, partial band) entries from work_indptr[c]; entry i sits at
// work_indptr[c] + k.
struct Fa3Work {
  int32_t* tok_flag;  // [B * S], written by the append kernel
  int32_t* row_flag;  // [B]
  int32_t* work_indptr;  // [G + 1]
  int32_t* head_indices;
  int32_t* qo_tile_indices;
  int32_t* qo_indptr;
  int32_t* kv_indptr;
  int32_t* qo_lens;
  int32_t* kv_lens;
  int32_t* batch_indices;
};

__device__ __forceinline__ int fa3_cta_start(int c, int nb, int rem, int G) {
  return c * nb + ((nb & 1) ? max(0, c - (G - rem)) : min(c, rem));
}

// Grid B, block b: the entries of row b. Row b is flagged (row_flag, and its entries get qo_len 0,
// which the kernel skips) when the append kernel saw a NaN / inf value that the FlashInfer kernel
// could multiply by a zero probability; the mma.sync kernel launched after it computes those rows.
// K/V rows of row b: n = b * Hkv * Tmax + j of the kernel's view (kv_indptr = that of j = start_pos).
__global__ void __launch_bounds__(256) fa3_worklist_kernel(Args a, Fa3Work w, int G, int T, int P) {
  __shared__ int s_flag;
  const int b = blockIdx.x;
  const int64_t N = (int64_t)a.B * a.H * T;
  const int nb = (int)(N / G), rem = (int)(N % G);
  if (first_bad_row(a, &s_flag) >= 0) {
    // The call writes nothing (header: cache overflow): an empty work list keeps the kernel idle.
    if (b == 0)
      for (int c = threadIdx.x; c <= G; c += blockDim.x) w.work_indptr[c] = 0;
    return;
  }
  int f = 0;
  for (int s = threadIdx.x; s < a.S; s += blockDim.x) f |= w.tok_flag[(int64_t)b * a.S + s];
  const int flagged = __syncthreads_or(f);
  if (threadIdx.x == 0) w.row_flag[b] = flagged;
  if (b == 0)
    for (int c = threadIdx.x; c <= G; c += blockDim.x) w.work_indptr[c] = fa3_cta_start(c, nb, rem, G);
  const int seq = a.seq_lens[b];
  const int s0 = a.start_pos ? a.start_pos[b] : 0;
  const int kv_len = seq + a.S - s0;
  const int kv_ptr = (int)((int64_t)b * a.Hkv * a.Tmax + s0);  // < 2^31: fa3_route
  for (int idx = threadIdx.x; idx < a.H * T; idx += blockDim.x) {
    const int t = idx / a.H, h = idx % a.H;
    const int64_t q = (int64_t)b * a.H + h, q0 = q / P * P;
    const int64_t Pg = min((int64_t)P, (int64_t)a.B * a.H - q0);
    const int64_t i = q0 * T + (int64_t)(T - 1 - t) * Pg + (q - q0);
    const int k = (int)(i / G), r = (int)(i % G);
    const int c = (k & 1) ? G - 1 - r : r;
    const int e = fa3_cta_start(c, nb, rem, G) + k;
    w.head_indices[e] = h;
    w.qo_tile_indices[e] = t;
    w.qo_indptr[e] = b * a.S;
    w.kv_indptr[e] = kv_ptr;
    w.qo_lens[e] = flagged ? 0 : a.S;
    w.kv_lens[e] = kv_len;
    w.batch_indices[e] = b;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 132;
  if (dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
  if (dev < 64) cached[dev] = n;
  return n;
}

size_t elem_size(dsattn_dtype t) { return t == DSATTN_FLOAT32 ? 4 : 2; }

// (row, head) pairs per group of the FlashInfer work list: as many as keep their K/V (2 S D elements
// per KV head: the prompt's own keys, the common prefill) within two thirds of L2, at least 1.
int fa3_group_pairs(const dsattn_softmax_context_params& p) {
  static int cached[64] = {0};
  int dev = 0, l2 = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < 64 && cached[dev] > 0) {
    l2 = cached[dev];
  } else {
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev) != cudaSuccess ||
        l2 <= 0)
      l2 = 50 << 20;
    if (dev >= 0 && dev < 64) cached[dev] = l2;
  }
  const double kv_per_pair = 2.0 * p.seq_len * p.head_size * elem_size(p.dtype) * p.num_kv_heads / p.num_heads;
  const int64_t n = (int64_t)(l2 * (2.0 / 3.0) / kv_per_pair);
  return (int)std::max<int64_t>(1, std::min<int64_t>(n, p.batch * p.num_heads));
}

bool decode_supported(const dsattn_softmax_context_params& p) {
  const int64_t rows = p.seq_len * (p.num_heads / p.num_kv_heads);
  if (rows > kDecodeMaxRows) return false;
  if (p.dtype == DSATTN_FLOAT32) return p.head_size == 64 || p.head_size == 128;
  return p.head_size == 64 || p.head_size == 128 || p.head_size == 256;
}

// Resident decode CTAs per SM (ptxas: <= 128 registers x 128 threads at RMAX 1 -> 4 CTAs per SM,
// ~155 at RMAX 4 -> 3, ~240 at RMAX 8 -> 2).
constexpr int kDecodeMaxCtasPerSm = 4;
int64_t decode_slots(const dsattn_softmax_context_params& p) {
  const int64_t rows = p.seq_len * (p.num_heads / p.num_kv_heads);
  const int64_t per_sm = rows <= 1 ? kDecodeMaxCtasPerSm : (rows <= 4 ? 3 : 2);
  return per_sm * sm_count();
}

// Chunks per row for the decode split: as many as fit one wave of resident CTAs, rounded down (a
// second, partial wave of equal chunks would cost a whole chunk's time); chunks >= kMinSplitKeys
// keys and at most kMaxSplits (bounded by Tmax: the real lengths live on the device).
int decode_splits(const dsattn_softmax_context_params& p) {
  const int64_t ctas = p.batch * p.num_kv_heads;
  const int64_t slots = decode_slots(p);
  int64_t n = slots / ctas;
  n = std::min<int64_t>(n, (p.max_seq_len + kMinSplitKeys - 1) / kMinSplitKeys);
  n = std::min<int64_t>(n, kMaxSplits);
  return (int)std::max<int64_t>(n, 1);
}

size_t align256(size_t x) { return (x + 255) / 256 * 256; }

// Decode workspace (nsplit > 1): fp32 partial o [B, S, H, nsplit, D], partial log2-sum-exp
// [B, S, H, nsplit], arrival words uint64 [B, Hkv] (decode_arrive), each 256-byte aligned.
struct DecodeWs {
  size_t o_bytes, lse_bytes, arrive_bytes;
};
struct DecodeBufs {
  float* o;
  float* lse;
  unsigned long long* arrive;
};
DecodeWs decode_ws_layout(const dsattn_softmax_context_params& p, int nsplit) {
  const size_t rows = (size_t)p.batch * p.seq_len * p.num_heads * nsplit;
  return {align256(rows * p.head_size * sizeof(float)), align256(rows * sizeof(float)),
          align256((size_t)p.batch * p.num_kv_heads * sizeof(unsigned long long))};
}
size_t decode_ws_bytes(const dsattn_softmax_context_params& p, int nsplit) {
  if (nsplit <= 1) return 0;
  const DecodeWs l = decode_ws_layout(p, nsplit);
  return l.o_bytes + l.lse_bytes + l.arrive_bytes;
}

cudaError_t fail(char* msg, size_t n, const char* fmt, ...) {
  if (msg && n) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
  }
  return cudaErrorInvalidValue;
}

cudaError_t validate(const dsattn_softmax_context_params* p, char* msg, size_t n) {
  if (msg && n) msg[0] = 0;
  if (!p) return fail(msg, n, "params is NULL");
  if (p->dtype != DSATTN_FLOAT32 && p->dtype != DSATTN_FLOAT16 && p->dtype != DSATTN_BFLOAT16)
    return fail(msg, n, "dtype=%d is not float32/float16/bfloat16", (int)p->dtype);
  if (p->batch < 0 || p->batch > INT32_MAX) return fail(msg, n, "batch=%lld must be in [0, 2^31)", (long long)p->batch);
  // 65535 query tiles of 64 rows: the prefill grid's y limit (also with larger tiles).
  if (p->seq_len < 0 || p->seq_len > 65535LL * 64)
    return fail(msg, n, "seq_len=%lld must be in [0, %lld]", (long long)p->seq_len, 65535LL * 64);
  if (p->num_heads < 1 || p->num_heads > 65535) return fail(msg, n, "num_heads=%lld must be in [1, 65535]", (long long)p->num_heads);
  if (p->num_kv_heads < 1 || p->num_heads % p->num_kv_heads)
    return fail(msg, n, "num_kv_heads=%lld must be >= 1 and divide num_heads=%lld", (long long)p->num_kv_heads, (long long)p->num_heads);
  if (p->head_size < DSATTN_ATTN_HEAD_MULTIPLE || p->head_size > DSATTN_ATTN_MAX_HEAD_SIZE || p->head_size % DSATTN_ATTN_HEAD_MULTIPLE)
    return fail(msg, n, "head_size=%lld must be a multiple of %d in [%d, %d]", (long long)p->head_size,
                DSATTN_ATTN_HEAD_MULTIPLE, DSATTN_ATTN_HEAD_MULTIPLE, DSATTN_ATTN_MAX_HEAD_SIZE);
  if (p->max_seq_len < 1 || p->max_seq_len > (1LL << 24))
    return fail(msg, n, "max_seq_len=%lld must be in [1, 2^24] (positions are exact in fp32)", (long long)p->max_seq_len);
  if (p->batch * p->num_kv_heads > 65535LL * 65535LL)
    return fail(msg, n, "batch * num_kv_heads = %lld is too large", (long long)(p->batch * p->num_kv_heads));
  if (p->batch > 65535) return fail(msg, n, "batch=%lld must be <= 65535 (grid limit)", (long long)p->batch);
  if (!std::isfinite(p->scale)) return fail(msg, n, "scale=%g must be finite", (double)p->scale);
  if (p->qkv_layout != 0 && p->qkv_layout != 1) return fail(msg, n, "qkv_layout=%d must be 0 or 1", p->qkv_layout);
  if (p->qkv_layout == 1 && p->num_kv_heads != p->num_heads)
    return fail(msg, n, "qkv_layout=1 requires num_kv_heads == num_heads, got %lld and %lld", (long long)p->num_kv_heads, (long long)p->num_heads);
  if (p->causal != 0 && p->causal != 1) return fail(msg, n, "causal=%d must be 0 or 1", p->causal);
  if (p->local_window < 0) return fail(msg, n, "local_window=%d must be >= 0", p->local_window);
  if (p->rotary_dim < 0 || p->rotary_dim % 2 || p->rotary_dim > p->head_size)
    return fail(msg, n, "rotary_dim=%d must be even and in [0, head_size=%lld]", p->rotary_dim, (long long)p->head_size);
  if (p->rotary_style != 0 && p->rotary_style != 1) return fail(msg, n, "rotary_style=%d must be 0 or 1", p->rotary_style);
  if (p->rotary_dim > 0 && !(std::isfinite(p->rope_theta) && p->rope_theta > 0.f))
    return fail(msg, n, "rope_theta=%g must be finite and > 0", (double)p->rope_theta);
  if (p->path != DSATTN_SOFTMAX_CONTEXT_PATH_AUTO && p->path != DSATTN_SOFTMAX_CONTEXT_PATH_PREFILL_MMA)
    return fail(msg, n, "path=%d must be %d (automatic) or %d (mma.sync prefill)", p->path,
                DSATTN_SOFTMAX_CONTEXT_PATH_AUTO, DSATTN_SOFTMAX_CONTEXT_PATH_PREFILL_MMA);
  if (p->path == DSATTN_SOFTMAX_CONTEXT_PATH_PREFILL_MMA) {
    if (!prefill_mma_supported(p->dtype, (int)p->head_size))
      return fail(msg, n, "path=%d (mma.sync prefill) needs float16/bfloat16 and head_size 64 or 128, got dtype=%d head_size=%lld",
                  p->path, (int)p->dtype, (long long)p->head_size);
    if (p->batch > 0 && p->seq_len > 0 && decode_supported(*p))
      return fail(msg, n, "path=%d (mma.sync prefill) does not apply: seq_len=%lld with %lld query heads per KV head takes the decode path",
                  p->path, (long long)p->seq_len, (long long)(p->num_heads / p->num_kv_heads));
  }
  if (!p->status) return fail(msg, n, "status is NULL (a device int32 is required)");
  if (p->batch > 0 && p->seq_len > 0) {
    if (!p->qkv || !p->key_cache || !p->value_cache || !p->seq_lens || !p->context)
      return fail(msg, n, "qkv, key_cache, value_cache, seq_lens and context must be non-NULL");
    const void* ptrs[] = {p->qkv, p->key_cache, p->value_cache, p->context};
    const char* names[] = {"qkv", "key_cache", "value_cache", "context"};
    for (int i = 0; i < 4; ++i)
      if (reinterpret_cast<uintptr_t>(ptrs[i]) % 16) return fail(msg, n, "%s=%p must be 16-byte aligned", names[i], ptrs[i]);
    if (p->context == p->qkv || p->context == p->key_cache || p->context == p->value_cache || p->key_cache == p->value_cache)
      return fail(msg, n, "context, key_cache and value_cache must be distinct buffers (and not qkv)");
  }
  return cudaSuccess;
}

// Prefill: rotated q [B, H, S, D] or [B, S, H, D] (mma.sync / generic / FlashInfer paths) or, on our
// Hopper path, the cos/sin table float2 [B, S, rotary_dim / 2] in the same space (larger only when
// H == 1).
size_t prefill_q_ws_bytes(const dsattn_softmax_context_params& p) {
  const size_t q_bytes = (size_t)p.batch * p.num_heads * p.seq_len * p.head_size * elem_size(p.dtype);
  const size_t tab_bytes = (size_t)p.batch * p.seq_len * (p.rotary_dim / 2) * 2 * sizeof(float);
  return align256(std::max(q_bytes, tab_bytes));
}

#if DSATTN_HAVE_SM90_LIBS
int fa3_q_tiles(const dsattn_softmax_context_params& p) { return (int)((p.seq_len + fa3::kTileQ - 1) / fa3::kTileQ); }

// The FlashInfer path's int32 arrays after the q region (Fa3Work): tok_flag [B * S], row_flag [B],
// work_indptr [G + 1] (G = SM count), 7 entry arrays [B * H * tiles]. Reserved for every 16-bit prefill
// with head size 128 (whether the call takes that path depends on pointers and the device, which the
// size must not).
size_t fa3_ws_bytes(const dsattn_softmax_context_params& p) {
  if ((p.dtype != DSATTN_FLOAT16 && p.dtype != DSATTN_BFLOAT16) || p.head_size != fa3::kHeadDim) return 0;
  const size_t n = (size_t)p.batch * p.num_heads * fa3_q_tiles(p);
  return align256((size_t)p.batch * p.seq_len * 4) + align256((size_t)p.batch * 4) +
         align256((size_t)(sm_count() + 1) * 4) + 7 * align256(n * 4);
}

Fa3Work fa3_work(const dsattn_softmax_context_params& p, void* ws) {
  char* c = static_cast<char*>(ws) + prefill_q_ws_bytes(p);
  const size_t n = (size_t)p.batch * p.num_heads * fa3_q_tiles(p);
  auto take = [&](size_t count) {
    int32_t* r = reinterpret_cast<int32_t*>(c);
    c += align256(count * 4);
    return r;
  };
  Fa3Work w;
  w.tok_flag = take((size_t)p.batch * p.seq_len);
  w.row_flag = take((size_t)p.batch);
  w.work_indptr = take((size_t)sm_count() + 1);
  w.head_indices = take(n);
  w.qo_tile_indices = take(n);
  w.qo_indptr = take(n);
  w.kv_indptr = take(n);
  w.qo_lens = take(n);
  w.kv_lens = take(n);
  w.batch_indices = take(n);
  return w;
}
#else
size_t fa3_ws_bytes(const dsattn_softmax_context_params&) { return 0; }
#endif

// Whether a prefill call takes the FlashInfer kernel: sm_90a build with the FlashInfer headers, a
// compute capability 9.0 device, float16 / bfloat16, head size 128, and what that kernel expresses
// exactly: no ALiBi, no local window, scale > 0 (it scales logits after masking them to -inf, so
// scale <= 0 would turn a masked logit into +inf or NaN). Its int32 work list and row indices bound
// B * Hkv * Tmax, B * S and the entry count. Everything else: our own kernels (launch_prefill).
bool fa3_route(const dsattn_softmax_context_params& p) {
#if DSATTN_HAVE_SM90_LIBS
  if (p.path != DSATTN_SOFTMAX_CONTEXT_PATH_AUTO) return false;
  if ((p.dtype != DSATTN_FLOAT16 && p.dtype != DSATTN_BFLOAT16) || p.head_size != fa3::kHeadDim) return false;
  if (p.alibi_slopes || p.local_window > 0 || !(p.scale > 0.f)) return false;
  const int64_t lim = (int64_t)1 << 31;
  if (p.batch * p.num_kv_heads * p.max_seq_len >= lim || p.batch * p.seq_len >= lim ||
      p.batch * p.num_heads * fa3_q_tiles(p) >= lim)
    return false;
  return prefill_sm90_usable(p.dtype, (int)p.head_size);
#else
  (void)p;
  return false;
#endif
}

size_t workspace_bytes(const dsattn_softmax_context_params& p) {
  if (p.batch == 0 || p.seq_len == 0) return 0;
  if (decode_supported(p)) {
    // Maximum over every batch' <= batch: callers (the TensorRT plugin) size the workspace once at
    // the profile's largest batch and run smaller ones with it, and the split count (so the fp32
    // partials) depends on the batch, not monotonically (integer division of the CTA slots). Past
    // one wave of one CTA per (b, kv head) every batch gets one chunk.
    size_t ws = 0;
    dsattn_softmax_context_params q = p;
    const int64_t last_split = decode_slots(p) / p.num_kv_heads;
    for (int64_t b = 1; b <= std::min<int64_t>(p.batch, last_split); ++b) {
      q.batch = b;
      ws = std::max(ws, decode_ws_bytes(q, decode_splits(q)));
    }
    return ws;
  }
  return prefill_q_ws_bytes(p) + fa3_ws_bytes(p);
}

template <typename T, int D, int RMAX>
cudaError_t launch_decode_t(const Args& a, const DecodeBufs& w, int nsplit, cudaStream_t st) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(nsplit, a.Hkv, a.B);
  cfg.blockDim = dim3(128);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  // The kernel waits (pdl_wait) before any access.
  if (pdl_launch_ok<decode_kernel<T, D, RMAX>>()) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, decode_kernel<T, D, RMAX>, a, w.o, w.lse, w.arrive, nsplit);
}

template <typename T, int D>
cudaError_t launch_decode_d(const Args& a, const DecodeBufs& w, int nsplit, cudaStream_t st) {
  const int rows = a.group * a.S;
  if (rows <= 1) return launch_decode_t<T, D, 1>(a, w, nsplit, st);
  if (rows <= 4) return launch_decode_t<T, D, 4>(a, w, nsplit, st);
  return launch_decode_t<T, D, 8>(a, w, nsplit, st);
}

template <typename T>
cudaError_t launch_decode(const Args& a, const DecodeBufs& w, int nsplit, cudaStream_t st) {
  switch (a.D) {
    case 64: return launch_decode_d<T, 64>(a, w, nsplit, st);
    case 128: return launch_decode_d<T, 128>(a, w, nsplit, st);
    default: return cudaErrorNotSupported;
  }
}
template <>
cudaError_t launch_decode<__half>(const Args& a, const DecodeBufs& w, int nsplit, cudaStream_t st) {
  switch (a.D) {
    case 64: return launch_decode_d<__half, 64>(a, w, nsplit, st);
    case 128: return launch_decode_d<__half, 128>(a, w, nsplit, st);
    case 256: return launch_decode_d<__half, 256>(a, w, nsplit, st);
    default: return cudaErrorNotSupported;
  }
}
template <>
cudaError_t launch_decode<__nv_bfloat16>(const Args& a, const DecodeBufs& w, int nsplit, cudaStream_t st) {
  switch (a.D) {
    case 64: return launch_decode_d<__nv_bfloat16, 64>(a, w, nsplit, st);
    case 128: return launch_decode_d<__nv_bfloat16, 128>(a, w, nsplit, st);
    case 256: return launch_decode_d<__nv_bfloat16, 256>(a, w, nsplit, st);
    default: return cudaErrorNotSupported;
  }
}

// Prefill: the append kernel, then the attention kernel of the path:
//   FlashInfer (fa3_route): q token-major in the workspace, the work list kernel, the FlashInfer
//     kernel, then the mma.sync kernel for the rows the work list left out (row_flag; normally none:
//     its CTAs leave at once);
//   our Hopper kernel (sm_90a on CC 9.0, D = 128: ALiBi, local window or scale <= 0), q rotated in
//     the kernel from the append kernel's cos/sin table;
//   mma.sync (fp16/bf16, D 64 / 128), q [B, H, S, D] from the append kernel;
//   the generic kernel otherwise.
template <typename T>
cudaError_t launch_prefill(const Args& a0, const dsattn_softmax_context_params& p, void* ws, cudaStream_t st) {
  Args a = a0;
  const bool fa3 = fa3_route(p);
  const bool sm90 = !fa3 && p.path == DSATTN_SOFTMAX_CONTEXT_PATH_AUTO && prefill_sm90_usable(p.dtype, a.D);
#if DSATTN_HAVE_SM90_LIBS
  Fa3Work w = {};
  if (fa3) {
    w = fa3_work(p, ws);
    a.tok_flag = w.tok_flag;
    a.q_tok_major = 1;
    a.kv_tile = a.causal ? fa3::kTileKvCausal : fa3::kTileKvFull;
  }
#else
  (void)ws;
#endif
  append_kernel<T><<<dim3(a.S, a.B), 256, 0, st>>>(a, fa3 ? kQTokenMajor : (sm90 ? kQTable : kQHeadMajor));
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
#if DSATTN_HAVE_SM90_LIBS
  if (fa3) {
    fa3_worklist_kernel<<<a.B, 256, 0, st>>>(a, w, sm_count(), fa3_q_tiles(p), fa3_group_pairs(p));
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    fa3::Args f = {};
    f.q = a.q_ws;
    f.q_stride_n = (int64_t)a.H * a.D;  // q and context rows are tokens: [B, S, H, D]
    f.q_stride_h = a.D;
    f.o = a.ctx;
    f.o_stride_n = (int64_t)a.H * a.D;
    f.o_stride_h = a.D;
    f.nnz_qo = (int64_t)a.B * a.S;
    // The caches [B, Hkv, Tmax, D] as rows n of head h: (n, d, h) at n D + d + h Tmax D. Row b's key
    // j is n = b Hkv Tmax + j of head hk; the last head's last row is n = (B - 1) Hkv Tmax + Tmax - 1,
    // so that is the extent (the TMA unit reads rows past it as zeros).
    f.k = a.kc;
    f.v = a.vc;
    f.kv_stride_n = a.D;
    f.kv_stride_h = (int64_t)a.Tmax * a.D;
    f.nnz_kv = ((int64_t)(a.B - 1) * a.Hkv + 1) * a.Tmax;
    f.work_indptr = w.work_indptr;
    f.head_indices = w.head_indices;
    f.qo_tile_indices = w.qo_tile_indices;
    f.qo_indptr = w.qo_indptr;
    f.kv_indptr = w.kv_indptr;
    f.qo_lens = w.qo_lens;
    f.kv_lens = w.kv_lens;
    f.batch_indices = w.batch_indices;
    f.num_qo_heads = a.H;
    f.num_kv_heads = a.Hkv;
    f.scale = p.scale;
    if (p.dtype == DSATTN_FLOAT16)
      e = a.causal ? fa3::prefill_f16_causal(f, st) : fa3::prefill_f16_full(f, st);
    else
      e = a.causal ? fa3::prefill_bf16_causal(f, st) : fa3::prefill_bf16_full(f, st);
    if (e != cudaSuccess) return e;
    a.row_flag = w.row_flag;
    return launch_prefill_mma(a, p.dtype, st);
  }
#endif
  if (sm90) return launch_prefill_sm90(a, p.dtype, st);
  if (prefill_mma_supported(p.dtype, a.D)) return launch_prefill_mma(a, p.dtype, st);
  generic_kernel<T><<<dim3((a.S + 3) / 4, a.H, a.B), 128, 0, st>>>(a);
  return cudaGetLastError();
}

}  // namespace
}  // namespace attn
}  // namespace dsattn

using namespace dsattn::attn;

extern "C" size_t dsattn_softmax_context_workspace_size(const dsattn_softmax_context_params* p) {
  if (validate(p, nullptr, 0) != cudaSuccess) return 0;
  return workspace_bytes(*p);
}

extern "C" cudaError_t dsattn_softmax_context_validate(const dsattn_softmax_context_params* p, char* msg, size_t msg_len) {
  return validate(p, msg, msg_len);
}

extern "C" cudaError_t dsattn_softmax_context(const dsattn_softmax_context_params* p, void* workspace,
                                              size_t workspace_bytes_given, cudaStream_t stream) {
  if (validate(p, nullptr, 0) != cudaSuccess) return cudaErrorInvalidValue;
  if (p->batch == 0 || p->seq_len == 0) return cudaMemsetAsync(p->status, 0, sizeof(int32_t), stream);
  const size_t need = workspace_bytes(*p);
  if (need > 0 && (!workspace || workspace_bytes_given < need || reinterpret_cast<uintptr_t>(workspace) % 256))
    return cudaErrorInvalidValue;
  Args a = {};
  a.qkv = p->qkv;
  a.kc = p->key_cache;
  a.vc = p->value_cache;
  a.seq_lens = p->seq_lens;
  a.start_pos = p->start_pos;
  a.alibi = p->alibi_slopes;
  a.ctx = p->context;
  a.status = p->status;
  a.q_ws = workspace;
  a.B = (int)p->batch;
  a.S = (int)p->seq_len;
  a.H = (int)p->num_heads;
  a.Hkv = (int)p->num_kv_heads;
  a.D = (int)p->head_size;
  a.Tmax = (int)p->max_seq_len;
  a.group = a.H / a.Hkv;
  a.scale_log2 = p->scale * kLog2e;
  a.rope_theta = p->rope_theta;
  a.layout = p->qkv_layout;
  a.causal = p->causal;
  a.window = p->local_window;
  a.rotary_dim = p->rotary_dim;
  a.rotary_style = p->rotary_style;

  if (decode_supported(*p)) {
    const int nsplit = decode_splits(*p);
    DecodeBufs w = {nullptr, nullptr, nullptr};
    if (nsplit > 1) {
      const DecodeWs l = decode_ws_layout(*p, nsplit);
      char* base = static_cast<char*>(workspace);
      w.o = reinterpret_cast<float*>(base);
      w.lse = reinterpret_cast<float*>(base + l.o_bytes);
      w.arrive = reinterpret_cast<unsigned long long*>(base + l.o_bytes + l.lse_bytes);
    }
    switch (p->dtype) {
      case DSATTN_FLOAT16: return launch_decode<__half>(a, w, nsplit, stream);
      case DSATTN_BFLOAT16: return launch_decode<__nv_bfloat16>(a, w, nsplit, stream);
      default: return launch_decode<float>(a, w, nsplit, stream);
    }
  }
  switch (p->dtype) {
    case DSATTN_FLOAT16: return launch_prefill<__half>(a, *p, workspace, stream);
    case DSATTN_BFLOAT16: return launch_prefill<__nv_bfloat16>(a, *p, workspace, stream);
    default: return launch_prefill<float>(a, *p, workspace, stream);
  }
}
