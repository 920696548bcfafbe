"""CPU checks of the kernel benchmarks' structure (the GPU run itself is `dsattn bench kernels`):
one timing harness serves every op section, each section is named after its op, and the report
renders every row field."""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
from pathlib import Path

from dsattn.tools import bench, bench_harness

TOOLS = Path(bench.__file__).resolve().parent


def test_sections_are_the_ops_and_share_one_signature():
    assert list(bench.SECTIONS) == ["qkv_gemm", "softmax_context", "int8_matmul"]
    for name, modname in bench.SECTIONS.items():
        mod = importlib.import_module(modname)
        assert modname.endswith(f"bench_{name}")
        params = inspect.signature(mod.rows).parameters
        assert list(params) == ["lib", "dtypes", "quick", "ceilings"], (modname, list(params))


def test_timing_lives_in_the_harness_only():
    """CUDA events, graph capture, the profiler and the L2 size appear in bench_harness.py alone."""
    pattern = re.compile(r"cuda\.Event|CUDAGraph|torch\.profiler|L2_BYTES\s*=")
    offenders = [p.name for p in sorted(TOOLS.glob("bench*.py"))
                 if p.name != "bench_harness.py" and pattern.search(p.read_text())]
    assert not offenders, f"timing code outside bench_harness.py: {offenders}"
    assert pattern.search((TOOLS / "bench_harness.py").read_text())


def test_harness_arithmetic():
    assert bench_harness.rotation_count(10 * 2**20) == 10  # 2 x 50 MB of 10 MB sets
    assert bench_harness.rotation_count(300 * 2**20) == 2
    assert bench_harness.rotation_count(300 * 2**20, minimum=3) == 3
    ceil = {"copy_bw": 3e12, "gemm_rate": {"fp16": 7.5e14, "bf16": 8e14}}
    assert abs(bench_harness.floor_us(ceil, "fp16", 3e6, 0) - 1.0) < 1e-12  # 3 MB at 3 TB/s
    assert abs(bench_harness.floor_us(ceil, "bf16", 0, 8e8) - 1.0) < 1e-12  # 0.8 GFLOP at 800 TF/s
    assert bench_harness.dtype_name("torch.bfloat16") == "bf16"


def test_markdown_renders_rows_and_notes():
    ceil = {"copy_bw": 3e12, "gemm_rate": {"fp16": 7.7e14, "bf16": 8e14}}
    env = {"card": "CARD", "sms": 132, "torch": "t", "cuda": "c", "cudnn": 1, "date": "d"}
    rows = [{"case": "int8_matmul M=1 fp16", "ours_us": 20.0, "baselines": {"cuBLAS": 40.0, "gone": None},
             "floor_us": 10.0, "target": ">= 1.75x", "met": True, "note": "2.5 TB/s"},
            {"case": "softmax_context prefill", "ours_us": 1500.0, "baselines": {}}]
    text = bench.markdown(rows, ceil, env, ["a section failed"])
    assert "| int8_matmul M=1 fp16 | 20.0 µs | cuBLAS: 40.0 µs<br>gone: - | cuBLAS: 2.00x | 50% |" in text
    assert ">= 1.75x — **met**<br>2.5 TB/s" in text
    assert "| softmax_context prefill | 1.500 ms | - | - | - |" in text
    assert "- a section failed" in text
    assert not re.search(r"issue \d|round \d", text, re.I)


def test_cli_only_takes_op_names():
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    assert p.parse_args(["kernels", "--only", "softmax_context", "int8_matmul"]).only == [
        "softmax_context", "int8_matmul"]
    try:
        p.parse_args(["kernels", "--only", "attention"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--only attention was accepted")


def test_profiler_sums_device_records_only_per_call():
    from types import SimpleNamespace as E

    cpu, cuda = "CPU", "CUDA"
    events = [E(name="aten::scaled_dot_product_attention", device_type=cpu, device_time_total=300.0),
              E(name="cudnn_sdpa_fprop", device_type=cuda, device_time_total=100.0),
              E(name="cudnn_sdpa_fprop", device_type=cuda, device_time_total=140.0),
              E(name="append_kernel", device_type=cuda, device_time_total=20.0)]
    recs = bench_harness.device_records(events, cuda)
    assert [n for n, _ in recs] == ["cudnn_sdpa_fprop", "cudnn_sdpa_fprop", "append_kernel"]
    per = bench_harness.per_call_us(recs, 2)
    assert per == {"cudnn_sdpa_fprop": 120.0, "append_kernel": 10.0}
    assert bench_harness.kernels_us(per) == 130.0
    assert bench_harness.kernels_us(per, include=("append",)) == 10.0
    assert bench_harness.kernels_us(per, exclude=("append",)) == 120.0


def test_targets_are_the_kernel_table():
    from dsattn.tools import bench_qkv_gemm as q
    from dsattn.tools import bench_softmax_context as sc

    assert sc.decode_target(1, 13.9, 18.0, 1800)[1] is True
    assert sc.decode_target(1, 14.2, 30.0, 1800)[1] is False  # absolute: <= 14 us incl. append
    assert sc.decode_target(8, 90.0, 91.0, 2950)[1] is True
    assert sc.decode_target(8, 92.0, 91.0, 2950)[1] is False  # slower than cuDNN
    assert sc.decode_target(8, 90.0, 91.0, 2890)[1] is False  # below 2.9 TB/s
    assert sc.decode_target(64, 690.0, 680.0, 3100) == (None, None)
    assert sc.prefill_attention_met(100.0, 95.0) and not sc.prefill_attention_met(100.0, 94.9)
    assert sc.prefill_whole_met(100.0, 85.0) and not sc.prefill_whole_met(100.0, 84.9)
    assert not sc.prefill_attention_met(None, 95.0) and not sc.prefill_whole_met(100.0, None)
    assert q.qkv_gemm_target(1.05)[1] and not q.qkv_gemm_target(1.051)[1]


def test_prefill_rows_split_append_from_attention():
    """Our attention time is every kernel of the op except the cache write, whatever the attention
    kernels are called; the baselines' time is every kernel of their call."""
    from dsattn.tools import bench_softmax_context as sc

    ours = {"append_kernel(Args, int)": 25.0, "prefill_kernel_sm90(Args)": 150.0}
    assert bench_harness.kernels_us(ours, exclude=sc.APPEND_KERNELS) == 150.0
    assert bench_harness.kernels_us(ours) == 175.0
