"""ONNX export of dsattn modules with the dsattn custom ops (OPS.md).

``torch.onnx.export(dynamo=True)`` traces the module; a ``custom_translation_table`` maps each
``torch.ops.dsattn.*`` op to a translation that emits one ``dsattn::<Op>`` node carrying the OPS.md
attributes plus ``plugin_version="1"`` and ``plugin_namespace="dsattn"`` (what TensorRT's ONNX
parser needs to find the plugin creator). The translations are trace-only Python functions
(as torchlib's ``trace_only`` functions): they decide in Python which attributes exist (an empty
``alibi_slopes`` list must be omitted, since an empty FLOATS attribute has no type) and how many
outputs QKVGemm has. Their signatures mirror the custom-op schemas positionally (torch.export
passes every argument positionally; the schemas have no defaults, so none can be dropped).

The op schemas are registered with ``onnx.defs`` (``register_onnx_schemas``) so that
``onnx.checker`` validates dsattn nodes (inputs, outputs, attribute types) like standard ones.

Graph I/O: inputs ``hidden_states`` T [B, S, hidden], ``past_key`` / ``past_value``
T [B, Hkv, Tmax, D], ``seq_lens`` int32 [B], ``start_pos`` int32 [B]; outputs ``output``
T [B, S, hidden], ``present_key``, ``present_value`` T [B, Hkv, Tmax, D]. B and S are dynamic
(``dynamic=True``), Tmax is the fixed cache capacity.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Union

import onnx
import torch
from onnx import TensorProto, defs, helper

from dsattn.fileio import save_onnx_atomic

from . import opspec
from .config import INT32_MAX
from .modules import DeepSpeedSelfAttention, KVCache

__all__ = ["export_onnx", "register_onnx_schemas", "translation_table", "INPUT_NAMES", "OUTPUT_NAMES",
           "IR_VERSION", "OPSET"]

INPUT_NAMES = ("hidden_states", "past_key", "past_value", "seq_lens", "start_pos")
OUTPUT_NAMES = ("output", "present_key", "present_value")
IR_VERSION = 10  # ONNX Runtime >= 1.16 and TensorRT 10/11 read IR 10; must stay <= 13
OPSET = 18  # default ONNX opset (torchlib builds at 18)
_COMMON = dict(opspec.PLUGIN_ATTRS)


# ------------------------------------------------------------------------------------------------
# ONNX op schemas
# ------------------------------------------------------------------------------------------------

def _schema(spec: opspec.OpSpec):
    OS = defs.OpSchema
    F = OS.FormalParameterOption

    def param(p):
        return OS.FormalParameter(p.name, p.type, "", param_option=F.Optional if p.optional else F.Single)

    def attribute(a: opspec.Attr):
        if a.has_default and a.default != ():  # an empty FLOATS default has no ONNX type to carry
            return OS.Attribute(a.name, helper.make_attribute(a.name, a.default), "")
        return OS.Attribute(a.name, OS.AttrType(a.onnx_type), "", required=a.required)

    attrs = [attribute(a) for a in spec.attrs]
    attrs += [OS.Attribute(n, OS.AttrType.STRING, "", required=False) for n in opspec.PLUGIN_ATTRS]
    return OS(spec.name, opspec.DOMAIN, opspec.OP_VERSION, spec.doc, inputs=[param(i) for i in spec.inputs],
              outputs=[param(o) for o in spec.outputs],
              type_constraints=[(k, list(v), "") for k, v in spec.type_constraints.items()], attributes=attrs)


def register_onnx_schemas() -> None:
    """Register the dsattn op schemas (built from ``opspec``) with ``onnx.defs``; idempotent."""
    for spec in opspec.OPS.values():
        if not defs.has(spec.name, opspec.DOMAIN):
            defs.register_schema(_schema(spec))


# ------------------------------------------------------------------------------------------------
# translations (custom op -> dsattn node)
# ------------------------------------------------------------------------------------------------

def _opset():
    import onnxscript

    register_onnx_schemas()
    return onnxscript.values.Opset(opspec.DOMAIN, opspec.OP_VERSION)


def _qkv_gemm_translation(input, weight, bias, gamma, beta, weight_scale, norm_type, epsilon, quantized,
                          group_size, emit_normed):
    outs = _opset().QKVGemm(input, weight, bias, gamma, beta, weight_scale, norm_type=norm_type,
                            epsilon=epsilon, quantized=quantized, group_size=group_size,
                            emit_normed=emit_normed, **_COMMON)
    # The schema declares the optional output `normed`; without emit_normed the node keeps only
    # `qkv` (the unused output is dropped in _post_process).
    return list(outs) if emit_normed else [outs[0]]


def _softmax_context_translation(qkv, past_key, past_value, seq_lens, start_pos, num_heads, num_kv_heads,
                                 head_size, scale, qkv_layout, causal, local_window, rotary_dim, rotary_style,
                                 rope_theta, alibi_slopes):
    kw = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, scale=scale,
              qkv_layout=qkv_layout, causal=causal, local_window=local_window, rotary_dim=rotary_dim,
              rotary_style=rotary_style, rope_theta=rope_theta)
    if alibi_slopes:  # an empty FLOATS attribute cannot be typed: absent means "no alibi"
        kw["alibi_slopes"] = [float(s) for s in alibi_slopes]
    return _opset().SoftmaxContext(qkv, past_key, past_value, seq_lens, start_pos, **kw, **_COMMON)


def _int8_matmul_translation(input, weight, weight_scale, bias, group_size):
    return _opset().Int8MatMul(input, weight, weight_scale, bias, group_size=group_size, **_COMMON)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` covering the three dsattn ops."""
    return {torch.ops.dsattn.qkv_gemm.default: _qkv_gemm_translation,
            torch.ops.dsattn.softmax_context.default: _softmax_context_translation,
            torch.ops.dsattn.int8_matmul.default: _int8_matmul_translation}


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------

