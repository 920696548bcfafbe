"""Lowering of the dsattn custom ops (OPS.md, version 1) to standard ONNX ops for ONNX Runtime.

``lower_for_ort(model)`` replaces every ``dsattn::QKVGemm``, ``dsattn::SoftmaxContext`` and
``dsattn::Int8MatMul`` node by a subgraph of standard ONNX ops (opset >= 17) with the same inputs and
outputs, so the lowered model runs on any ONNX Runtime execution provider (CPU and CUDA are tested)
without a custom-op library. It is the independent second runtime of docs/DESIGN.md, not the fast path.

Numerics: every subgraph casts its T inputs (float16 / bfloat16 / float32) to float32, computes norm,
GEMM, rotary, softmax and the attention products in float32, and casts the outputs back to T once,
like the reference (dsattn.export.ops). The KV cache keeps T: the new keys and values are rounded to
T, written with ``ScatterND`` and the attention reads them back from the written cache, exactly as
the reference and the kernels do. The only ops that ever see a 16-bit tensor are Cast and ScatterND,
which both ONNX Runtime CPU and CUDA run for bfloat16 too.

SoftmaxContext subgraph (shapes; p = seq_lens[b] + i is the absolute position of new token i)::

    qkv [B,S,(H+2Hkv)D] -Cast f32-> split (qkv_layout 0 blocked / 1 per-head) -> q [B,H,S,D],
        k, v [B,Hkv,S,D] -> rotary on q, k at p - start_pos[b] (rotate_half / rotate_every_two,
        first rotary_dim dims) -> k, v Cast T -> ScatterND into past_* at (b, h, p) -> present_*
    present_* -Cast f32-> K, V [B,Hkv,Tmax,D]; scores = scale * q.K^T [B,H,S,Tmax] (GQA: query
        head h reads kv head h // (H/Hkv), done by a reshape to [B,Hkv,G*S,D], no copy of K/V)
        + alibi slope_h * (j - start_pos[b]); mask: start_pos[b] <= j < seq_lens[b] + S, causal
        j <= p, local window j > p - local_window; masked softmax over Tmax (an all-masked row
        gives zeros, never NaN) -> probs . V over the finite values, NaN where a non-finite value
        of a visible key reaches (masked keys are excluded, OPS.md) -> context [B,S,H*D] -Cast T->

The attention spans the whole cache capacity Tmax and masks what is not valid: simple and exact,
but O(S * Tmax) per head, which is fine for validation.

Why ScatterND and not opset-24 TensorScatter: ScatterND exists since opset 11 on every ONNX Runtime
execution provider (CUDA included, any element type), so the lowered model keeps the exporter's
opset (18) and IR version; TensorScatter needs opset 24 and runs on ORT CPU (1.32, bounds-checked)
but its CUDA support in 1.31 is not established here.

Cache overflow and invalid lengths: ONNX has no op that raises, so seq_lens and start_pos reach
everything downstream (positions, masks, the cache write) through guard ``Reshape`` nodes whose
target shape becomes invalid (-2) when any row has seq_lens[b] < 0, seq_lens[b] + S > Tmax or
start_pos[b] outside [0, seq_lens[b] + S] (the reference's checks), or when seq_lens / start_pos do
not have B entries or past_key / past_value are not [B, Hkv, Tmax, D] (a length-1 seq_lens would
otherwise broadcast silently). ONNX Runtime then fails the run (CPU and CUDA alike: Reshape checks
its shape on the host) with an error naming the node
``<node>/ERROR_kv_cache_overflow_or_bad_seq_lens_start_pos``; no cache row is written and no output
is produced. Without the guard ScatterND would either fail (CPU), wrap a negative position around
silently, or (CUDA) depend on the kernel's bounds handling.

Int8 weights (QKVGemm quantized=1, Int8MatMul) are dequantized in the graph:
``Cast(q, f32) * scale[n, k // group_size]`` (per channel for group_size 0) then MatMul with the
transpose. ONNX Runtime constant-folds this when the weight is an initializer, so the lowered model
holds the float32 weight in memory (the plugins never materialize it; this path is for accuracy).

A model without dsattn nodes is returned unchanged (a copy, IR version capped at 13) with a
``UserWarning``, so lowering twice is harmless. Unknown dsattn ops, another op-set version than 1,
``plugin_version`` != "1" or ``plugin_namespace`` != "dsattn", unknown or out-of-range attributes
and missing required inputs raise ``ValueError`` naming the node (a node without
``plugin_version``/``plugin_namespace`` is taken as version 1: they matter to TensorRT's parser, not
here). Statically known shapes and element types are checked here too; dynamic ones at run time
(the guard above, or the shape checks of the ops themselves).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

from dsattn.export import opspec

__all__ = ["lower_for_ort", "DSATTN_DOMAIN", "DSATTN_OP_TYPES", "MAX_IR_VERSION", "GUARD_SUFFIX"]

DSATTN_DOMAIN = opspec.DOMAIN
DSATTN_OP_VERSION = opspec.OP_VERSION
DSATTN_OP_TYPES = opspec.OP_TYPES
# ONNX Runtime 1.31 loads IR version <= 13; onnx 1.23 writes 14 by default (DEVICE.md).
MAX_IR_VERSION = 13
# Lowest default-domain opset the emitted subgraphs are valid for (LayerNormalization is 17).
MIN_OPSET = 17
# Name suffix of the Reshape that makes ONNX Runtime fail on cache overflow (see module docstring).
GUARD_SUFFIX = "ERROR_kv_cache_overflow_or_bad_seq_lens_start_pos"

_FLOAT_T = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}

def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type} node {node.name or '<unnamed>'!r}"


class _TypeInfo:
    """Element types and static shapes of the values of a model, as far as ONNX shape inference
    (which skips the custom nodes) and the lowered subgraphs tell them."""

    def __init__(self, model: onnx.ModelProto):
        self.elem: dict[str, int] = {}
        self.shape: dict[str, tuple[Optional[int], ...]] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # >2 GB protos or odd models: fall back to what the graph declares
            inferred = model
        self._collect(inferred.graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            self.elem[init.name] = init.data_type
            self.shape[init.name] = tuple(init.dims)
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.elem_type:
                self.elem.setdefault(vi.name, tt.elem_type)
                if tt.HasField("shape"):
                    self.shape.setdefault(vi.name, tuple(
                        d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim))
        for node in graph.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    self._collect(sub)

    def dims(self, name: str) -> Optional[tuple[Optional[int], ...]]:
        return self.shape.get(name)


class _Emitter:
    """Builds the standard-ONNX replacement of one dsattn node. Every new value and node name is
    prefixed with the dsattn node's name, so ORT error messages point back to it."""

    def __init__(self, node: onnx.NodeProto, prefix: str, opset: int, taken: set[str],
                 t_elem: Optional[int], like: str):
        self.node, self.prefix, self.opset, self.taken = node, prefix, opset, taken
        self.t_elem, self.like = t_elem, like
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: Optional[str] = None, n_out: int = 1,
           outputs: Optional[Sequence[str]] = None, node_name: Optional[str] = None, **attrs) -> Any:
        hint = hint or op_type
        outs = list(outputs) if outputs is not None else [self.fresh(hint if n_out == 1 else f"{hint}_{i}")
                                                           for i in range(n_out)]
        name = node_name if node_name is not None else self.fresh(f"{hint}_node")
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, values, hint: str = "c") -> str:
        return self.const(values, np.int64, hint)

    def f32(self, values, hint: str = "c") -> str:
        return self.const(values, np.float32, hint)

    # -- helpers that hide opset differences --
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int, hint: str) -> str:
        if op_type == "ReduceSum" or self.opset >= 18:  # axes became an input in 13 (Sum) / 18 (rest)
            return self.op(op_type, [x, self.i64(list(axes), f"{hint}_axes")], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=keepdims)

    def to_f32(self, x: str, hint: str) -> str:
        return self.op("Cast", [x], hint, to=TensorProto.FLOAT)

    def to_t(self, x32: str, hint: str, output: Optional[str] = None) -> str:
        outs = [output] if output else None
        if self.t_elem is not None:
            return self.op("Cast", [x32], hint, outputs=outs, to=self.t_elem)
        # T unknown statically (no type information reaches this node): take it from the input.
        return self.op("CastLike", [x32, self.like], hint, outputs=outs)

    def unsqueeze(self, x: str, axes: Sequence[int], hint: str) -> str:
        return self.op("Unsqueeze", [x, self.i64(list(axes), f"{hint}_axes")], hint)

    def reshape(self, x: str, shape: Sequence[int], hint: str) -> str:
        return self.op("Reshape", [x, self.i64(list(shape), f"{hint}_shape")], hint)

    def slice(self, x: str, start: int, end: int, axis: int, hint: str) -> str:
        return self.op("Slice", [x, self.i64([start], f"{hint}_s"), self.i64([end], f"{hint}_e"),
                                 self.i64([axis], f"{hint}_a")], hint)

    def split(self, x: str, sizes: Sequence[int], axis: int, hint: str) -> list[str]:
        return self.op("Split", [x, self.i64(list(sizes), f"{hint}_sizes")], hint, n_out=len(sizes),
                       axis=axis)


