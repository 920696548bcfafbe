"""The exported dsattn graph on ONNX Runtime CUDA with libdsattn_ort.so (provider ``cuda-dsattn``):
the very model that goes to TensorRT, on the TensorRT plugins' kernels.

- every case of the ORT-CUDA lowered grid (ort_cases.py) and of the plugin harness grid, in
  float32, float16 and bfloat16, against the fp32 reference by the accuracy rule (docs/DESIGN.md);
- cache rows outside [seq_lens, seq_lens + S) bitwise untouched;
- the KV cache in place under I/O binding (the present_* output buffer *is* the past_* input);
- a 32-step decode loop through the cache equals one long prefill;
- a CUDA-graph decode loop (enable_cuda_graph, static shapes) equals the plain session;
- a cache overflow is an error of the run with nothing written (and NaN context under graph replay);
- attribute errors at session creation name the node, the attribute and the value;
- exported attention layers, `dsattn validate --providers cuda-dsattn`, and whole decoders through
  `dsattn generate --runtime ort-dsattn` against transformers.

Run on the GPU machine with onnxruntime-gpu and the library built (plugins/ort/README.md):
    cmake -S plugins -B build/plugins -DCMAKE_CUDA_ARCHITECTURES=90a \\
          -DONNXRUNTIME_INCLUDE_DIR=.device/ort-include && cmake --build build/plugins --target dsattn_ort
    PYTHONPATH=/opt/dsattn/site:$PYTHONPATH python3 -m pytest -m gpu tests/test_ort_dsattn_gpu.py -rA
Each test prints its max errors (also appended to $OUT/ort_dsattn_errors.txt when $OUT is set).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP

from dsattn.tools import ort_runtime

from ort_cases import (DTYPES, GEMM_CASES, MATMUL_CASES, SC_CASES, GemmCase, MatMulCase, SCCase, as_t,
                       assert_matches_reference, gemm_model, matmul_model, sc_feeds, sc_model, x_feed)

pytestmark = pytest.mark.gpu

FLOOR = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}


@pytest.fixture(scope="module")
def ort():
    try:
        import onnxruntime
    except ImportError as exc:
        pytest.skip(f"onnxruntime is not importable: {exc}")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider; install onnxruntime-gpu")
    from dsattn.tools.ort_runtime import find_library

    try:
        find_library()
    except FileNotFoundError as exc:  # CUDA is here: a missing library is a failure, not a skip
        pytest.fail(str(exc))
    return onnxruntime


def session(model, **kw):
    return ort_runtime.make_session(model, **kw)


def _report(name, errors):
    line = f"[cuda-dsattn] {name}: " + ", ".join(f"{k} max abs err {v:.3e}" for k, v in errors.items())
    print(line)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ort_dsattn_errors.txt"), "a") as f:
            f.write(line + "\n")


def _check(model, feeds):
    return assert_matches_reference(model, feeds, session=session(model))


# ------------------------------------------------------------------------------------------------
# the ORT-CUDA lowered grid, now on the kernels
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", SC_CASES, ids=lambda c: c.name)
def test_softmax_context(ort, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"SoftmaxContext {case.name} {dtype}", _check(sc_model(elem, case), sc_feeds(elem, case, rng)))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: c.name)
def test_qkv_gemm(ort, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"QKVGemm {case.name} {dtype}", _check(gemm_model(elem, case, rng), x_feed(elem, (2, 3, case.hidden), rng)))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: c.name)
def test_int8_matmul(ort, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"Int8MatMul {case.name} {dtype}",
            _check(matmul_model(elem, case, rng), x_feed(elem, (*case.lead, case.K), rng)))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_larger_shapes(ort, dtype, seed):
    """Sizes nearer a real layer: the tuned decode and prefill paths (D=128, GQA, long caches)."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    for c in (SCCase("big_decode", 16, 4, 128, 1025, 1, [1024, 97, 0, 511], [0, 13, 0, 111], dict(rotary_dim=64)),
              SCCase("big_prefill", 16, 4, 128, 1025, 111, [0, 900], [0, 37], dict(rotary_dim=128, rotary_style=1))):
        _report(f"SoftmaxContext {c.name} {dtype}", _check(sc_model(elem, c), sc_feeds(elem, c, rng)))


