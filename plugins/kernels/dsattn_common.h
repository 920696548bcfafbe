// Shared definitions of the dsattn CUDA kernels. CUDA headers only: no TensorRT, no PyTorch.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element type of every T tensor of one op call (OPS.md: all T of one node are the same type).
typedef enum dsattn_dtype {
  DSATTN_FLOAT32 = 0,
  DSATTN_FLOAT16 = 1,
  DSATTN_BFLOAT16 = 2,
} dsattn_dtype;

#ifdef __cplusplus
}
#endif