# ------------------------------------------------------------------------------------------------
# attribute / input checking
# ------------------------------------------------------------------------------------------------

def _parse_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """Every attribute of the node resolved by the op contract (defaults and derived values filled
    in, kinds, int32, ranges and cross-attribute rules checked); errors name the node."""
    label = _node_label(node)
    return opspec.resolve(node.op_type, opspec.node_attributes(node, label), label)


def _inputs(node: onnx.NodeProto, ti: Optional["_TypeInfo"] = None) -> list[Optional[str]]:
    spec = opspec.op(node.op_type)
    names = spec.input_names
    if len(node.input) > len(names):
        raise ValueError(f"{_node_label(node)} has {len(node.input)} inputs; {node.op_type} takes at most "
                         f"{len(names)} {names}")
    ins: list[Optional[str]] = [x if x else None for x in node.input] + [None] * (len(names) - len(node.input))
    if ti is not None:  # a shape-[0] tensor in an optional slot is absent (OPS.md)
        ins = [None if i >= spec.n_required_inputs and x is not None and ti.dims(x) == (0,) else x
               for i, x in enumerate(ins)]
    for i in range(spec.n_required_inputs):
        if ins[i] is None:
            raise ValueError(f"{_node_label(node)}: required input {i} {names[i]!r} is missing")
    return ins