# ------------------------------------------------------------------------------------------------
# the plugin harness grid (tests/test_plugins_harness.py), as single-node models
# ------------------------------------------------------------------------------------------------

def _slopes(h):
    return [2.0 ** (-8.0 * (i + 1) / h) for i in range(h)]


HARNESS_SC = [
    SCCase("h_prefill_mha_rope", 4, 4, 64, 64, 17, [0, 0], None, dict(rotary_dim=32, rotary_style=0)),
    SCCase("h_decode_gqa_ragged", 8, 2, 128, 97, 1, [5, 60, 0], [0, 3, 0], dict(rotary_dim=64, rotary_style=1)),
    SCCase("h_bloom_alibi_leftpad", 4, 4, 64, 32, 5, [3, 10], [0, 2], dict(qkv_layout=1, alibi_slopes=_slopes(4))),
    SCCase("h_window_noncausal", 2, 2, 64, 80, 33, [7], None, dict(local_window=8, causal=0)),
    SCCase("h_prefill_d128", 2, 1, 128, 128, 97, [0], None, dict(rotary_dim=128)),
    SCCase("h_decode_d64", 4, 4, 64, 40, 1, [39, 1], [0, 1]),
]


@dataclass
class GemmRun:
    case: GemmCase
    B: int
    S: int


HARNESS_QKV = [
    GemmRun(GemmCase("h_ln_normed", 1, 0, 0, 1, True, 128, 384), 2, 5),
    GemmRun(GemmCase("h_rms_no_bias_decode", 2, 0, 0, 0, False, 128, 384), 1, 1),
    GemmRun(GemmCase("h_no_norm_m97", 0, 0, 0, 0, True, 64, 192), 1, 97),
    GemmRun(GemmCase("h_int8_g64_ln_normed", 1, 1, 64, 1, True, 128, 384), 1, 3),
    GemmRun(GemmCase("h_int8_no_norm_no_bias", 0, 1, 0, 0, False, 256, 96), 2, 1),
    GemmRun(GemmCase("h_ln_m200_cublaslt", 1, 0, 0, 0, True, 128, 384), 2, 100),
]

