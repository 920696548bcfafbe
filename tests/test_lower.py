"""lower_for_ort: the lowered graph on ONNX Runtime CPU against the fp32 reference (docs/DESIGN.md rule),
structural promises (checker, IR, graph I/O), cache semantics and bad input."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from dsattn.export.ops import run_node
from dsattn.tools.lower import GUARD_SUFFIX, lower_for_ort
from dsattn.tools.validate import make_session, run_session

from ort_cases import (COMMON, GEMM_CASES, MATMUL_CASES, SC_CASES, SCCase, as_t, assert_matches_reference,
                       check_lowered, gemm_model, make, matmul_model, sc_feeds, sc_model, x_feed)

CPU_DTYPES = {"float32": TP.FLOAT, "float16": TP.FLOAT16}


# ------------------------------------------------------------------------------------------------
# parity grid on ORT CPU
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(CPU_DTYPES))
@pytest.mark.parametrize("case", SC_CASES, ids=lambda c: c.name)
def test_softmax_context_matches_reference(case, dtype, seed):
    elem = CPU_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    model = sc_model(elem, case)
    feeds = sc_feeds(elem, case, rng)
    assert_matches_reference(model, feeds)


def test_softmax_context_static_shapes(seed):
    case = SC_CASES[1]
    rng = np.random.default_rng(seed)
    assert_matches_reference(sc_model(TP.FLOAT, case, dynamic=False), sc_feeds(TP.FLOAT, case, rng))


@pytest.mark.parametrize("dtype", list(CPU_DTYPES))
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: c.name)
def test_qkv_gemm_matches_reference(case, dtype, seed):
    elem = CPU_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    assert_matches_reference(gemm_model(elem, case, rng), x_feed(elem, (2, 3, case.hidden), rng))


@pytest.mark.parametrize("dtype", list(CPU_DTYPES))
@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: c.name)
def test_int8_matmul_matches_reference(case, dtype, seed):
    elem = CPU_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    assert_matches_reference(matmul_model(elem, case, rng), x_feed(elem, (*case.lead, case.K), rng))


# bfloat16 on ORT CPU: the lowering keeps 16-bit data only in Cast and ScatterND, which ORT CPU runs
# for bfloat16; all math is float32. (A bf16 MatMul/Softmax outside dsattn nodes would not run on
# ORT CPU: no bf16 kernels there.)
@pytest.mark.parametrize("name", ["decode_ragged_gqa", "bloom_alibi_layout1_prefill", "rotary_half_partial_gqa"])
def test_bfloat16_softmax_context_on_cpu(name, seed):
    case = next(c for c in SC_CASES if c.name == name)
    rng = np.random.default_rng(seed)
    assert_matches_reference(sc_model(TP.BFLOAT16, case), sc_feeds(TP.BFLOAT16, case, rng))


def test_bfloat16_gemms_on_cpu(seed):
    rng = np.random.default_rng(seed)
    for case in (GEMM_CASES[0], GEMM_CASES[4]):
        assert_matches_reference(gemm_model(TP.BFLOAT16, case, rng), x_feed(TP.BFLOAT16, (2, 3, case.hidden), rng))
    c = MATMUL_CASES[1]
    assert_matches_reference(matmul_model(TP.BFLOAT16, c, rng), x_feed(TP.BFLOAT16, (*c.lead, c.K), rng))


def test_bfloat16_matmul_has_no_ort_cpu_kernel():
    """Records what ORT CPU lacks in bf16 (why the lowering computes in fp32): a plain bf16 MatMul
    cannot even be loaded. If a future ORT adds it, this test says so."""
    m = make([oh.make_node("MatMul", ["a", "b"], ["c"])],
             [oh.make_tensor_value_info("a", TP.BFLOAT16, [2, 2]), oh.make_tensor_value_info("b", TP.BFLOAT16, [2, 2])],
             [oh.make_tensor_value_info("c", TP.BFLOAT16, [2, 2])], opsets=[oh.make_opsetid("", 18)])
    with pytest.raises(Exception, match="(?i)NOT_IMPLEMENTED|Could not find an implementation"):
        make_session(m, "cpu")


# ------------------------------------------------------------------------------------------------
# cache semantics
# ------------------------------------------------------------------------------------------------

def test_all_masked_row_gives_zeros_and_untouched_cache(seed):
    case = next(c for c in SC_CASES if c.name == "all_masked_row")
    rng = np.random.default_rng(seed)
    feeds = sc_feeds(TP.FLOAT, case, rng)
    got = run_session(make_session(lower_for_ort(sc_model(TP.FLOAT, case)), "cpu"), feeds)
    assert np.all(got["context"][1] == 0.0)  # row 1: start_pos = seq_lens + S, every key masked
    assert np.abs(got["context"][0]).max() > 0
    for name, past in (("present_key", feeds["past_key"]), ("present_value", feeds["past_value"])):
        for b, L in enumerate(case.seq_lens):
            keep = np.ones(case.Tmax, bool)
            keep[L:L + case.S] = False
            np.testing.assert_array_equal(got[name][b][:, keep], past[b][:, keep])  # NaN == NaN here
            assert not np.isnan(got[name][b][:, ~keep]).any()


def test_prefill_then_decode_equals_one_prefill(seed):
    """Prefill 5 tokens, then 3 single-token decodes feeding present_* back, reproduce a prefill of
    all 8 tokens (token by token), through the lowered graph on ORT CPU."""
    rng = np.random.default_rng(seed)
    H, Hkv, D, T, total = 4, 2, 16, 12, 8
    c = SCCase("pd", H, Hkv, D, T, total, [0, 0], [0, 2], dict(rotary_dim=8, alibi_slopes=[0.5, 0.25, 0.1, 0.05]))
    sess = make_session(lower_for_ort(sc_model(TP.FLOAT, c)), "cpu")
    qkv = rng.standard_normal((2, total, (H + 2 * Hkv) * D)).astype(np.float32)
    pk = rng.standard_normal((2, Hkv, T, D)).astype(np.float32)
    pv = rng.standard_normal((2, Hkv, T, D)).astype(np.float32)
    start = np.array([0, 2], np.int32)
    full = run_session(sess, dict(qkv=qkv, past_key=pk, past_value=pv, seq_lens=np.zeros(2, np.int32), start_pos=start))
    step = run_session(sess, dict(qkv=qkv[:, :5], past_key=pk, past_value=pv, seq_lens=np.zeros(2, np.int32),
                                  start_pos=start))
    ctx = [step["context"]]
    for t in range(5, total):
        step = run_session(sess, dict(qkv=qkv[:, t:t + 1], past_key=step["present_key"],
                                      past_value=step["present_value"], seq_lens=np.full(2, t, np.int32),
                                      start_pos=start))
        ctx.append(step["context"])
    np.testing.assert_allclose(np.concatenate(ctx, axis=1), full["context"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(step["present_key"], full["present_key"])
    np.testing.assert_array_equal(step["present_value"], full["present_value"])


@pytest.mark.parametrize("lens,start,what", [
    ([0, 7], [0, 0], "overflow: seq_lens + S > Tmax"),
    ([-1, 0], [0, 0], "negative seq_lens"),
    ([0, 2], [0, 6], "start_pos > seq_lens + S"),
    ([0, 2], [-1, 0], "negative start_pos"),
])
def test_cache_overflow_and_bad_lengths_fail_the_run(lens, start, what, seed):
    """ORT cannot raise: the lowered graph fails the run at the guard Reshape named
    .../ERROR_kv_cache_overflow_or_bad_seq_lens_start_pos (before any cache write); the reference
    raises ValueError for the same inputs. The session stays usable."""
    c = SCCase("bad", 2, 2, 8, 8, 2, lens, start)
    rng = np.random.default_rng(seed)
    feeds = sc_feeds(TP.FLOAT, c, rng, poison=False)
    sess = make_session(lower_for_ort(sc_model(TP.FLOAT, c)), "cpu")
    with pytest.raises(Exception, match=GUARD_SUFFIX):
        run_session(sess, feeds)
    with pytest.raises(ValueError):
        run_node("SoftmaxContext", [feeds[k] for k in ("qkv", "past_key", "past_value", "seq_lens", "start_pos")],
                 dict(num_heads=2, head_size=8))
    feeds.update(seq_lens=np.array([0, 6], np.int32), start_pos=np.array([0, 8], np.int32))  # the limits: fine
    assert np.isfinite(run_session(sess, feeds)["context"]).all()


# ------------------------------------------------------------------------------------------------
# graphs around the nodes
# ------------------------------------------------------------------------------------------------

def _layer(elem, *, identity_between: bool):
    """QKVGemm -> SoftmaxContext -> (Identity) -> Int8MatMul. With the Identity and no bias, the
    Int8MatMul's T is not known statically (ONNX shape inference cannot type the Identity output of
    a custom node), which exercises the CastLike fallback."""
    from ort_cases import GemmCase, MatMulCase

    rng = np.random.default_rng(0)
    H, Hkv, D = 4, 2, 8
    hidden, N = 32, (H + 2 * Hkv) * D
    gm = gemm_model(elem, GemmCase("g", 1, 0, 0, 0, True, hidden, N), rng)
    mm = matmul_model(elem, MatMulCase("m", 8, not identity_between, (1, 1), H * D, hidden), rng)
    for n in mm.graph.initializer:
        n.name = "o_" + n.name
    nodes = list(gm.graph.node)
    nodes.append(oh.make_node("SoftmaxContext", ["qkv", "past_key", "past_value", "seq_lens", "start_pos"],
                              ["ctx", "present_key", "present_value"], domain="dsattn", name="attn",
                              num_heads=H, num_kv_heads=Hkv, head_size=D, rotary_dim=4, **COMMON))
    ctx = "ctx"
    if identity_between:
        nodes.append(oh.make_node("Identity", ["ctx"], ["ctx_id"]))
        ctx = "ctx_id"
    nodes.append(oh.make_node("Int8MatMul", [ctx, "o_w", "o_scale"] + ([] if identity_between else ["o_b"]),
                              ["output"], domain="dsattn", name="out_proj", group_size=8, **COMMON))
    inputs = [oh.make_tensor_value_info("x", elem, ["B", "S", hidden]),
              oh.make_tensor_value_info("past_key", elem, ["B", Hkv, "Tmax", D]),
              oh.make_tensor_value_info("past_value", elem, ["B", Hkv, "Tmax", D]),
              oh.make_tensor_value_info("seq_lens", TP.INT32, ["B"]),
              oh.make_tensor_value_info("start_pos", TP.INT32, ["B"])]
    outputs = [oh.make_tensor_value_info("output", elem, ["B", "S", hidden]),
               oh.make_tensor_value_info("present_key", elem, ["B", Hkv, "Tmax", D]),
               oh.make_tensor_value_info("present_value", elem, ["B", Hkv, "Tmax", D])]
    return make(nodes, inputs, outputs, list(gm.graph.initializer) + list(mm.graph.initializer)), hidden, Hkv, D


@pytest.mark.parametrize("identity_between", [False, True])
@pytest.mark.parametrize("dtype", list(CPU_DTYPES))
def test_attention_layer_chain(dtype, identity_between, seed):
    elem = CPU_DTYPES[dtype]
    model, hidden, Hkv, D = _layer(elem, identity_between=identity_between)
    lowered = check_lowered(model)
    ops = {n.op_type for n in lowered.graph.node}
    assert ("CastLike" in ops) == identity_between
    rng = np.random.default_rng(seed)
    T = 10
    feeds = {"x": as_t(rng.standard_normal((2, 3, hidden)), elem),
             "past_key": as_t(rng.standard_normal((2, Hkv, T, D)), elem),
             "past_value": as_t(rng.standard_normal((2, Hkv, T, D)), elem),
             "seq_lens": np.array([0, 6], np.int32), "start_pos": np.array([1, 2], np.int32)}
    assert_matches_reference(model, feeds)


def test_dsattn_nodes_inside_a_local_function_are_lowered(seed):
    case = SC_CASES[0]
    inner = sc_model(TP.FLOAT, case)
    fn = oh.make_function("my.funcs", "Attn", ["qkv", "past_key", "past_value", "seq_lens", "start_pos"],
                          ["context", "present_key", "present_value"], list(inner.graph.node), list(inner.opset_import))
    call = oh.make_node("Attn", ["qkv", "past_key", "past_value", "seq_lens", "start_pos"],
                        ["context", "present_key", "present_value"], domain="my.funcs")
    outer = make([call], list(inner.graph.input), list(inner.graph.output),
                 opsets=list(inner.opset_import) + [oh.make_opsetid("my.funcs", 1)])
    outer.functions.append(fn)
    lowered = check_lowered(outer)
    assert not lowered.functions or all(
        n.domain != "dsattn" for f in lowered.functions for n in f.node)
    rng = np.random.default_rng(seed)
    assert_matches_reference(inner, sc_feeds(TP.FLOAT, case, rng),
                             session=make_session(lowered, "cpu"))


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def _sc_node_model(**overrides):
    attrs = dict(num_heads=2, head_size=8, **COMMON)
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    inputs = [oh.make_tensor_value_info("qkv", TP.FLOAT, ["B", "S", 48]),
              oh.make_tensor_value_info("past_key", TP.FLOAT, ["B", 2, 8, 8]),
              oh.make_tensor_value_info("past_value", TP.FLOAT, ["B", 2, 8, 8]),
              oh.make_tensor_value_info("seq_lens", TP.INT32, ["B"])]
    outputs = [oh.make_tensor_value_info("context", TP.FLOAT, ["B", "S", 16])]
    node = oh.make_node("SoftmaxContext", ["qkv", "past_key", "past_value", "seq_lens"], ["context"],
                        domain="dsattn", name="my_attn", **attrs)
    return make([node], inputs, outputs)


@pytest.mark.parametrize("overrides,match", [
    (dict(plugin_version="2"), "my_attn.*plugin_version='2'"),
    (dict(plugin_namespace="other"), "my_attn.*plugin_namespace='other'"),
    (dict(num_heads=None), "my_attn.*required attribute num_heads"),
    (dict(head_size=4), "my_attn.*qkv last dim is 48, expected"),
    (dict(window=3), "my_attn.*unknown attribute 'window'"),
    (dict(num_heads=2.0), "my_attn.*num_heads must be INT"),
    (dict(rotary_dim=3), "my_attn.*rotary_dim must be even"),
    (dict(num_kv_heads=3), "my_attn.*num_kv_heads must be positive and divide"),
    (dict(num_kv_heads=1, qkv_layout=1), "my_attn.*qkv_layout=1 requires"),
    (dict(alibi_slopes=[0.5]), "my_attn.*alibi_slopes must have num_heads=2"),
    (dict(causal=2), "my_attn.*causal must be 0 or 1"),
])
def test_bad_attributes_name_the_node(overrides, match):
    with pytest.raises(ValueError, match=match):
        lower_for_ort(_sc_node_model(**overrides))


def test_unknown_dsattn_op_names_the_node():
    m = make([oh.make_node("FlashDecode", ["x"], ["y"], domain="dsattn", name="fd0", **COMMON)],
             [oh.make_tensor_value_info("x", TP.FLOAT, [1])], [oh.make_tensor_value_info("y", TP.FLOAT, [1])])
    with pytest.raises(ValueError, match="fd0.*unknown dsattn op 'FlashDecode'"):
        lower_for_ort(m)


def test_wrong_dsattn_opset_version():
    m = _sc_node_model()
    for o in m.opset_import:
        if o.domain == "dsattn":
            o.version = 2
    with pytest.raises(ValueError, match="my_attn.*op-set 'dsattn' version 2"):
        lower_for_ort(m)


def test_missing_required_input_and_bad_types():
    m = _sc_node_model()
    m.graph.node[0].input[2] = ""
    with pytest.raises(ValueError, match="my_attn.*required input 2 'past_value'"):
        lower_for_ort(m)
    m = _sc_node_model()
    m.graph.input[3].type.tensor_type.elem_type = TP.INT64
    with pytest.raises(ValueError, match="my_attn.*seq_lens.*INT64"):
        lower_for_ort(m)
    m = _sc_node_model()
    m.graph.input[1].type.tensor_type.elem_type = TP.FLOAT16
    with pytest.raises(ValueError, match="my_attn.*past_key.*FLOAT16, expected FLOAT"):
        lower_for_ort(m)


def test_gemm_bad_inputs():
    rng = np.random.default_rng(0)
    m = gemm_model(TP.FLOAT, GEMM_CASES[4], rng)  # int8, RMSNorm
    node = m.graph.node[0]
    del node.attribute[:]
    node.attribute.extend([oh.make_attribute("norm_type", 1), oh.make_attribute("quantized", 1)])
    with pytest.raises(ValueError, match="qkv_gemm.*beta is required"):
        lower_for_ort(m)
    m = gemm_model(TP.FLOAT, GEMM_CASES[4], rng)
    for a in m.graph.node[0].attribute:
        if a.name == "group_size":
            a.i = 24  # does not divide hidden=64
    with pytest.raises(ValueError, match="qkv_gemm.*group_size=24 does not divide K=64"):
        lower_for_ort(m)
    m = matmul_model(TP.FLOAT, MATMUL_CASES[0], rng)
    m.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 32
    with pytest.raises(ValueError, match=r"int8_matmul.*K=64\] but the input has K=32"):
        lower_for_ort(m)


def test_model_without_dsattn_nodes_warns_and_is_unchanged():
    m = make([oh.make_node("Relu", ["x"], ["y"])], [oh.make_tensor_value_info("x", TP.FLOAT, [2])],
             [oh.make_tensor_value_info("y", TP.FLOAT, [2])], opsets=[oh.make_opsetid("", 18)])
    with pytest.warns(UserWarning, match="no dsattn nodes"):
        out = lower_for_ort(m)
    assert out.graph.SerializeToString() == m.graph.SerializeToString()
    # lowering twice is harmless
    lowered = lower_for_ort(sc_model(TP.FLOAT, SC_CASES[0]))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = lower_for_ort(lowered)
    assert again.graph.SerializeToString() == lowered.graph.SerializeToString()


def test_argument_types():
    with pytest.raises(TypeError, match="model must be an onnx.ModelProto"):
        lower_for_ort("model.onnx")


def test_ir_version_capped():
    m = sc_model(TP.FLOAT, SC_CASES[0])
    m.ir_version = 14  # what onnx 1.23 writes
    assert lower_for_ort(m).ir_version == 13


def test_lower_cli(tmp_path, capsys):
    from dsattn.tools.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(sc_model(TP.FLOAT16, SC_CASES[1]), path)
    assert main(["lower", str(path)]) == 0
    out = tmp_path / "m.ort.onnx"
    lowered = onnx.load(out)
    assert not [n for n in lowered.graph.node if n.domain == "dsattn"]
    bad = tmp_path / "bad.onnx"
    onnx.save(sc_model(TP.FLOAT16, dataclasses.replace(SC_CASES[1], attrs={**SC_CASES[1].attrs, "causal": 2})), bad)
    assert main(["lower", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "causal" in capsys.readouterr().err
    assert main(["lower", str(tmp_path / "missing.onnx")]) == 2


# ------------------------------------------------------------------------------------------------
# end to end: torch module -> export_onnx -> lower -> ORT CPU, against the module itself
# ------------------------------------------------------------------------------------------------

_MODULES = {
    "deepspeed_gqa_rotate_half_fp32": ("DeepSpeedSelfAttention", dict(dtype="float32", num_kv=2, rotary_dim=8,
                                                                      rotate_half=True, rotate_every_two=False), None),
    "bloom_fp16": ("BloomSelfAttention", dict(dtype="float16", bigscience_bloom=True), None),
    "gptj_int8_grouped": ("DeepSpeedSelfAttention", dict(dtype="float16", rotary_dim=16, norm_type="rmsnorm"), 16),
}


@pytest.mark.parametrize("name", list(_MODULES))
def test_exported_module_lowered_matches_torch(name, tmp_path, seed):
    """Prefill with left padding, then one decode step on the returned cache: ORT (lowered) against
    the torch module. fp32: 1e-5; 16-bit: |ort - module| <= 2 x |module - fp32 reference| + floor
    (both sides within the docs/DESIGN.md rule of the fp32 reference)."""
    import torch

    from dsattn import export as E
    from dsattn.export.onnx_export import export_onnx
    from dsattn.tools.validate import to_float32_model

    from ort_cases import reference

    cls, cfg, group = _MODULES[name]
    torch.manual_seed(seed)
    module = getattr(E, cls)(E.AttentionConfig(hidden_size=64, heads=4, **cfg)).eval()
    if group is not None:
        E.quantize_int8(module, group_size=group)
    T, c = module.activation_dtype, module.config
    cap, B, S = 16, 2, 5
    model = onnx.load(export_onnx(module, tmp_path / "m.onnx", batch=B, seq=S, capacity=cap))
    sess = make_session(check_lowered(model), "cpu")
    ref32_model = to_float32_model(model)
    cache = E.KVCache.empty(B, c.kv_heads_per_partition, cap, c.head_size, dtype=T, start_pos=[0, 2])
    cache.key.normal_()
    cache.value.normal_()  # stale data everywhere: nothing outside the valid rows may matter
    np_t = {torch.float32: np.float32, torch.float16: np.float16}[T]
    for step_s in (S, 1):
        x = torch.randn(B, step_s, 64).to(T)
        feeds = {"hidden_states": x.numpy(), "past_key": cache.key.numpy(), "past_value": cache.value.numpy(),
                 "seq_lens": cache.seq_lens.numpy(), "start_pos": cache.start_pos.numpy()}
        with torch.no_grad():
            out, new_cache = module(x, cache)
        got = run_session(sess, feeds)
        want = {"output": out.numpy(), "present_key": new_cache.key.numpy(), "present_value": new_cache.value.numpy()}
        ref32 = reference(ref32_model, {k: (v.astype(np.float32) if v.dtype == np_t else v) for k, v in feeds.items()})
        for k in want:
            g, w = got[k].astype(np.float64), want[k].astype(np.float64)
            if T == torch.float32:
                np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=f"{name} S={step_s} {k}")
            else:
                tol = 2 * np.abs(w - ref32[k]).max() + 1e-3
                assert np.abs(g - w).max() <= tol, f"{name} S={step_s} {k}: {np.abs(g - w).max():.3e} > {tol:.3e}"
        cache = E.KVCache(torch.from_numpy(got["present_key"]), torch.from_numpy(got["present_value"]),
                          new_cache.seq_lens, new_cache.start_pos)


def test_opset_17_models(seed):
    """Opset 17 (Reduce* axes as attributes) is lowered too; below 17 is refused with the reason."""
    rng = np.random.default_rng(seed)
    for model, feeds in ((sc_model(TP.FLOAT, SC_CASES[5]), sc_feeds(TP.FLOAT, SC_CASES[5], rng)),
                         (gemm_model(TP.FLOAT, GEMM_CASES[1], rng), x_feed(TP.FLOAT, (2, 3, 64), rng))):
        for o in model.opset_import:
            if o.domain == "":
                o.version = 17
        assert_matches_reference(model, feeds)
        for o in model.opset_import:
            if o.domain == "":
                o.version = 16
        with pytest.raises(ValueError, match="opset is 16.*>= 17"):
            lower_for_ort(model)


def test_guard_catches_size_mismatches(seed):
    """seq_lens of length 1 would broadcast over the batch, a past_value of another capacity would
    be read past its end: both fail the run at the guard instead."""
    c = SCCase("sizes", 2, 2, 8, 8, 2, [0, 3], [0, 1])
    rng = np.random.default_rng(seed)
    model = sc_model(TP.FLOAT, c)
    # distinct symbolic dims, so that ONNX Runtime's own dim_param consistency check stays out of it
    for vi in list(model.graph.input) + list(model.graph.output):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.dim_param:
                d.dim_param = f"{vi.name}_{axis}"
    sess = make_session(lower_for_ort(model), "cpu")
    feeds = sc_feeds(TP.FLOAT, c, rng, poison=False)
    run_session(sess, feeds)
    for bad in (dict(seq_lens=np.array([1], np.int32)), dict(start_pos=np.array([0], np.int32)),
                dict(past_value=feeds["past_value"][:, :, :6].copy())):
        with pytest.raises(Exception, match=GUARD_SUFFIX):
            run_session(sess, dict(feeds, **bad))


@pytest.mark.parametrize("case", [SC_CASES[1], SC_CASES[4]], ids=lambda c: c.name)
def test_empty_batch_gives_empty_outputs(case):
    """A batch of 0 rows is valid (the reference returns empty outputs); the GQA regrouping must
    not need ONNX Runtime to infer a -1 axis of an empty tensor."""
    from ort_cases import reference

    H, Hkv, D, T = case.H, case.Hkv, case.D, case.Tmax
    model = sc_model(TP.FLOAT, case)
    feeds = {"qkv": np.zeros((0, 1, (H + 2 * Hkv) * D), np.float32),
             "past_key": np.zeros((0, Hkv, T, D), np.float32), "past_value": np.zeros((0, Hkv, T, D), np.float32),
             "seq_lens": np.zeros(0, np.int32), "start_pos": np.zeros(0, np.int32)}
    want = reference(model, feeds)
    got = run_session(make_session(lower_for_ort(model), "CPUExecutionProvider"), feeds)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert got["context"].shape == (0, 1, H * D)
