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
    assert list(bench.BASELINE_SECTIONS) == ["deepspeed"]
    mod = importlib.import_module(bench.BASELINE_SECTIONS["deepspeed"])
    assert list(inspect.signature(mod.rows).parameters) == ["lib", "dtypes", "quick", "ceilings"]


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
    assert p.parse_args(["kernels", "--only", "deepspeed"]).only == ["deepspeed"]
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


def test_short_kernel_names():
    short = bench_harness.short_kernel_name
    assert short("void dsattn::(anonymous namespace)::decode_kernel<__half, 128>(Args, float*, int)") == "decode_kernel"
    assert short("append_kernel(Args, int)") == "append_kernel"
    assert short("cudnn_generated_fort_native_sdpa_sm90_knob_3") == "cudnn_generated_fort_native_sdpa_sm90_knob_3"
    assert short("Memset (Device)") == "Memset"


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


# ------------------------------------------------------------------------------------------------
# The DeepSpeed baseline (tools/bench_deepspeed.py): what can be checked without a GPU.

NVCC_LOG = """[1/10] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -c softmax.cu -o softmax.cuda.o
FAILED: softmax.cuda.o
/usr/local/cuda/bin/nvcc -c softmax.cu -o softmax.cuda.o
csrc/transformer/inference/csrc/softmax.cu(12): warning #177-D: variable "x" was declared but never referenced
csrc/transformer/inference/csrc/softmax.cu(44): error: identifier "cub::Sum" is undefined
csrc/transformer/inference/csrc/softmax.cu(90): error: namespace "cub" has no member "Max"
2 errors detected in the compilation of "softmax.cu".
ninja: build stopped: subcommand failed.
Traceback (most recent call last):
  File "<string>", line 2, in <module>
RuntimeError: Error building extension 'transformer_inference'
"""


def test_deepspeed_build_reason_is_the_first_compiler_error():
    from dsattn.tools import bench_deepspeed as ds

    assert ds.first_error_line(NVCC_LOG) == ('csrc/transformer/inference/csrc/softmax.cu(44): error: identifier '
                                             '"cub::Sum" is undefined')
    gcc = "pt_binding.cpp:12:10: fatal error: cublas_v2.h: No such file or directory\ncompilation terminated."
    assert ds.first_error_line(gcc).startswith("pt_binding.cpp:12:10: fatal error: cublas_v2.h")
    ld = "[10/10] c++ -shared\nFAILED: transformer_inference.so\nld: pt_binding.o: undefined reference to `curandCreateGenerator'"
    assert "undefined reference to `curandCreateGenerator'" in ds.first_error_line(ld)
    assert ds.first_error_line("[1/2] nvcc x\nFAILED: x.o\nninja: build stopped") == "FAILED: x.o"
    py = ("Traceback (most recent call last):\n  File \"<string>\", line 2\n"
          "deepspeed.ops.op_builder.builder.CUDAMismatchException: >- DeepSpeed Op Builder: Installed CUDA 13.0 ...\n")
    assert ds.first_error_line(py).startswith("deepspeed.ops.op_builder.builder.CUDAMismatchException: >- DeepSpeed")
    assert ds.first_error_line("") == "(empty build log)"


def test_deepspeed_build_environment(monkeypatch, tmp_path):
    from dsattn.tools import bench_deepspeed as ds

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert ds.extensions_dir() == tmp_path
    env = ds.build_env("9.0", tmp_path)
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
    assert env["DS_ACCELERATOR"] == "cuda" and int(env["MAX_JOBS"]) >= 1
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert ds.extensions_dir().name == "deepspeed_extensions"


