// One tuning candidate of Int8MatMul's Hopper path in one dtype and scale mode, built as its own
// translation unit by int8_gemm_tune.sh: -DTUNE_ID=<candidate id> -DTUNE_BF16=0|1 -DTUNE_GROUPED=0|1.
// It registers itself with int8_gemm_tune.cu's table at load time, so the harness times whatever
// subset of candidates was linked.
#include "int8_gemm_sm90.cuh"
#include "int8_gemm_tune.h"
#include "int8_gemm_candidates.h"

#if !defined(TUNE_ID) || !defined(TUNE_BF16) || !defined(TUNE_GROUPED)
#error "build with -DTUNE_ID=<id> -DTUNE_BF16=0|1 -DTUNE_GROUPED=0|1 (see int8_gemm_tune.sh)"
#endif

namespace {
namespace c = dsattn::int8_sm90;

template <int ID>
struct Candidate;
#define DSATTN_TUNE_CANDIDATE(id, name, tn, tt, cn, ct, pp, sk) \
  template <>                                                   \
  struct Candidate<id> {                                        \
    using type = c::Config<tn, tt, cn, ct, pp, sk>;             \
  };
DSATTN_INT8_TUNE_CANDIDATES(DSATTN_TUNE_CANDIDATE)
#undef DSATTN_TUNE_CANDIDATE

using T = cute::conditional_t<TUNE_BF16 != 0, cutlass::bfloat16_t, cutlass::half_t>;

cudaError_t run_candidate(const c::GemmArgs& a, void* ws, void* kernel_ws, size_t kernel_ws_bytes,
                          cudaStream_t s) {
  return c::run_config<typename Candidate<TUNE_ID>::type, T, TUNE_GROUPED != 0>(a, ws, s, kernel_ws,
                                                                               kernel_ws_bytes);
}

const bool registered = tune_register(TUNE_ID, TUNE_BF16 != 0, TUNE_GROUPED != 0, &run_candidate);
}  // namespace