class _Flat(torch.nn.Module):
    """Flat tensor I/O around a dsattn module (the graph I/O of the contract)."""

    def __init__(self, module: DeepSpeedSelfAttention):
        super().__init__()
        self.m = module

    def forward(self, hidden_states, past_key, past_value, seq_lens, start_pos):
        out, cache = self.m(hidden_states, KVCache(past_key, past_value, seq_lens, start_pos))
        return out, cache.key, cache.value


_ONNX_OF_TORCH = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
                  torch.bfloat16: TensorProto.BFLOAT16}


def _post_process(model: onnx.ModelProto, T: int, check_types: bool = True) -> onnx.ModelProto:
    """Fix what the exporter leaves: leaked `_outputs`, unused optional outputs, IR version,
    opset import; then (``check_types``) check that every float tensor is T (weight_scale float32
    excepted). Whole decoders skip the type check: their RMSNorm computes in float32 on purpose."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    scale_inputs = set()
    for n in g.node:
        if n.domain != opspec.DOMAIN:
            continue
        keep = [a for a in n.attribute if a.name != "_outputs"]
        del n.attribute[:]
        n.attribute.extend(keep)
        # The contract's attribute rules (int32, finite floats, ranges) hold for what is written,
        # whatever path the values took into the trace.
        opspec.resolve(n.op_type, opspec.node_attributes(n, f"{n.op_type} node {n.name!r}"),
                       f"{n.op_type} node {n.name!r}")
        if n.op_type == "QKVGemm" and len(n.output) > 1 and not any(
                a.name == "emit_normed" and a.i for a in n.attribute):
            if n.output[1] in used:
                raise RuntimeError(f"QKVGemm {n.name}: output {n.output[1]} used although emit_normed=0")
            del n.output[1:]
        # inputs the contract fixes to float32 whatever T is (the int8 weight scales)
        scale_inputs.update(name for name, spec_in in zip(n.input, opspec.op(n.op_type).inputs)
                            if name and spec_in.type == "tensor(float)")
    others = [o for o in model.opset_import if o.domain != opspec.DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(others + [helper.make_opsetid(opspec.DOMAIN, opspec.OP_VERSION)])
    model.ir_version = IR_VERSION
    _fill_absent_inputs(model, T)
    if not check_types:
        return model

    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    stray = []
    for init in g.initializer:
        if init.data_type in float_types and init.data_type != T and init.name not in scale_inputs:
            stray.append(f"initializer {init.name} ({TensorProto.DataType.Name(init.data_type)})")
        if init.name in scale_inputs and init.data_type != TensorProto.FLOAT:
            stray.append(f"weight_scale {init.name} must be float32")
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.t and a.t.data_type in float_types and a.t.data_type != T:
                    stray.append(f"Constant {n.output[0]} ({TensorProto.DataType.Name(a.t.data_type)})")
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i in float_types and a.i != T:
                    stray.append(f"Cast {n.output[0]} to {TensorProto.DataType.Name(a.i)}")
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        et = vi.type.tensor_type.elem_type
        if et in float_types and et != T and vi.name not in scale_inputs:
            stray.append(f"value {vi.name} ({TensorProto.DataType.Name(et)})")
    if stray:
        raise RuntimeError("exported graph has tensors outside the module dtype "
                           f"{TensorProto.DataType.Name(T)}: " + "; ".join(stray))
    return model


# Element type of an absent optional input given as a shape-[0] tensor: the input's fixed type in
# the contract, else the node's T.
_FIXED_TYPES = {"tensor(float)": TensorProto.FLOAT, "tensor(int32)": TensorProto.INT32}


def _fill_absent_inputs(model: onnx.ModelProto, T: int) -> None:
    """Only trailing inputs of a dsattn node may be absent (left out); an absent input before a
    present one becomes a shape-[0] initializer, which every dsattn runtime reads as absent
    (OPS.md). Why: TensorRT's ONNX parser hands every empty input name to the plugin as a null
    ITensor, and what TensorRT makes of a null plugin input is not defined, while a zero-volume
    constant is an ordinary tensor. Trailing empty names are dropped here: the parser does not
    trim them."""
    g = model.graph
    taken = {i.name for i in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    # The node's T from its typed float inputs where the graph states them (a whole decoder's
    # QKVGemm may run in another type than the model's T); ``T`` otherwise.
    known = {i.name: i.data_type for i in g.initializer}
    known.update({v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info)})
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    made: dict[int, str] = {}
    for n in g.node:
        if n.domain != opspec.DOMAIN:
            continue
        ins = list(n.input)
        while ins and not ins[-1]:
            ins.pop()
        for i, name in enumerate(ins):
            if name:
                continue
            spec_in = opspec.op(n.op_type).inputs
            node_t = next((known[x] for j, x in enumerate(ins) if x and spec_in[j].type not in _FIXED_TYPES
                           and known.get(x) in floats), T)
            et = _FIXED_TYPES.get(spec_in[i].type, node_t)
            if et not in made:
                base = f"dsattn_absent_{helper.tensor_dtype_to_np_dtype(et).name}"
                while base in taken:
                    base += "_"
                made[et] = base
                g.initializer.append(helper.make_tensor(base, et, [0], []))
            ins[i] = made[et]
        del n.input[:]
        n.input.extend(ins)


def _check_positive(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    if v > INT32_MAX:  # cache positions and sizes are int32 in the graph and in the plugins
        raise ValueError(f"{name}={v} does not fit int32")
    return v


def _check_memory(shape: tuple[int, ...], T: torch.dtype, device: torch.device) -> None:
    """The export traces with a real example KV cache (past_key and past_value of ``shape``): size it
    against the device's memory first, so a huge capacity is an error naming it, not an allocator
    failure (or a machine swapping) deep inside torch."""
    need = 2 * math.prod(shape) * torch.empty((), dtype=T).element_size()
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[1]
    else:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have // 2:  # tracing holds copies of the example inputs
        raise ValueError(f"capacity={shape[2]}: the example KV cache the export traces with (batch {shape[0]}) needs "
                         f"{need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.1f} GiB "
                         f"({device.type} memory)")


def export_onnx(module: DeepSpeedSelfAttention, path: Union[str, os.PathLike], *, batch: int, seq: int,
                capacity: int, dynamic: bool = True, opset: int = OPSET) -> str:
    """Export ``module`` to an ONNX model with dsattn custom ops; returns the path written.

    batch, seq: example batch size and new-token count (with ``dynamic=True`` both axes are
    dynamic and the example is traced with at least 2 of each, since torch.export specializes
    sizes 0 and 1); capacity: KV-cache capacity Tmax (static). Weights are initializers, stored
    as external data (``<file>.data``) when the model exceeds 2 GB. The model is checked with
    ``onnx.checker`` before returning.
    """
    if not isinstance(module, DeepSpeedSelfAttention):
        raise TypeError(f"module must be a DeepSpeedSelfAttention/BloomSelfAttention, got {type(module).__name__}")
    _check_positive("batch", batch)
    _check_positive("seq", seq)
    _check_positive("capacity", capacity)
    if seq > capacity:
        raise ValueError(f"seq={seq} exceeds capacity={capacity}")
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {dynamic!r}")
    if not isinstance(opset, int) or not 18 <= opset <= 23:
        raise ValueError(f"opset must be an int in [18, 23], got {opset!r}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    register_onnx_schemas()

    c = module.config
    T = module.activation_dtype
    dev = module.attn_qkvw.device
    B, S = (max(batch, 2), max(seq, 2)) if dynamic else (batch, seq)
    if S > capacity:
        raise ValueError(f"dynamic export traces with seq >= 2, which exceeds capacity={capacity}")
    Hkv, D = c.kv_heads_per_partition, c.head_size
    _check_memory((B, Hkv, capacity, D), T, dev)
    args = (torch.randn(B, S, c.hidden_size, dtype=T, device=dev),
            torch.zeros(B, Hkv, capacity, D, dtype=T, device=dev),
            torch.zeros(B, Hkv, capacity, D, dtype=T, device=dev),
            torch.zeros(B, dtype=torch.int32, device=dev),
            torch.zeros(B, dtype=torch.int32, device=dev))
    dyn = None
    if dynamic:
        bd = torch.export.Dim("batch", min=1)
        sd = torch.export.Dim("seq", min=1, max=capacity)
        dyn = {"hidden_states": {0: bd, 1: sd}, "past_key": {0: bd}, "past_value": {0: bd},
               "seq_lens": {0: bd}, "start_pos": {0: bd}}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Notes from torch's own internals, not about this model: pytree API deprecation, and
            # the same "batch" axis named on several inputs (intended: they share one dimension).
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
            prog = torch.onnx.export(_Flat(module).eval(), args, dynamo=True, input_names=list(INPUT_NAMES),
                                     output_names=list(OUTPUT_NAMES), dynamic_shapes=dyn, opset_version=opset,
                                     custom_translation_table=translation_table(), optimize=True,
                                     external_data=False, verbose=False)
    finally:
        module.train(was_training)
    model = _post_process(prog.model_proto, _ONNX_OF_TORCH[T])
    meta = {"dsattn.config": json.dumps(c.to_dict()), "dsattn.module": type(module).__name__,
            "dsattn.quantized": str(int(module.quantized)), "dsattn.capacity": str(capacity)}
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Staged next to `path`, checked, then renamed: a failed write or check leaves the previous
    # model (and its external data) as they were.
    save_onnx_atomic(model, path, check=lambda p: onnx.checker.check_model(str(p), full_check=True))
    return str(path)
