"""Shared by test_lower.py (ONNX Runtime CPU) and test_ort_gpu.py (ONNX Runtime CUDA): single-node
dsattn models built with onnx.helper, random feeds, and the accuracy check of docs/DESIGN.md against the
fp32 reference (dsattn.export.ops.reference_evaluator on the custom-op graph)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

from dsattn.export.ops import reference_evaluator
from dsattn.tools.lower import MAX_IR_VERSION, lower_for_ort
from dsattn.tools.validate import default_tolerance, make_session, run_session, to_float32_model

DTYPES = {"float32": TP.FLOAT, "float16": TP.FLOAT16, "bfloat16": TP.BFLOAT16}
OPSETS = [oh.make_opsetid("", 18), oh.make_opsetid("dsattn", 1)]
COMMON = dict(plugin_version="1", plugin_namespace="dsattn")


def np_dtype(elem: int):
    if elem == TP.BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(oh.tensor_dtype_to_np_dtype(elem))


def as_t(a: np.ndarray, elem: int) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np_dtype(elem))


def make(nodes, inputs, outputs, initializers=(), opsets=OPSETS) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "dsattn_test", inputs, outputs, initializer=list(initializers))
    m = oh.make_model(g, opset_imports=list(opsets))
    m.ir_version = 10
    return m


# ------------------------------------------------------------------------------------------------
# SoftmaxContext
# ------------------------------------------------------------------------------------------------

@dataclass
class SCCase:
    name: str
    H: int
    Hkv: int
    D: int
    Tmax: int
    S: int
    seq_lens: list
    start_pos: Optional[list]
    attrs: dict = field(default_factory=dict)

    @property
    def B(self) -> int:
        return len(self.seq_lens)


def _slopes(h: int) -> list[float]:
    # BLOOM's build_alibi_tensor slopes for a power-of-two head count
    return [2.0 ** (-8.0 * (i + 1) / h) for i in range(h)]


SC_CASES = [
    SCCase("prefill_leftpad", 4, 4, 16, 12, 6, [0, 0, 0], [0, 2, 5]),
    SCCase("decode_ragged_gqa", 4, 2, 16, 20, 1, [19, 3, 0, 11], [0, 2, 0, 7]),
    SCCase("chunk_ragged_mqa", 4, 1, 8, 16, 4, [0, 5, 12], [0, 3, 12]),
    SCCase("bloom_alibi_layout1_prefill", 4, 4, 16, 10, 5, [0, 0], [0, 3],
           dict(qkv_layout=1, alibi_slopes=_slopes(4))),
    SCCase("bloom_alibi_layout1_decode", 4, 4, 16, 10, 1, [5, 7], [0, 3],
           dict(qkv_layout=1, alibi_slopes=_slopes(4))),
    SCCase("rotary_half_partial_gqa", 4, 2, 16, 14, 3, [0, 4], [0, 1], dict(rotary_dim=8, rotary_style=0)),
    SCCase("rotary_every_two_full", 2, 2, 16, 12, 2, [2, 7], [0, 3],
           dict(rotary_dim=16, rotary_style=1, rope_theta=500.0)),
    SCCase("local_window", 2, 2, 16, 12, 5, [0, 6], [0, 0], dict(local_window=3)),
    SCCase("non_causal_scale", 2, 1, 16, 10, 4, [0, 3], [1, 0], dict(causal=0, scale=0.3)),
    SCCase("no_start_pos", 2, 2, 8, 9, 3, [4, 0], None),
    SCCase("all_masked_row", 2, 2, 8, 9, 2, [2, 3], [0, 5]),
    # positions near 1024: rotary angles of hundreds of radians (fp32 conditioning of inv_freq)
    SCCase("rotary_far_positions", 2, 2, 64, 1030, 2, [1024, 600], [0, 17], dict(rotary_dim=64)),
    SCCase("odd_sizes_alibi_rotary", 3, 1, 24, 37, 5, [0, 31, 17], [0, 4, 17],
           dict(rotary_dim=12, rotary_style=0, alibi_slopes=[0.5, 0.125, 0.03125])),
]


def sc_model(elem: int, c: SCCase, *, dynamic: bool = True) -> onnx.ModelProto:
    H, Hkv, D = c.H, c.Hkv, c.D
    B, S, T = ("B", "S", "Tmax") if dynamic else (c.B, c.S, c.Tmax)
    inputs = [oh.make_tensor_value_info("qkv", elem, [B, S, (H + 2 * Hkv) * D]),
              oh.make_tensor_value_info("past_key", elem, [B, Hkv, T, D]),
              oh.make_tensor_value_info("past_value", elem, [B, Hkv, T, D]),
              oh.make_tensor_value_info("seq_lens", TP.INT32, [B])]
    names = ["qkv", "past_key", "past_value", "seq_lens"]
    if c.start_pos is not None:
        inputs.append(oh.make_tensor_value_info("start_pos", TP.INT32, [B]))
        names.append("start_pos")
    outputs = [oh.make_tensor_value_info("context", elem, [B, S, H * D]),
               oh.make_tensor_value_info("present_key", elem, [B, Hkv, T, D]),
               oh.make_tensor_value_info("present_value", elem, [B, Hkv, T, D])]
    node = oh.make_node("SoftmaxContext", names, ["context", "present_key", "present_value"], domain="dsattn",
                        name="attn", num_heads=H, num_kv_heads=Hkv, head_size=D, **COMMON, **c.attrs)
    return make([node], inputs, outputs)


def sc_feeds(elem: int, c: SCCase, rng: np.random.Generator, *, poison: bool = True) -> dict[str, np.ndarray]:
    """Fresh random feeds. With poison, cache rows at or beyond seq_lens + S hold NaN: nothing may
    read them (the reference does not; the lowering must not either)."""
    H, Hkv, D = c.H, c.Hkv, c.D
    pk = rng.standard_normal((c.B, Hkv, c.Tmax, D)).astype(np.float32)
    pv = rng.standard_normal((c.B, Hkv, c.Tmax, D)).astype(np.float32)
    if poison:
        for b, L in enumerate(c.seq_lens):
            pk[b, :, L + c.S:] = np.nan
            pv[b, :, L + c.S:] = np.nan
    f = {"qkv": as_t(rng.standard_normal((c.B, c.S, (H + 2 * Hkv) * D)), elem),
         "past_key": as_t(pk, elem), "past_value": as_t(pv, elem),
         "seq_lens": np.asarray(c.seq_lens, np.int32)}
    if c.start_pos is not None:
        f["start_pos"] = np.asarray(c.start_pos, np.int32)
    return f


# ------------------------------------------------------------------------------------------------
# QKVGemm and Int8MatMul
# ------------------------------------------------------------------------------------------------

@dataclass
class GemmCase:
    name: str
    norm_type: int = 1
    quantized: int = 0
    group_size: int = 0
    emit_normed: int = 0
    bias: bool = True
    hidden: int = 64
    N: int = 96


GEMM_CASES = [
    GemmCase("layernorm_normed_bias", 1, 0, 0, 1, True),
    GemmCase("rmsnorm_bias", 2, 0, 0, 0, True),
    GemmCase("no_norm_no_bias", 0, 0, 0, 0, False),
    GemmCase("int8_per_channel_layernorm_normed", 1, 1, 0, 1, True),
    GemmCase("int8_group16_rmsnorm", 2, 1, 16, 0, False),
    GemmCase("int8_group32_no_norm", 0, 1, 32, 0, True),
]


def _int8(rng, n, k, group_size):
    g = k if group_size == 0 else group_size
    q = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    scale = (rng.uniform(0.5, 1.5, size=(n, k // g)) / (127 * math.sqrt(k))).astype(np.float32)
    return q, scale


def gemm_model(elem: int, c: GemmCase, rng: np.random.Generator) -> onnx.ModelProto:
    """QKVGemm with its weights as initializers (as the exporter writes them)."""
    inits, names = [], ["x"]
    if c.quantized:
        q, scale = _int8(rng, c.N, c.hidden, c.group_size)
        inits.append(numpy_helper.from_array(q, "w"))
    else:
        inits.append(numpy_helper.from_array(as_t(rng.standard_normal((c.hidden, c.N)) / math.sqrt(c.hidden), elem), "w"))
    names.append("w")
    names.append("b" if c.bias else "")
    if c.bias:
        inits.append(numpy_helper.from_array(as_t(rng.standard_normal(c.N) * 0.1, elem), "b"))
    names.append("gamma" if c.norm_type else "")
    if c.norm_type:
        inits.append(numpy_helper.from_array(as_t(1 + 0.1 * rng.standard_normal(c.hidden), elem), "gamma"))
    names.append("beta" if c.norm_type == 1 else "")
    if c.norm_type == 1:
        inits.append(numpy_helper.from_array(as_t(0.1 * rng.standard_normal(c.hidden), elem), "beta"))
    if c.quantized:
        names.append("scale")
        inits.append(numpy_helper.from_array(scale, "scale"))
    while names and names[-1] == "":
        names.pop()
    outs = ["qkv"] + (["normed"] if c.emit_normed else [])
    node = oh.make_node("QKVGemm", names, outs, domain="dsattn", name="qkv_gemm", norm_type=c.norm_type,
                        epsilon=1e-5, quantized=c.quantized, group_size=c.group_size,
                        emit_normed=c.emit_normed, **COMMON)
    outputs = [oh.make_tensor_value_info("qkv", elem, ["B", "S", c.N])]
    if c.emit_normed:
        outputs.append(oh.make_tensor_value_info("normed", elem, ["B", "S", c.hidden]))
    return make([node], [oh.make_tensor_value_info("x", elem, ["B", "S", c.hidden])], outputs, inits)


@dataclass
class MatMulCase:
    name: str
    group_size: int
    bias: bool
    lead: tuple
    K: int = 64
    N: int = 48


MATMUL_CASES = [
    MatMulCase("per_channel_bias_3d", 0, True, (2, 3)),
    MatMulCase("group16_2d", 16, False, (5,)),
    MatMulCase("group_eq_k_bias_4d", 64, True, (2, 2, 3)),
]


def matmul_model(elem: int, c: MatMulCase, rng: np.random.Generator) -> onnx.ModelProto:
    q, scale = _int8(rng, c.N, c.K, c.group_size)
    inits = [numpy_helper.from_array(q, "w"), numpy_helper.from_array(scale, "scale")]
    names = ["x", "w", "scale"]
    if c.bias:
        inits.append(numpy_helper.from_array(as_t(0.1 * rng.standard_normal(c.N), elem), "b"))
        names.append("b")
    lead = [f"d{i}" for i in range(len(c.lead))]
    node = oh.make_node("Int8MatMul", names, ["y"], domain="dsattn", name="int8_matmul",
                        group_size=c.group_size, **COMMON)
    return make([node], [oh.make_tensor_value_info("x", elem, lead + [c.K])],
                [oh.make_tensor_value_info("y", elem, lead + [c.N])], inits)


def x_feed(elem: int, shape, rng) -> dict[str, np.ndarray]:
    return {"x": as_t(rng.standard_normal(shape), elem)}


# ------------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------------

def reference(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    ev = reference_evaluator(model)
    return dict(zip([o.name for o in model.graph.output], ev.run(None, dict(feeds))))


def check_lowered(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower and check the structural promises: no dsattn node or opset left, same graph I/O,
    IR <= 13, onnx.checker full_check."""
    lowered = lower_for_ort(model)
    assert lowered.ir_version <= MAX_IR_VERSION
    assert not [n for n in lowered.graph.node if n.domain == "dsattn"]
    assert "dsattn" not in {o.domain for o in lowered.opset_import}
    assert [i.SerializeToString() for i in lowered.graph.input] == [i.SerializeToString() for i in model.graph.input]
    assert [o.SerializeToString() for o in lowered.graph.output] == [o.SerializeToString() for o in model.graph.output]
    onnx.checker.check_model(lowered, full_check=True)
    return lowered


