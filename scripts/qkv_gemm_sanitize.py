"""Small QKVGemm cases for compute-sanitizer (memcheck / racecheck): every path once."""
import torch

from dsattn.tools.kernels import _lib, gemm

lib = _lib.load()
torch.manual_seed(0)
cases = [  # (M, K, N, dtype, norm, emit, force_path)
    (3, 1000, 2328, torch.float16, 1, 1, 0),   # fused kernel, K / N tails, emit
    (13, 512, 264, torch.bfloat16, 2, 0, 0),   # fused, M tile 2
    (16, 1001, 96, torch.float16, 1, 1, 2),    # fused, odd K: strided prologue
    (9, 4096, 200, torch.bfloat16, 1, 1, 5),   # fused, 64-column tiles, N tail
    (17, 512, 264, torch.bfloat16, 2, 0, 0),   # norm kernel (warp per row) + cuBLASLt
    (5, 8192, 64, torch.float16, 1, 0, 1),     # norm kernel (CTA per row) + cuBLASLt
    (97, 1001, 291, torch.bfloat16, 1, 1, 0),  # cuBLASLt, odd sizes, scalar norm
    (5, 64, 40, torch.float32, 2, 1, 0),       # fp32 via cuBLASLt
    (4, 256, 96, torch.float16, 0, 1, 0),      # no norm + emit (copy)
]
for M, K, N, dt, nt, em, fp in cases:
    gemm.force_path(fp, 0, lib=lib)
    x = torch.randn(M, K, device="cuda", dtype=dt)
    w = torch.randn(K, N, device="cuda", dtype=dt) / K**0.5
    b = torch.randn(N, device="cuda", dtype=dt)
    g = torch.randn(K, device="cuda", dtype=dt) if nt else None
    be = torch.randn(K, device="cuda", dtype=dt) if nt == 1 else None
    r = gemm.qkv_gemm(x, w, b, g, be, norm_type=nt, emit_normed=em, lib=lib)
    torch.cuda.synchronize()
    q = r[0] if em else r
    assert not torch.isnan(q).any()
    print("ok", M, K, N, dt, nt, em, fp, flush=True)
gemm.force_path(0, 0, lib=lib)
print("sanitize cases done")
