// CUTLASS mixed-input GEMM behind int8_gemm_sm90.h (layouts, numerics and shapes: see there).
// Included by one .cu per (configuration, dtype, scale mode): each instantiates one kernel, since
// a CUTLASS mainloop + epilogue instantiation takes minutes and GBs of compiler memory.
#pragma once
#include "int8_gemm_sm90.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>

// ---------------------------------------------------------------------------------------------
// int8 -> bf16 in the mainloop. CUTLASS's converter goes through fp32 with dp4a + I2F per element
// on sm_90, and I2F runs at a quarter of the FP32 rate: at 128 x 128 x 64 tiles that alone would
// cost about as many cycles as the tile's tensor-core work. This one (as our other int8 kernels):
// u = q + 128 as the low byte of the fp32 number 2^23 + u, minus 2^23 + 128 leaves q exactly, and
// the top half of an fp32 holding a small integer is that integer in bf16 (exact, |q| <= 128).
// Full specialisations of the converter for the vector widths the mainloop uses; CUTLASS's own
// int8 -> fp16 converter (PRMT + half subtraction) is already fast and is kept.
// ---------------------------------------------------------------------------------------------
namespace dsattn::int8_sm90 {
template <int N>
struct I8ToBf16 {
  static_assert(N == 2 || N % 4 == 0, "int8 -> bf16 vectors of 2 or 4k elements");
  using result_type = cutlass::Array<cutlass::bfloat16_t, N>;
  using source_type = cutlass::Array<int8_t, N>;

  CUTLASS_DEVICE static uint32_t pair(uint32_t u, uint32_t sel_lo, uint32_t sel_hi) {
    const float magic = 8388736.0f;  // 2^23 + 128
    const float lo = __uint_as_float(__byte_perm(u, 0x4B000000u, sel_lo)) - magic;
    const float hi = __uint_as_float(__byte_perm(u, 0x4B000000u, sel_hi)) - magic;
    return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
  }

  CUTLASS_DEVICE static result_type convert(source_type const& s) {
    result_type r;
    uint32_t* out = reinterpret_cast<uint32_t*>(&r);
    if constexpr (N == 2) {
      const uint32_t u = uint32_t(reinterpret_cast<const uint16_t&>(s)) ^ 0x8080u;
      out[0] = pair(u, 0x7440, 0x7441);
    } else {
      const uint32_t* in = reinterpret_cast<const uint32_t*>(&s);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N / 4; ++i) {
        const uint32_t u = in[i] ^ 0x80808080u;
        out[2 * i] = pair(u, 0x7440, 0x7441);
        out[2 * i + 1] = pair(u, 0x7442, 0x7443);
      }
    }
    return r;
  }
  CUTLASS_DEVICE result_type operator()(source_type const& s) const { return convert(s); }
};
}  // namespace dsattn::int8_sm90

namespace cutlass {
#define DSATTN_I8_BF16(N)                                                                    \
  template <>                                                                                \
  struct NumericArrayConverter<bfloat16_t, int8_t, N, FloatRoundStyle::round_to_nearest>    \
      : dsattn::int8_sm90::I8ToBf16<N> {};
DSATTN_I8_BF16(2)
DSATTN_I8_BF16(4)
DSATTN_I8_BF16(8)
DSATTN_I8_BF16(16)
#undef DSATTN_I8_BF16
}  // namespace cutlass

#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace dsattn::int8_sm90 {

using namespace cute;

// A kernel configuration. Tile: TILE_N output features (CUTLASS's M side, the int8 weight rows
// each consumer warpgroup converts) x TILE_T tokens (CUTLASS's N side) x 64 k; the k tile of 64 is
// the smallest group size this path takes (CUTLASS loads one scale per k tile). Each converted
// weight feeds TILE_T tokens' worth of wgmma, so a wider token tile spends less conversion per
// flop, while a narrower one pads less at small M. Cluster CLUSTER_N x CLUSTER_T CTAs (TMA
// multicast of the shared operand), cooperative (both consumer warpgroups on one tile, TILE_N >=
// 128) or ping-pong (one tile per warpgroup, epilogue overlapped with the other's mainloop)
// schedule, persistent data-parallel or stream-K tile scheduler (stream-K needs a kernel
// workspace, see run_config()). The library instantiates the configurations of int8_gemm_sm90.h's
// KernelId enum (KernelConfig below); others are tuning candidates built outside the library.
template <int TILE_N, int TILE_T, int CLUSTER_N, int CLUSTER_T, bool PINGPONG, bool STREAM_K>
struct Config {
  using TileShape = Shape<Int<TILE_N>, Int<TILE_T>, _64>;
  using ClusterShape = Shape<Int<CLUSTER_N>, Int<CLUSTER_T>, _1>;
  using KernelSchedule = cute::conditional_t<PINGPONG, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                             cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
  using EpilogueSchedule = cute::conditional_t<PINGPONG, cutlass::epilogue::TmaWarpSpecialized,
                                               cutlass::epilogue::TmaWarpSpecializedCooperative>;
  using TileScheduler = cute::conditional_t<STREAM_K, cutlass::gemm::StreamKScheduler, cutlass::gemm::PersistentScheduler>;
  static_assert(PINGPONG || TILE_N >= 128, "the cooperative schedule splits the tile's rows over two warpgroups");
  static_assert(!(PINGPONG && STREAM_K), "CUTLASS's ping-pong kernel has no stream-K scheduler");
};

