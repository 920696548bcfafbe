"""CPU tests of the ONNX Runtime custom-op library (libdsattn_ort.so) and its Python runtime.

The library compiles against ONNX Runtime's C API headers in <repo>/.deps/ort-include (or
$DSATTN_ORT_INCLUDE; an ignored folder: ONNX Runtime's headers are never committed). CI has nvcc
but no ONNX Runtime headers, so the build tests SKIP there. Where the library is built, a CPU-only
onnxruntime still loads it and creates the dsattn schemas: session creation then runs our type and
shape inference on every test graph and stops only where it looks for a CPU kernel (the ops exist
for CUDAExecutionProvider only), which shows the registration is accepted by ONNX Runtime.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from buildtools import find_tool
from onnx import TensorProto as TP
from onnx import helper as oh

from ort_cases import DTYPES, GEMM_CASES, GemmCase, MATMUL_CASES, SC_CASES, gemm_model, matmul_model, sc_model

REPO = Path(__file__).resolve().parents[1]
ORT_INCLUDE = Path(os.environ.get("DSATTN_ORT_INCLUDE", REPO / ".deps" / "ort-include"))




@pytest.fixture(scope="module")
def ort_lib(tmp_path_factory) -> Path:
    if not (ORT_INCLUDE / "onnxruntime_c_api.h").exists():
        pytest.skip(f"ONNX Runtime C API headers not found in {ORT_INCLUDE} (CI has none; nothing to compile against)")
    nvcc, cmake = find_tool("nvcc"), find_tool("cmake")
    build = tmp_path_factory.mktemp("ort-build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(
        [cmake, "-S", str(REPO / "plugins"), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DCMAKE_CUDA_ARCHITECTURES=90a", f"-DONNXRUNTIME_INCLUDE_DIR={ORT_INCLUDE}"],
        capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    assert "building libdsattn_ort.so" in cfg.stdout, cfg.stdout[-3000:]
    b = subprocess.run([cmake, "--build", str(build), "-j2", "--target", "dsattn_ort"], capture_output=True, text=True,
                       timeout=1800)
    assert b.returncode == 0, b.stdout[-5000:] + b.stderr[-3000:]
    return build / "libdsattn_ort.so"


def test_configure_skips_without_headers(tmp_path):
    """Without the headers the configure succeeds and says it skips the library (what CI sees)."""
    find_tool("nvcc")
    cmake = find_tool("cmake")
    r = subprocess.run([cmake, "-S", str(REPO / "plugins"), "-B", str(tmp_path / "b"), "-DCMAKE_CUDA_ARCHITECTURES=90a",
                        f"-DONNXRUNTIME_INCLUDE_DIR={tmp_path / 'nowhere'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ONNX Runtime C API headers not found" in r.stdout and "skipping libdsattn_ort.so" in r.stdout


def test_exports_only_the_registration_entry_point(ort_lib):
    out = subprocess.run(["nm", "-D", "--defined-only", str(ort_lib)], capture_output=True, text=True, check=True).stdout
    exported = sorted(line.split()[-1] for line in out.splitlines() if len(line.split()) >= 2)
    assert exported == ["RegisterCustomOps"], exported


def test_needs_no_onnxruntime_library(ort_lib):
    needed = subprocess.run(["readelf", "-d", str(ort_lib)], capture_output=True, text=True, check=True).stdout
    assert "onnxruntime" not in needed, needed
    assert "libdsattn_kernels" not in needed, "the kernels are linked in (one library to register)"
    assert "libnvinfer" not in needed


def _ort_or_skip():
    ort = pytest.importorskip("onnxruntime")
    api = int(ort.__version__.split(".")[1])
    header = next(int(line.split()[2]) for line in (ORT_INCLUDE / "onnxruntime_c_api.h").read_text().splitlines()
                  if line.startswith("#define ORT_API_VERSION "))
    if api < header:
        pytest.skip(f"onnxruntime {ort.__version__} is older than the headers' API version {header}")
    return ort


def _cpu_session_error(ort, lib: Path, model: onnx.ModelProto) -> str:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    # strict: a declared output type / shape that differs from the inferred one is an error
    so.add_session_config_entry("session.strict_shape_type_inference", "1")
    so.register_custom_ops_library(str(lib))
    with pytest.raises(Exception) as info:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return str(info.value)


def _kernel_lookup_failure(msg: str) -> bool:
    """ONNX Runtime's two wordings of "no CPU kernel for this node" (which one depends on the type)."""
    return "NOT_IMPLEMENTED" in msg and ("Could not find an implementation" in msg or "Failed to find kernel" in msg)


