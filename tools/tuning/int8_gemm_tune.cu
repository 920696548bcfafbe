// Tuning harness of Int8MatMul's Hopper path: times every linked candidate configuration
// (int8_gemm_candidates.h, each built by int8_gemm_config.cu) against cuBLAS (cublasGemmEx, same
// dtype, fp32 accumulation: what torch's F.linear runs) and the library's weight-streaming skinny
// kernel, on y = x @ dequant(W)^T + bias with x T [M, K], W int8 [N, K], per-channel or group
// scales. Not part of the library; built and run by int8_gemm_tune.sh (sm_90a, H100).
//
// Timing: each call is captured as its own CUDA graph, one per rotating input set (enough sets
// that the other sets' weights alone exceed three L2s of 50 MB, so every call reads its weights
// from HBM, as in a model); a spin kernel holds the GPU while the host enqueues all reps, and
// CUDA events around each launch give per-call times; the table shows medians in microseconds.
// Every candidate's output is checked against cuBLAS on the dequantized weights first (err =
// max |y - ref| / max |ref|; a failed or wrong candidate is marked and never chosen as best).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "int8_gemm_candidates.h"
#include "int8_gemm_tune.h"
#include "int8_matmul.h"

namespace {

std::map<std::tuple<int, bool, bool>, TuneRunFn>& registry() {
  static std::map<std::tuple<int, bool, bool>, TuneRunFn> r;
  return r;
}

struct CandInfo {
  int id;
  const char* name;
};
const CandInfo kCands[] = {
#define DSATTN_TUNE_INFO(id, name, ...) {id, name},
    DSATTN_INT8_TUNE_CANDIDATES(DSATTN_TUNE_INFO)
#undef DSATTN_TUNE_INFO
};

#define CK(x)                                                                       \
  do {                                                                              \
    cudaError_t ck_err_ = (x);                                                      \
    if (ck_err_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,               \
                   cudaGetErrorString(ck_err_));                                    \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)
#define CB(x)                                                                                    \
  do {                                                                                           \
    cublasStatus_t cb_st_ = (x);                                                                 \
    if (cb_st_ != CUBLAS_STATUS_SUCCESS) {                                                       \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #x, int(cb_st_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

__device__ __forceinline__ float hash01(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return float(uint32_t(x >> 40)) * (1.0f / 16777216.0f);
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void fill_t(T* p, size_t n, float lo, float hi, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = from_f<T>(lo + (hi - lo) * hash01(i, seed));
}
__global__ void fill_f(float* p, size_t n, float lo, float hi, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = lo + (hi - lo) * hash01(i, seed);
}
__global__ void fill_q(int8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = int8_t(int(hash01(i, seed) * 255.f) - 127);
}
// The cuBLAS baseline's weights: W[n, k] = T(q[n, k] * scale[n, k / g]).
template <typename T>
__global__ void dequant(const int8_t* q, const float* scale, T* w, int64_t N, int64_t K, int64_t g) {
  const size_t n_all = size_t(N) * K;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n_all; i += size_t(gridDim.x) * blockDim.x) {
    const int64_t n = int64_t(i / K), k = int64_t(i % K);
    w[i] = from_f<T>(float(q[i]) * scale[n * (K / g) + k / g]);
  }
}
// out[0] = max |y - (ref + bias)|, out[1] = max |ref + bias| (as ordered uint bits of non-negative floats).
template <typename T>
__global__ void compare(const T* y, const T* ref, const T* bias, int64_t M, int64_t N, unsigned* out) {
  float d = 0.f, r = 0.f;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < size_t(M) * N; i += size_t(gridDim.x) * blockDim.x) {
    const float rv = to_f(ref[i]) + to_f(bias[i % N]);
    const float dv = fabsf(to_f(y[i]) - rv);
    d = fmaxf(d, dv != dv ? INFINITY : dv);
    r = fmaxf(r, fabsf(rv));
  }
  atomicMax(out, __float_as_uint(d));
  atomicMax(out + 1, __float_as_uint(r));
}
__global__ void spin(long long ns) {
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

const int kFillBlocks = 1024, kFillThreads = 256;

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    v.push_back(std::strtoll(p, &end, 10));
    if (end == p) {
      std::fprintf(stderr, "bad list '%s'\n", s);
      std::exit(2);
    }
    p = *end == ',' ? end + 1 : end;
  }
  return v;
}

struct Opts {
  std::vector<int64_t> ms{64, 128, 256, 512, 1024, 2048}, ns{4096, 12288};
  int64_t K = 4096, group = 128, skinny_max_m = 256;
  int reps = 30;
  bool f16 = true, bf16 = true, channel = true, grouped = true;
  std::string csv;
};

// One measured cell: median microseconds, or a failure / wrong result.
struct Cell {
  double us = -1;
  double err = 0;
  std::string why;  // non-empty: not usable
};

class Bench {
 public:
  explicit Bench(const Opts& o) : o_(o) {
    CK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
    CB(cublasCreate(&blas_));
    CB(cublasSetStream(blas_, s_));
    CK(cudaMalloc(&blas_ws_, kBlasWs));
    CB(cublasSetWorkspace(blas_, blas_ws_, kBlasWs));
    CK(cudaMalloc(&kernel_ws_, kKernelWs));
    CK(cudaMalloc(&cmp_, 2 * sizeof(unsigned)));
    ev_.resize(o.reps + 1);
    for (auto& e : ev_) CK(cudaEventCreate(&e));
  }

