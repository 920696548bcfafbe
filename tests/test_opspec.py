"""The op contract (dsattn.export.opspec) against its other copies, without a GPU or TensorRT:

- the C++ attribute tables that the TensorRT plugins and the ONNX Runtime custom ops read
  (plugins/common/op_attrs.cpp; each plugin's creator names its table), parsed from the sources:
  names and order, kinds, required-ness, defaults, ranges, FLOATS counts, that the derived
  attributes are resolved, the version/namespace, and the plugins' input names and counts;
- the ctypes mirrors of the kernels' params structs (dsattn.tools.kernels) against the C headers
  plugins/kernels/*.h, field by field (names, order, C types), both parsed at test time;
- the ONNX schemas registered from the spec;
- the resolve rules (unset convention, derived defaults, int32, non-finite floats) in every layer.
"""
from __future__ import annotations

import ast
import ctypes
import importlib
import math
import operator
import pkgutil
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from dsattn.export import opspec

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

# ------------------------------------------------------------------------------------------------
# a small C expression reader (constants of the attribute tables)
# ------------------------------------------------------------------------------------------------

# <climits> / <cfloat> / <cstdint> names the tables use.
C_MACROS = {"INT32_MAX": 2**31 - 1, "INT32_MIN": -(2**31), "INT_MAX": 2**31 - 1, "FLT_MAX": opspec.FLT_MAX}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift,
           ast.Div: operator.truediv}