def _check_elem(node, ti: _TypeInfo, name: Optional[str], role: str, allowed: Iterable[int],
                must_equal: Optional[int] = None) -> Optional[int]:
    if name is None:
        return None
    elem = ti.elem.get(name)
    if elem is None:
        return None
    allowed = tuple(allowed)
    if elem not in allowed or (must_equal is not None and elem != must_equal):
        want = (TensorProto.DataType.Name(must_equal) if must_equal is not None
                else "/".join(TensorProto.DataType.Name(a) for a in allowed))
        raise ValueError(f"{_node_label(node)}: input {role} ({name!r}) has element type "
                         f"{TensorProto.DataType.Name(elem)}, expected {want}")
    return elem


def _node_t(node: onnx.NodeProto, ti: _TypeInfo, t_inputs: Sequence[tuple[Optional[str], str]]) -> Optional[int]:
    """The node's T (the element type shared by all its T inputs), if the graph states one."""
    t = None
    for name, role in t_inputs:
        e = _check_elem(node, ti, name, role, _FLOAT_T, must_equal=t)
        if e is not None:
            t = e
    return t


def _static(ti: _TypeInfo, name: Optional[str], axis: int) -> Optional[int]:
    d = ti.dims(name) if name else None
    if d is None or not (-len(d) <= axis < len(d)):
        return None
    v = d[axis]
    return v if v else None


# ------------------------------------------------------------------------------------------------
# per-op lowerings
# ------------------------------------------------------------------------------------------------

def _dequant_t(e: _Emitter, node, ti: _TypeInfo, weight: str, scale: Optional[str], group_size: int,
               k_expected: Optional[int]) -> str:
    """int8 [N, K] + float32 scale [N, K/g] -> float32 W^T [K, N] (scale[n, k // g] * q[n, k])."""
    label = _node_label(node)
    if scale is None:
        raise ValueError(f"{label}: input weight_scale is required for an int8 weight")
    _check_elem(node, ti, weight, "weight", (TensorProto.INT8,))
    _check_elem(node, ti, scale, "weight_scale", (TensorProto.FLOAT,))
    n, k = _static(ti, weight, 0), _static(ti, weight, 1)
    wdims, sdims = ti.dims(weight), ti.dims(scale)
    if wdims is not None and len(wdims) != 2:
        raise ValueError(f"{label}: int8 weight must be 2-D [N, K], got shape {list(wdims)}")
    if k is not None and k_expected is not None and k != k_expected:
        raise ValueError(f"{label}: int8 weight is [N, K={k}] but the input has K={k_expected}")
    if k is not None:
        g = k if group_size == 0 else group_size
        if k % g:
            raise ValueError(f"{label}: attribute group_size={group_size} does not divide K={k}")
        if sdims is not None and n is not None and tuple(sdims) != (n, k // g):
            raise ValueError(f"{label}: weight_scale must have shape [N, K/group_size] = {[n, k // g]}, "
                             f"got {list(sdims)}")
    q = e.to_f32(weight, "w_f32")
    if group_size == 0:
        w = e.op("Mul", [q, scale], "w_deq")  # scale [N, 1] broadcasts over K
    else:
        # [N, K] -> [N, K/g, g] so that scale [N, K/g, 1] multiplies each group.
        qg = e.reshape(q, [0, -1, group_size], "w_groups")
        sg = e.unsqueeze(scale, [2], "scale_groups")
        w = e.reshape(e.op("Mul", [qg, sg], "w_deq_groups"), [0, -1], "w_deq")
    return e.op("Transpose", [w], "w_deq_t", perm=[1, 0])


def _lower_qkv_gemm(e: _Emitter, node, ti: _TypeInfo, a: dict[str, Any]) -> None:
    label = _node_label(node)
    x, weight, bias, gamma, beta, scale = _inputs(node, ti)
    norm_type, eps = a["norm_type"], a["epsilon"]
    if norm_type != 0 and gamma is None:
        raise ValueError(f"{label}: input gamma is required when norm_type={norm_type}")
    if norm_type == 1 and beta is None:
        raise ValueError(f"{label}: input beta is required when norm_type=1 (LayerNorm)")
    if norm_type == 2 and beta is not None:
        raise ValueError(f"{label}: input beta must be absent when norm_type=2 (RMSNorm has no bias)")
    if norm_type == 0 and (gamma is not None or beta is not None):
        raise ValueError(f"{label}: inputs gamma/beta must be absent when norm_type=0")
    if not a["quantized"] and scale is not None:
        raise ValueError(f"{label}: input weight_scale is given but quantized=0")
    n_out = 2 if a["emit_normed"] else 1
    outs = list(node.output)
    if len(outs) > n_out:
        raise ValueError(f"{label}: has {len(outs)} outputs but emit_normed={a['emit_normed']} gives {n_out}")
    t_ins = [(x, "input"), (bias, "bias"), (gamma, "gamma"), (beta, "beta")]
    if not a["quantized"]:
        t_ins.append((weight, "weight"))
    e.t_elem = _node_t(node, ti, t_ins)
    hidden = _static(ti, x, -1)
    xd = ti.dims(x)
    if xd is not None and len(xd) != 3:
        raise ValueError(f"{label}: input must be [B, S, hidden], got shape {list(xd)}")

    h = e.to_f32(x, "x_f32")
    if norm_type == 1:
        # Biased variance in fp32, as torch.nn.LayerNorm and the reference.
        h = e.op("LayerNormalization", [h, e.to_f32(gamma, "gamma_f32"), e.to_f32(beta, "beta_f32")],
                 "layer_norm", axis=-1, epsilon=float(eps), stash_type=1)
    elif norm_type == 2:
        ms = e.reduce("ReduceMean", e.op("Mul", [h, h], "x_sq"), [-1], 1, "mean_sq")
        rstd = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [ms, e.f32(eps, "eps")], "ms_eps")], "rms")],
                    "inv_rms")
        h = e.op("Mul", [e.op("Mul", [h, rstd], "x_rms"), e.to_f32(gamma, "gamma_f32")], "rms_norm")
    if a["quantized"]:
        w = _dequant_t(e, node, ti, weight, scale, a["group_size"], hidden)
    else:
        wd = ti.dims(weight)
        if wd is not None and (len(wd) != 2 or (hidden and wd[0] and wd[0] != hidden)):
            raise ValueError(f"{label}: weight must be [hidden={hidden}, N], got shape {list(wd)}")
        w = e.to_f32(weight, "w_f32")
    y = e.op("MatMul", [h, w], "gemm")
    if bias is not None:
        y = e.op("Add", [y, e.to_f32(bias, "bias_f32")], "gemm_bias")
    e.to_t(y, "qkv", output=outs[0] or None)
    if n_out == 2:
        e.to_t(h, "normed", output=(outs[1] if len(outs) > 1 and outs[1] else None))