  template <typename T>
  void run_dtype(bool bf16, FILE* csv) {
    const int64_t K = o_.K;
    const int64_t max_m = *std::max_element(o_.ms.begin(), o_.ms.end());
    for (int64_t N : o_.ns) {
      // Sets: the weights of the other sets exceed 150 MB (three 50 MB L2s).
      const int sets = 1 + int((150ll << 20) / (N * K) + 1);
      std::vector<Set<T>> data(sets);
      for (int i = 0; i < sets; ++i) alloc(data[i], N, max_m, i);
      for (int grouped = 0; grouped < 2; ++grouped) {
        if ((grouped && !o_.grouped) || (!grouped && !o_.channel)) continue;
        const int64_t g = grouped ? o_.group : K;
        for (auto& d : data)
          dequant<T><<<kFillBlocks, kFillThreads, 0, s_>>>(d.q, grouped ? d.sg : d.sc, d.w16, N, K, g);
        for (int64_t M : o_.ms) row<T>(data, bf16, grouped != 0, M, N, csv);
      }
      for (auto& d : data) release(d);
    }
  }

 private:
  static constexpr size_t kBlasWs = 64ull << 20, kKernelWs = 256ull << 20;

  template <typename T>
  struct Set {
    int8_t* q = nullptr;
    float *sc = nullptr, *sg = nullptr;
    T *bias = nullptr, *w16 = nullptr, *x = nullptr, *y = nullptr, *ref = nullptr;
    void* ws = nullptr;
    size_t ws_bytes = 0;
  };

  template <typename T>
  void alloc(Set<T>& d, int64_t N, int64_t max_m, int i) {
    const int64_t K = o_.K;
    const uint32_t seed = 1000u * uint32_t(i);
    CK(cudaMalloc(&d.q, N * K));
    CK(cudaMalloc(&d.sc, N * sizeof(float)));
    CK(cudaMalloc(&d.sg, N * (K / o_.group) * sizeof(float)));
    CK(cudaMalloc(&d.bias, N * sizeof(T)));
    CK(cudaMalloc(&d.w16, N * K * sizeof(T)));
    CK(cudaMalloc(&d.x, max_m * K * sizeof(T)));
    CK(cudaMalloc(&d.y, max_m * N * sizeof(T)));
    if (i == 0) CK(cudaMalloc(&d.ref, max_m * N * sizeof(T)));
    fill_q<<<kFillBlocks, kFillThreads, 0, s_>>>(d.q, N * K, seed + 1);
    fill_f<<<kFillBlocks, kFillThreads, 0, s_>>>(d.sc, N, 0.005f, 0.015f, seed + 2);
    fill_f<<<kFillBlocks, kFillThreads, 0, s_>>>(d.sg, N * (K / o_.group), 0.005f, 0.015f, seed + 3);
    fill_t<T><<<kFillBlocks, kFillThreads, 0, s_>>>(d.bias, N, -0.1f, 0.1f, seed + 4);
    fill_t<T><<<kFillBlocks, kFillThreads, 0, s_>>>(d.x, max_m * K, -1.f, 1.f, seed + 5);
    CK(cudaGetLastError());
    // Scratch for both scale modes and every M: the library's skinny split-K and group scales.
    dsattn_int8_matmul_params p{};
    p.M = max_m;
    p.N = N;
    p.K = K;
    p.dtype = std::is_same<T, __half>::value ? DSATTN_FLOAT16 : DSATTN_BFLOAT16;
    d.ws_bytes = dsattn_int8_matmul_workspace_size(&p);
    p.group_size = o_.group;
    d.ws_bytes = std::max({d.ws_bytes, dsattn_int8_matmul_workspace_size(&p),
                           dsattn::int8_sm90::workspace_size(N, K, o_.group)}) + 256;
    CK(cudaMalloc(&d.ws, d.ws_bytes));
  }
  template <typename T>
  void release(Set<T>& d) {
    for (void* p : {(void*)d.q, (void*)d.sc, (void*)d.sg, (void*)d.bias, (void*)d.w16, (void*)d.x, (void*)d.y,
                    (void*)d.ref, d.ws})
      if (p) CK(cudaFree(p));
    d = Set<T>{};
  }

