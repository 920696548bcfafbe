"""Decode-path variants of softmax_context.cu (compile-time knobs) checked and timed in one device call.

    python3 scripts/decode_explore.py check   # decode test cases of tests/test_kernels_attention.py per variant
    python3 scripts/decode_explore.py bench   # bench_attention.decode_rows per variant (fp16; bf16 for some)

Variants are built by scripts/gpu_decode.sh into build/dec/<name>/libdsattn_kernels.so; the
VARIANTS table (name -> nvcc flags) is shared with it (`python3 scripts/decode_explore.py flags NAME`).
"""
import sys
import types
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "dec"
# name -> (source, flags). "head" is the committed decode path before this round (same-run "before").
# Results of the round-2/3 runs are in plugins/kernels/softmax_context_notes.md ("Round 2: decode",
# "Round 3: decode"). Round 3: new-token rotary once per (token, element) for q and k, kept in
# shared memory (default), and rows cut into W waves of chunks at mid batch (DSATTN_DECODE_WAVES;
# at H=32 it changes B=8 only: 4 / 6 / 8 splits for W = 2 / 3 / 4; B=1 and B=64 keep 16 and 1).
# Outcome (H100): the rotary change is the default; every waves variant was slower at B=8.
VARIANTS = {
    "default": ("SRC", []),  # the source's defaults (cluster merge <= 8 CTAs, PDL)
    "waves4": ("SRC", ["-DDSATTN_DECODE_WAVES=4"]),
    "waves3": ("SRC", ["-DDSATTN_DECODE_WAVES=3"]),
    "waves4c0": ("SRC", ["-DDSATTN_DECODE_WAVES=4", "-DDSATTN_DECODE_CLUSTER=0"]),
    "waves3c0": ("SRC", ["-DDSATTN_DECODE_WAVES=3", "-DDSATTN_DECODE_CLUSTER=0"]),
    "waves2": ("SRC", ["-DDSATTN_DECODE_WAVES=2"]),
}
if (ROOT / "scripts/decode_r3_src/head.cu").is_file():  # optional "before" source (not committed)
    VARIANTS = {"head": ("scripts/decode_r3_src/head.cu", []), **VARIANTS}
BF16_TOO = ("default", "head", "waves4")
NO_BENCH = ("probe",)
TWICE = ("head", "default", "waves4", "waves3")  # timed a second time, in reverse order


def libpath(name):
    return str(OUT / name / "libdsattn_kernels.so")


def check():
    import random

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import test_kernels_attention as T
    from dsattn.tools.kernels import attention

    names = [n for n in T.CASES if n.startswith("decode_")]
    bad = 0
    for v in VARIANTS:
        if not Path(libpath(v)).is_file():
            print(f"{v}: not built")
            bad += 1
            continue
        shim = types.SimpleNamespace(softmax_context=partial(attention.softmax_context, lib=libpath(v)))
        T.attention = shim
        fails = []

        def case(n):
            c = dict(T.CASES[n])
            return lambda seed: T._check_case(seed, c.pop("dtype"), **c)

        tests = [(n, case(n)) for n in names]
        tests += [("graph_S1", partial(T.test_cuda_graph_capture_and_replay, 1)),
                  ("overflow_S1_f16", partial(T.test_overflow_raises_and_writes_nothing, torch.float16, 1)),
                  ("prefill_then_decode_bf16", partial(T.test_prefill_then_decode_equals_one_prefill,
                                                       torch.bfloat16))]
        for n, fn in tests:
            seed = random.SystemRandom().randrange(2**31)
            try:
                fn(seed)
            except Exception as e:  # noqa: BLE001 - report every failure with its seed
                fails.append(f"{n} (seed {seed}): {type(e).__name__}: {str(e)[:200]}")
        torch.cuda.synchronize()
        print(f"check {v}: {len(tests) - len(fails)}/{len(tests)} passed" + "".join(f"\n   FAIL {f}" for f in fails),
              flush=True)
        bad += len(fails)
    return 1 if bad else 0


