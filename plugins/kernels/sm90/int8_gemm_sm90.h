// Int8MatMul's large-M path on Hopper (sm_90a): CUTLASS's warp-specialised mixed-input GEMM
// (TMA loads, one producer warp, two consumer warpgroups converting the int8 tile in registers and
// issuing register-sourced wgmma). Internal to libdsattn_kernels.so: int8_matmul.cu calls these
// only when the library was built with the sm_90a sources (DSATTN_HAVE_SM90_LIBS) and the device is
// compute capability 9.0; the sources exist in sm_90a code only.
//
// The narrow operand of CUTLASS's mixed-input mainloop must be its A operand (A goes through the
// registers), so the GEMM is computed transposed: A = weight [N, K] (K-major), B = input [M, K]
// (K-major), D = output^T [N, M] column-major, which is exactly our row-major [M, N] output.
// Per-row (of D, i.e. per output feature n) scale and bias are applied in the epilogue in fp32.
//
// Numerics (T = fp16 or bf16, fp32 accumulation):
//   per channel (group_size 0): q converted to T exactly, sum_k x * q in fp32, then
//     T(sum * scale[n] + bias[n]) with the fp32 scale (exact, as the other paths);
//   groups (group_size % 64 == 0): the scales of row n are normalised by their largest magnitude
//     smax[n] (fp32), rel = T(scale[n, j] / smax[n]) in [-1, 1]; the mainloop multiplies each
//     converted weight by rel in T (q * rel rounded to T once), and the epilogue computes
//     T(sum * smax[n] + bias[n]) in fp32. Normalising keeps rel away from fp16's subnormal range
//     (a raw scale of ~1e-5 would lose most of its bits in fp16); a row whose scales are all zero
//     gets rel 0 and smax 0.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace dsattn::int8_sm90 {

struct GemmArgs {
  const void* input;   // T [M, K]
  const int8_t* weight;  // int8 [N, K]
  const float* scale;  // float32 [N, K / group]
  const void* bias;    // T [N] or NULL
  void* output;        // T [M, N]
  int64_t M, N, K;
  int64_t group_size;  // 0 = per channel
};

// The shapes this path takes: N % 8 == 0 (16-byte rows of the transposed output for the TMA store),
// group_size 0 or a multiple of 64 (the mainloop's k tile; one scale per k tile), M, N, K within
// int32 (TMA coordinates). Alignment of the pointers is checked by dsattn_int8_matmul (16 bytes).
inline bool shape_supported(int64_t M, int64_t N, int64_t K, int64_t group_size) {
  const int64_t lim = 0x7fffffff;
  return M >= 1 && M <= lim && N >= 8 && N <= lim && N % 8 == 0 && K >= 16 && K <= lim && K % 16 == 0 &&
         (group_size == 0 || (group_size % 64 == 0 && K % group_size == 0));
}

// Scratch bytes of a call: with groups, the normalised scales in the layout CUTLASS loads
// (smax fp32 [N], then rel T [K / group_size, N rounded up to 8], each 256-byte aligned) plus 256
// bytes to align the caller's pointer; 0 per channel. The same for every M of a shape (the
// kernels of KernelId take no scratch of their own: persistent data-parallel scheduler, no
// stream-K).
inline size_t workspace_size(int64_t N, int64_t K, int64_t group_size) {
  if (group_size == 0) return 0;
  const size_t a = 256;
  const size_t smax = (size_t(N) * 4 + a - 1) / a * a;
  const size_t rel = (size_t(K / group_size) * size_t((N + 7) / 8 * 8) * 2 + a - 1) / a * a;
  return a + smax + rel;
}

// The kernel configurations the library instantiates (tile, cluster, schedule, scheduler: see
// KernelConfig in int8_gemm_sm90.cuh). Candidates are timed against each other and cuBLAS outside
// the library (tools/tuning/); only the ones some shape chooses are compiled in, one .cu per
// configuration x dtype x scale mode (each CUTLASS instantiation takes about a minute and a few
// GB of compiler memory).
enum class KernelId : int {
  k128x128,  // 128 features x 128 tokens, cooperative, no cluster, persistent
  k128x256,  // 128 features x 256 tokens, cooperative, no cluster, persistent
};

// Which configuration runs M tokens x N output features: the first row with N <= max_n and
// M <= max_m (the last row takes every shape). From the tools/tuning run on the H100 (K 4096, fp16 /
// bf16, per-channel / group 128; microseconds, 128x128 vs 128x256): 128 x 256 converts each int8
// weight once per 256 tokens instead of 128 (M 2048, N 12288: 322 vs 294 per channel, 379 vs 307
// group 128), and wins wherever its tile count fills the 132 SMs as evenly (M 256 at N 12288: one
// partial wave either way, 52.8 vs 45.6; M 1024 at N 4096: 53.9 vs 47.8); 128 x 128 wins where its
// twice as many tiles fill the waves better (M 512 at N 12288: 2.9 waves vs 1.45, 79.9 vs 89.0; M
// <= 512 at N 4096) and where 256 tokens would be mostly padding (M <= 128). Stream-K, ping-pong,
// 64 x 128 and 2x1 clusters were measured too and are not instantiated (tools/tuning/README.md).
struct KernelChoice {
  int64_t max_n, max_m;
  KernelId kernel;
};
constexpr int64_t kAnySize = INT64_MAX;
constexpr KernelChoice kKernelTable[] = {
    {4096, 512, KernelId::k128x128},
    {4096, kAnySize, KernelId::k128x256},
    {kAnySize, 128, KernelId::k128x128},
    {kAnySize, 256, KernelId::k128x256},
    {kAnySize, 512, KernelId::k128x128},
    {kAnySize, kAnySize, KernelId::k128x256},
};
inline KernelId choose_kernel(int64_t M, int64_t N) {
  for (const KernelChoice& c : kKernelTable)
    if (N <= c.max_n && M <= c.max_m) return c.kernel;
  return kKernelTable[sizeof(kKernelTable) / sizeof(kKernelTable[0]) - 1].kernel;
}

// One instantiation per file (sm90/int8_gemm_sm90_<config>_<dtype>_<scales>.cu), called by
// int8_matmul.cu's dispatch (kept out of this header: a call here would instantiate every
// configuration in each file that includes the definitions). Enqueue on `stream`; no host sync,
// no allocation (CUDA-graph capturable). `workspace` holds workspace_size(...) bytes.
template <KernelId K>
cudaError_t run_f16_channel(const GemmArgs& a, void* workspace, cudaStream_t stream);
template <KernelId K>
cudaError_t run_bf16_channel(const GemmArgs& a, void* workspace, cudaStream_t stream);
template <KernelId K>
cudaError_t run_f16_group(const GemmArgs& a, void* workspace, cudaStream_t stream);
template <KernelId K>
cudaError_t run_bf16_group(const GemmArgs& a, void* workspace, cudaStream_t stream);

}  // namespace dsattn::int8_sm90