def _grid():
    rng = np.random.default_rng(0)
    for dtype, elem in DTYPES.items():
        for c in SC_CASES:
            yield f"SoftmaxContext {c.name} {dtype}", "SoftmaxContext", sc_model(elem, c)
        # int8 weight with no other T input after it (the case a type-generic declaration gets wrong)
        for c in GEMM_CASES + [GemmCase("int8_no_norm_no_bias", 0, 1, 0, 0, False)]:
            yield f"QKVGemm {c.name} {dtype}", "QKVGemm", gemm_model(elem, c, rng)
        for c in MATMUL_CASES:
            yield f"Int8MatMul {c.name} {dtype}", "Int8MatMul", matmul_model(elem, c, rng)


def test_registration_and_inference_on_cpu_onnxruntime(ort_lib):
    """Every model of the ORT grid loads with the library registered: our schemas pass, the inferred
    output types and shapes agree with the declared ones (strict inference), and session creation
    fails only at the kernel lookup (the ops are CUDA EP ops)."""
    ort = _ort_or_skip()
    for label, op, model in _grid():
        msg = _cpu_session_error(ort, ort_lib, model)
        assert _kernel_lookup_failure(msg) and op in msg, f"{label}: {msg}"


def test_inference_rejects_wrong_output_type(ort_lib):
    """The inferred output types are checked against the graph: declaring context as float32 for a
    float16 node is a type error at load (not a kernel-lookup error), so inference really runs."""
    ort = _ort_or_skip()
    model = sc_model(TP.FLOAT16, SC_CASES[0])
    model.graph.output[0].type.tensor_type.elem_type = TP.FLOAT
    msg = _cpu_session_error(ort, ort_lib, model)
    assert not _kernel_lookup_failure(msg), msg
    assert "context" in msg or "Type" in msg, msg


def test_inference_rejects_wrong_output_shape(ort_lib):
    """Shape inference: context is [B, S, num_heads * head_size]; a graph declaring another last dim
    fails at load."""
    ort = _ort_or_skip()
    c = SC_CASES[0]
    model = sc_model(TP.FLOAT16, c, dynamic=False)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = c.H * c.D + 1
    msg = _cpu_session_error(ort, ort_lib, model)
    assert f"Inferred={c.H * c.D} Declared={c.H * c.D + 1}" in msg, msg


def test_exported_models_load_with_the_library(ort_lib, tmp_path):
    """Exported attention layers (fp16, int8, bf16 GQA) and a whole decoder: every dsattn node's
    inferred types and shapes agree with what the exporter declared (strict inference), up to the
    kernel lookup."""
    ort = _ort_or_skip()
    from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, export_onnx, quantize_int8

    layers = {
        "bloom_fp16": BloomSelfAttention(AttentionConfig(hidden_size=256, heads=4, dtype="fp16", bigscience_bloom=True)),
        "ds_int8": quantize_int8(DeepSpeedSelfAttention(AttentionConfig(hidden_size=256, heads=4, dtype="fp16")),
                                 group_size=64),
        "ds_gqa_bf16": DeepSpeedSelfAttention(AttentionConfig(hidden_size=256, heads=4, num_kv=2, dtype="bf16",
                                                              norm_type="rmsnorm", rotary_dim=32, rotate_half=False,
                                                              rotate_every_two=True)),
    }
    paths = {n: export_onnx(m.eval(), tmp_path / f"{n}.onnx", batch=2, seq=5, capacity=48) for n, m in layers.items()}
    pytest.importorskip("transformers")
    from whole_cases import make_checkpoint

    from dsattn.export.model_onnx import export_hf_model

    make_checkpoint("llama", tmp_path / "ckpt", seed=1)
    export_hf_model(tmp_path / "ckpt", tmp_path / "out", log=lambda s: None)
    paths["llama_whole"] = tmp_path / "out" / "model.onnx"
    for name, path in paths.items():
        msg = _cpu_session_error(ort, ort_lib, onnx.load(str(path)))
        assert _kernel_lookup_failure(msg) and "QKVGemm" in msg, f"{name}: {msg}"


