"""Int8MatMul benchmark rows (dsattn_int8_matmul) against cuBLAS and DeepSpeed's dequantize-then-GEMM.

Shapes: the 7B QKV projection, K 4096, N 12288, M in (1, 4, 16, 32, 64, 128, 256, 512, 2048) tokens,
and the output projection's N 4096 at M 64, 256 and 2048 (few output tiles: where the tiled kernel
fills the GPU worst); each per channel and with group 128. Per row:
  * ours: dsattn_int8_matmul (automatic path), int8 weight [N, K], fp32 scales, no bias (the
    baselines have none);
  * cuBLAS: torch.matmul(x, w.t()) with the T weight [N, K] (the fp16/bf16 model without int8);
  * DeepSpeed-style: dequantize the int8 weight into a T buffer (one elementwise kernel), then
    torch.matmul: DeepSpeed-Inference's quantized_gemm (launch_dequantize + cublas_gemm_ex).
At M 32..512 both tensor-core paths are also timed forced (path=skinny / path=tiled rows), in both
scale modes: they set the M where the library switches from the weight-streaming kernel to the
tiled one. Timed with dsattn.tools.bench_harness (CUDA-graph replays; the int8 weights alone of the
rotated input sets total > 2x L2, so every weight read comes from HBM, as in a model). Bytes = int8
weight + fp32 scales + x + output.
"""
from __future__ import annotations

from . import bench_harness as h

K = 4096
M_VALUES = (1, 4, 16, 32, 64, 128, 256, 512, 2048)
CROSSOVER_M = (32, 64, 128, 256, 512)  # forced-path rows as well
GROUPS = (0, 128)
QUICK_M = (1, 16, 64, 512, 2048)
CASES = [(M, 12288) for M in M_VALUES] + [(64, 4096), (256, 4096), (2048, 4096)]


def _sets(M, N, group, dt, count):
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
    """M 1..16: >= 1.75x faster than cuBLAS in the same dtype per channel, >= 1.6x with group 128;
    M 32..512: never slower than cuBLAS; M 2048: >= 0.9x cuBLAS speed."""
    cublas = next((v for k, v in base.items() if k.startswith("cuBLAS")), None)
    if not cublas:
        return {}
    speedup = cublas / ours
    if M <= 16:
        need = 1.75 if group == 0 else 1.6
        return {"target": f">= {need}x faster than cuBLAS", "met": speedup >= need}
    if M <= 512:
        return {"target": "no slower than cuBLAS", "met": speedup >= 1.0}
    return {"target": ">= 0.9x cuBLAS speed", "met": speedup >= 0.9}


def rows(lib, *, dtypes, quick: bool, ceilings: dict) -> list[dict]:
    import torch

    from .kernels import int8_matmul

    replays = 5 if quick else 9
    out = []

    def bench_case(M, N, group, dt, paths=(int8_matmul.PATH_AUTO,)):
        dname = h.dtype_name(dt)
        e = torch.tensor([], dtype=dt).element_size()
        groups = 1 if group == 0 else K // group
        nbytes = N * K + 4 * N * groups + e * M * K + e * M * N
        fl = h.floor_us(ceilings, dname, nbytes, 2.0 * M * N * K)
        sets = _sets(M, N, group, dt, h.rotation_count(N * K, minimum=3))
        inner = 1 if M >= 1024 else 10  # back-to-back calls per set in the graph
        res = {}
        for path in paths:
            calls = [lambda s=s, path=path: int8_matmul.int8_matmul(s["x"], s["q"], s["scale"], None, group_size=group,
                                                                    lib=lib, out=s["y"], path=path) for s in sets]
            res[path] = h.graph_time_us(calls * inner, replays=replays)
        base = {f"cuBLAS {dname} matmul": h.graph_time_us(
            [lambda s=s: torch.matmul(s["x"], s["w"].t(), out=s["y"]) for s in sets] * inner, replays=replays)}
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
        cases = [(M, N, 0) for M, N in CASES if M in QUICK_M and N == 12288] if quick else \
            [(M, N, g) for g in GROUPS for M, N in CASES]
        for M, N, group in cases:
            forced = not quick and M in CROSSOVER_M
            paths = (int8_matmul.PATH_AUTO, *path_names) if forced else (int8_matmul.PATH_AUTO,)
            res, base, fl, nbytes = bench_case(M, N, group, dt, paths)
            ours = res[int8_matmul.PATH_AUTO]
            case = f"int8_matmul M={M} K={K} N={N} group={group}"
            row = {"case": f"{case} {dname}", "ours_us": ours, "baselines": base, "floor_us": fl,
                   "note": f"{nbytes / ours / 1e6:.2f} TB/s achieved"}
            row.update(_target(M, group, ours, base))
            out.append(row)
            print(f"  {row['case']}: ours {ours:.1f} us | " + " | ".join(f"{k} {v:.1f}" for k, v in base.items())
                  + f" | floor {fl:.1f}", flush=True)
            for path, name in path_names.items():
                if path in res:
                    out.append({"case": f"{case} path={name} {dname}", "ours_us": res[path], "baselines": base,
                                "floor_us": fl, "note": "path forced"})
                    print(f"    path={name}: {res[path]:.1f} us", flush=True)
    return out
