// Candidate CUTLASS configurations of Int8MatMul's Hopper path (plugins/kernels/sm90/
// int8_gemm_sm90.cuh, Config<TILE_N, TILE_T, CLUSTER_N, CLUSTER_T, PINGPONG, STREAM_K>), timed
// by int8_gemm_tune.cu. TILE_N: output features per tile (the int8 weight rows, CUTLASS's M side of
// the transposed problem); TILE_T: tokens per tile. Each row is built as its own translation units
// (one per dtype x scale mode) by int8_gemm_tune.sh; ids are stable, so a table keeps its meaning.
//
//   X(id, name, TILE_N, TILE_T, CLUSTER_N, CLUSTER_T, PINGPONG, STREAM_K)
#pragma once
#define DSATTN_INT8_TUNE_CANDIDATES(X)                                                           \
  /* the library's configuration today (KernelId::k128x128) */                                   \
  X(0, "128x128 coop", 128, 128, 1, 1, false, false)                                             \
  /* same tile, stream-K: no partial last wave (M 256 at N 12288 is 192 tiles on 132 SMs) */      \
  X(1, "128x128 coop sk", 128, 128, 1, 1, false, true)                                           \
  /* twice the tokens per converted weight: half the conversion per flop */                       \
  X(2, "128x256 coop", 128, 256, 1, 1, false, false)                                             \
  /* two CTAs along the features share (multicast) the token tile */                              \
  X(3, "128x256 coop c2x1", 128, 256, 2, 1, false, false)                                        \
  X(4, "128x256 coop sk", 128, 256, 1, 1, false, true)                                           \
  /* one tile per consumer warpgroup: one's conversion and epilogue overlap the other's wgmma */  \
  X(5, "128x128 pingpong", 128, 128, 1, 1, true, false)                                          \
  /* twice the tiles at N 4096 and small M */                                                    \
  X(6, "64x128 pingpong", 64, 128, 1, 1, true, false)                                            \
  /* small M: 64-token tiles pad less; stream-K spreads k over the SMs when tiles are few */      \
  X(7, "128x64 coop sk", 128, 64, 1, 1, false, true)
