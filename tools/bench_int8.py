"""Benchmark of the Int8MatMul kernels (dsattn_int8_matmul) against cuBLAS and DeepSpeed's path.

    python3 -m dsattn.tools.bench_int8 [--dtype float16 ...] [--quick] [--lib PATH]

Shape: the 7B QKV projection, K 4096, N 12288, M in (1, 4, 16, 64, 2048) tokens. Per row:
  * ours: dsattn_int8_matmul (automatic path), int8 weight [N, K], fp32 per-channel scales
    (group 128 rows too), no bias (the baselines have none);
  * cuBLAS: torch.matmul(x, w.t()) with the T weight [N, K] (the fp16/bf16 model without int8);
  * DeepSpeed-style: dequantize the int8 weight into a T buffer (one elementwise kernel), then
    torch.matmul: DeepSpeed-Inference's quantized_gemm (launch_dequantize + cublas_gemm_ex).
Method (/work/.library/device/METHOD.md): CUDA events around CUDA-graph replays of back-to-back
calls, median of several replays, inputs rotated over buffer sets totalling > 2x the 50 MB L2
(every weight read comes from HBM, as in a model), baselines in the same process. Floor =
max(bytes / measured memory ceiling, 2 M N K / measured cuBLAS 8192^3 rate in T); bytes = int8
weight + fp32 scales + x + output. ``run`` returns one dict per row (see ``_row``).
"""
from __future__ import annotations

import argparse
import statistics
import sys

__all__ = ["run", "main"]

K_DEFAULT, N_DEFAULT = 4096, 12288
M_VALUES = (1, 4, 16, 64, 2048)
L2_BYTES = 50 * 2**20


def _time_us(calls, *, inner: int, reps: int) -> float:
    """Median µs per call of ``calls`` (a list of closures, run round-robin) captured in a graph."""
    import torch

    for c in calls:  # warm-up: module load, cudaFuncSetAttribute, cuBLAS heuristics
        c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):  # captures on torch's side stream, which is "current" inside
        for _ in range(inner):
            for c in calls:
                c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / (inner * len(calls)))
    del g
    return statistics.median(times)


