"""Small Int8MatMul cases over every kernel path (skinny incl. split-K and small groups, tiled: CUTLASS on
sm_90 for N % 8 == 0, and mma.sync, fp32), for `compute-sanitizer --tool memcheck|racecheck python3
scripts/sanitize_int8_matmul.py`. Checks results loosely against the fp32 reference (the pytest
suite applies the accuracy rule); exits nonzero on any failure."""
import sys

import torch

from dsattn.export import ops
from dsattn.tools.kernels import int8_matmul as im

torch.manual_seed(0)
ok = True
cases = [  # (M, N, K, group_size, path)
    (3, 37, 1040, 16, im.PATH_SKINNY), (9, 130, 1152, 128, im.PATH_SKINNY), (17, 64, 4096, 0, im.PATH_SKINNY),
    (130, 131, 1040, 0, im.PATH_TILED), (5, 99, 1152, 64, im.PATH_TILED), (200, 260, 1152, 0, im.PATH_TILED),
    (130, 131, 1040, 0, im.PATH_TILED_MMA), (5, 99, 1152, 64, im.PATH_TILED_MMA), (70, 33, 960, 32, im.PATH_AUTO),
    # CUTLASS on sm_90 (N % 8 == 0): per channel with a partial k tile, groups of 64 and 128,
    # partial token and feature tiles
    (130, 136, 1040, 0, im.PATH_TILED), (257, 264, 1088, 64, im.PATH_TILED), (40, 128, 1024, 128, im.PATH_AUTO),
]
for dt in (torch.float16, torch.bfloat16, torch.float32):
    for M, N, K, g, path in cases:
        if dt == torch.float32:
            path = im.PATH_FP32
        x = torch.randn(M, K, device="cuda").to(dt)
        q = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
        s = torch.rand(N, 1 if g == 0 else K // g, device="cuda") / 1000
        b = torch.randn(N, device="cuda").to(dt)
        y = im.int8_matmul(x, q, s, b, group_size=g, path=path)
        ref = ops.int8_matmul(x.float(), q, s, b.float(), group_size=g)
        torch.cuda.synchronize()
        err = (y.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-6)
        good = not torch.isnan(y).any().item() and err < 0.02
        ok &= good
        print(f"{dt} M={M} N={N} K={K} group={g} path={path}: relative error {err:.2e} {'ok' if good else 'FAIL'}")
sys.exit(0 if ok else 1)