def _lower_int8_matmul(e: _Emitter, node, ti: _TypeInfo, a: dict[str, Any]) -> None:
    label = _node_label(node)
    x, weight, scale, bias = _inputs(node, ti)
    if len(node.output) != 1:
        raise ValueError(f"{label}: must have exactly 1 output, got {len(node.output)}")
    e.t_elem = _node_t(node, ti, [(x, "input"), (bias, "bias")])
    w = _dequant_t(e, node, ti, weight, scale, a["group_size"], _static(ti, x, -1))
    y = e.op("MatMul", [e.to_f32(x, "x_f32"), w], "matmul")
    if bias is not None:
        y = e.op("Add", [y, e.to_f32(bias, "bias_f32")], "matmul_bias")
    e.to_t(y, "output", output=node.output[0] or None)


def _inv_freq(theta: float, rotary_dim: int) -> np.ndarray:
    """theta^(-2k/rotary_dim), k < rotary_dim/2, in float32 exactly as the reference (and Hugging
    Face) compute it with torch: its float32 pow is not correctly rounded, and a 1-ulp difference in
    inv_freq becomes p * 2^-24 radians at position p (5e-5 at p = 1024), which an fp32 comparison
    sees. Without torch, the correctly rounded float64 value."""
    try:
        import torch
    except ImportError:
        return (1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))).astype(np.float32)
    return (1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))).numpy()


def _rotary(e: _Emitter, x: str, cos: str, sin: str, rotary_dim: int, head_size: int, style: int,
            hint: str) -> str:
    """Rotate the first rotary_dim dims of x [B, heads, S, D] (fp32); cos/sin are [B, 1, S, rd/2]."""
    half = rotary_dim // 2
    if rotary_dim < head_size:
        rot, rest = e.split(x, [rotary_dim, head_size - rotary_dim], 3, f"{hint}_rot_split")
    else:
        rot, rest = x, None
    if style == 0:  # rotate_half: pairs (i, i + rd/2)
        a, b = e.split(rot, [half, half], 3, f"{hint}_halves")
        c, s = cos, sin
    else:  # rotate_every_two: pairs (2i, 2i + 1) -> view [..., rd/2, 2]
        pairs = e.reshape(rot, [0, 0, 0, half, 2], f"{hint}_pairs")
        a, b = e.split(pairs, [1, 1], 4, f"{hint}_even_odd")
        c, s = e.unsqueeze(cos, [4], f"{hint}_cos5"), e.unsqueeze(sin, [4], f"{hint}_sin5")
    ra = e.op("Sub", [e.op("Mul", [a, c], f"{hint}_a_cos"), e.op("Mul", [b, s], f"{hint}_b_sin")], f"{hint}_ra")
    rb = e.op("Add", [e.op("Mul", [b, c], f"{hint}_b_cos"), e.op("Mul", [a, s], f"{hint}_a_sin")], f"{hint}_rb")
    if style == 0:
        out = e.op("Concat", [ra, rb], f"{hint}_rotated", axis=3)
    else:
        out = e.reshape(e.op("Concat", [ra, rb], f"{hint}_rot_pairs", axis=4), [0, 0, 0, rotary_dim],
                        f"{hint}_rotated")
    if rest is not None:
        out = e.op("Concat", [out, rest], f"{hint}_rope", axis=3)
    return out


@dataclass
class _Lengths:
    """The guarded per-row lengths of one SoftmaxContext node and the sizes they derive from (all
    ONNX value names). Everything downstream reads seq_lens / start_pos through the guard."""

    B: str  # [1]
    S: str  # [1]
    Tmax: str  # [1]
    zero: str  # int64 scalar 0
    one: str  # int64 scalar 1
    start: str  # [B] start_pos (0 when absent), checked
    pos: str  # [B, S] absolute positions p = seq_lens[b] + i
    end: str  # [B] seq_lens + S, the exclusive end of the valid keys