def test_deepspeed_row_says_why_when_not_installed(monkeypatch):
    """Without deepspeed the section still writes its row, with the reason, and nothing else runs."""
    import sys

    from dsattn.tools import bench_deepspeed as ds

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ModuleNotFoundError
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")  # load() names the accelerator; keep it out of later tests
    rows = ds.rows(None, dtypes=(), quick=True, ceilings={})
    assert len(rows) == 1 and rows[0]["ours_us"] is None
    assert rows[0]["case"].startswith("DeepSpeed transformer_inference ops")
    assert rows[0]["note"].startswith("not run: deepspeed not importable: ModuleNotFoundError")
    ceil = {"copy_bw": 3e12, "gemm_rate": {"fp16": 7.7e14, "bf16": 8e14}}
    env = {"card": "CARD", "sms": 132, "torch": "t", "cuda": "c", "cudnn": 1, "date": "d"}
    assert "not run: deepspeed not importable" in bench.markdown(rows, ceil, env, [])


def test_deepspeed_int8_group_rows_state_why():
    from dsattn.tools import bench_deepspeed as ds

    assert "groups must divide N" in ds.INT8_GROUP_REASON


def test_deepspeed_failed_build_row_carries_the_compiler_error(monkeypatch, tmp_path):
    """A failing JIT build (a child process printing an nvcc error and exiting 1) ends in a row whose
    note is the first compiler error, and the whole log is kept beside the extension folder."""
    import sys
    import types

    import torch

    from dsattn.tools import bench_deepspeed as ds

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(__version__="0.0-test"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    monkeypatch.setattr(ds, "BUILD_SNIPPET", "import sys, os\n"
                        "print('[1/2] nvcc -c softmax.cu arch', os.environ['TORCH_CUDA_ARCH_LIST'])\n"
                        "print('softmax.cu(44): error: identifier \"cub::Sum\" is undefined')\n"
                        "sys.exit(1)\n")
    rows = ds.rows(None, dtypes=(), quick=True, ceilings={})
    assert len(rows) == 1
    note = rows[0]["note"]
    assert note.startswith("not run: JIT build of InferenceBuilder failed (deepspeed 0.0-test")
    assert "TORCH_CUDA_ARCH_LIST=9.0" in note
    assert note.endswith('softmax.cu(44): error: identifier "cub::Sum" is undefined')
    assert "arch 9.0" in (tmp_path / "build.log").read_text()


def test_install_deepspeed_script_refuses_an_empty_wheel_folder(tmp_path):
    import subprocess

    script = TOOLS.parent / "scripts" / "install_deepspeed.sh"
    r = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "t")], capture_output=True, text=True)
    assert r.returncode == 2 and f"no wheels in {tmp_path}" in r.stderr
    (tmp_path / "einops-0.8.2-py3-none-any.whl").write_bytes(b"")
    r = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "t")], capture_output=True, text=True)
    assert r.returncode == 2 and "no deepspeed-*.whl" in r.stderr
    r = subprocess.run(["bash", str(script), "--env", "/opt/x"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("export PYTHONPATH=/opt/x") and "/opt/x/bin:" in r.stdout


def test_int8_matmul_cases_and_targets():
    """The Int8MatMul section measures the M range of the targets in both scale modes, and judges
    each row against its M's target (M <= 16: 1.75x / 1.6x faster; 32..512: >= 1.0x; 2048: >= 0.9x)."""
    from dsattn.tools import bench_int8_matmul as b

    assert {M for M, N in b.CASES if N == 12288} == {1, 4, 16, 32, 64, 128, 256, 512, 2048}
    assert (2048, 4096) in b.CASES and b.GROUPS == (0, 128)
    assert set(b.CROSSOVER_M) == {32, 64, 128, 256, 512}
    base = {"cuBLAS fp16 matmul": 100.0, "DeepSpeed dequant+GEMM": 300.0}
    assert b._target(1, 0, 100 / 1.76, base)["met"] and not b._target(16, 0, 100 / 1.7, base)["met"]
    assert b._target(16, 128, 100 / 1.61, base)["met"] and not b._target(4, 128, 100 / 1.59, base)["met"]
    assert b._target(32, 128, 99.0, base)["met"] and not b._target(512, 0, 101.0, base)["met"]
    assert b._target(2048, 0, 111.0, base)["met"] and not b._target(2048, 128, 112.0, base)["met"]
    assert b._target(64, 0, 50.0, {}) == {}
