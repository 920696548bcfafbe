// dsattn::SoftmaxContext tensor-core prefill (FlashAttention-2 style, mma.sync m16n8k16).
//
// Grid (H, ceil(S / 128), B), 8 warps; each warp owns 16 query rows of a 128-row tile (8 warps
// measured 7-10% faster than 4 x 64 rows on H100: K/V tiles shared by more warps). K/V tiles of
// 64 keys stream through two shared-memory stages (cp.async, 16-byte chunks, XOR swizzle so that
// ldmatrix reads hit 8 distinct bank groups). S = Q K^T and O += P V run on tensor cores with fp32
// accumulators; the online softmax is fp32 in the log2 domain. Masks (start_pos, causal, local
// window, key range) are index compares, applied only to tiles that straddle a boundary; ALiBi is
// one FMA per logit. Query tiles run heaviest-first (reverse order) to even out causal work.
#include "attn_common.cuh"

namespace dsattn {
namespace attn {
namespace {

constexpr int kWarps = 8;  // 16 query rows each (see the top of the file)
constexpr int kBM = 16 * kWarps, kBN = 64, kThreads = 32 * kWarps;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  const int n = ok ? 16 : 0;  // src-size 0: zero-fill (keys/rows outside the valid range)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename T> struct Mma;
template <> struct Mma<__half> {
  static constexpr bool kBf16 = false;
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void store2(__half* p, float x, float y) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
  }
};
template <> struct Mma<__nv_bfloat16> {
  static constexpr bool kBf16 = true;
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void store2(__nv_bfloat16* p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
  }
};

// Swizzled element offset of (row, 16-byte chunk) in a [rows][D] tile.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// The rare path's check (attn_common.cuh), out of line: inlined, its loop pushed the sm_80 build of
// the D = 64 kernel into register spills.
template <typename T>
__device__ __noinline__ bool value_nonfinite_outlined(const Args& a, const TileKeys& t, const T* vg, int p, int d) {
  return partial_value_nonfinite<kBN>(a, t, vg, p, d);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) prefill_kernel(Args a) {
  constexpr int CH = D / 8;
  static_assert(CH >= 8, "swizzle needs >= 8 chunks per row");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBM * D;
  T* sV = sK + 2 * kBN * D;
  __shared__ int s_flag;
  // Behind the FlashInfer kernel this kernel computes only the rows that kernel skipped (row_flag,
  // softmax_context.cu); the others leave at once.
  if (a.row_flag && a.row_flag[blockIdx.z] == 0) return;
  if (first_bad_row(a, &s_flag) >= 0) return;

  // Grid (H, query tiles, B): blocks start in x-fastest order, so every head's heaviest (last,
  // causal) tile is scheduled before any lighter one: a longest-first order that shortens the tail.
  const int mb = gridDim.y - 1 - blockIdx.y;
  const int h = blockIdx.x, b = blockIdx.z, hk = h / a.group;
  const TileKeys tk = tile_keys<kBM, kBN>(a, b, mb);
  const int seq = tk.seq, s0 = tk.s0, L = tk.L, m0 = tk.m0, rows_here = tk.rows_here;
  const int p_min = tk.p_min, p_max = tk.p_max, n_start = tk.n_start, nblk = tk.nblk;
  const int lo = tk.lo, hi = tk.hi;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  // q rows of this (b, h): [B, H, S, D] (stride D) or token-major [B, S, H, D] (stride H * D)
  const int64_t q_rs = a.q_tok_major ? (int64_t)a.H * D : D;
  const T* qg = static_cast<const T*>(a.q_ws) +
                (a.q_tok_major ? (((int64_t)b * a.S + m0) * a.H + h) * D : (((int64_t)b * a.H + h) * a.S + m0) * D);
  const T* kg = static_cast<const T*>(a.kc) + cache_off(a, b, hk, 0);
  const T* vg = static_cast<const T*>(a.vc) + cache_off(a, b, hk, 0);

  for (int c = tid; c < kBM * CH; c += kThreads) {
    const int r = c / CH, ch = c % CH;
    const bool ok = r < rows_here;
    cp_async16(sQ + swz<D>(r, ch), qg + (ok ? (int64_t)r * q_rs : 0) + ch * 8, ok);
  }
  auto load_kv = [&](int stage, int n0) {
    T* dk = sK + stage * kBN * D;
    T* dv = sV + stage * kBN * D;
    for (int c = tid; c < kBN * CH; c += kThreads) {
      const int r = c / CH, ch = c % CH, j = n0 + r;
      // zero-fill outside the tile's visible keys: what a masked cache row holds (even NaN) never
      // enters P.V (attn_common.cuh: non-finite values)
      const bool ok = j >= lo && j < hi;
      const int64_t off = (ok ? (int64_t)j * D : 0) + ch * 8;
      cp_async16(dk + swz<D>(r, ch), kg + off, ok);
      cp_async16(dv + swz<D>(r, ch), vg + off, ok);
    }
  };
  if (nblk > 0) load_kv(0, n_start);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const float slope = a.alibi ? a.alibi[h] * kLog2e : 0.f;
  const int r0 = warp * 16 + (lane >> 2);          // tile rows of this thread: r0 and r0 + 8
  const int prow[2] = {seq + m0 + r0, seq + m0 + r0 + 8};
  constexpr uint32_t kExpMask = Mma<T>::kBf16 ? 0x7f80u : 0x7c00u;  // exponent bits of T
  bool nonfinite_zeroed = false;  // a partial block's NaN / inf values were zeroed (rare path)

  for (int it = 0; it < nblk; ++it) {
    const int n0 = n_start + it * kBN;
    if (it + 1 < nblk) load_kv((it + 1) & 1, n0 + kBN);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4(qf[kk], sQ + swz<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)));
    }
    const T* cK = sK + (it & 1) * kBN * D;
    const T* cV = sV + (it & 1) * kBN * D;

