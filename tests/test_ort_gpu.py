"""The lowered graph on ONNX Runtime CUDAExecutionProvider: the CPU grid of test_lower.py in float32,
float16 and bfloat16 against the fp32 reference (docs/DESIGN.md rule), cache semantics and node placement.

Run on the GPU machine with onnxruntime-gpu (see DEVICE.md):
    pip install --no-deps --no-build-isolation -e .   # or PYTHONPATH=<repo root's parent layout>
    PYTHONPATH=/opt/dsattn/site:$PYTHONPATH python3 -m pytest -m gpu tests/test_ort_gpu.py -rA
Needs torch (reference ops), onnx, ml_dtypes and onnxruntime-gpu; not transformers or Polygraphy
(the one validate() test skips without Polygraphy). Each test prints its max errors.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP

from ort_cases import (DTYPES, GEMM_CASES, MATMUL_CASES, SC_CASES, SCCase, assert_matches_reference, check_lowered,
                       gemm_model, matmul_model, sc_feeds, sc_model, x_feed)

pytestmark = pytest.mark.gpu


def _cuda_ep_or_skip():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        pytest.skip(f"onnxruntime is not importable: {exc}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                    f"{ort.get_available_providers()}); install onnxruntime-gpu (DEVICE.md step 3)")
    return ort


@pytest.fixture(scope="module")
def ort_cuda():
    return _cuda_ep_or_skip()


def _report(name, errors):
    """Print the errors, and append them to $OUT/ort_cuda_errors.txt on the device machine (where
    the run's outputs come back) so the numbers survive a run that only shows a summary."""
    line = f"[ort-cuda] {name}: " + ", ".join(f"{k} max abs err {v:.3e}" for k, v in errors.items())
    print(line)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ort_cuda_errors.txt"), "a") as f:
            f.write(line + "\n")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", SC_CASES, ids=lambda c: c.name)
def test_softmax_context_cuda(ort_cuda, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"SoftmaxContext {case.name} {dtype}",
            assert_matches_reference(sc_model(elem, case), sc_feeds(elem, case, rng), "cuda"))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: c.name)
def test_qkv_gemm_cuda(ort_cuda, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"QKVGemm {case.name} {dtype}",
            assert_matches_reference(gemm_model(elem, case, rng), x_feed(elem, (2, 3, case.hidden), rng), "cuda"))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: c.name)
def test_int8_matmul_cuda(ort_cuda, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"Int8MatMul {case.name} {dtype}",
            assert_matches_reference(matmul_model(elem, case, rng), x_feed(elem, (*case.lead, case.K), rng), "cuda"))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_larger_shapes_cuda(ort_cuda, dtype, seed):
    """Sizes nearer a real layer (H=16, Hkv=4, D=128, Tmax=1025, ragged decode and a long prefill)."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    for c in (SCCase("big_decode", 16, 4, 128, 1025, 1, [1024, 97, 0, 511], [0, 13, 0, 111],
                     dict(rotary_dim=64)),
              SCCase("big_prefill", 16, 4, 128, 1025, 111, [0, 900], [0, 37], dict(rotary_dim=128, rotary_style=1))):
        _report(f"SoftmaxContext {c.name} {dtype}", assert_matches_reference(sc_model(elem, c), sc_feeds(elem, c, rng), "cuda"))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_cache_guard_and_masked_row_cuda(ort_cuda, dtype, seed):
    """Overflow fails the run on CUDA too (the guard Reshape checks its shape on the host); an
    all-masked row is zeros; cache rows outside the write window are untouched."""
    from dsattn.tools.lower import GUARD_SUFFIX, lower_for_ort
    from dsattn.tools.validate import make_session, run_session

    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    case = next(c for c in SC_CASES if c.name == "all_masked_row")
    sess = make_session(lower_for_ort(sc_model(elem, case)), "cuda")
    feeds = sc_feeds(elem, case, rng)
    got = run_session(sess, feeds)
    assert np.all(got["context"][1].astype(np.float32) == 0.0)
    for name, past in (("present_key", feeds["past_key"]), ("present_value", feeds["past_value"])):
        for b, L in enumerate(case.seq_lens):
            keep = np.ones(case.Tmax, bool)
            keep[L:L + case.S] = False
            a, p = got[name][b][:, keep].astype(np.float32), past[b][:, keep].astype(np.float32)
            np.testing.assert_array_equal(a, p)
    feeds["seq_lens"] = np.array([2, case.Tmax - case.S + 1], np.int32)
    with pytest.raises(Exception, match=GUARD_SUFFIX):
        run_session(sess, feeds)
    feeds = sc_feeds(elem, case, rng, poison=False)  # the limit itself is fine
    feeds["seq_lens"] = np.array([2, case.Tmax - case.S], np.int32)
    feeds["start_pos"] = np.array([0, 0], np.int32)
    assert np.isfinite(run_session(sess, feeds)["context"].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_node_placement_cuda(ort_cuda, dtype, tmp_path):
    """Which lowered nodes ONNX Runtime runs on CUDA (from its profile). The compute (MatMul, Exp,
    ScatterND, Where, Cast) must run on CUDA for float32/float16; the shape arithmetic may sit on
    the CPU. The placement is printed for the report."""
    from dsattn.tools.lower import lower_for_ort
    from dsattn.tools.validate import run_session

    ort = ort_cuda
    elem = DTYPES[dtype]
    case = SC_CASES[5]
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    so.log_severity_level = 3
    sess = ort.InferenceSession(lower_for_ort(sc_model(elem, case)).SerializeToString(), so,
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    run_session(sess, sc_feeds(elem, case, np.random.default_rng(0), poison=False))
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    where: dict[str, set] = {}
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in args and "op_name" in args:
            where.setdefault(args["op_name"], set()).add(args["provider"].replace("ExecutionProvider", ""))
    placement = ", ".join(f"{k}:{'/'.join(sorted(v))}" for k, v in sorted(where.items()))
    print(f"[ort-cuda] placement {dtype}: {placement}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ort_cuda_errors.txt"), "a") as f:
            f.write(f"[ort-cuda] placement {dtype}: {placement}\n")
    must = ("MatMul", "Exp", "Where", "ReduceMax", "ReduceSum", "Cos", "Sin")
    if dtype != "bfloat16":
        must += ("ScatterND",)
    off = [op for op in must if op in where and "CUDA" not in where[op]]
    assert not off, f"these ops did not run on CUDA: {off} (placement {where})"
    os.remove(prof)


def test_validate_cuda(ort_cuda, tmp_path, seed):
    pytest.importorskip("polygraphy", reason="validate() compares through Polygraphy, not installed here")
    from dsattn.tools import validate

    for dtype, elem in DTYPES.items():
        path = tmp_path / f"m_{dtype}.onnx"
        onnx.save(sc_model(elem, SC_CASES[3]), path)
        rep = validate(str(path), providers=("cpu", "cuda"), seed=seed, batch=2, seq=5, capacity=11)
        print(rep.table())
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "ort_cuda_errors.txt"), "a") as f:
                f.write(rep.table() + "\n")
        assert rep.passed
        assert {r.runtime for r in rep.rows} >= {"onnxruntime-cpu", "onnxruntime-cuda"}


def test_checker_on_lowered_grid():
    """Cheap structural check kept here too, so a GPU-only run still checks the lowered models."""
    for case in SC_CASES:
        check_lowered(sc_model(TP.FLOAT16, case))