def bench():
    import torch

    from dsattn.tools import bench as B
    from dsattn.tools import bench_attention

    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    ceil = B.measure_ceilings(quick=True)
    print(f"ceilings: copy {ceil['copy_bw'] / 1e9:.0f} GB/s", flush=True)
    summary = []
    fp16 = [(v, torch.float16, "fp16") for v in VARIANTS if v not in NO_BENCH]
    order = (fp16 + [(v, torch.bfloat16, "bf16") for v in BF16_TOO if v in VARIANTS]
             + [x for x in fp16[::-1] if x[0] in TWICE])
    for v, dt, dn in order:
        if not Path(libpath(v)).is_file():
            continue
        print(f"== {v} {dn}", flush=True)
        try:
            rows = bench_attention.decode_rows(libpath(v), dt, dn, ceil, False)
        except Exception as e:  # noqa: BLE001
            print(f"   {v} {dn} failed: {type(e).__name__}: {e}", flush=True)
            continue
        for r in rows:
            b = r["baselines"]
            line = (f"{v:6s} {dn} {r['case'][23:31]:8s} ours {r['ours_us'] or 0:7.1f} us | cuDNN {b.get('cuDNN SDPA') or 0:7.1f}"
                    f" | flash {b.get('flash SDPA') or 0:7.1f} | {r['note']}")
            summary.append(line)
            print("   " + line, flush=True)
    print("\n== summary")
    print("\n".join(summary))
    return 0


def sanitize(name):
    """scripts/attn_sanitize.py against variant `name`'s library (run under compute-sanitizer)."""
    import runpy

    from dsattn.tools.kernels import attention

    attention.softmax_context = partial(attention.softmax_context, lib=libpath(name))
    runpy.run_path(str(ROOT / "scripts/attn_sanitize.py"), run_name="__main__")
    return 0


def probe():
    """Per-CTA %globaltimer stamps of the decode kernel (probe build), cold L2, eager calls."""
    import ctypes
    import statistics

    import torch

    from dsattn.tools.kernels import attention

    path = libpath("probe")
    lib = ctypes.CDLL(path)
    H, D, PAST = 32, 128, 2048
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for B in (1, 8, 64):
        qkv = torch.randn(B, 1, 3 * H * D, device="cuda", dtype=torch.float16)
        pk = torch.randn(B, H, PAST + 1, D, device="cuda", dtype=torch.float16)
        pv = torch.randn(B, H, PAST + 1, D, device="cuda", dtype=torch.float16)
        lens = torch.full((B,), PAST, dtype=torch.int32, device="cuda")
        out = torch.empty(B, 1, H * D, device="cuda", dtype=torch.float16)
        status = torch.empty(1, dtype=torch.int32, device="cuda")
        ws = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")

        def call():
            attention.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, rotary_dim=D, lib=path, out=out,
                                      status=status, workspace=ws, check=False)
        for rep in range(3):
            call()
            flush.fill_(rep)  # evict K/V from L2
            torch.cuda.synchronize()
            assert lib.dsattn_decode_probe_reset() == 0
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
            call()
            ev[1].record()
            torch.cuda.synchronize()
            buf = (ctypes.c_ulonglong * (4096 * 5))()
            assert lib.dsattn_decode_probe_read(buf, 4096 * 5) == 0
            t = [[buf[c * 5 + k] for k in range(5)] for c in range(4096) if buf[c * 5]]
            t0 = min(x[0] for x in t)
            rel = [[(x[k] - t0) / 1000.0 if x[k] else float("nan") for k in range(5)] for x in t]

            def pct(vals):
                v = sorted(x for x in vals if x == x)
                if not v:
                    return "-"
                q = lambda f: v[min(len(v) - 1, int(f * (len(v) - 1)))]  # noqa: E731
                return f"{q(0):6.2f} {q(0.1):6.2f} {q(0.5):6.2f} {q(0.9):6.2f} {q(1):6.2f}"
            print(f"B={B} rep {rep}: {len(t)} CTAs, eager call {ev[0].elapsed_time(ev[1]) * 1000:.1f} us "
                  f"(events), kernel span {max(x[4] for x in rel if x[4] == x[4]):.2f} us", flush=True)
            names = ["entry", "row check done", "first step done", "loop done", "end"]
            for k in range(5):
                print(f"   {names[k]:16s} us after first entry (min p10 p50 p90 max): {pct([x[k] for x in rel])}")
            for k in range(1, 5):
                print(f"   {names[k - 1]:>16s} -> {names[k]:16s}: {pct([x[k] - x[k - 1] for x in rel])}")
        del qkv, pk, pv
        torch.cuda.empty_cache()
    _ = statistics
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "names":
        print(" ".join(VARIANTS))
        sys.exit(0)
    if cmd == "flags":
        src, flags = VARIANTS[sys.argv[2]]
        print(src, " ".join(flags))
        sys.exit(0)
    if cmd == "sanitize":
        sys.exit(sanitize(sys.argv[2]))
    if cmd == "probe":
        sys.exit(probe())
    sys.exit(check() if cmd == "check" else bench())
