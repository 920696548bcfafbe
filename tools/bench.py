"""`dsattn bench kernels`: the CUDA kernels against their baselines on this GPU; writes BENCHMARKS.md.

Method (/work/.library/device/METHOD.md, DESIGN.md "Performance method"): ceilings measured once in
this process (device-to-device copy bandwidth, bytes read + written; cuBLAS fp16 / bf16 GEMM rate at
8192^3); every case and its baselines in the same process; CUDA events; warm-up; medians; inputs
rotated through copies whose total exceeds the 50 MB L2; small cases timed as CUDA-graph replays of
several back-to-back calls (launch gaps out of the numbers). The floor of a case is
max(bytes / copy bandwidth, FLOPs / GEMM rate); "% of floor" = floor / ours.

Rows come from three places: this module's QKVGemm rows, `dsattn.tools.bench_attention.run` and
`dsattn.tools.bench_int8.run` (each ``run(lib, *, dtypes, quick, **optional) -> list[dict]``; a
module that is missing or fails is reported and skipped). ``dtypes`` is a tuple of torch dtype
names ("float16", "bfloat16");
optional keyword arguments a module may accept: ``ceilings`` (the dict of `measure_ceilings`) and
``out_dir``. A row is a dict:

    case       str, e.g. "qkv_gemm LN M=1 K=4096 N=12288 fp16"
    ours_us    float, median microseconds of our kernel(s)
    baselines  dict name -> median microseconds
    floor_us   float, optional (roofline floor of the case)
    target     str, optional (the goal, e.g. "<= 1.05x matmul")
    met        bool, optional (whether the goal is met)
    note       str, optional
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import statistics
import sys
import traceback
from pathlib import Path

from dsattn.fileio import check_output_path, write_text_atomic

L2_BYTES = 50 * 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["kernels"], help="what to benchmark")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write (default %(default)s)")
    parser.add_argument("--dtype", nargs="+", choices=["fp16", "bf16"], default=["fp16", "bf16"],
                        help="element types (default: fp16 bf16)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    parser.add_argument("--lib", default=None, help="path of libdsattn_kernels.so (default: build/plugins/kernels)")
    parser.add_argument("--only", nargs="+", choices=["qkv", "attention", "int8"], default=None,
                        help="run only these sections")


# ------------------------------------------------------------------------------------------------
# Timing helpers (importable by the other bench modules).

def time_ms(fn, *, reps: int = 30, warmup: int = 5) -> list[float]:
    """Per-call device milliseconds of ``fn()`` (CUDA events around each call) after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def graph_time_us(calls, *, replays: int = 20, warmup: int = 3) -> float:
    """Median microseconds per call of ``calls`` (a list of closures, e.g. one per rotated input
    set) captured back to back in one CUDA graph; each closure must be capturable."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside capture: handles, plans, autotuning
        for _ in range(warmup):
            for c in calls:
                c()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    per_replay = time_ms(g.replay, reps=replays, warmup=2)
    return statistics.median(per_replay) * 1000.0 / len(calls)


def rotation_count(bytes_per_set: int, minimum: int = 2) -> int:
    """Input sets so that one sweep exceeds 2x L2 (each call then reads from HBM)."""
    return max(minimum, -(-2 * L2_BYTES // max(1, bytes_per_set)))


def measure_ceilings(quick: bool = False) -> dict:
    """Device copy bandwidth (bytes read + written per second) and cuBLAS GEMM rate (FLOP/s)."""
    import torch

    n = 2**29 if not quick else 2**28  # 1 GiB / 512 MiB of fp16
    a = torch.randn(n // 2, device="cuda", dtype=torch.float32).view(torch.float16)
    b = torch.empty_like(a)
    ms = statistics.median(time_ms(lambda: b.copy_(a), reps=10 if quick else 20))
    copy_bw = 2 * a.numel() * a.element_size() / (ms * 1e-3)
    del a, b
    rates = {}
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        s = 8192
        x = torch.randn(s, s, device="cuda", dtype=dt)
        y = torch.randn(s, s, device="cuda", dtype=dt)
        o = torch.empty(s, s, device="cuda", dtype=dt)
        ms = statistics.median(time_ms(lambda: torch.matmul(x, y, out=o), reps=10 if quick else 20))
        rates[name] = 2 * s**3 / (ms * 1e-3)
        del x, y, o
    torch.cuda.empty_cache()
    # Also under the flat names bench_int8 uses (mem_TBps / copy_TBps, gemm_TFps_<dtype name>).
    return {"copy_bw": copy_bw, "gemm_rate": rates, "copy_TBps": copy_bw / 1e12, "mem_TBps": copy_bw / 1e12,
            "gemm_TFps_float16": rates["fp16"] / 1e12, "gemm_TFps_bfloat16": rates["bf16"] / 1e12}


def floor_us(ceil: dict, dtype_name: str, bytes_: float, flops: float) -> float:
    return max(bytes_ / ceil["copy_bw"], flops / ceil["gemm_rate"][dtype_name]) * 1e6


# ------------------------------------------------------------------------------------------------
# QKVGemm rows.

def qkv_rows(lib, *, dtypes, quick, ceilings) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from dsattn.tools.kernels import gemm

    K, N = 4096, 12288
    Ms = (1, 4, 16, 64, 2048) if not quick else (1, 64, 2048)
    rows = []
    ctx = gemm.GemmContext(lib)
    for dt in dtypes:
        dname = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dt]
        for M in Ms:
            set_bytes = (K * N + M * K + M * N + N + 2 * K) * 2
            nset = rotation_count(set_bytes)
            sets = []
            for _ in range(nset):
                x = torch.randn(M, K, device="cuda", dtype=dt)
                w = (torch.randn(K, N, device="cuda") / K**0.5).to(dt)
                b = torch.randn(N, device="cuda", dtype=dt)
                g = (1 + 0.1 * torch.randn(K, device="cuda")).to(dt)
                be = (0.1 * torch.randn(K, device="cuda")).to(dt)
                o = torch.empty(M, N, device="cuda", dtype=dt)
                sets.append((x, w, b, g, be, o))
            reps_per_set = 1 if M >= 1024 else max(1, 12 // nset)

            def mk(fn):
                return [lambda s=s: fn(*s) for s in sets] * reps_per_set

            def ours(x, w, b, g, be, o):
                gemm.qkv_gemm(x, w, b, g, be, norm_type=1, ctx=ctx, lib=lib, out=o)

            def mm(x, w, b, g, be, o):
                torch.matmul(x, w, out=o)

            def addmm(x, w, b, g, be, o):
                torch.addmm(b, x, w, out=o)

            def unfused(x, w, b, g, be, o):
                y = F.layer_norm(x, (K,), g, be, 1e-5)
                torch.matmul(y, w, out=o)
                o.add_(b)

            t = {name: graph_time_us(mk(fn), replays=10 if quick else 20)
                 for name, fn in (("ours", ours), ("matmul", mm), ("addmm", addmm), ("unfused", unfused))}
            fl = floor_us(ceilings, dname, set_bytes, 2.0 * M * N * K)
            r_mm = t["ours"] / t["matmul"]
            r_unf = t["unfused"] / t["ours"]
            if M <= 64:
                target = "<= 1.05x matmul and >= 1.25x faster than unfused"
                met = r_mm <= 1.05 and r_unf >= 1.25
            else:
                target = "<= 1.05x matmul"
                met = r_mm <= 1.05
            rows.append({
                "case": f"qkv_gemm LN+GEMM+bias M={M} K={K} N={N} {dname}",
                "ours_us": t["ours"],
                "baselines": {"cuBLAS matmul (no LN, no bias)": t["matmul"], "addmm (GEMM+bias)": t["addmm"],
                              "unfused LN->matmul->bias": t["unfused"]},
                "floor_us": fl,
                "target": target,
                "met": met,
                "note": f"ours/matmul {r_mm:.3f}, unfused/ours {r_unf:.2f}x",
            })
            print(f"  {rows[-1]['case']}: ours {t['ours']:.1f} us | matmul {t['matmul']:.1f} | addmm "
                  f"{t['addmm']:.1f} | unfused {t['unfused']:.1f} | floor {fl:.1f} | "
                  f"{'MET' if met else 'MISSED'} ({target})", flush=True)
            del sets
            torch.cuda.empty_cache()
    ctx.close()
    return rows


# ------------------------------------------------------------------------------------------------
# Report.

def _fmt_us(v) -> str:
    return "-" if v is None else (f"{v:.1f} µs" if v < 1000 else f"{v / 1000:.3f} ms")


def markdown(rows: list[dict], ceilings: dict, env: dict, notes: list[str]) -> str:
    lines = [
        "# dsattn kernel benchmarks",
        "",
        f"Card: **{env['card']}** ({env['sms']} SMs), torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}; {env['date']}. Written by `dsattn bench kernels` (tools/bench.py).",
        "",
        "Ceilings measured in this run: device copy "
        f"**{ceilings['copy_bw'] / 1e12:.2f} TB/s** (bytes read + written); cuBLAS 8192³ "
        f"fp16 **{ceilings['gemm_rate']['fp16'] / 1e12:.0f} TFLOP/s**, bf16 "
        f"**{ceilings['gemm_rate']['bf16'] / 1e12:.0f} TFLOP/s**. Floor = max(bytes / copy bandwidth, "
        "FLOPs / GEMM rate); % of floor = floor / ours. Ratio = baseline / ours (> 1: ours faster). "
        "Medians of CUDA-event timings; small cases as CUDA-graph replays; inputs rotated past L2.",
        "",
        "The targets of issue 4, which are missed and what limits each (measured): "
        "[docs/PERFORMANCE.md](docs/PERFORMANCE.md).",
        "",
        "| case | ours | baselines | ratio (baseline / ours) | % of floor | target | card |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r.get("baselines") or {}
        ours = r.get("ours_us")
        bl = "<br>".join(f"{k}: {_fmt_us(v)}" for k, v in base.items()) or "-"
        ratio = "<br>".join(f"{k}: {v / ours:.2f}x" for k, v in base.items() if ours and v) or "-"
        fl = r.get("floor_us")
        pct = f"{100 * fl / ours:.0f}%" if fl and ours else "-"
        tgt = r.get("target", "")
        if "met" in r:
            tgt = f"{tgt} — **{'met' if r['met'] else 'MISSED'}**"
        if r.get("note"):
            tgt = f"{tgt}<br>{r['note']}" if tgt else r["note"]
        lines.append(f"| {r['case']} | {_fmt_us(ours)} | {bl} | {ratio} | {pct} | {tgt} | {env['card']} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _call_section(modname: str, lib, dtypes, quick, ceilings, out_dir, notes) -> list[dict]:
    import torch

    try:
        mod = importlib.import_module(modname)
    except Exception as e:  # noqa: BLE001 - report and keep going
        notes.append(f"{modname}: not run (import failed: {type(e).__name__}: {e})")
        print(f"NOTE: {notes[-1]}", flush=True)
        return []
    try:
        params = inspect.signature(mod.run).parameters
        names = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
        kw = {"dtypes": tuple(names[d] for d in dtypes), "quick": quick}
        if "ceilings" in params:
            kw["ceilings"] = ceilings
        if "out_dir" in params:
            kw["out_dir"] = out_dir
        rows = list(mod.run(lib, **kw))
        print(f"{modname}: {len(rows)} rows", flush=True)
        return rows
    except Exception as e:  # noqa: BLE001
        notes.append(f"{modname}.run failed: {type(e).__name__}: {e}")
        print(f"NOTE: {notes[-1]}", flush=True)
        traceback.print_exc()
        return []


def run(args: argparse.Namespace) -> int:
    try:  # before minutes of measurements, not after
        check_output_path(args.out, "--out")
    except ValueError as e:
        print(f"dsattn bench: error: {e}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("dsattn bench: needs PyTorch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("dsattn bench: no CUDA device visible", file=sys.stderr)
        return 2
    from dsattn.tools.kernels import _lib

    try:
        lib = _lib.load(args.lib)
    except FileNotFoundError as e:
        print(f"dsattn bench: {e}", file=sys.stderr)
        return 2
    dtypes = tuple({"fp16": torch.float16, "bf16": torch.bfloat16}[d] for d in args.dtype)
    only = set(args.only or ["qkv", "attention", "int8"])
    props = torch.cuda.get_device_properties(0)
    env = {
        "card": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"card: {env['card']}; torch {env['torch']}; CUDA {env['cuda']}", flush=True)
    ceilings = measure_ceilings(args.quick)
    print(f"ceilings: copy {ceilings['copy_bw'] / 1e12:.2f} TB/s; GEMM fp16 "
          f"{ceilings['gemm_rate']['fp16'] / 1e12:.0f} TF/s, bf16 {ceilings['gemm_rate']['bf16'] / 1e12:.0f} TF/s",
          flush=True)
    out = Path(args.out)
    rows: list[dict] = []
    notes: list[str] = []
    if "qkv" in only:
        try:
            rows += qkv_rows(lib, dtypes=dtypes, quick=args.quick, ceilings=ceilings)
        except Exception as e:  # noqa: BLE001
            notes.append(f"qkv_gemm rows failed: {type(e).__name__}: {e}")
            print(f"NOTE: {notes[-1]}", flush=True)
            traceback.print_exc()
    if "attention" in only:
        rows += _call_section("dsattn.tools.bench_attention", lib, dtypes, args.quick, ceilings, out.parent, notes)
    if "int8" in only:
        rows += _call_section("dsattn.tools.bench_int8", lib, dtypes, args.quick, ceilings, out.parent, notes)
    text = markdown(rows, ceilings, env, notes)
    write_text_atomic(out, text)  # a failed write keeps the previous BENCHMARKS.md
    print()
    print(text)
    print(f"wrote {out}")
    return 0 if rows else 1