def _sc_check(e: _Emitter, node, ti: _TypeInfo, a: dict[str, Any]) -> list[Optional[str]]:
    """Static checks of a SoftmaxContext node (outputs, element types, known dims); sets T."""
    label = _node_label(node)
    qkv, past_k, past_v, seq_lens, start_pos = ins = _inputs(node, ti)
    if len(node.output) > 3:
        raise ValueError(f"{label}: has {len(node.output)} outputs, SoftmaxContext has 3")
    H, Hkv, D = a["num_heads"], a["num_kv_heads"], a["head_size"]
    e.t_elem = _node_t(node, ti, [(qkv, "qkv"), (past_k, "past_key"), (past_v, "past_value")])
    _check_elem(node, ti, seq_lens, "seq_lens", (TensorProto.INT32,))
    _check_elem(node, ti, start_pos, "start_pos", (TensorProto.INT32,))
    width = _static(ti, qkv, -1)
    if width is not None and width != (H + 2 * Hkv) * D:
        raise ValueError(f"{label}: qkv last dim is {width}, expected (H + 2*Hkv)*D = {(H + 2 * Hkv) * D}")
    for name, role in ((past_k, "past_key"), (past_v, "past_value")):
        pd = ti.dims(name)
        if pd is not None and (len(pd) != 4 or (pd[1] and pd[1] != Hkv) or (pd[3] and pd[3] != D)):
            raise ValueError(f"{label}: {role} must be [B, Hkv={Hkv}, Tmax, D={D}], got shape {list(pd)}")
    return ins


def _sc_lengths(e: _Emitter, qkv: str, past_k: str, past_v: str, seq_lens: str, start_pos: Optional[str],
                a: dict[str, Any]) -> _Lengths:
    """Sizes, the guard that fails the run on bad lengths (module docstring), and the positions."""
    Hkv, D = a["num_kv_heads"], a["head_size"]
    B = e.op("Shape", [qkv], "B", start=0, end=1)
    S = e.op("Shape", [qkv], "S", start=1, end=2)
    Tmax = e.op("Shape", [past_k], "Tmax", start=2, end=3)
    zero, one = e.i64(0, "zero"), e.i64(1, "one")
    lens_in = e.op("Cast", [seq_lens], "seq_lens_i64", to=TensorProto.INT64)  # [B]
    if start_pos is not None:
        start_in = e.op("Cast", [start_pos], "start_pos_i64", to=TensorProto.INT64)
    else:
        start_in = e.op("Mul", [lens_in, zero], "start_pos_zero")  # absent: 0 for every row
    end_in = e.op("Add", [lens_in, S], "lens_end_unchecked")
    # per row: 0 <= seq_lens, seq_lens + S <= Tmax, 0 <= start_pos <= seq_lens + S
    bad = e.op("Or", [
        e.op("Or", [e.op("Less", [lens_in, zero], "lens_negative"),
                    e.op("Greater", [end_in, Tmax], "cache_overflow")], "bad_len"),
        e.op("Or", [e.op("Less", [start_in, zero], "start_negative"),
                    e.op("Greater", [start_in, end_in], "start_past_end")], "bad_start")], "bad_row")
    # sizes: seq_lens/start_pos have B entries, past_key is [B, Hkv, Tmax, D], past_value alike
    want_past = e.op("Concat", [B, e.i64([Hkv], "Hkv"), Tmax, e.i64([D], "D")], "past_shape_expected", axis=0)
    pk_shape = e.op("Shape", [past_k], "past_key_shape")
    sizes_ok = e.op("Concat", [e.op("Equal", [e.op("Shape", [lens_in], "lens_len"), B], "lens_len_ok"),
                               e.op("Equal", [e.op("Shape", [start_in], "start_len"), B], "start_len_ok"),
                               e.op("Equal", [pk_shape, want_past], "past_key_shape_ok"),
                               e.op("Equal", [e.op("Shape", [past_v], "past_value_shape"), pk_shape],
                                    "past_value_shape_ok")], "sizes_ok", axis=0)
    n_bad = e.op("Add", [
        e.reduce("ReduceSum", e.op("Cast", [bad], "bad_rows_f32", to=TensorProto.FLOAT), [0], 0, "n_bad_rows"),
        e.reduce("ReduceSum", e.op("Cast", [e.op("Not", [sizes_ok], "sizes_bad")], "sizes_bad_f32",
                                   to=TensorProto.FLOAT), [0], 0, "n_bad_sizes")], "n_bad")
    guard_shape = e.op("Where", [e.op("Equal", [n_bad, e.f32(0.0, "f_zero")], "all_ok"), e.i64([-1], "minus_one"),
                                 e.i64([-2], "invalid_dim")], "guard_shape")
    lens = e.op("Reshape", [lens_in, guard_shape], "seq_lens_checked", node_name=e.fresh(GUARD_SUFFIX))
    start = e.op("Reshape", [start_in, guard_shape], "start_pos_checked", node_name=e.fresh(GUARD_SUFFIX))
    arange_s = e.op("Range", [zero, e.op("Squeeze", [S], "S_scalar"), one], "arange_S")  # [S]
    pos = e.op("Add", [e.unsqueeze(lens, [1], "lens_b1"), e.unsqueeze(arange_s, [0], "arange_1s")], "pos")
    end = e.op("Add", [lens, S], "lens_end")
    return _Lengths(B, S, Tmax, zero, one, start, pos, end)


