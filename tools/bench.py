"""`dsattn bench kernels`: the CUDA kernels against their baselines on this GPU; writes BENCHMARKS.md.
(`dsattn bench generate`, end-to-end generation: tools/bench_generate.py.)

One section per op (dsattn.tools.bench_qkv_gemm, bench_softmax_context, bench_int8_matmul), each a
``rows(lib, *, dtypes, quick, ceilings) -> list[dict]`` timed with the one harness
(dsattn.tools.bench_harness: method, ceilings and the row format are described there), then the
baseline sections (dsattn.tools.bench_deepspeed: DeepSpeed-Inference's own ops, JIT-built on this
machine). A section that fails is reported in the output's notes and the others still run.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import traceback
from pathlib import Path

from dsattn.fileio import check_output_path, write_text_atomic

from . import bench_harness as h

# section name (the op) -> module with rows(lib, *, dtypes, quick, ceilings)
SECTIONS = {
    "qkv_gemm": "dsattn.tools.bench_qkv_gemm",
    "softmax_context": "dsattn.tools.bench_softmax_context",
    "int8_matmul": "dsattn.tools.bench_int8_matmul",
}
# Baselines that are whole libraries of their own, run after the op sections (a library that
# corrupts the CUDA context cannot take our rows with it); same rows(...) signature. The DeepSpeed
# section writes a row saying why when deepspeed is not installed or its ops do not build.
BASELINE_SECTIONS = {
    "deepspeed": "dsattn.tools.bench_deepspeed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["kernels", "generate"],
                        help="kernels: the CUDA kernels vs baselines; generate: end-to-end generation "
                             "(tools/bench_generate.py)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write (default %(default)s)")
    parser.add_argument("--dtype", nargs="+", choices=["fp16", "bf16"], default=["fp16", "bf16"],
                        help="element types (default: fp16 bf16)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    parser.add_argument("--lib", default=None, help="path of libdsattn_kernels.so (default: build/plugins/kernels)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS) + list(BASELINE_SECTIONS), default=None,
                        help="run only these sections (the ops', and deepspeed: DeepSpeed's own ops, "
                             "JIT-built here, on the same shapes)")
    from . import bench_generate

    bench_generate.add_arguments(parser.add_argument_group("generate"))


# ------------------------------------------------------------------------------------------------
# Report.

def _fmt_us(v) -> str:  # markdown cells: µs, or ms from 1000 µs on
    return "-" if v is None else (f"{v:.1f} µs" if v < 1000 else f"{v / 1000:.3f} ms")


def markdown(rows: list[dict], ceilings: dict, env: dict, notes: list[str]) -> str:
    lines = [
        "# dsattn kernel benchmarks",
        "",
        f"Card: **{env['card']}** ({env['sms']} SMs), torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}; {env['date']}. Written by `dsattn bench kernels` (tools/bench.py, timing in "
        "tools/bench_harness.py).",
        "",
        "Ceilings measured in this run: device copy "
        f"**{ceilings['copy_bw'] / 1e12:.2f} TB/s** (bytes read + written); cuBLAS 8192³ "
        f"fp16 **{ceilings['gemm_rate']['fp16'] / 1e12:.0f} TFLOP/s**, bf16 "
        f"**{ceilings['gemm_rate']['bf16'] / 1e12:.0f} TFLOP/s**. Floor = max(bytes / copy bandwidth, "
        "FLOPs / GEMM rate); % of floor = floor / ours. Ratio = baseline / ours (> 1: ours faster). "
        "Medians of CUDA-event timings; small cases as CUDA-graph replays; inputs rotated past L2. "
        "Prefill attention rows: per-kernel device time from the CUDA profiler on both sides (ours and "
        "the SDPA baselines); decode rows: CUDA-graph replays on both sides, the kernels' profiler times "
        "in the note.",
        "",
        "The targets, which are missed and what limits each (measured): [docs/PERFORMANCE.md](docs/PERFORMANCE.md).",
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


def _section(name: str, lib, dtypes, quick, ceilings, notes) -> list[dict]:
    try:
        mod = importlib.import_module({**SECTIONS, **BASELINE_SECTIONS}[name])
        out = list(mod.rows(lib, dtypes=dtypes, quick=quick, ceilings=ceilings))
        print(f"{name}: {len(out)} rows", flush=True)
        return out
    except Exception as e:  # noqa: BLE001 - report the section and keep the others
        notes.append(f"{name} section failed: {type(e).__name__}: {e}")
        print(f"NOTE: {notes[-1]}", flush=True)
        traceback.print_exc()
        return []


def run(args: argparse.Namespace) -> int:
    try:  # before minutes of measurements, not after
        check_output_path(args.out, "--out")
    except ValueError as e:
        print(f"dsattn bench: error: {e}", file=sys.stderr)
        return 2
    if args.what == "generate":
        from . import bench_generate

        return bench_generate.run(args)
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
    props = torch.cuda.get_device_properties(0)
    env = {
        "card": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"card: {env['card']}; torch {env['torch']}; CUDA {env['cuda']}", flush=True)
    ceilings = h.measure_ceilings(args.quick)
    print(f"ceilings: copy {ceilings['copy_bw'] / 1e12:.2f} TB/s; GEMM fp16 "
          f"{ceilings['gemm_rate']['fp16'] / 1e12:.0f} TF/s, bf16 {ceilings['gemm_rate']['bf16'] / 1e12:.0f} TF/s",
          flush=True)
    out = Path(args.out)
    rows: list[dict] = []
    notes: list[str] = []
    for name in [*SECTIONS, *BASELINE_SECTIONS]:
        if args.only is None or name in args.only:
            rows += _section(name, lib, dtypes, args.quick, ceilings, notes)
    text = markdown(rows, ceilings, env, notes)
    write_text_atomic(out, text)  # a failed write keeps the previous BENCHMARKS.md
    print()
    print(text)
    print(f"wrote {out} (card: {env['card']})")
    return 0 if rows else 1