  template <typename T>
  cublasStatus_t blas(const Set<T>& d, T* y, int64_t M, int64_t N) {
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = std::is_same<T, __half>::value ? CUDA_R_16F : CUDA_R_16BF;
    const int K = int(o_.K);
    return cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), K, &one, d.w16, t, K, d.x, t, K, &zero, y,
                        t, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }

  // Max relative error of set 0's output against set 0's reference (+ bias).
  template <typename T>
  double error(const Set<T>& d, int64_t M, int64_t N) {
    CK(cudaMemsetAsync(cmp_, 0, 2 * sizeof(unsigned), s_));
    compare<T><<<kFillBlocks, kFillThreads, 0, s_>>>(d.y, d.ref, d.bias, M, N, cmp_);
    unsigned h[2];
    CK(cudaMemcpyAsync(h, cmp_, sizeof(h), cudaMemcpyDeviceToHost, s_));
    CK(cudaStreamSynchronize(s_));
    float a, b;
    std::memcpy(&a, &h[0], 4);
    std::memcpy(&b, &h[1], 4);
    return b > 0 ? double(a) / b : double(a);
  }

  // Runs call(set) once per set eagerly (errors, result of set 0), then captures one graph per
  // set and times reps launches rotating over them.
  template <typename T, typename F>
  Cell measure(std::vector<Set<T>>& data, int64_t M, int64_t N, bool check, double tol, F call) {
    Cell c;
    for (auto& d : data) {
      const cudaError_t e = call(d);
      if (e != cudaSuccess) {
        cudaGetLastError();
        c.why = std::string("error: ") + cudaGetErrorName(e);
        return c;
      }
    }
    if (check) {
      c.err = error(data[0], M, N);
      if (!(c.err <= tol)) c.why = "wrong";
    }
    std::vector<cudaGraphExec_t> graphs;
    for (auto& d : data) {
      cudaGraph_t g;
      CK(cudaStreamBeginCapture(s_, cudaStreamCaptureModeRelaxed));
      const cudaError_t e = call(d);
      CK(cudaStreamEndCapture(s_, &g));
      if (e != cudaSuccess) {
        c.why = std::string("capture: ") + cudaGetErrorName(e);
        cudaGraphDestroy(g);
        for (auto x : graphs) cudaGraphExecDestroy(x);
        return c;
      }
      cudaGraphExec_t x;
      CK(cudaGraphInstantiate(&x, g, 0));
      CK(cudaGraphDestroy(g));
      graphs.push_back(x);
    }
    for (auto x : graphs) CK(cudaGraphLaunch(x, s_));  // warm-up
    spin<<<1, 1, 0, s_>>>(200000ll + 20000ll * o_.reps);  // the host enqueues everything meanwhile
    CK(cudaEventRecord(ev_[0], s_));
    for (int i = 0; i < o_.reps; ++i) {
      CK(cudaGraphLaunch(graphs[(i + 1) % graphs.size()], s_));
      CK(cudaEventRecord(ev_[i + 1], s_));
    }
    CK(cudaStreamSynchronize(s_));
    std::vector<float> t(o_.reps);
    for (int i = 0; i < o_.reps; ++i) CK(cudaEventElapsedTime(&t[i], ev_[i], ev_[i + 1]));
    std::sort(t.begin(), t.end());
    c.us = 1000.0 * (o_.reps % 2 ? t[o_.reps / 2] : 0.5 * (t[o_.reps / 2 - 1] + t[o_.reps / 2]));
    for (auto x : graphs) CK(cudaGraphExecDestroy(x));
    return c;
  }

