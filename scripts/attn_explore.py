"""Decode-attention variants (compile-time knobs of softmax_context.cu) timed side by side on the GPU.

    python3 scripts/attn_explore.py build   # builds build/attn_variants/<name>/libdsattn_kernels.so
    python3 scripts/attn_explore.py run     # decode B=1/8/64 fp16 rows per variant (+ cuDNN / flash)
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "attn_variants"
VARIANTS = {
    "default": [],
    "ldg": ["-DDSATTN_DECODE_LOAD=1"],
    "ldlu": ["-DDSATTN_DECODE_LOAD=2"],
    "unroll8": ["-DDSATTN_DECODE_UNROLL1=8", "-DDSATTN_DECODE_CTAS_PER_SM1=2"],
    "2waves": ["-DDSATTN_DECODE_SLOT_SCALE=2"],
    "prefill8w": ["-DDSATTN_PREFILL_WARPS=8"],
}
PREFILL_VARIANTS = ("default", "prefill8w")


def build():
    procs = []
    for name, flags in VARIANTS.items():
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        cmd = ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17",
               "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'plugins/kernels'}", *flags,
               str(ROOT / "plugins/kernels/softmax_context.cu"), str(ROOT / "plugins/kernels/softmax_context_prefill.cu"),
               "-o", str(d / "libdsattn_kernels.so")]
        procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    ok = True
    for name, p in procs:
        out = p.communicate()[0].decode()
        print(f"build {name}: rc={p.returncode} {out[-300:]}")
        ok &= p.returncode == 0
    return 0 if ok else 1


def run():
    import torch

    from dsattn.tools import bench, bench_attention

    ceil = bench.measure_ceilings(quick=True)
    print(f"ceilings: copy {ceil['copy_bw'] / 1e9:.0f} GB/s", flush=True)
    summary = []
    for name in VARIANTS:
        lib = OUT / name / "libdsattn_kernels.so"
        if not lib.is_file():
            print(f"{name}: not built")
            continue
        print(f"== {name}", flush=True)
        if name == "prefill8w":
            rows = []
        else:
            rows = bench_attention.decode_rows(str(lib), torch.float16, "fp16", ceil, True)
        if name in PREFILL_VARIANTS:
            rows += bench_attention.prefill_rows(str(lib), torch.float16, "fp16", ceil, True)
        for r in rows:
            summary.append(f"{name:8s} {r['case'][:28]} ours {r['ours_us']:.1f} us cuDNN {r['baselines']['cuDNN SDPA'] or 0:.1f} | {r['note']}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(build() if sys.argv[1:] == ["build"] else run())
