"""The one timing harness of every kernel benchmark (`dsattn bench kernels`).

Method: ceilings measured once per process (device-to-device copy bandwidth, bytes read + written;
cuBLAS fp16 / bf16 GEMM rate at 8192^3); every case and its baselines in the same process; CUDA
events; warm-up; medians; inputs rotated through copies whose total exceeds the 50 MB L2 (each
call then reads from HBM, as in a model); small cases timed as CUDA-graph replays of several
back-to-back calls (launch gaps out of the numbers). Where a row compares kernels (prefill
attention), both sides are per-kernel device times from the CUDA profiler (kernel_profile_us),
never our profiler time against a baseline's eager CUDA-event time: eager events include the
host work of the baseline's launch path and made a slower kernel look faster. The floor of a case is max(bytes / copy bandwidth,
FLOPs / GEMM rate); "% of floor" = floor / ours.

A benchmark row (what the op modules return and `dsattn.tools.bench` writes) is a dict:

    case       str, e.g. "qkv_gemm LN+GEMM+bias M=1 K=4096 N=12288 fp16"
    ours_us    float or None, median microseconds of our kernel(s)
    baselines  dict name -> median microseconds (None: the baseline could not run this case)
    floor_us   float, optional (roofline floor of the case)
    target     str, optional (the goal, e.g. "<= 1.05x matmul")
    met        bool, optional (whether the goal is met)
    note       str, optional
"""
from __future__ import annotations

import statistics

L2_BYTES = 50 * 2**20
DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16"}


def dtype_name(dtype) -> str:
    """"fp16" / "bf16" for torch.float16 / torch.bfloat16 (the case labels and ceiling keys)."""
    return DTYPE_NAMES[str(dtype).removeprefix("torch.")]


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


def median_us(fn, *, reps: int = 30, warmup: int = 5) -> float:
    """Median microseconds per eager call of ``fn()``."""
    return statistics.median(time_ms(fn, reps=reps, warmup=warmup)) * 1000.0


def graph_time_us(calls, *, replays: int = 20, warmup: int = 3) -> float:
    """Median microseconds per call of ``calls`` (a list of closures, e.g. one per rotated input
    set, repeated as often as wanted) captured back to back in one CUDA graph; each closure must be
    capturable. Warm-up (handles, plans, one-time autotuning) runs outside the capture."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
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


def try_graph_time_us(calls, *, replays: int = 20) -> float | None:
    """graph_time_us, or None (reported) when a backend cannot run or be captured for this case."""
    try:
        return graph_time_us(calls, replays=replays)
    except Exception as e:  # noqa: BLE001 - a baseline that cannot run this shape is not fatal
        print(f"    (graph timing failed: {type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)
        return None


def kernel_profile_us(fn, *, calls: int = 1, iters: int = 5) -> dict[str, float]:
    """Device microseconds per op call of every kernel (and memset/memcpy) that ``fn()`` launches,
    keyed by kernel name, from the CUDA profiler's activity records: ``fn()`` makes ``calls`` op
    calls (e.g. one per rotated input set) and runs ``iters`` times after one warm-up run.

    This is the one method for comparing an op's kernels with a baseline's: device time only, so a
    baseline's host work (cuDNN's eager graph lookup, PyTorch dispatch) and launch gaps count on
    neither side. Only device-side records are summed; the host-side ops (aten::...) carry their
    children's device time and would count it twice."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return per_call_us(device_records(prof.events(), DeviceType.CUDA), iters * calls)


def device_records(events, device_type) -> list[tuple[str, float]]:
    """(name, microseconds) of the profiler events that ran on ``device_type`` (kernels, memsets,
    copies), leaving out host-side ops, whose device time is the sum of their children's."""
    return [(ev.name, ev.device_time_total) for ev in events if ev.device_type == device_type]


def per_call_us(records, calls: int) -> dict[str, float]:
    """Sum (name, microseconds) records by name and divide by the number of op calls profiled."""
    tot: dict[str, float] = {}
    for name, us in records:
        tot[name] = tot.get(name, 0.0) + float(us)
    return {k: v / calls for k, v in tot.items()}


def kernels_us(times: dict[str, float], include=None, exclude=()) -> float:
    """Sum of the per-call times of the kernels whose name contains any of ``include`` (all when
    None) and none of ``exclude``."""
    return sum(us for name, us in times.items()
               if (include is None or any(i in name for i in include)) and not any(x in name for x in exclude))


def short_kernel_name(name: str) -> str:
    """A profiler kernel name without return type, namespaces, template and call arguments
    ("void ns::(anonymous namespace)::decode_kernel<__half, 128>(Args, int)" -> "decode_kernel")."""
    n = name.replace("(anonymous namespace)", "").removeprefix("void ").strip()
    cut = min((i for i in (n.find("<"), n.find("(")) if i > 0), default=len(n))
    return n[:cut].split("::")[-1].strip() or name


def rotation_count(bytes_per_set: int, minimum: int = 2) -> int:
    """Input sets so that one sweep exceeds 2x L2 (each call then reads from HBM)."""
    return max(minimum, -(-2 * L2_BYTES // max(1, bytes_per_set)))


def measure_ceilings(quick: bool = False) -> dict:
    """Device copy bandwidth (bytes read + written per second) and cuBLAS GEMM rate (FLOP/s) per
    dtype name: {"copy_bw": B/s, "gemm_rate": {"fp16": FLOP/s, "bf16": FLOP/s}}."""
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
    return {"copy_bw": copy_bw, "gemm_rate": rates}


def floor_us(ceilings: dict, dname: str, bytes_: float, flops: float) -> float:
    """Roofline floor in microseconds: max(bytes / copy bandwidth, FLOPs / GEMM rate of ``dname``)."""
    return max(bytes_ / ceilings["copy_bw"], flops / ceilings["gemm_rate"][dname]) * 1e6


def fmt_us(v) -> str:
    return "-" if v is None else f"{v:.1f}"