def _sc_split(e: _Emitter, qkv: str, a: dict[str, Any]) -> tuple[str, str, str]:
    """Fused QKV (cast to fp32) -> q [B, H, S, D], k, v [B, Hkv, S, D] by qkv_layout."""
    H, Hkv, D = a["num_heads"], a["num_kv_heads"], a["head_size"]
    x = e.to_f32(qkv, "qkv_f32")
    if a["qkv_layout"] == 0:  # [Q(H*D) | K(Hkv*D) | V(Hkv*D)]
        q, k, v = e.split(e.reshape(x, [0, 0, H + 2 * Hkv, D], "qkv_heads"), [H, Hkv, Hkv], 2, "qkv_split")
    else:  # per head [q_h | k_h | v_h]
        q, k, v = e.split(e.reshape(x, [0, 0, H, 3 * D], "qkv_heads"), [D, D, D], 3, "qkv_split")
    return (e.op("Transpose", [q], "q", perm=[0, 2, 1, 3]), e.op("Transpose", [k], "k_new", perm=[0, 2, 1, 3]),
            e.op("Transpose", [v], "v_new", perm=[0, 2, 1, 3]))


def _sc_rotate(e: _Emitter, q: str, k: str, L: _Lengths, a: dict[str, Any]) -> tuple[str, str]:
    """Rotary on q and k at positions relative to start_pos (fp32, like the reference)."""
    rd, D = a["rotary_dim"], a["head_size"]
    rel = e.op("Cast", [e.op("Sub", [L.pos, e.unsqueeze(L.start, [1], "start_b1")], "rope_pos_i64")],
               "rope_pos", to=TensorProto.FLOAT)  # [B, S]
    ang = e.op("Mul", [e.unsqueeze(rel, [1, 3], "rope_pos_b1s1"),
                       e.f32(_inv_freq(a["rope_theta"], rd).astype(np.float32).reshape(1, 1, 1, -1), "inv_freq")],
               "rope_angle")
    cos, sin = e.op("Cos", [ang], "rope_cos"), e.op("Sin", [ang], "rope_sin")  # [B, 1, S, rd/2]
    return (_rotary(e, q, cos, sin, rd, D, a["rotary_style"], "q"),
            _rotary(e, k, cos, sin, rd, D, a["rotary_style"], "k"))


def _sc_write_cache(e: _Emitter, past_k: str, past_v: str, k: str, v: str, L: _Lengths, a: dict[str, Any],
                    outs: list[str]) -> tuple[str, str]:
    """ScatterND of the new keys and values (rounded to T) at (b, h, seq_lens[b] + i)."""
    Hkv = a["num_kv_heads"]
    idx_shape = e.op("Concat", [L.B, e.i64([Hkv], "Hkv_1d"), L.S, e.i64([1], "one_1d")], "idx_shape", axis=0)
    b_idx = e.reshape(e.op("Range", [L.zero, e.op("Squeeze", [L.B], "B_scalar"), L.one], "arange_B"),
                      [-1, 1, 1, 1], "b_idx")
    h_idx = e.i64(np.arange(Hkv).reshape(1, Hkv, 1, 1), "h_idx")
    t_idx = e.unsqueeze(L.pos, [1, 3], "t_idx")  # [B, 1, S, 1]
    idx = e.op("Concat", [e.op("Expand", [b_idx, idx_shape], "b_idx_full"),
                          e.op("Expand", [h_idx, idx_shape], "h_idx_full"),
                          e.op("Expand", [t_idx, idx_shape], "t_idx_full")], "kv_idx", axis=3)
    present_k = e.op("ScatterND", [past_k, idx, e.to_t(k, "k_new_t")], "present_key",
                     outputs=[outs[1]] if outs[1] else None)
    present_v = e.op("ScatterND", [past_v, idx, e.to_t(v, "v_new_t")], "present_value",
                     outputs=[outs[2]] if outs[2] else None)
    return present_k, present_v


def _sc_masks(e: _Emitter, L: _Lengths, a: dict[str, Any]) -> tuple[str, str, str, str]:
    """Over the whole cache, key j of row b and query i: (kv_valid [B,1,1,Tmax]: start_pos <= j <
    seq_lens + S; mask [B,1,S,Tmax]: also causal and local window; j; start_pos as [B,1,1,1])."""
    j = e.op("Range", [L.zero, e.op("Squeeze", [L.Tmax], "Tmax_scalar"), L.one], "arange_T")  # [Tmax]
    start_b = e.unsqueeze(L.start, [1, 2, 3], "start_b111")
    kv_ok = e.op("And", [e.op("GreaterOrEqual", [j, start_b], "j_ge_start"),
                         e.op("Less", [j, e.unsqueeze(L.end, [1, 2, 3], "end_b111")], "j_lt_end")], "kv_valid")
    mask = kv_ok
    p4 = e.unsqueeze(L.pos, [1, 3], "pos_b1s1")  # [B, 1, S, 1]
    if a["causal"]:
        mask = e.op("And", [mask, e.op("LessOrEqual", [j, p4], "j_le_p")], "causal_mask")
    if a["local_window"]:
        lo = e.op("Sub", [p4, e.i64(a["local_window"], "window")], "window_lo")
        mask = e.op("And", [mask, e.op("Greater", [j, lo], "j_gt_lo")], "window_mask")
    return kv_ok, mask, j, start_b