    float sacc[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t kb[4];
        ldsm_x4(kb, cK + swz<D>(np * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
        Mma<T>::run(sacc[2 * np], qf[kk], kb[0], kb[1]);
        Mma<T>::run(sacc[2 * np + 1], qf[kk], kb[2], kb[3]);
      }
    }

    if (block_partial<kBN>(a, tk, n0)) {
      // Keys seen by some rows only: keep NaN / inf values out of P.V (attn_common.cuh).
      uint32_t bad = 0;
      for (int c = tid; c < kBN * CH; c += kThreads) {
        const uint4 m = nonfinite16_mask(*reinterpret_cast<const uint4*>(cV + c * 8), kExpMask);
        bad |= m.x | m.y | m.z | m.w;
      }
      if (__syncthreads_or(bad != 0)) {
        for (int c = tid; c < kBN * CH; c += kThreads) {
          uint4* pv = reinterpret_cast<uint4*>(const_cast<T*>(cV) + c * 8);
          const uint4 v = *pv, m = nonfinite16_mask(v, kExpMask);
          *pv = make_uint4(v.x & ~m.x, v.y & ~m.y, v.z & ~m.z, v.w & ~m.w);
        }
        nonfinite_zeroed = true;
        __syncthreads();
      }
    }
    const bool need_mask = n0 < s0 || n0 + kBN > L || (a.causal && n0 + kBN - 1 > p_min) ||
                           (a.window > 0 && n0 <= p_max - a.window);
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = n0 + nt * 8 + ((lane & 3) << 1) + (e & 1);
        float x = fmaf(sacc[nt][e], a.scale_log2, slope * (float)(j - s0));
        if (need_mask && !key_visible(a, j, prow[e >> 1], s0, L)) x = -INFINITY;
        sacc[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    }
    float ms[2], corr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      ms[i] = mx[i] == -INFINITY ? 0.f : mx[i];
      corr[i] = fast_exp2(mrow[i] - ms[i]);
      mrow[i] = mx[i];
      lrow[i] *= corr[i];
    }
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      o[nd][0] *= corr[0];
      o[nd][1] *= corr[0];
      o[nd][2] *= corr[1];
      o[nd][3] *= corr[1];
    }
    uint32_t pf[kBN / 16][4];
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      float pr[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pr[e] = fast_exp2(sacc[nt][e] - ms[e >> 1]);
        lrow[e >> 1] += pr[e];
      }
      pf[nt >> 1][(nt & 1) * 2 + 0] = Mma<T>::pack(pr[0], pr[1]);
      pf[nt >> 1][(nt & 1) * 2 + 1] = Mma<T>::pack(pr[2], pr[3]);
    }
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldsm_x4_t(vb, cV + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
        Mma<T>::run(o[2 * dp], pf[kk], vb[0], vb[1]);
        Mma<T>::run(o[2 * dp + 1], pf[kk], vb[2], vb[3]);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 1);
    lrow[i] += __shfl_xor_sync(0xffffffffu, lrow[i], 2);
  }
  // No visible key: zeros. A NaN sum (NaN logit) propagates.
  const float inv0 = lrow[0] == 0.f ? 0.f : 1.f / lrow[0];
  const float inv1 = lrow[1] == 0.f ? 0.f : 1.f / lrow[1];
  if (nonfinite_zeroed) {  // uniform over the CTA
    const TileKeys tk2 = tile_keys<kBM, kBN>(a, b, mb);  // reloaded: nothing stays live for this path
    // bit 2 nd + e of poison0 / poison1 (half 0 / 1): o[nd][2 half + e] (column 8 nd + 2 (lane & 3) + e)
    uint32_t poison0 = 0u, poison1 = 0u;
#pragma unroll 1
    for (int k = 0; k < 2 * (D / 4); ++k) {
      const int half = k / (D / 4), bit = k % (D / 4);
      if (r0 + half * 8 < rows_here &&
          value_nonfinite_outlined(a, tk2, vg, half ? prow[1] : prow[0], (bit >> 1) * 8 + ((lane & 3) << 1) + (bit & 1)))
        (half ? poison1 : poison0) |= 1u << bit;
    }
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (((i >> 1 ? poison1 : poison0) >> (nd * 2 + (i & 1))) & 1u) o[nd][i] = NAN;
  }
  T* out = static_cast<T*>(a.ctx);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = r0 + half * 8;
    if (r < rows_here) {
      T* orow = out + (((int64_t)b * a.S + m0 + r) * a.H + h) * D + ((lane & 3) << 1);
      const float inv = half ? inv1 : inv0;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        Mma<T>::store2(orow + nd * 8, o[nd][half * 2] * inv, o[nd][half * 2 + 1] * inv);
    }
  }
}