def measure_ceilings(dtypes) -> dict:
    """Memory ceiling (the faster of a 1 GiB device copy, bytes read + written, and a 1 GiB read-only
    sum) and the cuBLAS 8192^3 rate per dtype."""
    import torch

    src = torch.empty(2**28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    t = _time_us([lambda: dst.copy_(src)], inner=5, reps=7)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        torch.add(src, 1.0, out=dst)  # an elementwise kernel (the graph copy may be a memcpy node)
    e1.record()
    e1.synchronize()
    t = min(t, e0.elapsed_time(e1) * 1e3 / 10)
    copy = 2 * src.numel() * 4 / t / 1e6
    # A read-only stream (sum of 1 GiB) often runs faster than a copy; the ceiling is the faster.
    red = torch.empty((), device="cuda")
    t_read = _time_us([lambda: torch.sum(src, dim=0, out=red)], inner=5, reps=7)
    res = {"mem_TBps": max(copy, src.numel() * 4 / t_read / 1e6)}
    del src, dst
    n = 8192
    for name in dtypes:
        dt = getattr(torch, name)
        a = torch.randn(n, n, device="cuda").to(dt)
        b = torch.randn(n, n, device="cuda").to(dt)
        c = torch.empty(n, n, device="cuda", dtype=dt)
        t = _time_us([lambda: torch.matmul(a, b, out=c)], inner=3, reps=5)
        res[f"gemm_TFps_{name}"] = 2 * n**3 / t / 1e6
        del a, b, c
    torch.cuda.empty_cache()
    return res


def _sets(M, K, N, group, dt, count):
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


def _row(case, dtype, ours, baselines, floor_us, bytes_moved, card, note=""):
    return {
        "op": "Int8MatMul",
        "case": case,
        "dtype": dtype,
        "ours_us": ours,
        "baselines": baselines,  # name -> µs
        "speedup": {k: v / ours for k, v in baselines.items()},  # baseline time / ours (> 1: faster)
        "floor_us": floor_us,
        "pct_of_floor": 100.0 * floor_us / ours,
        "achieved": f"{bytes_moved / ours / 1e6:.2f} TB/s",
        "card": card,
        "note": note,
    }


_SHORT = {"float16": "fp16", "bfloat16": "bf16"}


def _add_target(row: dict, M: int, group: int) -> None:
    """Issue 4's targets (per-channel scales, K 4096, N 12288): M 1..16 at least 1.75x faster than
    cuBLAS in the same dtype; M 2048 no slower than cuBLAS."""
    if group != 0:
        return
    cublas = next((v for k, v in row["speedup"].items() if k.startswith("cuBLAS")), None)
    if cublas is None:
        return
    if M <= 16:
        row["target"], row["met"] = ">= 1.75x faster than cuBLAS", cublas >= 1.75
    elif M == 2048:
        row["target"], row["met"] = "no slower than cuBLAS", cublas >= 1.0


def run(lib=None, *, dtypes=("float16", "bfloat16"), quick=False, ceilings=None) -> list[dict]:
    """Benchmark rows (list of dicts: op, case, dtype, ours_us, baselines {name: µs}, speedup
    {name: x}, floor_us, pct_of_floor, achieved, card, note). ``quick``: fewer rows and repeats."""
    import torch

    from .kernels import _lib, int8

    l = _lib.load(lib)
    card = torch.cuda.get_device_name()
    ceil = ceilings or measure_ceilings(dtypes)
    bw = ceil["mem_TBps"] * 1e12
    reps = 5 if quick else 9
    K, N = K_DEFAULT, N_DEFAULT
    rows = []

    def bench_case(M, group, dt, name, paths=(int8.PATH_AUTO,), baselines=True):
        e = torch.tensor([], dtype=dt).element_size()
        groups = 1 if group == 0 else K // group
        bytes_moved = N * K + 4 * N * groups + e * M * K + e * M * N
        flops = 2 * M * N * K
        floor_us = max(bytes_moved / bw, flops / (ceil[f"gemm_TFps_{name}"] * 1e12)) * 1e6
        nsets = max(3, -(-3 * L2_BYTES // (N * K)))  # the int8 weights alone total > 2x L2
        sets = _sets(M, K, N, group, dt, nsets)
        inner = 1 if M >= 1024 else 10
        res = {}
        for path in paths:
            calls = [lambda s=s: int8.int8_matmul(s["x"], s["q"], s["scale"], None, group_size=group, lib=l,
                                                  out=s["y"], path=path) for s in sets]
            res[path] = _time_us(calls, inner=inner, reps=reps)
        base = {}
        if baselines:
            base[f"cuBLAS {name} matmul"] = _time_us(
                [lambda s=s: torch.matmul(s["x"], s["w"].t(), out=s["y"]) for s in sets], inner=inner, reps=reps)
            gs = K // groups

            def deepspeed(s):
                # launch_dequantize: int8 -> T weight in HBM (one elementwise kernel), then cuBLAS.
                torch.mul(s["q"].view(N, groups, gs), s["scale_t"].view(N, groups, 1), out=s["wdq"].view(N, groups, gs))
                torch.matmul(s["x"], s["wdq"].t(), out=s["y"])

            base["DeepSpeed dequant+GEMM"] = _time_us([lambda s=s: deepspeed(s) for s in sets], inner=inner,
                                                       reps=reps)
        del sets
        torch.cuda.empty_cache()
        return res, base, floor_us, bytes_moved

    path_names = {int8.PATH_AUTO: "auto", int8.PATH_SKINNY: "skinny", int8.PATH_TILED: "tiled"}
    for name in dtypes:
        dt = getattr(torch, name)
        cases = [(M, 0) for M in M_VALUES] + ([] if quick else [(1, 128), (16, 128), (2048, 128)])
        for M, group in cases:
            res, base, floor_us, nbytes = bench_case(M, group, dt, name)
            row = _row(f"int8 M={M} K={K} N={N} group={group} {_SHORT[name]}", name, res[int8.PATH_AUTO], base,
                       floor_us, nbytes, card)
            _add_target(row, M, group)
            rows.append(row)
        if not quick:  # crossover of the two tensor-core paths (chooses kSkinnyMaxM)
            for M in (32, 64, 96, 128, 192, 256, 512):
                res, base, floor_us, nbytes = bench_case(M, 0, dt, name, paths=(int8.PATH_SKINNY, int8.PATH_TILED),
                                                         baselines=M in (32, 96, 128, 192, 256, 512))
                for path, t in res.items():
                    rows.append(_row(f"int8 M={M} K={K} N={N} group=0 path={path_names[path]} {_SHORT[name]}", name, t, base,
                                     floor_us, nbytes, card, note="path forced"))
    for r in rows:
        r["ceilings"] = ceil
    return rows


def format_table(rows) -> str:
    lines = ["| case | dtype | ours µs | baselines µs | speedup | floor µs | % of floor | achieved |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = "; ".join(f"{k} {v:.1f}" for k, v in r["baselines"].items()) or "-"
        s = "; ".join(f"{v:.2f}x" for v in r["speedup"].values()) or "-"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['ours_us']:.1f} | {b} | {s} | {r['floor_us']:.1f} | "
                     f"{r['pct_of_floor']:.0f}% | {r['achieved']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", action="append", choices=["float16", "bfloat16"], help="repeatable")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lib", default=None, help="path of libdsattn_kernels.so (default: build/plugins/kernels)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    a = ap.parse_args(argv)
    import json

    import torch

    if not torch.cuda.is_available():
        print("bench_int8: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = run(a.lib, dtypes=tuple(a.dtype or ("float16", "bfloat16")), quick=a.quick)
    print(f"card: {rows[0]['card']}; ceilings: " +
          ", ".join(f"{k} {v:.2f}" for k, v in rows[0]["ceilings"].items()))
    print(format_table(rows))
    if a.json:
        from dsattn.fileio import write_text_atomic

        write_text_atomic(a.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
