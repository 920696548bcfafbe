"""The op contract of docs/OPS.md in code: domain, version, and per op its inputs, outputs and
attributes (ONNX type, default or derivation rule, inclusive range, flag-ness, required-ness), with
the functions that resolve and check an attribute set.

Every Python layer reads this module: the reference ops (``ops``), the ONNX schemas and the
exporter's checks (``onnx_export``), the reference evaluator and the lowering for ONNX Runtime
(``dsattn.tools.lower``). The C++ plugins keep their own attribute tables (C++ cannot import
Python); ``tests/test_opspec.py`` parses them and holds them equal to this module.

Deliberately free of torch and onnx (plain Python), so every layer can import it cheaply.

Conventions:

- Unset: an attribute that is absent from the mapping, or given as ``None``, is unset. An unset
  attribute takes its default, or its derived value (``num_kv_heads`` = ``num_heads``, ``scale`` =
  1/sqrt(``head_size``)), or is an error when it is required. No other sentinel exists: an explicit
  ``scale=nan`` is a non-finite value and an error, never "use the default".
- INT values are Python ints (bool only for flags) that fit int32: TensorRT's ONNX parser reads
  every INT attribute as int32, so a larger value would arrive truncated.
- FLOAT / FLOATS values must be finite and representable in float32 (ONNX FLOAT is float32).
- Errors are ``ValueError`` naming the op (or the node), the attribute and the value.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = ["DOMAIN", "OP_VERSION", "PLUGIN_ATTRS", "INT", "FLOAT", "FLOATS", "STRING", "ONNX_ATTR_TYPE",
           "INT32_MIN", "INT32_MAX", "FLT_MAX", "FLOAT_TYPES", "Input", "Output", "Attr", "OpSpec", "OPS",
           "OP_TYPES", "op", "resolve", "node_attributes"]

DOMAIN = "dsattn"
OP_VERSION = 1
# STRING attributes every node carries so that TensorRT's ONNX parser finds the plugin creator
# (op_type, plugin_version, plugin_namespace); implementations accept exactly these values.
PLUGIN_ATTRS = {"plugin_version": str(OP_VERSION), "plugin_namespace": DOMAIN}

INT, FLOAT, FLOATS, STRING = "INT", "FLOAT", "FLOATS", "STRING"
# onnx.AttributeProto.AttributeType codes (fixed by the ONNX format).
ONNX_ATTR_TYPE = {FLOAT: 1, INT: 2, STRING: 3, FLOATS: 6}
_ATTR_TYPE_NAME = {1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH", 6: "FLOATS", 7: "INTS",
                   8: "STRINGS", 9: "TENSORS", 10: "GRAPHS", 11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS",
                   13: "TYPE_PROTO", 14: "TYPE_PROTOS"}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLT_MAX = 3.4028234663852886e38  # largest finite float32
MAX_HEADS = 1 << 16  # most heads (and head size, rotary dims) a node may declare

# Type constraint T of OPS.md: every T of one node is the same one of these.
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")


@dataclass(frozen=True)
class Input:
    """One positional input: ``type`` is a constraint name of the op (``"T"``) or an ONNX type."""

    name: str
    type: str
    optional: bool = False


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    optional: bool = False


@dataclass(frozen=True)
class Attr:
    """One attribute. Exactly one of: ``required``, a literal ``default``, or ``derive`` (the rule
    computing the value of an unset attribute from the other, resolved attributes; ``rule`` says it
    in words). ``lo``/``hi``: inclusive range of an INT / FLOAT value (FLOATS: of each element,
    which must be finite float32, at most ``max_count`` of them). ``choices``: meaning of each
    allowed INT value, for messages; ``flag``: INT 0/1 switch."""

    name: str
    kind: str
    default: Any = None
    required: bool = False
    derive: Optional[Callable[[Mapping[str, Any]], Any]] = None
    rule: str = ""
    lo: Optional[float] = None
    hi: Optional[float] = None
    flag: bool = False
    choices: Optional[Mapping[int, str]] = None
    max_count: int = 1

    def __post_init__(self):
        sources = [self.required, self.default is not None, self.derive is not None]
        if sum(sources) != 1:
            raise AssertionError(f"attribute {self.name}: give exactly one of required, default, derive")
        if self.kind not in (INT, FLOAT, FLOATS):
            raise AssertionError(f"attribute {self.name}: kind {self.kind!r}")
        if self.flag and (self.kind != INT or (self.lo, self.hi) != (0, 1)):
            raise AssertionError(f"attribute {self.name}: a flag is INT in [0, 1]")
        if self.kind == INT and not (INT32_MIN <= self.lo <= self.hi <= INT32_MAX):
            raise AssertionError(f"attribute {self.name}: INT range must lie in int32")

    @property
    def has_default(self) -> bool:
        """A literal default (OPS.md's default column holds a value, not a rule)."""
        return self.default is not None

    @property
    def onnx_type(self) -> int:
        return ONNX_ATTR_TYPE[self.kind]


@dataclass(frozen=True)
class OpSpec:
    """One op: inputs (positional; required ones first), outputs, type constraints, attributes,
    and ``check``: the rules that tie several attributes together (given the resolved values)."""

    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    type_constraints: Mapping[str, tuple[str, ...]]
    attrs: tuple[Attr, ...]
    check: Callable[[Mapping[str, Any], Callable[[str], None]], None] = lambda a, fail: None
    doc: str = ""
    attr: Mapping[str, Attr] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "attr", {a.name: a for a in self.attrs})

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def n_required_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.optional)


