"""Int8MatMul benchmark rows (dsattn_int8_matmul) against cuBLAS and DeepSpeed's dequantize-then-GEMM.

Shape: the 7B QKV projection, K 4096, N 12288, M in (1, 4, 16, 64, 2048) tokens. Per row:
  * ours: dsattn_int8_matmul (automatic path), int8 weight [N, K], fp32 per-channel scales
    (group 128 rows too), no bias (the baselines have none);
  * cuBLAS: torch.matmul(x, w.t()) with the T weight [N, K] (the fp16/bf16 model without int8);
  * DeepSpeed-style: dequantize the int8 weight into a T buffer (one elementwise kernel), then
    torch.matmul: DeepSpeed-Inference's quantized_gemm (launch_dequantize + cublas_gemm_ex).
Plus the crossover of the two tensor-core paths (each forced) at M 32..512, which sets the M where
the library switches from the weight-streaming to the tiled kernel. Timed with
dsattn.tools.bench_harness (CUDA-graph replays; the int8 weights alone of the rotated input sets
total > 2x L2, so every weight read comes from HBM, as in a model). Bytes = int8 weight + fp32
scales + x + output.
"""
from __future__ import annotations

from . import bench_harness as h

K, N = 4096, 12288
M_VALUES = (1, 4, 16, 64, 2048)
CROSSOVER_M = (32, 64, 96, 128, 192, 256, 512)


def _sets(M, group, dt, count):
    import torch

    groups = 1 if group == 0 else K // group
    out = []
    for _ in range(count):
        q = torch.randint(-128, 128, (N, K), device="cuda", dtype=torch.int8)
        scale = (0.5 + torch.rand(N, groups, device="cuda")) / (74.0 * K**0.5)
        w = (q.float() * scale.repeat_interleave(K // groups, dim=1)).to(dt)  # the T model weight
        x = torch.randn(M, K, device="cuda").to(dt)
        out.append(dict(q=q, scale=scale, scale_t=scale.to(dt), w=w, x=x,
                        y=torch.empty(M, N, device="cuda", dtype=dt),
                        wdq=torch.empty(N, K, device="cuda", dtype=dt)))
    return out


def _target(M: int, group: int, ours: float, base: dict) -> dict:
    """Per channel: M 1..16 at least 1.75x faster than cuBLAS in the same dtype; M 2048 no slower."""
    cublas = next((v for k, v in base.items() if k.startswith("cuBLAS")), None)
    if group != 0 or not cublas:
        return {}
    if M <= 16:
        return {"target": ">= 1.75x faster than cuBLAS", "met": cublas / ours >= 1.75}
    if M == 2048:
        return {"target": "no slower than cuBLAS", "met": cublas / ours >= 1.0}
    return {}


def rows(lib, *, dtypes, quick: bool, ceilings: dict) -> list[dict]:
    import torch

    from .kernels import int8_matmul

    replays = 5 if quick else 9
    out = []

    def bench_case(M, group, dt, paths=(int8_matmul.PATH_AUTO,), baselines=True):
        dname = h.dtype_name(dt)
        e = torch.tensor([], dtype=dt).element_size()
        groups = 1 if group == 0 else K // group
        nbytes = N * K + 4 * N * groups + e * M * K + e * M * N
        fl = h.floor_us(ceilings, dname, nbytes, 2.0 * M * N * K)
        sets = _sets(M, group, dt, h.rotation_count(N * K, minimum=3))
        inner = 1 if M >= 1024 else 10  # back-to-back calls per set in the graph
        res = {}
        for path in paths:
            calls = [lambda s=s, path=path: int8_matmul.int8_matmul(s["x"], s["q"], s["scale"], None, group_size=group,
                                                                    lib=lib, out=s["y"], path=path) for s in sets]
            res[path] = h.graph_time_us(calls * inner, replays=replays)
        base = {}
        if baselines:
            base[f"cuBLAS {dname} matmul"] = h.graph_time_us(
                [lambda s=s: torch.matmul(s["x"], s["w"].t(), out=s["y"]) for s in sets] * inner, replays=replays)
            gs = K // groups

            def deepspeed(s):
                # launch_dequantize: int8 -> T weight in HBM (one elementwise kernel), then cuBLAS.
                torch.mul(s["q"].view(N, groups, gs), s["scale_t"].view(N, groups, 1), out=s["wdq"].view(N, groups, gs))
                torch.matmul(s["x"], s["wdq"].t(), out=s["y"])

            base["DeepSpeed dequant+GEMM"] = h.graph_time_us([lambda s=s: deepspeed(s) for s in sets] * inner,
                                                              replays=replays)
        del sets
        torch.cuda.empty_cache()
        return res, base, fl, nbytes

    path_names = {int8_matmul.PATH_SKINNY: "skinny", int8_matmul.PATH_TILED: "tiled"}
    for dt in dtypes:
        dname = h.dtype_name(dt)
        cases = [(M, 0) for M in M_VALUES] + ([] if quick else [(1, 128), (16, 128), (2048, 128)])
        for M, group in cases:
            res, base, fl, nbytes = bench_case(M, group, dt)
            ours = res[int8_matmul.PATH_AUTO]
            row = {"case": f"int8_matmul M={M} K={K} N={N} group={group} {dname}", "ours_us": ours,
                   "baselines": base, "floor_us": fl, "note": f"{nbytes / ours / 1e6:.2f} TB/s achieved"}
            row.update(_target(M, group, ours, base))
            out.append(row)
            print(f"  {row['case']}: ours {ours:.1f} us | " + " | ".join(f"{k} {v:.1f}" for k, v in base.items())
                  + f" | floor {fl:.1f}", flush=True)
        if not quick:
            for M in CROSSOVER_M:
                res, base, fl, nbytes = bench_case(M, 0, dt, paths=tuple(path_names),
                                                   baselines=M in (32, 96, 128, 192, 256, 512))
                for path, t in res.items():
                    out.append({"case": f"int8_matmul M={M} K={K} N={N} group=0 path={path_names[path]} {dname}",
                                "ours_us": t, "baselines": base, "floor_us": fl, "note": "path forced"})
    return out
