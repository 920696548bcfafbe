"""QKVGemm design measurements on the GPU (K-gemm helper): which path wins per M.

For M in a sweep, fp16 and bf16, K 4096, N 12288, LayerNorm + bias: our op with the automatic
choice, the streaming kernel forced (BN 32 / 64), cuBLASLt forced; our GEMM without norm (norm_type
0: isolates the norm kernel's cost); torch matmul / addmm / unfused. CUDA-graph medians, inputs
rotated past L2. Prints a table; writes it to $OUT/qkv_explore.md when OUT is set.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from dsattn.tools import bench
from dsattn.tools.kernels import _lib, gemm


def main() -> int:
    lib = _lib.load()
    ctx = gemm.GemmContext(lib)
    K, N = 4096, 12288
    Ms = [int(a) for a in sys.argv[1:]] or [1, 2, 4, 8, 12, 16, 32, 64, 128, 2048]
    lines = ["| dtype | M | auto | fused BN32 p256 | fused BN32 p128 | fused BN64 p256 | fused BN64 p128 | fused BN64 8 stages | norm+Lt forced | auto, no norm | matmul | addmm | unfused | auto/matmul |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dt in (torch.float16, torch.bfloat16):
        for M in Ms:
            nset = bench.rotation_count((K * N + M * K + M * N) * 2)
            sets = []
            for _ in range(nset):
                sets.append((torch.randn(M, K, device="cuda", dtype=dt),
                             (torch.randn(K, N, device="cuda") / K**0.5).to(dt),
                             torch.randn(N, device="cuda", dtype=dt),
                             (1 + 0.1 * torch.randn(K, device="cuda")).to(dt),
                             (0.1 * torch.randn(K, device="cuda")).to(dt),
                             torch.empty(M, N, device="cuda", dtype=dt)))
            reps = 1 if M >= 1024 else max(1, 12 // nset)

            def mk(fn):
                return [lambda s=s: fn(*s) for s in sets] * reps

            def ours(x, w, b, g, be, o):
                gemm.qkv_gemm(x, w, b, g, be, norm_type=1, ctx=ctx, lib=lib, out=o)

            def ours0(x, w, b, g, be, o):
                gemm.qkv_gemm(x, w, b, None, None, norm_type=0, ctx=ctx, lib=lib, out=o)

            res = {}
            for name, path, bn, fn in (("auto", 0, 0, ours), ("a", 2, 0, ours), ("b", 3, 0, ours),
                                       ("c", 4, 0, ours), ("d", 5, 0, ours), ("s8", 4, 8, ours),
                                       ("lt", 1, 0, ours), ("nonorm", 0, 0, ours0)):
                if path >= 2 and M > 16:
                    res[name] = float("nan")
                    continue
                gemm.force_path(path, bn, lib=lib)
                try:
                    res[name] = bench.graph_time_us(mk(fn))
                finally:
                    gemm.force_path(0, 0, lib=lib)
            res["matmul"] = bench.graph_time_us(mk(lambda x, w, b, g, be, o: torch.matmul(x, w, out=o)))
            res["addmm"] = bench.graph_time_us(mk(lambda x, w, b, g, be, o: torch.addmm(b, x, w, out=o)))

            def unf(x, w, b, g, be, o):
                y = F.layer_norm(x, (K,), g, be, 1e-5)
                torch.matmul(y, w, out=o)
                o.add_(b)
            res["unfused"] = bench.graph_time_us(mk(unf))
            line = (f"| {str(dt)[6:]} | {M} | " + " | ".join(f"{res[k]:.1f}" for k in
                    ("auto", "a", "b", "c", "d", "s8", "lt", "nonorm", "matmul", "addmm", "unfused"))
                    + f" | {res['auto'] / res['matmul']:.3f} |")
            lines.append(line)
            print(line, flush=True)
            del sets
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "qkv_explore.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
