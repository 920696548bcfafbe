// dsattn::SoftmaxContext kernels (OPS.md §2): split fused QKV, rotary, KV-cache append, attention.
//
// For every batch row b (L_b = seq_lens[b] + S keys after the append, s0 = start_pos[b] or 0) and
// new token i (absolute position p_i = seq_lens[b] + i), query head h, KV head h / (H / Hkv):
//   1. q, k, v of token i are taken from qkv (qkv_layout 0 blocked, 1 per-head interleaved);
//      rotary (rotary_dim > 0) rotates the first rotary_dim dims of q and k at position p_i - s0,
//      angle (p_i - s0) * rope_theta^(-2f/rotary_dim), computed in fp32 (precise sinf/cosf);
//   2. k, v are written to key_cache / value_cache rows seq_lens[b] + i (nothing else is written);
//   3. context[b, i, h] = sum_j softmax_j(scale * q.k_j + alibi_h * (j - s0)) v_j over the keys j
//      in [s0, L_b) with j <= p_i when causal, j > p_i - local_window when local_window > 0.
//      Logits, softmax and the weighted sum are fp32; a row with no visible key gets zeros.
//
// Paths (chosen inside dsattn_softmax_context; callers do not choose):
//   - decode (S * H/Hkv <= 8, fp16/bf16 with D in {64, 128, 256}, fp32 with D in {64, 128}): one
//     kernel does rotary + append + split-KV attention (flash-decoding: the key range of a row is
//     cut into chunks so that even batch 1 fills the GPU; the query heads of a GQA group share one
//     pass over K/V). The chunks merge in the same launch: each writes its partial result to the
//     workspace and the last CTA of the row to finish merges them (an arrival word per (b, kv
//     head) in the workspace; it needs no particular workspace contents on entry, see
//     decode_arrive in softmax_context.cu);
//   - prefill (fp16/bf16 with D in {64, 128}): an append kernel (rotary + cache write), then a
//     tensor-core flash-attention kernel. On sm_90a builds with the FlashInfer headers, running on
//     CC 9.0, with D = 128, no ALiBi, local_window == 0 and scale > 0: FlashInfer's FA3-style kernel
//     (sm90/prefill_fa3.h) on the rotated q the append kernel wrote (token-major) and the caches in
//     place, over a work list a small kernel builds on the device from seq_lens / start_pos (no host
//     sync; CUDA-graph capturable), then the mma.sync kernel for the rows that kernel must not compute
//     (a NaN / inf value in a key it would load while masked: OPS.md excludes masked keys, FlashInfer
//     multiplies them by zero; normally no row, and its blocks leave at once). Other D = 128 cases on
//     CC 9.0 (ALiBi, local window, scale <= 0): our wgmma kernel, which reads q from qkv and rotates it
//     itself (cos/sin table from the append kernel). Otherwise mma.sync m16n8k16 reading the rotated
//     q the append kernel wrote to the workspace (params.path = DSATTN_SOFTMAX_CONTEXT_PATH_PREFILL_MMA
//     forces it: tests);
//   - anything else (fp32 prefill, other head sizes): the append kernel, then a simple CUDA-core
//     kernel (correct, not tuned).
//
// Cache overflow (OPS.md: "a write past Tmax is an error"): seq_lens lives on the device, so the
// check runs on the device. Every kernel of the call checks every row; if any row has
// seq_lens[b] < 0, seq_lens[b] + S > Tmax, or start_pos[b] outside [0, seq_lens[b] + S] (the
// range dsattn.export.ops accepts), NO kernel writes anything (no
// cache row, no context element: the context keeps its previous contents) and *status is set to
// 1 + (the smallest such b). Otherwise *status is set to 0. Every successful call writes *status
// (the caller need not clear it); read it after the stream completes. qkv, the caches, context and
// the workspace must be 16-byte aligned.
//
// CUDA headers only: no TensorRT, no PyTorch. Thread-safety: the functions keep no state beyond a
// per-device cache of the SM count and compute capability; calls on different streams may run
// concurrently provided they share no workspace, status, cache or context buffer. The workspace
// is scratch: its contents between calls do not matter (other users may overwrite it). On sm_90
// the decode kernel is launched with programmatic dependent launch (stream-capture safe;
// verified in a CUDA graph). The prefill paths set their kernels' dynamic shared-memory limit (and
// the FlashInfer path builds its TMA descriptors, host-side) on every call.
#pragma once
#include "dsattn_common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Largest head size any path supports; head_size must be a multiple of DSATTN_ATTN_HEAD_MULTIPLE
// (16-byte vectors of fp16/bf16) and at most DSATTN_ATTN_MAX_HEAD_SIZE.
#define DSATTN_ATTN_MAX_HEAD_SIZE 256
#define DSATTN_ATTN_HEAD_MULTIPLE 8

