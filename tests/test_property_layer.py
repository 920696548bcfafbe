"""Property-based parity of the three ops (hypothesis): random valid configurations and shapes of
an attention layer QKVGemm -> SoftmaxContext -> Int8MatMul (heads, KV heads, head size, rotary
dim / style, ALiBi, causal, window, scale, qkv layout, norm, int8 weights and group sizes, ragged
seq_lens, start_pos, cache capacity, masked cache rows holding NaN). Three implementations agree:
the reference ops called directly (torch), the ONNX reference evaluator on the custom-op graph
(bit for bit: same math, different entry point) and the lowered graph on ONNX Runtime CPU (the
accuracy rule of docs/DESIGN.md, same NaN positions).

The profile is deterministic for CI: derandomized (examples derived from the test itself), no
example database, no deadline, a bounded number of examples (about a minute on a slow machine)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dsattn.export import ops  # noqa: E402

from ort_cases import COMMON, as_t, assert_matches_reference, make, np_dtype, reference  # noqa: E402

EXAMPLES = 100
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def layers(draw):
    Hkv = draw(st.integers(1, 3))
    G = draw(st.sampled_from([1, 2, 3]))
    H = Hkv * G
    D = draw(st.sampled_from([2, 4, 8, 12]))
    c = dict(H=H, Hkv=Hkv, D=D)
    c["qkv_layout"] = draw(st.sampled_from([0, 1])) if G == 1 else 0
    c["rotary_dim"] = draw(st.sampled_from(sorted({0, 2 * (D // 4), D})))
    c["rotary_style"] = draw(st.integers(0, 1))
    c["rope_theta"] = draw(st.sampled_from([10000.0, 500.0]))
    c["alibi_slopes"] = draw(st.one_of(st.just([]), st.lists(st.floats(-1.0, 1.0, width=32), min_size=H, max_size=H)))
    c["causal"] = draw(st.integers(0, 1))
    c["local_window"] = draw(st.sampled_from([0, 0, 1, 2, 5]))
    c["scale"] = draw(st.one_of(st.none(), st.floats(-1.5, 1.5, width=32)))
    B = draw(st.integers(1, 3))
    S = draw(st.integers(1, 5))
    lens = draw(st.lists(st.integers(0, 7), min_size=B, max_size=B))
    c["S"], c["seq_lens"] = S, lens
    c["start_pos"] = draw(st.one_of(st.none(), st.tuples(*[st.integers(0, L + S) for L in lens]).map(list)))
    c["Tmax"] = max(lens) + S + draw(st.integers(0, 3))
    hidden = draw(st.sampled_from([8, 16, 24]))
    c["hidden"] = hidden
    c["norm_type"] = draw(st.integers(0, 2))
    c["quantized"] = draw(st.integers(0, 1))
    c["qkv_group"] = draw(st.sampled_from([0] + [g for g in (4, 8) if hidden % g == 0])) if c["quantized"] else 0
    c["qkv_bias"] = draw(st.booleans())
    K = H * D
    c["out_group"] = draw(st.sampled_from([0] + [g for g in (2, 4, 8) if K % g == 0 and g < K]))
    c["out_bias"] = draw(st.booleans())
    c["dtype"] = draw(st.sampled_from(["float32", "float32", "float16"]))
    c["poison"] = draw(st.booleans())
    c["seed"] = draw(st.integers(0, 2**31 - 1))
    return c


def _int8(rng, n, k, group):
    g = k if group == 0 else group
    return (rng.integers(-127, 128, size=(n, k)).astype(np.int8),
            (rng.uniform(0.5, 1.5, size=(n, k // g)) / (127 * math.sqrt(k))).astype(np.float32))


def _build(c, elem, rng):
    """The layer as an ONNX model (weights as initializers), its feeds, and the weights."""
    H, Hkv, D, hidden = c["H"], c["Hkv"], c["D"], c["hidden"]
    N, K = (H + 2 * Hkv) * D, H * D
    w = {}
    if c["quantized"]:
        w["w"], w["w_scale"] = _int8(rng, N, hidden, c["qkv_group"])
    else:
        w["w"] = as_t(rng.standard_normal((hidden, N)) / math.sqrt(hidden), elem)
    if c["qkv_bias"]:
        w["b"] = as_t(0.1 * rng.standard_normal(N), elem)
    if c["norm_type"]:
        w["gamma"] = as_t(1 + 0.1 * rng.standard_normal(hidden), elem)
    if c["norm_type"] == 1:
        w["beta"] = as_t(0.1 * rng.standard_normal(hidden), elem)
    w["o_w"], w["o_scale"] = _int8(rng, hidden, K, c["out_group"])
    if c["out_bias"]:
        w["o_b"] = as_t(0.1 * rng.standard_normal(hidden), elem)
    # QKVGemm inputs: absent optional ones as "" in the middle, trailing ones dropped
    names = ["x", "w", "b" if "b" in w else "", "gamma" if "gamma" in w else "", "beta" if "beta" in w else "",
             "w_scale" if "w_scale" in w else ""]
    while names[-1] == "":
        names.pop()
    attn = {k: c[k] for k in ("qkv_layout", "causal", "local_window", "rotary_dim", "rotary_style", "rope_theta")}
    if c["alibi_slopes"]:
        attn["alibi_slopes"] = c["alibi_slopes"]
    if c["scale"] is not None:
        attn["scale"] = c["scale"]
    sc_in = ["qkv", "past_key", "past_value", "seq_lens"] + (["start_pos"] if c["start_pos"] is not None else [])
    nodes = [
        oh.make_node("QKVGemm", names, ["qkv"], domain="dsattn", name="qkv_gemm", norm_type=c["norm_type"],
                     epsilon=1e-5, quantized=c["quantized"], group_size=c["qkv_group"], **COMMON),
        oh.make_node("SoftmaxContext", sc_in, ["ctx", "present_key", "present_value"], domain="dsattn",
                     name="softmax_context", num_heads=H, num_kv_heads=Hkv, head_size=D, **attn, **COMMON),
        oh.make_node("Int8MatMul", ["ctx", "o_w", "o_scale"] + (["o_b"] if "o_b" in w else []), ["output"],
                     domain="dsattn", name="int8_matmul", group_size=c["out_group"], **COMMON),
    ]
    inputs = [oh.make_tensor_value_info("x", elem, ["B", "S", hidden]),
              oh.make_tensor_value_info("past_key", elem, ["B", Hkv, "Tmax", D]),
              oh.make_tensor_value_info("past_value", elem, ["B", Hkv, "Tmax", D]),
              oh.make_tensor_value_info("seq_lens", TP.INT32, ["B"])]
    if c["start_pos"] is not None:
        inputs.append(oh.make_tensor_value_info("start_pos", TP.INT32, ["B"]))
    outputs = [oh.make_tensor_value_info("output", elem, ["B", "S", hidden]),
               oh.make_tensor_value_info("ctx", elem, ["B", "S", K]),
               oh.make_tensor_value_info("present_key", elem, ["B", Hkv, "Tmax", D]),
               oh.make_tensor_value_info("present_value", elem, ["B", Hkv, "Tmax", D])]
    model = make(nodes, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in w.items()])

    B, S, T = len(c["seq_lens"]), c["S"], c["Tmax"]
    pk = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    pv = rng.standard_normal((B, Hkv, T, D)).astype(np.float32)
    if c["poison"]:  # cache rows no new token sees (OPS.md: excluded, whatever they hold)
        starts = c["start_pos"] or [0] * B
        for b, (L0, s0) in enumerate(zip(c["seq_lens"], starts)):
            lo = s0
            if c["local_window"]:
                lo = max(lo, L0 - c["local_window"] + 1)  # the earliest new token's window
            for j in list(range(0, min(lo, L0))) + list(range(L0 + S, T)):
                pk[b, :, j] = np.nan
                pv[b, :, j] = -np.inf
    feeds = {"x": as_t(rng.standard_normal((B, S, hidden)), elem), "past_key": as_t(pk, elem),
             "past_value": as_t(pv, elem), "seq_lens": np.asarray(c["seq_lens"], np.int32)}
    if c["start_pos"] is not None:
        feeds["start_pos"] = np.asarray(c["start_pos"], np.int32)
    return model, feeds, w


def _direct(c, feeds, w):
    """The layer through the reference ops themselves (torch tensors, no ONNX)."""
    T = torch.float32 if feeds["x"].dtype == np.float32 else torch.float16

    def t(a):  # T arrays -> T tensors (exact through float32); int arrays as they are
        if a is None:
            return None
        return torch.from_numpy(a.astype(np.float32)).to(T) if a.dtype.kind == "f" else torch.from_numpy(a.copy())

    wt = {k: (torch.from_numpy(v) if k.endswith("scale") else t(v)) for k, v in w.items()}  # scales: float32
    qkv = ops.qkv_gemm(t(feeds["x"]), wt["w"], wt.get("b"), wt.get("gamma"), wt.get("beta"), wt.get("w_scale"),
                       norm_type=c["norm_type"], epsilon=1e-5, quantized=c["quantized"], group_size=c["qkv_group"])
    kw = {k: c[k] for k in ("qkv_layout", "causal", "local_window", "rotary_dim", "rotary_style", "rope_theta",
                           "alibi_slopes", "scale")}
    ctx, pk, pv = ops.softmax_context(qkv, t(feeds["past_key"]), t(feeds["past_value"]), t(feeds["seq_lens"]),
                                      t(feeds.get("start_pos")), num_heads=c["H"], num_kv_heads=c["Hkv"],
                                      head_size=c["D"], **kw)
    out = ops.int8_matmul(ctx, wt["o_w"], wt["o_scale"], wt.get("o_b"), group_size=c["out_group"])
    return {"output": out, "ctx": ctx, "present_key": pk, "present_value": pv}


# present_value passes the -inf poison through: comparing it subtracts inf from inf
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
@PROFILE
@given(layers())
def test_layer_reference_evaluator_and_ort_cpu_agree(c):
    elem = TP.FLOAT if c["dtype"] == "float32" else TP.FLOAT16
    rng = np.random.default_rng(c["seed"])
    model, feeds, w = _build(c, elem, rng)
    direct = _direct(c, feeds, w)
    ev = reference(model, feeds)
    for name, got in direct.items():
        want = ev[name]
        got = got.float().numpy().astype(np_dtype(elem))
        assert np.array_equal(got, want, equal_nan=True), f"{name}: reference op != reference evaluator"
    assert np.isfinite(ev["ctx"]).all() and np.isfinite(ev["output"]).all(), "a masked cache row reached the output"
    assert_matches_reference(model, feeds)