template <typename T, int D>
cudaError_t launch_t(const Args& a, cudaStream_t st) {
  constexpr size_t smem = (size_t)(kBM + 4 * kBN) * D * sizeof(T);
  // Per launch (cheap, host-only): the attribute is per device, and a static flag would race.
  cudaError_t e = cudaFuncSetAttribute(prefill_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  dim3 grid(a.H, (a.S + kBM - 1) / kBM, a.B);
  prefill_kernel<T, D><<<grid, kThreads, smem, st>>>(a);
  return cudaGetLastError();
}

}  // namespace

bool prefill_mma_supported(dsattn_dtype dtype, int D) {
  return (dtype == DSATTN_FLOAT16 || dtype == DSATTN_BFLOAT16) && (D == 64 || D == 128);
}

cudaError_t launch_prefill_mma(const Args& a, dsattn_dtype dtype, cudaStream_t st) {
  if (dtype == DSATTN_FLOAT16) {
    if (a.D == 64) return launch_t<__half, 64>(a, st);
    if (a.D == 128) return launch_t<__half, 128>(a, st);
  } else if (dtype == DSATTN_BFLOAT16) {
    if (a.D == 64) return launch_t<__nv_bfloat16, 64>(a, st);
    if (a.D == 128) return launch_t<__nv_bfloat16, 128>(a, st);
  }
  return cudaErrorNotSupported;
}

}  // namespace attn
}  // namespace dsattn