# ------------------------------------------------------------------------------------------------
# the three ops (OPS.md §1-§3)
# ------------------------------------------------------------------------------------------------

def _check_qkv_gemm(a: Mapping[str, Any], fail: Callable[[str], None]) -> None:
    if a["group_size"] != 0 and a["quantized"] != 1:
        fail(f"attribute group_size={a['group_size']} is only meaningful with quantized=1")


def _check_softmax_context(a: Mapping[str, Any], fail: Callable[[str], None]) -> None:
    H, Hkv, D = a["num_heads"], a["num_kv_heads"], a["head_size"]
    if H % Hkv:
        fail(f"attribute num_kv_heads must be positive and divide num_heads={H}, got {Hkv}")
    if a["qkv_layout"] == 1 and Hkv != H:
        fail(f"qkv_layout=1 requires num_kv_heads == num_heads, got num_kv_heads={Hkv}, num_heads={H}")
    if a["rotary_dim"] % 2 or a["rotary_dim"] > D:
        fail(f"attribute rotary_dim must be even and in [0, head_size={D}], got {a['rotary_dim']}")
    if a["rotary_dim"] and not a["rope_theta"] > 0:
        fail(f"attribute rope_theta must be > 0 when rotary_dim > 0, got {a['rope_theta']!r}")
    if a["alibi_slopes"] and len(a["alibi_slopes"]) != H:
        fail(f"attribute alibi_slopes must have num_heads={H} values, got {len(a['alibi_slopes'])}")


QKV_GEMM = OpSpec(
    "QKVGemm",
    inputs=(Input("input", "T"), Input("weight", "W"), Input("bias", "T", True), Input("gamma", "T", True),
            Input("beta", "T", True), Input("weight_scale", "tensor(float)", True)),
    outputs=(Output("qkv", "T"), Output("normed", "T", True)),
    type_constraints={"T": FLOAT_TYPES, "W": FLOAT_TYPES + ("tensor(int8)",)},
    attrs=(
        Attr("norm_type", INT, default=1, lo=0, hi=2, choices={0: "none", 1: "LayerNorm", 2: "RMSNorm"}),
        Attr("epsilon", FLOAT, default=1e-5, lo=0.0, hi=FLT_MAX),
        Attr("quantized", INT, default=0, lo=0, hi=1, flag=True),
        Attr("group_size", INT, default=0, lo=0, hi=INT32_MAX),
        Attr("emit_normed", INT, default=0, lo=0, hi=1, flag=True),
    ),
    check=_check_qkv_gemm,
    doc="dsattn QKVGemm (OPS.md section 1): qkv = norm(input) @ W + bias",
)