def _sc_attention(e: _Emitter, q: str, present_k: str, present_v: str, kv_ok: str, mask: str, j: str,
                  start_b: str, a: dict[str, Any], out: str) -> None:
    """softmax(scale * q.K^T + alibi, masked) . V in fp32 over the written cache (GQA by reshape,
    no copy of K/V) -> context [B, S, H*D] in T."""
    H, Hkv, D = a["num_heads"], a["num_kv_heads"], a["head_size"]
    G = H // Hkv
    keys = e.to_f32(present_k, "keys_f32")  # [B, Hkv, Tmax, D]
    # Masked keys are excluded (OPS.md "Non-finite values"): a cache row may hold anything (even NaN),
    # and probability 0 x NaN would poison the context. P.V takes the finite values only; the
    # non-finite values of visible keys come back as NaN in the elements they reach (below).
    vals = e.to_f32(present_v, "vals_f32")
    nonfinite = e.op("Or", [e.op("IsNaN", [vals], "v_isnan"), e.op("IsInf", [vals], "v_isinf")], "v_nonfinite")
    vals_fin = e.op("Where", [nonfinite, e.f32(0.0, "v_zero"), vals], "vals_finite")
    # The head regrouping reads B and S from q's shape instead of a -1 axis: ONNX Runtime cannot infer
    # a -1 axis of an empty tensor, and a batch of 0 rows is valid (empty outputs, as the reference).
    qg = _reshape_dyn(e, q, [(q, 0, 1), Hkv, (q, 2, G), D], "q_groups")  # [B, Hkv, G*S, D]; h = kv*G + g
    scores = e.op("MatMul", [qg, e.op("Transpose", [keys], "keys_t", perm=[0, 1, 3, 2])], "qk")
    if G > 1:  # [B, H, S, Tmax]
        scores = _reshape_dyn(e, scores, [(q, 0, 1), H, (q, 2, 1), (scores, 3, 1)], "qk_heads")
    scores = e.op("Mul", [scores, e.f32(a["scale"], "scale")], "logits")
    if a["alibi_slopes"]:
        rel_j = e.op("Cast", [e.op("Sub", [j, start_b], "j_minus_start")], "alibi_dist",
                     to=TensorProto.FLOAT)  # [B, 1, 1, Tmax]
        slopes = np.asarray(a["alibi_slopes"], np.float32).reshape(1, H, 1, 1)
        scores = e.op("Add", [scores, e.op("Mul", [rel_j, e.f32(slopes, "alibi_slopes")], "alibi")], "logits_alibi")
    lowest = e.f32(np.finfo(np.float32).min, "lowest")
    masked = e.op("Where", [mask, scores, lowest], "logits_masked")
    # At least `lowest`: a row whose visible logits are all -inf gets weights 0 (not -inf - -inf).
    m = e.op("Max", [e.reduce("ReduceMax", masked, [3], 1, "row_max_raw"), lowest], "row_max")
    ex = e.op("Where", [mask, e.op("Exp", [e.op("Sub", [masked, m], "logits_shift")], "exp"),
                        e.f32(0.0, "p_zero")], "exp_masked")
    # An unmasked row has sum >= 1 (its max contributes exp(0)); an all-masked row has sum 0 and
    # all-zero numerators, so dividing by max(sum, 1) yields zeros there and is exact elsewhere.
    denom = e.op("Max", [e.reduce("ReduceSum", ex, [3], 1, "row_sum"), e.f32(1.0, "f_one")], "denom")
    probs = e.op("Div", [ex, denom], "probs")
    if G > 1:
        probs = _reshape_dyn(e, probs, [(q, 0, 1), Hkv, (q, 2, G), (probs, 3, 1)], "probs_groups")
    ctx = e.op("MatMul", [probs, vals_fin], "pv")  # [B, Hkv, G*S, D]
    # Elements that a non-finite value of a visible key reaches: NaN. reach [B, Hkv, S or 1, D] counts
    # them (the mask is shared by the heads of a KV group), broadcast over the group's G heads.
    reach = e.op("MatMul", [e.op("Cast", [mask], "mask_f32", to=TensorProto.FLOAT),
                            e.op("Cast", [nonfinite], "v_nonfinite_f32", to=TensorProto.FLOAT)], "v_nonfinite_reach")
    reach = e.unsqueeze(e.op("Greater", [reach, e.f32(0.0, "reach_zero")], "v_nonfinite_reached"), [2], "reach_b_kv_1")
    ctx = e.op("Where", [reach, e.f32(float("nan"), "nan"), _reshape_dyn(e, ctx, [(q, 0, 1), Hkv, G, (q, 2, 1), D], "ctx_kv_groups")],
               "ctx_nonfinite")  # [B, Hkv, G, S, D]
    ctx = _reshape_dyn(e, ctx, [(q, 0, 1), H, (q, 2, 1), D], "ctx_heads")
    ctx = e.reshape(e.op("Transpose", [ctx], "ctx_bshd", perm=[0, 2, 1, 3]), [0, 0, H * D], "ctx_flat")
    e.to_t(ctx, "context", output=out or None)


def _reshape_dyn(e: _Emitter, x: str, parts, hint: str) -> str:
    """Reshape ``x`` to a shape whose entries are ints or (tensor, axis, factor): that tensor's
    dimension times factor, read at run time, so no -1 axis is needed."""
    pieces = []
    for p in parts:
        if isinstance(p, int):
            pieces.append(e.i64([p], f"{hint}_dim"))
            continue
        t, axis, factor = p
        d = e.op("Shape", [t], f"{hint}_dim", start=axis, end=axis + 1)
        pieces.append(d if factor == 1 else e.op("Mul", [d, e.i64([factor], f"{hint}_factor")], f"{hint}_dim"))
    return e.op("Reshape", [x, e.op("Concat", pieces, f"{hint}_shape", axis=0)], hint)