template <KernelId K>
struct KernelConfig;
// 128 x 128 cooperative, no cluster, persistent: one tile of 128 tokens keeps the transposed
// problem's token side from being padded much at the M where this path starts.
template <>
struct KernelConfig<KernelId::k128x128> {
  using type = Config<128, 128, 1, 1, false, false>;
};
// 128 x 256 cooperative, no cluster, persistent: half the int8 -> T conversions per FLOP of 128 x
// 128 (each warpgroup converts its weight fragment once for 256 tokens).
template <>
struct KernelConfig<KernelId::k128x256> {
  using type = Config<128, 256, 1, 1, false, false>;
};

template <typename Cfg, typename T>  // T: cutlass::half_t or cutlass::bfloat16_t
struct EpilogueOf {
  using TileShape = typename Cfg::TileShape;
  // D = T(scale_row * acc + bias_row), fp32 compute; a NULL bias reads as 0. Alignment 1: the
  // caller's scale and bias pointers are only element-aligned, and each thread reads the values of
  // its own rows (not contiguous in the wgmma accumulator layout) anyway.
  using RowVec = Stride<_1, _0, int64_t>;
  using Fusion = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, T, float,
                                             cutlass::FloatRoundStyle::round_to_nearest>,
      cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, RowVec, 1>,
      cutlass::epilogue::fusion::Sm90AccFetch,
      cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, T, float, RowVec, 1>>;
  using Collective = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, typename Cfg::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::ColumnMajor, 8,  // no C operand
      T, cutlass::layout::ColumnMajor, 8,     // D = output^T [N, M], column-major = output [M, N]
      typename Cfg::EpilogueSchedule, Fusion>::CollectiveOp;
};

template <typename Cfg, typename T, bool GROUPED>
struct GemmOf {
  using Epilogue = typename EpilogueOf<Cfg, T>::Collective;
  // A: the int8 weight (with its T group scales when grouped), K-major; B: the input, K-major.
  using ElementA = cute::conditional_t<GROUPED, cute::tuple<int8_t, T>, int8_t>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementA, cutlass::layout::RowMajor, 16,
      T, cutlass::layout::ColumnMajor, 8,
      float, typename Cfg::TileShape, typename Cfg::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      typename Cfg::KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      typename Cfg::TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// Workspace layout (group scales only): smax float [N] | rel T [K / group, ld] (ld = N rounded
// up to 8: 16-byte rows for the TMA load). Offsets 256-byte aligned from an aligned-up base.
constexpr size_t kAlign = 256;
inline size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
inline int64_t rel_ld(int64_t N) { return (N + 7) / 8 * 8; }

// Normalised group scales (see int8_gemm_sm90.h): one thread per output feature n reads its row of
// scales twice (max, then the quotients; the row is in L1 the second time) and writes rel
// transposed, group-major, so consecutive threads write consecutive n.
template <typename T>
__global__ void __launch_bounds__(256) group_scale_kernel(const float* __restrict__ scale, float* __restrict__ smax,
                                                          T* __restrict__ rel, int64_t N, int64_t G, int64_t ld) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const float* s = scale + n * G;
  float m = 0.f;
  for (int64_t j = 0; j < G; ++j) m = fmaxf(m, fabsf(__ldg(s + j)));  // NaN scales: rel NaN below
  smax[n] = m;
  const float inv = m > 0.f ? 1.f / m : 0.f;  // inf scales: inv 0, rel NaN where s is inf (0 * inf)
  for (int64_t j = 0; j < G; ++j) rel[j * ld + n] = T(__ldg(s + j) * inv);
}