def assert_matches_reference(model: onnx.ModelProto, feeds, provider: str = "cpu", *,
                             session=None) -> dict[str, float]:
    """Run the lowered model on ONNX Runtime ``provider`` and apply the accuracy rule against the fp32
    reference: |ort - ref32| <= max(2 x |ref_T - ref32|, floor_T) (+ rtol |ref32| for fp32), no NaN
    except where the reference itself is NaN (poisoned cache rows passed through untouched).
    Returns the max abs error per output."""
    if session is None:
        session = make_session(check_lowered(model), provider)
    got = run_session(session, feeds)
    feeds32 = {k: (v.astype(np.float32) if v.dtype.kind in "fV" else v) for k, v in feeds.items()}
    ref32 = reference(to_float32_model(model), feeds32)
    low = any(v.dtype != np.float32 and v.dtype.kind in "fV" for v in feeds.values())
    ref_t = reference(model, feeds) if low else ref32
    errors = {}
    for o in model.graph.output:
        n, elem = o.name, o.type.tensor_type.elem_type
        r = ref32[n].astype(np.float64)
        g = got[n].astype(np.float32).astype(np.float64)
        assert g.shape == r.shape, f"{n}: shape {g.shape} != reference {r.shape}"
        both_nan = np.isnan(r) & np.isnan(g)
        assert not (np.isnan(g) & ~both_nan).any(), f"{n}: NaN where the reference has none"
        assert not (np.isnan(r) & ~both_nan).any(), f"{n}: a number where the reference is NaN (untouched cache)"
        rt = ref_t[n].astype(np.float32).astype(np.float64)
        err_t = float(np.nan_to_num(np.abs(rt - r), nan=0.0).max(initial=0.0))
        atol, rtol = default_tolerance(elem, err_t)
        diff = np.nan_to_num(np.abs(g - r), nan=0.0)
        bad = diff > atol + rtol * np.nan_to_num(np.abs(r), nan=0.0)
        errors[n] = float(diff.max(initial=0.0))
        assert not bad.any(), (f"{n}: max abs err {errors[n]:.3e} > atol {atol:.3e} (rtol {rtol}) at "
                               f"{np.argwhere(bad)[:3].tolist()}; reference-T err {err_t:.3e}")
    return errors