SOFTMAX_CONTEXT = OpSpec(
    "SoftmaxContext",
    inputs=(Input("qkv", "T"), Input("past_key", "T"), Input("past_value", "T"), Input("seq_lens", "tensor(int32)"),
            Input("start_pos", "tensor(int32)", True)),
    outputs=(Output("context", "T"), Output("present_key", "T"), Output("present_value", "T")),
    type_constraints={"T": FLOAT_TYPES},
    attrs=(
        Attr("num_heads", INT, required=True, lo=1, hi=MAX_HEADS),
        Attr("num_kv_heads", INT, derive=lambda a: a["num_heads"], rule="= num_heads", lo=1, hi=MAX_HEADS),
        Attr("head_size", INT, required=True, lo=1, hi=MAX_HEADS),
        Attr("scale", FLOAT, derive=lambda a: 1.0 / math.sqrt(a["head_size"]), rule="1/sqrt(head_size)",
             lo=-FLT_MAX, hi=FLT_MAX),
        Attr("qkv_layout", INT, default=0, lo=0, hi=1, choices={0: "blocked", 1: "per-head interleaved"}),
        Attr("causal", INT, default=1, lo=0, hi=1, flag=True),
        Attr("local_window", INT, default=0, lo=0, hi=INT32_MAX),
        Attr("rotary_dim", INT, default=0, lo=0, hi=MAX_HEADS),
        Attr("rotary_style", INT, default=0, lo=0, hi=1, choices={0: "rotate_half", 1: "rotate_every_two"}),
        Attr("rope_theta", FLOAT, default=10000.0, lo=0.0, hi=FLT_MAX),
        Attr("alibi_slopes", FLOATS, default=(), lo=-FLT_MAX, hi=FLT_MAX, max_count=MAX_HEADS),
    ),
    check=_check_softmax_context,
    doc="dsattn SoftmaxContext (OPS.md section 2): rotary, KV-cache append, attention",
)

INT8_MATMUL = OpSpec(
    "Int8MatMul",
    inputs=(Input("input", "T"), Input("weight", "tensor(int8)"), Input("weight_scale", "tensor(float)"),
            Input("bias", "T", True)),
    outputs=(Output("output", "T"),),
    type_constraints={"T": FLOAT_TYPES},
    attrs=(Attr("group_size", INT, default=0, lo=0, hi=INT32_MAX),),
    doc="dsattn Int8MatMul (OPS.md section 3): y = input @ dequant(weight)^T + bias",
)

OPS: dict[str, OpSpec] = {s.name: s for s in (QKV_GEMM, SOFTMAX_CONTEXT, INT8_MATMUL)}
OP_TYPES = tuple(OPS)


def op(op_type: str) -> OpSpec:
    """The spec of ``op_type``; ValueError naming the known ops otherwise."""
    spec = OPS.get(op_type)
    if spec is None:
        raise ValueError(f"unknown dsattn op {op_type!r}; OPS.md version {OP_VERSION} defines {OP_TYPES}")
    return spec


# ------------------------------------------------------------------------------------------------
# resolving and checking attribute values
# ------------------------------------------------------------------------------------------------

def _fmt_range(a: Attr) -> str:
    if a.flag:
        return "0 or 1"
    if a.choices:
        items = [f"{k} ({v})" for k, v in a.choices.items()]
        return ", ".join(items[:-1]) + " or " + items[-1]
    if a.kind == INT:
        return f"an int in [{int(a.lo)}, {int(a.hi)}]"
    return f"finite and in [{a.lo:g}, {a.hi:g}]"