// kernel_ws: the CUTLASS kernel's own scratch (stream-K partial tiles), kernel_ws_bytes of it; the
// library's configurations take none (nullptr, 0), and a configuration needing more fails the call.
template <typename Cfg, typename T, bool GROUPED>
cudaError_t run_config(const GemmArgs& a, void* workspace, cudaStream_t stream, void* kernel_ws = nullptr,
                       size_t kernel_ws_bytes = 0) {
  using G = GemmOf<Cfg, T, GROUPED>;
  using Gemm = typename G::Gemm;
  using Mainloop = typename G::Mainloop;
  using Epilogue = typename G::Epilogue;
  if (!shape_supported(a.M, a.N, a.K, a.group_size) || (a.group_size != 0) != GROUPED) return cudaErrorInvalidValue;
  const int N = int(a.N), K = int(a.K);

  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;

  const float* row_scale = a.scale;  // per channel: scale[n, 0], contiguous
  typename Mainloop::Arguments ml{};
  ml.ptr_A = a.weight;
  ml.dA = typename Mainloop::StrideA{int64_t(K), _1{}, int64_t(0)};
  ml.ptr_B = static_cast<const T*>(a.input);
  ml.dB = typename Mainloop::StrideB{int64_t(K), _1{}, int64_t(0)};
  char* ws = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(workspace) + kAlign - 1) / kAlign * kAlign);
  if constexpr (GROUPED) {
    const int64_t groups = a.K / a.group_size, ld = rel_ld(a.N);
    float* smax = reinterpret_cast<float*>(ws);
    T* rel = reinterpret_cast<T*>(ws + align_up(size_t(a.N) * sizeof(float)));
    group_scale_kernel<T><<<unsigned((a.N + 255) / 256), 256, 0, stream>>>(a.scale, smax, rel, a.N, groups, ld);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    ml.ptr_S = rel;
    ml.dS = typename Mainloop::StrideScale{_1{}, ld, int64_t(0)};
    ml.group_size = int(a.group_size);
    row_scale = smax;
  }

  typename Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {N, int(a.M), K, 1};  // transposed: rows = output features, columns = tokens
  args.mainloop = ml;
  auto& fusion = args.epilogue.thread;
  fusion = {{row_scale, 0.f, {}},                               // scale[n] (fp32)
            {},                                                 // acc
            {static_cast<const T*>(a.bias), T(0), {}},          // bias[n] or 0
            {}};                                                // fma
  args.epilogue.ptr_C = nullptr;
  args.epilogue.ptr_D = static_cast<T*>(a.output);
  args.epilogue.dD = typename Epilogue::StrideD{_1{}, int64_t(N), int64_t(0)};
  args.hw_info.device_id = dev;
  args.hw_info.sm_count = sms;

  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  // The persistent data-parallel scheduler needs no workspace, and workspace_size() reserves none
  // for the kernel; stream-K's reduction buffer comes from the caller.
  if (Gemm::get_workspace_size(args) > kernel_ws_bytes) return cudaErrorNotSupported;
  if (gemm.initialize(args, kernel_ws, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    e = cudaGetLastError();
    return e != cudaSuccess ? e : cudaErrorLaunchFailure;
  }
  return cudaGetLastError();
}

}  // namespace dsattn::int8_sm90

namespace dsattn::int8_sm90 {
// The entry points of int8_gemm_sm90.h; each sm90/int8_gemm_sm90_<config>_<dtype>_<scales>.cu
// explicitly instantiates one of them for one KernelId.
template <KernelId K>
cudaError_t run_f16_channel(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run_config<typename KernelConfig<K>::type, cutlass::half_t, false>(a, workspace, stream);
}
template <KernelId K>
cudaError_t run_bf16_channel(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run_config<typename KernelConfig<K>::type, cutlass::bfloat16_t, false>(a, workspace, stream);
}
template <KernelId K>
cudaError_t run_f16_group(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run_config<typename KernelConfig<K>::type, cutlass::half_t, true>(a, workspace, stream);
}
template <KernelId K>
cudaError_t run_bf16_group(const GemmArgs& a, void* workspace, cudaStream_t stream) {
  return run_config<typename KernelConfig<K>::type, cutlass::bfloat16_t, true>(a, workspace, stream);
}
}  // namespace dsattn::int8_sm90
