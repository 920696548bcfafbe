// The registry between int8_gemm_tune.cu (the timing harness) and the candidate translation units
// (int8_gemm_config.cu, one per candidate x dtype x scale mode).
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>

#include "int8_gemm_sm90.h"

using TuneRunFn = cudaError_t (*)(const dsattn::int8_sm90::GemmArgs& a, void* workspace, void* kernel_ws,
                                  size_t kernel_ws_bytes, cudaStream_t stream);
// Called from the candidates' static initialisers; returns true.
bool tune_register(int id, bool bf16, bool grouped, TuneRunFn fn);