  template <typename T>
  void row(std::vector<Set<T>>& data, bool bf16, bool grouped, int64_t M, int64_t N, FILE* csv) {
    const int64_t K = o_.K, g = grouped ? o_.group : 0;
    const double tol = bf16 ? 3e-2 : 1e-2;
    // Reference of set 0 (cuBLAS on the dequantized weights).
    CB(blas(data[0], data[0].ref, M, N));
    Cell cub = measure<T>(data, M, N, false, tol, [&](Set<T>& d) {
      return blas(d, d.y, M, N) == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
    });
    Cell sk;
    if (M <= o_.skinny_max_m) {
      sk = measure<T>(data, M, N, true, tol, [&](Set<T>& d) {
        dsattn_int8_matmul_params p{};
        p.input = d.x;
        p.weight = d.q;
        p.weight_scale = grouped ? d.sg : d.sc;
        p.bias = d.bias;
        p.output = d.y;
        p.M = M;
        p.N = N;
        p.K = K;
        p.group_size = g;
        p.dtype = bf16 ? DSATTN_BFLOAT16 : DSATTN_FLOAT16;
        p.path = DSATTN_INT8_PATH_SKINNY;
        return dsattn_int8_matmul(&p, d.ws, d.ws_bytes, s_);
      });
    } else {
      sk.why = "-";
    }
    std::vector<Cell> cells;
    for (const CandInfo& ci : kCands) {
      auto it = registry().find({ci.id, bf16, grouped});
      if (it == registry().end()) {
        cells.push_back(Cell{-1, 0, "-"});
        continue;
      }
      TuneRunFn fn = it->second;
      cells.push_back(measure<T>(data, M, N, true, tol, [&](Set<T>& d) {
        const dsattn::int8_sm90::GemmArgs a{d.x, d.q, grouped ? d.sg : d.sc, d.bias, d.y, M, N, K, g};
        return fn(a, d.ws, kernel_ws_, kKernelWs, s_);
      }));
    }
    int best = -1;
    for (size_t i = 0; i < cells.size(); ++i)
      if (cells[i].why.empty() && (best < 0 || cells[i].us < cells[best].us)) best = int(i);

    auto fmt = [](const Cell& c) {
      char b[48];
      if (c.why == "-") return std::string("-");
      if (c.us < 0) return c.why;
      std::snprintf(b, sizeof(b), "%.1f%s", c.us, c.why.empty() ? "" : " (wrong)");
      return std::string(b);
    };
    std::printf("| %s | %s | %lld | %lld | %s | %s |", bf16 ? "bf16" : "f16", grouped ? "g128" : "chan",
                (long long)N, (long long)M, fmt(cub).c_str(), fmt(sk).c_str());
    for (auto& c : cells) std::printf(" %s |", fmt(c).c_str());
    if (best >= 0 && cub.us > 0) {
      const double base = cells[0].why.empty() ? cub.us / cells[0].us : 0.0;
      std::printf(" %d | %.2f | %.2f |", kCands[best].id, cub.us / cells[best].us, base);
    } else {
      std::printf(" - | - | - |");
    }
    if (sk.us > 0 && sk.why.empty() && cub.us > 0) std::printf(" %.2f |", cub.us / sk.us);
    else std::printf(" - |");
    std::printf("\n");
    std::fflush(stdout);
    if (csv) {
      auto line = [&](const char* name, int id, const Cell& c) {
        std::fprintf(csv, "%s,%s,%lld,%lld,%lld,%d,%s,%.3f,%.3g,%s\n", bf16 ? "bf16" : "f16",
                     grouped ? "group128" : "channel", (long long)M, (long long)N, (long long)K, id, name, c.us,
                     c.err, c.why.c_str());
      };
      line("cublas", -2, cub);
      line("skinny", -1, sk);
      for (size_t i = 0; i < cells.size(); ++i) line(kCands[i].name, kCands[i].id, cells[i]);
      std::fflush(csv);
    }
  }