# ------------------------------------------------------------------------------------------------
# the Python runtime (no GPU needed for its checks)
# ------------------------------------------------------------------------------------------------

def test_find_library_names_where_it_looked(tmp_path, monkeypatch):
    from dsattn.tools.ort_runtime import LIBRARY_ENV, find_library

    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    missing = tmp_path / "libdsattn_ort.so"
    with pytest.raises(FileNotFoundError, match="library argument"):
        find_library(missing)
    monkeypatch.setenv(LIBRARY_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=r"\$DSATTN_ORT_LIB"):
        find_library()
    missing.write_bytes(b"")
    assert find_library() == str(missing)


def test_check_model_rejects_unknown_attribute():
    from dsattn.tools.ort_runtime import check_model

    model = sc_model(TP.FLOAT16, SC_CASES[0])
    check_model(model)  # the contract's attributes (and plugin_version / plugin_namespace) pass
    model.graph.node[0].attribute.append(oh.make_attribute("rotary_base", 10000.0))
    with pytest.raises(ValueError, match=r"SoftmaxContext node 'attn': unknown attribute 'rotary_base'"):
        check_model(model)


def test_validate_cli_cuda_dsattn_errors(tmp_path, monkeypatch):
    """`dsattn validate --providers cuda-dsattn`: without onnxruntime's CUDA provider (this machine)
    or without the library, exit 2 with one line naming the problem."""
    import onnxruntime as ort

    from dsattn.tools.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(sc_model(TP.FLOAT16, SC_CASES[0]), path)
    monkeypatch.setenv("DSATTN_ORT_LIB", str(tmp_path / "nope.so"))
    rc = main(["validate", str(path), "--providers", "cuda-dsattn", "--seed", "1"])
    assert rc == 2
    if "CUDAExecutionProvider" in ort.get_available_providers():
        rc = main(["validate", str(path), "--providers", "cuda-dsattn", "--ort-library", str(tmp_path / "x.so")])
        assert rc == 2


def test_validate_cuda_dsattn_message(tmp_path, monkeypatch, capsys):
    import onnxruntime as ort

    from dsattn.tools.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(sc_model(TP.FLOAT16, SC_CASES[0]), path)
    main(["validate", str(path), "--providers", "cuda-dsattn", "--ort-library", str(tmp_path / "x.so")])
    err = capsys.readouterr().err
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "libdsattn_ort.so not found" in err and "x.so" in err, err
    else:
        assert "cuda-dsattn" in err and "CUDAExecutionProvider" in err, err
    assert "Traceback" not in err


def test_bench_generate_report_section(tmp_path):
    """`dsattn bench generate` writes one marked section into BENCHMARKS.md and replaces it on the
    next run, keeping the rest; a runtime that could not run says why in its row."""
    from dsattn.tools.bench_generate import BEGIN, END, floor_tok_s, markdown, write_section

    env = {"card": "TestCard", "date": "d", "ort": "1", "torch": "2", "params": 1.1e9, "new_tokens": 8, "bw": 3e12}
    floors = {(512, 1): floor_tok_s(512, 1, 8, 3e12, int(1.1e9))}
    # 1 token per (2.2 GB of weights + the cache) / 3 TB/s: a bit under 1364 tok/s
    assert 1300 < floors[(512, 1)] < 1364
    results = {(512, 1): {"ort-dsattn": (12.5, 900.0), "genai": (10.0, 600.0), "hf-sdpa": "out of memory"}}
    text = markdown(results, floors, env, ["a note"], [(512, 1)])
    assert "| 512 | 1 | ort-dsattn | 12.5 ms | 900 | 1.50x | - |" in text
    assert "| 512 | 1 | hf-sdpa | - | not run: out of memory |" in text and "TestCard" in text
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# kernels\n\ntable\n")
    write_section(path, text)
    write_section(path, text.replace("900", "901"))
    out = path.read_text()
    assert out.startswith("# kernels\n\ntable\n") and out.count(BEGIN) == 1 and out.count(END) == 1
    assert "| 901 |" in out and "| 900 |" not in out


def test_bench_generate_needs_cuda(capsys):
    import torch

    from dsattn.tools.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert main(["bench", "generate", "--out", "x.md"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
