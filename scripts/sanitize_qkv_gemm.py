"""Small QKVGemm cases covering every kernel once (CTA-per-row and warp-per-row norm kernels, the
scalar norm, cuBLASLt in fp16 / bf16 / fp32, the norm-free copy, quantized = 1 through the int8
matmul), for `compute-sanitizer --tool memcheck|racecheck python3 scripts/sanitize_qkv_gemm.py`.
Checks results loosely against the fp32 reference (the pytest suite applies the accuracy rule);
exits nonzero on any failure."""
import sys

import torch

from dsattn.export import ops
from dsattn.tools.kernels import _lib, qkv_gemm

lib = _lib.load()
torch.manual_seed(0)
ok = True
cases = [  # (M, K, N, dtype, norm_type, emit_normed, quantized)
    (5, 8192, 64, torch.float16, 1, 0, 0),      # norm kernel, CTA per row (16-byte vectors)
    (300, 512, 264, torch.bfloat16, 2, 0, 0),   # norm kernel, warp per row (M >= 256)
    (97, 1001, 291, torch.bfloat16, 1, 1, 0),   # odd K: scalar norm kernel; odd N
    (5, 64, 40, torch.float32, 2, 1, 0),        # fp32 through cuBLASLt
    (4, 256, 96, torch.float16, 0, 1, 0),       # no norm + emit (copy)
    (7, 1024, 384, torch.float16, 1, 0, 1),     # norm kernel, then the int8 matmul (group 128)
]
for M, K, N, dt, nt, em, qz in cases:
    x = torch.randn(M, K, device="cuda", dtype=dt)
    b = torch.randn(N, device="cuda", dtype=dt)
    g = torch.randn(K, device="cuda", dtype=dt) if nt else None
    be = torch.randn(K, device="cuda", dtype=dt) if nt == 1 else None
    if qz:
        w = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8)
        scale = torch.rand(N, K // 128, device="cuda") / (127 * K ** 0.5)
    else:
        w = torch.randn(K, N, device="cuda", dtype=dt) / K ** 0.5
        scale = None
    r = qkv_gemm.qkv_gemm(x, w, b, g, be, scale, norm_type=nt, emit_normed=em, quantized=qz,
                          group_size=128 if qz else 0, lib=lib)
    torch.cuda.synchronize()
    q = r[0] if em else r

    def up(t):
        return None if t is None else t.float()

    ref = ops.qkv_gemm(up(x)[None], w if qz else up(w), up(b), up(g), up(be), scale, norm_type=nt,
                       quantized=qz, group_size=128 if qz else 0)[0]
    err = (q.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-6)
    good = not torch.isnan(q).any().item() and err < 0.05
    ok &= good
    print(f"M={M} K={K} N={N} {dt} norm={nt} emit={em} quantized={qz}: relative error {err:.2e} "
          f"{'ok' if good else 'FAIL'}", flush=True)
sys.exit(0 if ok else 1)