  Opts o_;
  cudaStream_t s_;
  cublasHandle_t blas_;
  void *blas_ws_ = nullptr, *kernel_ws_ = nullptr;
  unsigned* cmp_ = nullptr;
  std::vector<cudaEvent_t> ev_;
};

void usage() {
  std::fprintf(stderr,
               "usage: int8_gemm_tune [--m 64,128,...] [--n 4096,12288] [--k 4096] [--group 128] [--reps 30]\n"
               "                      [--dtype f16|bf16|both] [--scales channel|group|both] [--skinny-max-m 256]\n"
               "                      [--csv FILE]\n");
}

}  // namespace

bool tune_register(int id, bool bf16, bool grouped, TuneRunFn fn) {
  registry()[{id, bf16, grouped}] = fn;
  return true;
}

int main(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      usage();
      return 2;
    }
    const char* v = argv[++i];
    if (a == "--m") o.ms = parse_list(v);
    else if (a == "--n") o.ns = parse_list(v);
    else if (a == "--k") o.K = std::atoll(v);
    else if (a == "--group") o.group = std::atoll(v);
    else if (a == "--reps") o.reps = std::atoi(v);
    else if (a == "--skinny-max-m") o.skinny_max_m = std::atoll(v);
    else if (a == "--csv") o.csv = v;
    else if (a == "--dtype") {
      o.f16 = !std::strcmp(v, "f16") || !std::strcmp(v, "both");
      o.bf16 = !std::strcmp(v, "bf16") || !std::strcmp(v, "both");
    } else if (a == "--scales") {
      o.channel = !std::strcmp(v, "channel") || !std::strcmp(v, "both");
      o.grouped = !std::strcmp(v, "group") || !std::strcmp(v, "both");
    } else {
      usage();
      return 2;
    }
  }
  if (o.reps < 1 || o.K % 64 || o.group % 64 || o.K % o.group || o.ms.empty() || o.ns.empty() ||
      (!o.f16 && !o.bf16) || (!o.channel && !o.grouped)) {
    usage();
    return 2;
  }
  for (int64_t n : o.ns)
    if (n % 8) {
      std::fprintf(stderr, "--n: %lld is not a multiple of 8\n", (long long)n);
      return 2;
    }
  int dev = 0;
  cudaDeviceProp prop;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("# int8_gemm_tune: %s, %d SMs, K %lld, group %lld, %d reps, median us per call (HBM-cold weights)\n",
              prop.name, prop.multiProcessorCount, (long long)o.K, (long long)o.group, o.reps);
  std::printf("# candidates:");
  for (const CandInfo& c : kCands) std::printf(" [%d] %s;", c.id, c.name);
  std::printf("\n# ratio = cuBLAS time / candidate time (> 1: int8 faster); base = candidate 0\n\n");
  std::printf("| dtype | scales | N | M | cuBLAS | skinny |");
  for (const CandInfo& c : kCands) std::printf(" [%d] |", c.id);
  std::printf(" best | ratio best | ratio [0] | ratio skinny |\n|---|---|---|---|---|---|");
  for (size_t i = 0; i < sizeof(kCands) / sizeof(kCands[0]); ++i) std::printf("---|");
  std::printf("---|---|---|---|\n");
  FILE* csv = nullptr;
  if (!o.csv.empty()) {
    csv = std::fopen(o.csv.c_str(), "w");
    if (!csv) {
      std::fprintf(stderr, "--csv: cannot write '%s'\n", o.csv.c_str());
      return 1;
    }
    std::fprintf(csv, "dtype,scales,M,N,K,id,name,median_us,err,note\n");
  }
  Bench b(o);
  if (o.f16) b.run_dtype<__half>(false, csv);
  if (o.bf16) b.run_dtype<__nv_bfloat16>(true, csv);
  if (csv) std::fclose(csv);
  return 0;
}