def _lower_softmax_context(e: _Emitter, node, ti: _TypeInfo, a: dict[str, Any]) -> None:
    qkv, past_k, past_v, seq_lens, start_pos = _sc_check(e, node, ti, a)
    outs = list(node.output) + [""] * (3 - len(node.output))
    L = _sc_lengths(e, qkv, past_k, past_v, seq_lens, start_pos, a)
    q, k, v = _sc_split(e, qkv, a)
    if a["rotary_dim"]:
        q, k = _sc_rotate(e, q, k, L, a)
    present_k, present_v = _sc_write_cache(e, past_k, past_v, k, v, L, a, outs)
    kv_ok, mask, j, start_b = _sc_masks(e, L, a)
    _sc_attention(e, q, present_k, present_v, kv_ok, mask, j, start_b, a, outs[0])


_LOWER = {"QKVGemm": _lower_qkv_gemm, "SoftmaxContext": _lower_softmax_context, "Int8MatMul": _lower_int8_matmul}


# ------------------------------------------------------------------------------------------------
# graph walk
# ------------------------------------------------------------------------------------------------

def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def _all_names(graph: onnx.GraphProto, acc: set[str]) -> set[str]:
    acc.update(i.name for i in graph.initializer)
    acc.update(i.name for i in graph.input)
    for n in graph.node:
        acc.update(n.input)
        acc.update(n.output)
        if n.name:
            acc.add(n.name)
        for g in _subgraphs(n):
            _all_names(g, acc)
    return acc


def _count_dsattn(nodes: Iterable[onnx.NodeProto]) -> int:
    c = 0
    for n in nodes:
        c += n.domain == DSATTN_DOMAIN
        for g in _subgraphs(n):
            c += _count_dsattn(g.node)
    return c


def _lower_graph(graph: onnx.GraphProto, ti: _TypeInfo, opset: int, taken: set[str], counter: list[int]) -> None:
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for g in _subgraphs(node):
            _lower_graph(g, ti, opset, taken, counter)
        if node.domain != DSATTN_DOMAIN:
            new_nodes.append(node)
            continue
        if node.op_type not in _LOWER:
            raise ValueError(f"{_node_label(node)}: unknown dsattn op {node.op_type!r}; this lowering "
                             f"knows {DSATTN_OP_TYPES} (OPS.md version {DSATTN_OP_VERSION})")
        attrs = _parse_attrs(node)
        prefix = node.name or f"{node.op_type}_{counter[0]}"
        counter[0] += 1
        like = next((x for x in node.input if x), "")
        e = _Emitter(node, prefix, opset, taken, None, like)
        _LOWER[node.op_type](e, node, ti, attrs)
        new_nodes.extend(e.nodes)
        graph.initializer.extend(e.initializers)
        t = e.t_elem
        if t is not None:  # the outputs have type T: let later nodes know it
            for o in node.output:
                if o:
                    ti.elem[o] = t
    del graph.node[:]
    graph.node.extend(new_nodes)


def lower_for_ort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` in which every dsattn node is replaced by standard ONNX ops.

    The graph inputs and outputs stay the same (names, types, shapes). The result has IR version
    <= 13 (ONNX Runtime 1.31) and passes ``onnx.checker.check_model(full_check=True)``. See the
    module docstring for the numerics, the cache-overflow behaviour and the errors.
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto, got {type(model).__name__} "
                        "(load a path with onnx.load first)")
    out = onnx.ModelProto()
    out.CopyFrom(model)

    opsets = {o.domain: o.version for o in out.opset_import}
    if any(_count_dsattn(fn.node) for fn in out.functions if fn.domain != DSATTN_DOMAIN):
        # dsattn nodes inside model-local functions: inline them so the walk below sees them.
        out = onnx.inliner.inline_local_functions(out)
    n_custom = _count_dsattn(out.graph.node)
    if n_custom == 0:
        warnings.warn("lower_for_ort: the model has no dsattn nodes; it is returned unchanged "
                      "(already lowered, or not exported by dsattn?)", UserWarning, stacklevel=2)
    else:
        ver = opsets.get(DSATTN_DOMAIN)
        if ver is not None and ver != DSATTN_OP_VERSION:
            first = _first_dsattn(out.graph)
            raise ValueError(f"{_node_label(first)}: the model imports op-set {DSATTN_DOMAIN!r} version {ver}; "
                             f"this lowering implements version {DSATTN_OP_VERSION} (OPS.md)")
        opset = opsets.get("", opsets.get("ai.onnx"))
        if opset is None:
            opset = 18
            out.opset_import.append(helper.make_opsetid("", opset))
        if opset < MIN_OPSET:
            raise ValueError(f"the model's default-domain opset is {opset}; the lowering emits ops of opset "
                             f">= {MIN_OPSET} (upgrade with onnx.version_converter first)")
        ti = _TypeInfo(out)
        _lower_graph(out.graph, ti, opset, _all_names(out.graph, set()), [0])
        # The dsattn op set and any dsattn functions are no longer referenced.
        keep = [o for o in out.opset_import if o.domain != DSATTN_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
        funcs = [f for f in out.functions if f.domain != DSATTN_DOMAIN]
        del out.functions[:]
        out.functions.extend(funcs)
    need = helper.find_min_ir_version_for(list(out.opset_import), ignore_unknown=True)
    out.ir_version = max(min(out.ir_version or MAX_IR_VERSION, MAX_IR_VERSION), need)
    return out


def _first_dsattn(graph: onnx.GraphProto) -> Optional[onnx.NodeProto]:
    for n in graph.node:
        if n.domain == DSATTN_DOMAIN:
            return n
        for g in _subgraphs(n):
            f = _first_dsattn(g)
            if f is not None:
                return f
    return None