def c_eval(expr: str, names: dict) -> float:
    """Value of a C constant expression made of literals, known names, + - * / << and parentheses."""
    expr = re.sub(r"(?<=\d)[fFuUlL]+\b", "", expr.strip())  # 1.0f, 10u

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in names:
                return names[node.id]
            raise ValueError(f"unknown name {node.id!r} in C expression {expr!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot read C expression {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def _constants(src: str) -> dict:
    names = dict(C_MACROS)
    for m in re.finditer(r"constexpr\s+[\w:]+\s+(k\w+)\s*=\s*([^;]+);", src):
        try:
            names[m.group(1)] = c_eval(m.group(2), names)
        except (ValueError, SyntaxError):
            pass  # strings and the like: not used in the tables
    return names


def _split_top(s: str) -> list[str]:
    """Split on commas outside parentheses / braces."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def parse_attr_table(src: str, function: str) -> list[dict]:
    """The rows of the ``kTABLE`` that ``std::vector<AttrSpec> const& <function>()`` returns, in the
    order of AttrSpec's fields (plugins/common/op_attrs.h): name, kind, required, hasDefault,
    default, lo, hi, maxCount."""
    src = _strip_comments(src)
    names = _constants(src)
    m = re.search(rf"std::vector<AttrSpec>\s+const\s*&\s*{function}\s*\(\s*\)\s*\{{(.*?)return\s+kTABLE\s*;", src,
                  re.S)
    assert m, f"no table function {function}()"
    body = re.search(r"std::vector<AttrSpec>\s+const\s+kTABLE\s*=\s*\{(.*?)\};", m.group(1), re.S)
    assert body, f"{function}() holds no kTABLE"
    rows = []
    for row in re.findall(r"\{([^{}]*)\}", body.group(1)):
        f = _split_top(row)
        assert len(f) == 8, f"kTABLE row {row!r} does not have the 8 AttrSpec fields"
        kind = re.fullmatch(r"AttrKind::k(INT|FLOAT|FLOATS)", f[1])
        assert kind, f"kTABLE row {row!r}: kind {f[1]!r}"
        rows.append(dict(name=ast.literal_eval(f[0]), kind=kind.group(1),
                         required={"true": True, "false": False}[f[2]], has_default={"true": True, "false": False}[f[3]],
                         default=c_eval(f[4], names), lo=c_eval(f[5], names), hi=c_eval(f[6], names),
                         max_count=int(c_eval(f[7], names))))
    return rows


OP_ATTRS = PLUGINS / "common" / "op_attrs.cpp"  # the C++ attribute tables both runtimes read


def plugin_sources() -> dict[str, tuple[str, str]]:
    """op type (kNAME) -> (TensorRT plugin source text, name of the table function its creator
    reads), for every plugins/<op>/<op>_plugin.cpp."""
    out = {}
    for path in sorted(PLUGINS.glob("*/*_plugin.cpp")):
        src = _strip_comments(path.read_text())
        m = re.search(r'constexpr\s+char\s+const\s*\*\s*kNAME\s*=\s*"(\w+)"', src)
        assert m, f"{path}: no kNAME"
        t = re.search(r"Creator\s+\w+\s*\(\s*kNAME\s*,\s*&\s*(?:ops::)?(\w+)\s*\(\s*\)", src)
        assert t, f"{path}: no Creator(kNAME, &<table>(), ...)"
        out[m.group(1)] = (src, t.group(1))
    return out


def _f32(x: float) -> float:
    return float(np.float32(x))


# ------------------------------------------------------------------------------------------------
# C++ attribute tables == spec
# ------------------------------------------------------------------------------------------------

def test_every_op_has_a_plugin_and_every_plugin_an_op():
    assert sorted(plugin_sources()) == sorted(opspec.OP_TYPES)


@pytest.mark.parametrize("op_type", opspec.OP_TYPES)
def test_plugin_attribute_table_equals_spec(op_type):
    _, function = plugin_sources()[op_type]
    op_attrs = OP_ATTRS.read_text()
    rows = parse_attr_table(op_attrs, function)
    spec = opspec.op(op_type)
    assert [r["name"] for r in rows] == [a.name for a in spec.attrs], "attribute names / order differ"
    for r in rows:
        a = spec.attr[r["name"]]
        where = f"{op_type}.{a.name}"
        assert r["kind"] == a.kind, where
        assert r["required"] == a.required, f"{where}: required"
        assert r["has_default"] == a.has_default, f"{where}: literal default vs rule"
        if a.kind == opspec.FLOATS:
            assert r["max_count"] == a.max_count, f"{where}: most values"
            assert a.default in (None, ()), where  # the only FLOATS default C++ knows: empty
            continue
        assert r["max_count"] == 1, f"{where}: maxCount of a scalar"
        if a.has_default:
            want = a.default if a.kind == opspec.INT else _f32(a.default)
            got = r["default"] if a.kind == opspec.INT else _f32(r["default"])
            assert got == want, f"{where}: default C++ {r['default']!r} vs spec {a.default!r}"
        assert (r["lo"], r["hi"]) == (a.lo, a.hi), f"{where}: range C++ [{r['lo']}, {r['hi']}] vs spec [{a.lo}, {a.hi}]"
        if a.derive is not None:
            # C++ resolves the unset attribute itself (OPS.md's rule): op_attrs assigns it, and
            # every runtime that reads the table asks whether the node set it
            assert re.search(rf"\ba\.{a.name}\s*=", _strip_comments(op_attrs)), f"{where}: never resolved"
            for src in RUNTIME_SOURCES:
                text = src.read_text()
                if re.search(rf"\b{function}\s*\(", text):
                    assert f'isSet("{a.name}")' in text, f"{where}: {src.name} never asks whether it is set"


RUNTIME_SOURCES = sorted(PLUGINS.glob("*/*_plugin.cpp")) + sorted((PLUGINS / "ort").glob("*.cpp"))


@pytest.mark.parametrize("op_type", opspec.OP_TYPES)
def test_plugin_input_names_equal_spec(op_type):
    src, _ = plugin_sources()[op_type]
    m = re.search(r"kINPUT_NAMES\[[^\]]*\]\s*=\s*\{([^}]*)\}", src)
    if m:
        assert [ast.literal_eval(x) for x in _split_top(m.group(1))] == list(opspec.op(op_type).input_names)
    # the input index enum must cover exactly the spec's inputs
    idx = [int(v) for v in re.findall(r"kIN_\w+\s*=\s*(\d+)", src)]
    assert idx and max(idx) + 1 == len(opspec.op(op_type).inputs), f"{op_type}: input enum {idx}"


def test_plugin_version_and_namespace_equal_spec():
    want = {"VERSION": opspec.PLUGIN_ATTRS["plugin_version"], "NAMESPACE": opspec.PLUGIN_ATTRS["plugin_namespace"]}
    for header, prefix in (("plugin_common.h", "kPLUGIN"), ("op_attrs.h", "kOP")):
        src = (PLUGINS / "common" / header).read_text()
        got = dict(re.findall(rf'constexpr\s+char\s+const\s*\*\s*{prefix}_(VERSION|NAMESPACE)\s*=\s*"([^"]*)"', src))
        assert got == want, header
    for src in sorted((PLUGINS / "ort").glob("*.cpp")):  # ONNX Runtime: the op-set version as an int
        for v in re.findall(r"constexpr\s+int\s+kOP_VERSION\s*=\s*(\d+)\s*;", src.read_text()):
            assert int(v) == opspec.OP_VERSION, src.name


def test_table_parser_reads_what_it_claims():
    """The reader itself: constants, shifts, negation, float macros, comments, wrong rows."""
    src = """constexpr int32_t kMAX = 1 << 4;  // 16
    std::vector<AttrSpec> const& fooTable() {
      static std::vector<AttrSpec> const kTABLE = {
        // name, kind, required, hasDefault, default, lo, hi, maxCount
        {"a", AttrKind::kINT, true, false, 0, 1, kMAX, 1},  /* a comment */
        {"b", AttrKind::kFLOAT, false, true, 1e-5, -FLT_MAX, FLT_MAX, 1},
      };
      return kTABLE;
    }
    std::vector<AttrSpec> const& barTable() {
      static std::vector<AttrSpec> const kTABLE = {{"a", AttrKind::kINT, true}};
      return kTABLE;
    }
    """
    rows = parse_attr_table(src, "fooTable")
    assert rows[0] == dict(name="a", kind="INT", required=True, has_default=False, default=0, lo=1, hi=16,
                           max_count=1)
    assert rows[1]["lo"] == -opspec.FLT_MAX and rows[1]["default"] == 1e-5 and len(rows) == 2
    with pytest.raises(AssertionError, match="8 AttrSpec fields"):
        parse_attr_table(src, "barTable")
    with pytest.raises(AssertionError, match="no table function bazTable"):
        parse_attr_table(src, "bazTable")
    with pytest.raises(ValueError, match="unknown name"):
        c_eval("kNOPE + 1", {})


# ------------------------------------------------------------------------------------------------
# ctypes params structs == C headers
# ------------------------------------------------------------------------------------------------

# C scalar type -> ctypes type of the same size and kind.
C_SCALARS = {"int8_t": ctypes.c_int8, "uint8_t": ctypes.c_uint8, "int16_t": ctypes.c_int16,
             "uint16_t": ctypes.c_uint16, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
             "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "int": ctypes.c_int,
             "unsigned": ctypes.c_uint, "float": ctypes.c_float, "double": ctypes.c_double,
             "size_t": ctypes.c_size_t, "char": ctypes.c_char}


def parse_c_structs(headers) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    """(struct name -> [(field, C type)], enum typedef names) of ``typedef struct X {...} X;``."""
    structs, enums = {}, set()
    for h in headers:
        src = _strip_comments(Path(h).read_text())
        enums.update(re.findall(r"typedef\s+enum\s+\w*\s*\{[^}]*\}\s*(\w+)\s*;", src))
        for name, body, alias in re.findall(r"typedef\s+struct\s+(\w+)\s*\{([^}]*)\}\s*(\w+)\s*;", src):
            fields = []
            for decl in body.split(";"):
                decl = " ".join(decl.split())
                if not decl:
                    continue
                m = re.fullmatch(r"(.*?[\s*])(\w+)(\[\d+\])?", decl)
                assert m and not m.group(3), f"{name}: cannot read field declaration {decl!r}"
                ctype = re.sub(r"\bconst\b", "", m.group(1)).replace(" ", "")
                fields.append((m.group(2), ctype))
            structs[alias] = fields
    return structs, enums


def _ctypes_for(ctype: str, enums: set[str]):
    """The ctypes types that mirror C type ``ctype`` (pointers: any pointer-sized pointer type)."""
    if ctype.endswith("*"):
        return (ctypes.c_void_p, ctypes.c_char_p, ctypes._Pointer)
    if ctype in enums:
        return (ctypes.c_int,)  # a C enum with small values is int-sized (C ABI on every target)
    assert ctype in C_SCALARS, f"no ctypes mirror known for C type {ctype!r}"
    return (C_SCALARS[ctype],)


def ctypes_mirrors() -> dict[str, list[type]]:
    """C struct name -> the ctypes.Structure classes of dsattn.tools.kernels whose docstring names it."""
    import dsattn.tools.kernels as pkg

    out: dict[str, list[type]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, ctypes.Structure) and obj.__module__ == mod.__name__:
                names = re.findall(r"\b(dsattn_\w+)\b", obj.__doc__ or "")
                assert names, f"{mod.__name__}.{obj.__name__}: its docstring must name the C struct it mirrors"
                out.setdefault(names[0], []).append(obj)
    return out


def _kernel_headers():
    return sorted((PLUGINS / "kernels").glob("*.h"))


def test_every_params_struct_has_a_ctypes_mirror():
    structs, _ = parse_c_structs(_kernel_headers())
    mirrors = ctypes_mirrors()
    params = {n for n in structs if n.endswith("_params")}
    assert params, "no params structs found in plugins/kernels/*.h"
    assert params <= set(mirrors), f"no ctypes mirror for {sorted(params - set(mirrors))}"
    assert set(mirrors) <= set(structs), f"mirrors of unknown C structs {sorted(set(mirrors) - set(structs))}"


def test_ctypes_structs_equal_c_headers_field_by_field():
    structs, enums = parse_c_structs(_kernel_headers())
    for cname, classes in ctypes_mirrors().items():
        c_fields = structs[cname]
        for cls in classes:
            py = [(f[0], f[1]) for f in cls._fields_]
            where = f"{cls.__module__}.{cls.__name__} vs {cname}"
            assert [n for n, _ in py] == [n for n, _ in c_fields], f"{where}: field names / order"
            for (fname, ctype), (_, pytype) in zip(c_fields, py):
                allowed = _ctypes_for(ctype, enums)
                ok = any(pytype is t or (isinstance(t, type) and issubclass(pytype, t)) for t in allowed)
                assert ok, f"{where}: field {fname} is C {ctype}, ctypes {pytype.__name__}"


def test_struct_parser_reads_what_it_claims(tmp_path):
    h = tmp_path / "x.h"
    h.write_text("typedef enum e_t { A = 0 } e_t;\n"
                 "typedef struct s_params {\n  const void* a;  // comment\n  int64_t n; /* c */ e_t d;\n"
                 "  const float* f;\n} s_params;\n")
    structs, enums = parse_c_structs([h])
    assert structs == {"s_params": [("a", "void*"), ("n", "int64_t"), ("d", "e_t"), ("f", "float*")]}
    assert enums == {"e_t"}
    assert _ctypes_for("e_t", enums) == (ctypes.c_int,)
    with pytest.raises(AssertionError, match="no ctypes mirror"):
        _ctypes_for("long double", enums)


# ------------------------------------------------------------------------------------------------
# the spec drives the Python layers
# ------------------------------------------------------------------------------------------------

def test_onnx_schemas_come_from_the_spec():
    from onnx import defs

    from dsattn.export.onnx_export import register_onnx_schemas

    register_onnx_schemas()
    for spec in opspec.OPS.values():
        s = defs.get_schema(spec.name, opspec.OP_VERSION, opspec.DOMAIN)
        assert [i.name for i in s.inputs] == list(spec.input_names)
        assert [o.name for o in s.outputs] == [o.name for o in spec.outputs]
        assert set(s.attributes) == {a.name for a in spec.attrs} | set(opspec.PLUGIN_ATTRS)
        for a in spec.attrs:
            sa = s.attributes[a.name]
            assert sa.type == getattr(defs.OpSchema.AttrType, a.kind) and sa.required == a.required
            if a.has_default and a.default != ():
                assert oh.get_attribute_value(sa.default_value) == pytest.approx(a.default)


def test_resolve_unset_defaults_and_derived():
    a = opspec.resolve("SoftmaxContext", dict(num_heads=8, head_size=64, num_kv_heads=None, scale=None))
    assert a["num_kv_heads"] == 8 and a["scale"] == 1 / 8 and a["causal"] == 1 and a["alibi_slopes"] == ()
    assert opspec.resolve("QKVGemm", {}) == dict(norm_type=1, epsilon=1e-5, quantized=0, group_size=0, emit_normed=0)
    assert opspec.resolve("Int8MatMul", dict(group_size=None)) == dict(group_size=0)
    with pytest.raises(ValueError, match="SoftmaxContext: required attribute head_size is missing"):
        opspec.resolve("SoftmaxContext", dict(num_heads=8))
    with pytest.raises(ValueError, match="unknown dsattn op 'Nope'"):
        opspec.resolve("Nope", {})


@pytest.mark.parametrize("attrs, match", [
    (dict(scale=float("nan")), "attribute scale must be finite, got nan"),
    (dict(scale=float("inf")), "attribute scale must be finite"),
    (dict(scale=1e39), r"attribute scale must be finite and in \[-3.40282e\+38, 3.40282e\+38\], got 1e\+39"),
    (dict(rope_theta=float("nan")), "attribute rope_theta must be finite"),
    (dict(alibi_slopes=[0.1, float("nan")]), r"attribute alibi_slopes\[1\] must be finite"),
    (dict(local_window=2**31), "attribute local_window=2147483648 does not fit int32"),
    (dict(num_heads=2.0), r"attribute num_heads must be an INT, got 2.0 \(float\)"),
    (dict(num_heads=True), "attribute num_heads must be an INT"),
    (dict(causal=2), "attribute causal must be 0 or 1, got 2"),
    (dict(rotary_style=2), r"attribute rotary_style must be 0 \(rotate_half\) or 1 \(rotate_every_two\), got 2"),
    (dict(num_heads=0), r"attribute num_heads must be an int in \[1, 65536\], got 0"),
    (dict(rotary_dim=4, rope_theta=0.0), "attribute rope_theta must be > 0 when rotary_dim > 0, got 0.0"),
    (dict(plugin_version="2"), "unsupported plugin_version='2'"),
])
def test_resolve_rejects_with_op_attribute_and_value(attrs, match):
    base = dict(num_heads=2, head_size=8)
    with pytest.raises(ValueError, match="^SoftmaxContext: " + match):
        opspec.resolve("SoftmaxContext", {**base, **attrs})


def test_flags_take_bools_and_epsilon_range():
    assert opspec.resolve("QKVGemm", dict(quantized=True, group_size=16))["quantized"] == 1
    with pytest.raises(ValueError, match=r"QKVGemm: attribute epsilon must be finite and in \[0, "):
        opspec.resolve("QKVGemm", dict(epsilon=-1e-6))
    with pytest.raises(ValueError, match="group_size=16 is only meaningful with quantized=1"):
        opspec.resolve("QKVGemm", dict(group_size=16))
    with pytest.raises(ValueError, match="Int8MatMul: attribute group_size=4294967296 does not fit int32"):
        opspec.resolve("Int8MatMul", dict(group_size=2**32))


def _sc_node(**attrs):
    return oh.make_node("SoftmaxContext", ["qkv", "past_key", "past_value", "seq_lens"],
                        ["context", "present_key", "present_value"], domain="dsattn", name="attn",
                        num_heads=2, head_size=8, **opspec.PLUGIN_ATTRS, **attrs)


def _sc_model(**attrs):
    ins = [oh.make_tensor_value_info("qkv", TP.FLOAT, ["B", "S", 48]),
           oh.make_tensor_value_info("past_key", TP.FLOAT, ["B", 2, 8, 8]),
           oh.make_tensor_value_info("past_value", TP.FLOAT, ["B", 2, 8, 8]),
           oh.make_tensor_value_info("seq_lens", TP.INT32, ["B"])]
    outs = [oh.make_tensor_value_info(n, TP.FLOAT, None) for n in ("context", "present_key", "present_value")]
    g = oh.make_graph([_sc_node(**attrs)], "g", ins, outs)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("dsattn", 1)], ir_version=10)


def test_explicit_nan_scale_is_an_error_in_every_layer():
    """NaN is never "unset": the reference ops, the reference evaluator and the lowering reject it."""
    import torch

    from dsattn.export import ops
    from dsattn.tools.lower import lower_for_ort

    with pytest.raises(ValueError, match="scale must be finite"):
        lower_for_ort(_sc_model(scale=float("nan")))
    with pytest.raises(ValueError, match="scale must be finite"):
        ops.reference_evaluator(_sc_model(scale=float("nan"))).run(None, {
            "qkv": np.zeros((1, 1, 48), np.float32), "past_key": np.zeros((1, 2, 8, 8), np.float32),
            "past_value": np.zeros((1, 2, 8, 8), np.float32), "seq_lens": np.zeros(1, np.int32)})
    qkv, cache = torch.zeros(1, 1, 48), torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match="scale must be finite"):
        ops.softmax_context(qkv, cache, cache, torch.zeros(1, dtype=torch.int32), num_heads=2, head_size=8,
                            scale=float("nan"))
    with pytest.raises(ValueError, match="scale must be finite"):  # the custom op itself, not only the wrapper
        torch.ops.dsattn.softmax_context(qkv, cache, cache, torch.zeros(1, dtype=torch.int32), None, 2, 2, 8,
                                         float("nan"), 0, 1, 0, 0, 0, 10000.0, [])
    # unset scale: 1/sqrt(head_size) everywhere (an absent attribute, or None in Python)
    lowered = lower_for_ort(_sc_model())
    scale = next(i for i in lowered.graph.initializer if i.name.endswith("/scale"))
    assert onnx.numpy_helper.to_array(scale) == np.float32(1 / math.sqrt(8))


def test_exporter_rejects_int_attributes_beyond_int32(tmp_path):
    """What reaches the graph obeys the contract even when a value bypassed the Python wrappers."""
    from dsattn.export import onnx_export

    model = _sc_model(local_window=2**31)
    with pytest.raises(ValueError, match="SoftmaxContext node 'attn': attribute local_window=2147483648 does not "
                                         "fit int32"):
        onnx_export._post_process(model, TP.FLOAT)


def test_node_attributes_checks_onnx_types():
    with pytest.raises(ValueError, match="n: attribute num_heads must be INT, got FLOAT"):
        opspec.node_attributes(oh.make_node("SoftmaxContext", [], [], num_heads=2.0), "n")
    got = opspec.node_attributes(_sc_node(alibi_slopes=[0.5, 0.25]))
    assert got["alibi_slopes"] == (0.5, 0.25) and got["plugin_version"] == "1" and got["num_heads"] == 2