HARNESS_I8 = [
    MatMulCase("h_per_channel_3d", 0, True, (2, 3), 256, 96),
    MatMulCase("h_g64_2d", 64, False, (5,), 256, 96),
    MatMulCase("h_g32_bias", 32, True, (1, 1), 128, 48),
    MatMulCase("h_g128_m200", 128, True, (200,), 256, 80),
    MatMulCase("h_rank4", 0, True, (1, 7, 3), 512, 64),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", HARNESS_SC, ids=lambda c: c.name)
def test_harness_softmax_context(ort, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"SoftmaxContext {case.name} {dtype}", _check(sc_model(elem, case), sc_feeds(elem, case, rng)))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("run", HARNESS_QKV, ids=lambda r: r.case.name)
def test_harness_qkv_gemm(ort, run, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    c = run.case
    _report(f"QKVGemm {c.name} {dtype}", _check(gemm_model(elem, c, rng), x_feed(elem, (run.B, run.S, c.hidden), rng)))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", HARNESS_I8, ids=lambda c: c.name)
def test_harness_int8_matmul(ort, case, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    _report(f"Int8MatMul {case.name} {dtype}",
            _check(matmul_model(elem, case, rng), x_feed(elem, (*case.lead, case.K), rng)))


# ------------------------------------------------------------------------------------------------
# the cache: untouched rows, in place, decode loop, CUDA graphs, overflow
# ------------------------------------------------------------------------------------------------

def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _run(sess, feeds):
    from dsattn.tools.validate import run_session

    return run_session(sess, feeds)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_cache_rows_outside_the_write_untouched(ort, dtype, seed):
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    for case in (SC_CASES[1], SC_CASES[0], HARNESS_SC[1]):
        feeds = sc_feeds(elem, case, rng, poison=False)
        got = _run(session(sc_model(elem, case)), feeds)
        for out, past in (("present_key", "past_key"), ("present_value", "past_value")):
            for b, L in enumerate(case.seq_lens):
                keep = np.ones(case.Tmax, bool)
                keep[L:L + case.S] = False
                assert np.array_equal(_bits(got[out][b][:, keep]), _bits(feeds[past][b][:, keep])), \
                    f"{case.name} {out} row {b}: a cache row outside [{L}, {L + case.S}) changed"


def _cuda_value(ort, a: np.ndarray):
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", 0)


IOB_DTYPES = ["float32", "float16"]  # numpy-backed CUDA OrtValues (numpy has no bfloat16)


@pytest.mark.parametrize("dtype", IOB_DTYPES)
def test_in_place_under_io_binding(ort, dtype, seed):
    """past_key and present_key bound to one CUDA buffer: the output OrtValue is that buffer, the new
    rows are written into it and match the reference, every other row keeps its bits."""
    from dsattn.export.ops import run_node

    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    case = SC_CASES[1]  # ragged GQA decode with left padding
    model = sc_model(elem, case)
    sess = session(model)
    feeds = sc_feeds(elem, case, rng, poison=False)
    kv = {n: _cuda_value(ort, feeds[n]) for n in ("past_key", "past_value")}
    binding = sess.io_binding()
    for n in ("qkv", "seq_lens", "start_pos"):
        binding.bind_ortvalue_input(n, _cuda_value(ort, feeds[n]))
    for past, present in (("past_key", "present_key"), ("past_value", "present_value")):
        binding.bind_ortvalue_input(past, kv[past])
        binding.bind_ortvalue_output(present, kv[past])
    binding.bind_output("context", "cuda")
    sess.run_with_iobinding(binding)
    # get_outputs() follows the order the outputs were bound in
    outs = dict(zip(["present_key", "present_value", "context"], binding.get_outputs()))
    assert outs["present_key"].data_ptr() == kv["past_key"].data_ptr()
    assert outs["present_value"].data_ptr() == kv["past_value"].data_ptr()
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    _, ref_k, ref_v = run_node("SoftmaxContext", [feeds[n] for n in ("qkv", "past_key", "past_value", "seq_lens",
                                                                     "start_pos")], attrs)
    for name, ref, past in (("past_key", ref_k, feeds["past_key"]), ("past_value", ref_v, feeds["past_value"])):
        got = kv[name].numpy()
        for b, L in enumerate(case.seq_lens):
            new = slice(L, L + case.S)
            np.testing.assert_allclose(got[b][:, new].astype(np.float32), ref[b][:, new].astype(np.float32),
                                       atol=FLOOR[dtype] * 4, rtol=0, err_msg=f"{name} row {b}: new entries")
            keep = np.ones(case.Tmax, bool)
            keep[new] = False
            assert np.array_equal(_bits(got[b][:, keep]), _bits(past[b][:, keep])), f"{name} row {b}: other rows"


# B=2 (row 1 left-padded by 3), GQA 4/2, D=64, rotary; 8 prompt tokens + 32 decoded = 40 <= Tmax 48
DECODE_CASE = SCCase("loop", 4, 2, 64, 48, 1, [0, 0], [0, 3], dict(rotary_dim=32))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_decode_loop_equals_one_long_prefill(ort, dtype, seed):
    """Prefill 8 tokens, then 32 single-token steps through the cache (present fed back as past)
    equal one prefill of all 40 tokens: every step's context and the final cache."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    c = DECODE_CASE
    P, N = 8, 32
    W = (c.H + 2 * c.Hkv) * c.D
    qkv = as_t(rng.standard_normal((c.B, P + N, W)), elem)
    cache0 = as_t(rng.standard_normal((c.B, c.Hkv, c.Tmax, c.D)), elem)
    start = np.asarray(c.start_pos, np.int32)
    sess = session(sc_model(elem, c))
    long = _run(sess, {"qkv": qkv, "past_key": cache0, "past_value": cache0, "seq_lens": np.zeros(c.B, np.int32),
                       "start_pos": start})
    step = _run(sess, {"qkv": qkv[:, :P], "past_key": cache0, "past_value": cache0,
                       "seq_lens": np.zeros(c.B, np.int32), "start_pos": start})
    contexts = [step["context"]]
    k, v = step["present_key"], step["present_value"]
    for i in range(N):
        step = _run(sess, {"qkv": qkv[:, P + i:P + i + 1], "past_key": k, "past_value": v,
                           "seq_lens": np.full(c.B, P + i, np.int32), "start_pos": start})
        contexts.append(step["context"])
        k, v = step["present_key"], step["present_value"]
    got = np.concatenate([x.astype(np.float32) for x in contexts], axis=1)
    want = long["context"].astype(np.float32)
    tol = 2 * FLOOR[dtype]
    err = float(np.abs(got - want).max())
    _report(f"decode loop vs prefill {dtype}", {"context": err})
    np.testing.assert_allclose(got, want, atol=tol, rtol=1e-5 if dtype == "float32" else 0)
    for name, a, b in (("key", k, long["present_key"]), ("value", v, long["present_value"])):
        np.testing.assert_allclose(a[:, :, :P + N].astype(np.float32), b[:, :, :P + N].astype(np.float32),
                                   atol=FLOOR[dtype], rtol=0, err_msg=f"cache {name} rows 0..{P + N}")
        assert np.array_equal(_bits(a[:, :, P + N:]), _bits(cache0[:, :, P + N:])), f"cache {name} beyond {P + N}"


@pytest.mark.parametrize("dtype", IOB_DTYPES)
def test_decode_loop_in_place(ort, dtype, seed):
    """The same loop with the cache bound in place on the device (the serving setup): equals the
    host-fed loop of the same session bit for bit (same kernels, same inputs)."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    c = SCCase("loop_iob", 4, 2, 64, 24, 1, [3, 9], [0, 2], dict(rotary_dim=64))
    sess = session(sc_model(elem, c))
    feeds = sc_feeds(elem, c, rng, poison=False)
    kv = {n: _cuda_value(ort, feeds[n]) for n in ("past_key", "past_value")}
    host_k, host_v = feeds["past_key"], feeds["past_value"]
    for i in range(8):
        qkv = sc_feeds(elem, c, rng, poison=False)["qkv"]
        lens = np.asarray(c.seq_lens, np.int32) + i
        start = np.asarray(c.start_pos, np.int32)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("qkv", _cuda_value(ort, qkv))
        binding.bind_ortvalue_input("seq_lens", _cuda_value(ort, lens))
        binding.bind_ortvalue_input("start_pos", _cuda_value(ort, start))
        for past, present in (("past_key", "present_key"), ("past_value", "present_value")):
            binding.bind_ortvalue_input(past, kv[past])
            binding.bind_ortvalue_output(present, kv[past])
        binding.bind_output("context", "cuda")
        sess.run_with_iobinding(binding)
        ctx = binding.get_outputs()[2].numpy()  # bound third (outputs come back in binding order)
        ref = _run(sess, {"qkv": qkv, "past_key": host_k, "past_value": host_v, "seq_lens": lens, "start_pos": start})
        host_k, host_v = ref["present_key"], ref["present_value"]
        assert np.array_equal(_bits(ctx), _bits(ref["context"])), f"step {i}: context differs"
    assert np.array_equal(_bits(kv["past_key"].numpy()), _bits(host_k))
    assert np.array_equal(_bits(kv["past_value"].numpy()), _bits(host_v))


@pytest.mark.parametrize("dtype", IOB_DTYPES)
def test_cuda_graph_decode(ort, dtype, seed):
    """enable_cuda_graph with static shapes: inputs and outputs bound to fixed CUDA buffers, updated
    in place between runs (the first runs warm up and capture, the rest replay). Every step equals
    the plain session bit for bit. Then an overflow under replay: no host round trip exists, so the
    context is NaN and the cache keeps its bits."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    c = SCCase("graph", 4, 2, 64, 24, 1, [5, 9], [0, 2], dict(rotary_dim=64))
    model = sc_model(elem, c, dynamic=False)
    gsess = session(model, cuda_graph=True)
    plain = session(model)
    feeds = sc_feeds(elem, c, rng, poison=False)
    vals = {n: _cuda_value(ort, feeds[n]) for n in ("qkv", "past_key", "past_value", "seq_lens", "start_pos")}
    ctx = ort.OrtValue.ortvalue_from_shape_and_type([c.B, 1, c.H * c.D], feeds["qkv"].dtype.type, "cuda", 0)
    binding = gsess.io_binding()
    for n, v in vals.items():
        binding.bind_ortvalue_input(n, v)
    binding.bind_ortvalue_output("present_key", vals["past_key"])
    binding.bind_ortvalue_output("present_value", vals["past_value"])
    binding.bind_ortvalue_output("context", ctx)
    host_k, host_v = feeds["past_key"], feeds["past_value"]
    for i in range(6):
        qkv = sc_feeds(elem, c, rng, poison=False)["qkv"]
        lens = np.asarray(c.seq_lens, np.int32) + i
        vals["qkv"].update_inplace(qkv)
        vals["seq_lens"].update_inplace(lens)
        gsess.run_with_iobinding(binding)
        ref = _run(plain, {"qkv": qkv, "past_key": host_k, "past_value": host_v, "seq_lens": lens,
                           "start_pos": feeds["start_pos"]})
        host_k, host_v = ref["present_key"], ref["present_value"]
        assert np.array_equal(_bits(ctx.numpy()), _bits(ref["context"])), f"graph step {i}: context differs"
    assert np.array_equal(_bits(vals["past_key"].numpy()), _bits(host_k))
    before = vals["past_key"].numpy(), vals["past_value"].numpy()
    vals["seq_lens"].update_inplace(np.array([c.Tmax, 3], np.int32))  # row 0: seq_lens + 1 > Tmax
    gsess.run_with_iobinding(binding)
    assert np.isnan(ctx.numpy().astype(np.float32)).all(), "overflow under replay: context must be NaN"
    assert np.array_equal(_bits(vals["past_key"].numpy()), _bits(before[0]))
    assert np.array_equal(_bits(vals["past_value"].numpy()), _bits(before[1]))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_overflow_is_an_error_nothing_written(ort, dtype, seed):
    """seq_lens + S > Tmax (and a bad start_pos) fail the run with the row named; in place, the
    bound cache keeps every bit; the limit itself is fine."""
    elem = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    case = SC_CASES[10]  # all_masked_row: B=2, S=2, Tmax=9
    sess = session(sc_model(elem, case))
    feeds = sc_feeds(elem, case, rng, poison=False)
    bad = dict(feeds, seq_lens=np.array([2, case.Tmax - case.S + 1], np.int32))
    with pytest.raises(Exception, match=r"KV cache overflow or bad row 1: seq_lens\[1\]=8, S=2.*nothing was written"):
        _run(sess, bad)
    bad = dict(feeds, start_pos=np.array([0, case.seq_lens[1] + case.S + 1], np.int32))
    with pytest.raises(Exception, match="bad row 1"):
        _run(sess, bad)
    ok = dict(feeds, seq_lens=np.array([2, case.Tmax - case.S], np.int32), start_pos=np.array([0, 0], np.int32))
    assert np.isfinite(_run(sess, ok)["context"].astype(np.float32)).all()
    if dtype in IOB_DTYPES:
        kv = {n: _cuda_value(ort, feeds[n]) for n in ("past_key", "past_value")}
        binding = sess.io_binding()
        binding.bind_ortvalue_input("qkv", _cuda_value(ort, feeds["qkv"]))
        binding.bind_ortvalue_input("seq_lens", _cuda_value(ort, np.array([2, case.Tmax], np.int32)))
        binding.bind_ortvalue_input("start_pos", _cuda_value(ort, feeds["start_pos"]))
        for past, present in (("past_key", "present_key"), ("past_value", "present_value")):
            binding.bind_ortvalue_input(past, kv[past])
            binding.bind_ortvalue_output(present, kv[past])
        binding.bind_output("context", "cuda")
        with pytest.raises(Exception, match="KV cache overflow"):
            sess.run_with_iobinding(binding)
        for n in ("past_key", "past_value"):
            assert np.array_equal(_bits(kv[n].numpy()), _bits(feeds[n])), f"{n} changed by a failed run"


# ------------------------------------------------------------------------------------------------
# attribute errors at session creation
# ------------------------------------------------------------------------------------------------

def _sc_with(attr_edits, drop=()):
    model = sc_model(TP.FLOAT16, SC_CASES[0])
    node = model.graph.node[0]
    keep = [a for a in node.attribute if a.name not in drop and a.name not in attr_edits]
    del node.attribute[:]
    node.attribute.extend(keep)
    for k, v in attr_edits.items():
        node.attribute.append(onnx.helper.make_attribute(k, v))
    return model


@pytest.mark.parametrize("edits,drop,pattern", [
    ({"rotary_dim": 7}, (), r"dsattn::SoftmaxContext node 'attn': rotary_dim=7 must be even"),
    ({"scale": 2}, (), r"node 'attn': attribute scale is INT, expected FLOAT"),
    ({"num_kv_heads": 3}, (), r"node 'attn': num_kv_heads=3 must divide num_heads=4"),
    ({"causal": 2}, (), r"node 'attn': attribute causal=2 is out of range \[0, 1\]"),
    ({"plugin_version": "2"}, (), r"node 'attn': attribute plugin_version='2' but this library implements '1'"),
    ({}, ("head_size",), r"node 'attn': required attribute 'head_size' is missing"),
])
def test_attribute_errors_name_node_attribute_value(ort, edits, drop, pattern, monkeypatch):
    # make_session checks the model against the op spec first (the same rules, worded by the spec);
    # without that check the library's own checks at kernel creation must catch each case.
    with pytest.raises(Exception, match=r"dsattn::SoftmaxContext node 'attn'"):
        session(_sc_with(edits, drop))
    monkeypatch.setattr(ort_runtime, "check_model", lambda proto: None)
    with pytest.raises(Exception, match=pattern):
        session(_sc_with(edits, drop))


def test_qkv_gemm_attribute_errors(ort, monkeypatch):
    monkeypatch.setattr(ort_runtime, "check_model", lambda proto: None)
    rng = np.random.default_rng(0)
    model = gemm_model(TP.FLOAT16, GEMM_CASES[0], rng)
    for a in model.graph.node[0].attribute:
        if a.name == "group_size":
            a.i = 16  # with quantized=0
    with pytest.raises(Exception, match=r"dsattn::QKVGemm node 'qkv_gemm': group_size=16 is only meaningful"):
        session(model)


# ------------------------------------------------------------------------------------------------
# exported models, validate, generate
# ------------------------------------------------------------------------------------------------

def test_exported_attention_layers(ort, tmp_path, seed):
    """Whole exported attention layers (QKVGemm -> SoftmaxContext -> output projection, int8 too)
    against the fp32 reference."""
    import torch

    from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, export_onnx, quantize_int8

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    models = {
        "bloom_fp16": (BloomSelfAttention(AttentionConfig(hidden_size=256, heads=4, dtype="fp16",
                                                          bigscience_bloom=True)), TP.FLOAT16, [1, 0]),
        "ds_int8_ln_fp16": (quantize_int8(DeepSpeedSelfAttention(AttentionConfig(hidden_size=256, heads=4,
                                                                                 dtype="fp16")), group_size=64),
                            TP.FLOAT16, [0, 0]),
        "ds_gqa_rope_bf16": (DeepSpeedSelfAttention(AttentionConfig(
            hidden_size=256, heads=4, num_kv=2, dtype="bf16", norm_type="rmsnorm", rotary_dim=32,
            rotate_half=False, rotate_every_two=True)), TP.BFLOAT16, [0, 2]),
        "ds_fp32": (DeepSpeedSelfAttention(AttentionConfig(hidden_size=256, heads=4, dtype="fp32")), TP.FLOAT, [0, 3]),
    }
    B, S, Tmax = 2, 5, 48
    for name, (m, elem, starts) in models.items():
        model = onnx.load(export_onnx(m.eval(), tmp_path / f"{name}.onnx", batch=B, seq=S, capacity=Tmax))
        kv = model.graph.input[1].type.tensor_type.shape.dim
        Hkv, D = kv[1].dim_value, kv[3].dim_value
        feeds = {"hidden_states": as_t(rng.standard_normal((B, S, 256)), elem),
                 "past_key": as_t(rng.standard_normal((B, Hkv, Tmax, D)), elem),
                 "past_value": as_t(rng.standard_normal((B, Hkv, Tmax, D)), elem),
                 "seq_lens": np.array([7, 0], np.int32), "start_pos": np.array(starts, np.int32)}
        feeds = {i.name: feeds[i.name] for i in model.graph.input if i.name in feeds}
        _report(f"exported {name}", _check(model, feeds))


def test_validate_cli_cuda_dsattn(ort, tmp_path, seed, capsys):
    pytest.importorskip("polygraphy", reason="validate compares through Polygraphy")
    from dsattn.tools.cli import main

    for dtype, elem in DTYPES.items():
        path = tmp_path / f"m_{dtype}.onnx"
        onnx.save(sc_model(elem, SC_CASES[3]), path)
        rc = main(["validate", str(path), "--providers", "cuda,cuda-dsattn", "--seed", str(seed), "--batch", "2",
                   "--seq", "5", "--capacity", "11"])
        out = capsys.readouterr().out
        print(out)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "ort_dsattn_errors.txt"), "a") as f:
                f.write(out + "\n")
        assert rc == 0, out
        assert "onnxruntime-cuda-dsattn" in out


def test_generate_ort_dsattn_equals_transformers(ort, tmp_path, seed):
    """Whole decoders (every converted family, fp32) through `generate(runtime="ort-dsattn")`: the
    greedy tokens of a left-padded batch equal transformers' generate."""
    pytest.importorskip("transformers")
    import torch
    from whole_cases import FAMILIES, make_checkpoint

    from dsattn.export.model_onnx import export_hf_model
    from dsattn.tools.generate import generate

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 2, 4)]
    L = max(map(len, prompts))
    for family in FAMILIES:
        root = tmp_path / family
        hf = make_checkpoint(family, root / "ckpt", seed=1234)
        export_hf_model(root / "ckpt", root / "out", log=lambda s: None)
        ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0,
                              eos_token_id=None)[:, L:].tolist()
        res = generate(root / "out", input_ids=prompts, runtime="ort-dsattn", device="cuda", max_new_tokens=16,
                       eos_token_id=[], pad_token_id=0)
        assert res.tokens == ref, f"{family} on ort-dsattn: {res.tokens} != transformers {ref}"