// Values of params.path. Every caller outside the tests passes AUTO (0: zero-initialised params).
// PREFILL_MMA makes a prefill call run the mma.sync kernel even where the Hopper wgmma kernel
// applies, so that the sm_80 path stays testable on an H100; it needs float16/bfloat16 and
// head_size 64 or 128, and a call that takes the prefill path (validation rejects anything else).
#define DSATTN_SOFTMAX_CONTEXT_PATH_AUTO 0
#define DSATTN_SOFTMAX_CONTEXT_PATH_PREFILL_MMA 1

typedef struct dsattn_softmax_context_params {
  const void* qkv;             // T [B, S, (H + 2*Hkv) * D], contiguous; must not alias the outputs
  void* key_cache;             // T [B, Hkv, Tmax, D], contiguous; rows seq_lens[b]..+S-1 written in place
  void* value_cache;           // T [B, Hkv, Tmax, D], contiguous; same rows written in place
  const int32_t* seq_lens;     // device int32 [B]: tokens already cached per row (required)
  const int32_t* start_pos;    // device int32 [B]: first attended key per row (left padding), or NULL = 0
  const float* alibi_slopes;   // device float32 [H] ALiBi slope per query head, or NULL = no ALiBi
  void* context;               // T [B, S, H * D], contiguous output
  int32_t* status;             // device int32 scalar (required): 0 ok, 1 + b for the first bad row b
  int64_t batch;               // B (>= 0; B == 0 or S == 0 only clears *status)
  int64_t seq_len;             // S, new tokens per row (>= 0)
  int64_t num_heads;           // H (>= 1)
  int64_t num_kv_heads;        // Hkv (>= 1, divides H; == H when qkv_layout == 1)
  int64_t head_size;           // D (multiple of 8, 8..256)
  int64_t max_seq_len;         // Tmax, cache capacity in tokens (>= 1)
  float scale;                 // multiplies q.k (the caller resolves OPS.md's default 1/sqrt(D)); finite
  float rope_theta;            // rotary base (> 0, finite; used when rotary_dim > 0)
  int32_t qkv_layout;          // 0 blocked [Q | K | V], 1 per-head interleaved [q_h | k_h | v_h]
  int32_t causal;              // 1: token i sees keys j <= seq_lens[b] + i; 0: all keys < L_b
  int32_t local_window;        // > 0: additionally keys j > p_i - local_window; 0 off (>= 0)
  int32_t rotary_dim;          // 0 none; else even, <= D: dims rotated in q and k
  int32_t rotary_style;        // 0 rotate_half (GPT-NeoX / LLaMA), 1 rotate_every_two (GPT-J)
  dsattn_dtype dtype;          // T of qkv, caches and context
  int32_t path;                // DSATTN_SOFTMAX_CONTEXT_PATH_AUTO (0), or a forced kernel path (tests)
} dsattn_softmax_context_params;

// Bytes of scratch device memory dsattn_softmax_context needs (rotated q for the FlashInfer / mma.sync
// prefill paths or the cos/sin table of our wgmma one, the FlashInfer path's work list and row flags,
// fp32 partial results of the decode split). Depends on the sizes, dtype and the current device's
// SM count only (not on pointers); a bound for every batch' <= batch. Returns 0 for params that dsattn_softmax_context would reject.
// The workspace must be 256-byte aligned (cudaMalloc memory is).
size_t dsattn_softmax_context_workspace_size(const dsattn_softmax_context_params* p);

// Validates the params host-side (everything except the device-resident seq_lens / start_pos
// values). Returns cudaSuccess, or cudaErrorInvalidValue and writes a message naming the field and
// its value into msg (NUL-terminated, truncated to msg_len; msg may be NULL).
cudaError_t dsattn_softmax_context_validate(const dsattn_softmax_context_params* p, char* msg,
                                            size_t msg_len);

// Enqueues the whole op on `stream`. Returns cudaErrorInvalidValue (nothing launched) when
// dsattn_softmax_context_validate fails, or when workspace is NULL / smaller than
// dsattn_softmax_context_workspace_size(p) (when that is > 0) or not 256-byte aligned; otherwise
// the launch error (cudaGetLastError). Asynchronous: the device-side row check reports through
// *status (see above).
cudaError_t dsattn_softmax_context(const dsattn_softmax_context_params* p, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