def _value(a: Attr, v: Any, fail: Callable[[str], None]) -> Any:
    """One attribute value checked against its kind and range; returns it as int / float / tuple."""
    if a.kind == INT:
        if isinstance(v, bool) and a.flag:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            fail(f"attribute {a.name} must be an INT, got {v!r} ({type(v).__name__})")
        v = int(v)
        if not INT32_MIN <= v <= INT32_MAX:
            fail(f"attribute {a.name}={v} does not fit int32 (TensorRT's ONNX parser reads INT attributes "
                 "as int32)")
        if not a.lo <= v <= a.hi:
            fail(f"attribute {a.name} must be {_fmt_range(a)}, got {v}")
        return v
    if a.kind == FLOAT:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            fail(f"attribute {a.name} must be a FLOAT, got {v!r} ({type(v).__name__})")
        v = float(v)
        if not math.isfinite(v):
            fail(f"attribute {a.name} must be finite, got {v!r}")
        if not a.lo <= v <= a.hi:
            fail(f"attribute {a.name} must be {_fmt_range(a)}, got {v!r}")
        return v
    # FLOATS
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        fail(f"attribute {a.name} must be a FLOATS list, got {v!r} ({type(v).__name__})")
    vals = list(v.reshape(-1) if hasattr(v, "reshape") else v)
    if len(vals) > a.max_count:
        fail(f"attribute {a.name} has {len(vals)} values, at most {a.max_count} are allowed")
    out = []
    for i, x in enumerate(vals):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            fail(f"attribute {a.name}[{i}] must be a FLOAT, got {x!r} ({type(x).__name__})")
        x = float(x)
        if not math.isfinite(x) or not a.lo <= x <= a.hi:
            fail(f"attribute {a.name}[{i}] must be {_fmt_range(a)}, got {x!r}")
        out.append(x)
    return tuple(out)


def resolve(op_type: str, attrs: Mapping[str, Any], where: Optional[str] = None) -> dict[str, Any]:
    """Every attribute of ``op_type`` with its value: the given ones checked, the unset ones (absent
    or None) defaulted or derived. ``plugin_version``/``plugin_namespace`` may be present and must
    then name this contract. Raises ValueError "<where>: attribute <name> ..." (``where`` defaults
    to the op type) for unknown names, missing required attributes, wrong kinds, values outside
    int32 or their range, non-finite floats and broken cross-attribute rules."""
    spec = op(op_type)
    label = where or op_type

    def fail(msg: str) -> None:
        raise ValueError(f"{label}: {msg}")

    for k, v in attrs.items():
        if k in PLUGIN_ATTRS:
            if v is not None and str(v) != PLUGIN_ATTRS[k]:
                what = "version" if k == "plugin_version" else "namespace"
                fail(f"unsupported {k}={v!r}; this implementation implements {what} {PLUGIN_ATTRS[k]!r} of OPS.md")
        elif k not in spec.attr:
            fail(f"unknown attribute {k!r} (known: {sorted(list(spec.attr) + list(PLUGIN_ATTRS))})")
    out: dict[str, Any] = {}
    for a in spec.attrs:  # given and literal-default values first: derivations read them
        v = attrs.get(a.name)
        if v is not None:
            out[a.name] = _value(a, v, fail)
        elif a.required:
            fail(f"required attribute {a.name} is missing")
        elif a.has_default:
            out[a.name] = a.default
    for a in spec.attrs:
        if a.name not in out:
            out[a.name] = _value(a, a.derive(out), fail)
    spec.check(out, fail)
    return {a.name: out[a.name] for a in spec.attrs}


def node_attributes(node: Any, where: Optional[str] = None) -> dict[str, Any]:
    """The attributes of an ONNX ``NodeProto`` of a dsattn op as ``{name: value}`` (only those
    present, plugin_version/plugin_namespace included), each checked to have the ONNX type of the
    spec; pass the result to ``resolve``. Reads the proto's fields directly (no onnx import)."""
    spec = op(node.op_type)
    label = where or node.op_type
    out: dict[str, Any] = {}
    for attr in node.attribute:
        name = attr.name
        if name in out:
            raise ValueError(f"{label}: attribute {name} is given twice")
        want = STRING if name in PLUGIN_ATTRS else (spec.attr[name].kind if name in spec.attr else None)
        if want is None:
            raise ValueError(f"{label}: unknown attribute {name!r} (known: "
                             f"{sorted(list(spec.attr) + list(PLUGIN_ATTRS))})")
        if attr.type != ONNX_ATTR_TYPE[want]:
            raise ValueError(f"{label}: attribute {name} must be {want}, got "
                             f"{_ATTR_TYPE_NAME.get(attr.type, str(attr.type))}")
        out[name] = {INT: lambda: attr.i, FLOAT: lambda: attr.f, FLOATS: lambda: tuple(attr.floats),
                     STRING: lambda: attr.s.decode("utf-8", "replace")}[want]()
    return out
