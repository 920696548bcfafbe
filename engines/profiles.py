"""Optimization profiles for dsattn engines (pure logic: no TensorRT needed).

A profile maps every input of the model to (min, opt, max) shapes. Static dims are taken from the
model. Dynamic dims (ONNX ``dim_param`` or unknown) of the model-level inputs fixed by the export
contract get their range from their role:

=================  ======================  =============================
input              shape                   dynamic axes -> role
=================  ======================  =============================
``hidden_states``  [B, S, hidden]          0 batch, 1 seq
``past_key``       [B, Hkv, Tmax, D]       0 batch, 2 capacity
``past_value``     [B, Hkv, Tmax, D]       0 batch, 2 capacity
``seq_lens``       [B]                     0 batch
``start_pos``      [B]                     0 batch
=================  ======================  =============================

Whole decoders (``dsattn export --hf-model``) take ``input_ids`` [B, S] (0 batch, 1 seq) instead
of ``hidden_states`` and one cache pair per layer, ``past_key.{i}`` / ``past_value.{i}``, with the
roles of ``past_key`` / ``past_value``. Any other dynamic dim needs an explicit profile entry for
its input.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

# (input name, axis) -> role
ROLES: dict[tuple[str, int], str] = {
    ("hidden_states", 0): "batch",
    ("hidden_states", 1): "seq",
    ("past_key", 0): "batch",
    ("past_key", 2): "capacity",
    ("past_value", 0): "batch",
    ("past_value", 2): "capacity",
    ("seq_lens", 0): "batch",
    ("start_pos", 0): "batch",
    ("input_ids", 0): "batch",
    ("input_ids", 1): "seq",
}
_LAYER_CACHE = re.compile(r"(past_key|past_value)\.\d+")


def role_of(name: str, axis: int):
    """The role of axis ``axis`` of input ``name`` (see the table above), or None."""
    m = _LAYER_CACHE.fullmatch(name)
    return ROLES.get((m.group(1) if m else name, axis))


def is_cache(name: str) -> bool:
    return name in ("past_key", "past_value") or _LAYER_CACHE.fullmatch(name) is not None

# Defaults: decode-optimized (opt seq 1) with room for a 2048-token prompt; capacity opt = max so
# the engine is tuned for a full cache.
DEFAULT_RANGES: dict[str, tuple[int, int, int]] = {
    "batch": (1, 1, 8),
    "seq": (1, 1, 2048),
    "capacity": (1, 4096, 4096),
}


@dataclass(frozen=True)
class ModelInput:
    name: str
    dims: tuple  # int for static dims, str (dim_param) or None for dynamic ones


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' or a single 'N' (static) -> (min, opt, max); ValueError naming `what`."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string like '1:1:8', got {type(text).__name__}")
    parts = text.split(":")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ValueError(f"{what} must be MIN:OPT:MAX (or N) with non-negative integers, got {text!r}")
    return check_range(tuple(int(p) for p in parts), what)


def check_range(r: Sequence[int], what: str) -> tuple[int, int, int]:
    if len(r) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in r):
        raise ValueError(f"{what} must be three ints (min, opt, max), got {r!r}")
    lo, opt, hi = r
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"{what} must satisfy 1 <= min <= opt <= max, got min={lo}, opt={opt}, max={hi}")
    return (lo, opt, hi)


def parse_shape_list(text: str, what: str) -> dict[str, Shape]:
    """trtexec's shape syntax 'name:1x2x3,other:4x5' -> {name: (1, 2, 3), other: (4, 5)}."""
    out: dict[str, Shape] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, dims = item.rpartition(":")
        name = name.strip("'")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise ValueError(f"{what}: expected NAME:DxDxD entries separated by commas, got {item!r}")
        if name in out:
            raise ValueError(f"{what}: input {name!r} given twice")
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


def model_inputs(model) -> list[ModelInput]:
    """Graph inputs (initializers excluded) of an onnx.ModelProto or path, with their dims."""
    import onnx

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from dsattn.fileio import load_onnx

        model = load_onnx(model, "ONNX model", load_external_data=False)
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model must be an onnx.ModelProto or a path, got {type(model).__name__}")
    inits = {i.name for i in model.graph.initializer}
    result = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            raise ValueError(f"model input {vi.name!r} has no shape (rank unknown): cannot build a profile")
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param if d.HasField("dim_param") and d.dim_param else None)
        result.append(ModelInput(vi.name, tuple(dims)))
    return result


def derive_profile(model, *, batch=None, seq=None, capacity=None,
                   overrides: Mapping[str, tuple[Shape, Shape, Shape]] | None = None) -> Profile:
    """One optimization profile for `model` (ModelProto or path).

    batch / seq / capacity: (min, opt, max) for the roles above (defaults: DEFAULT_RANGES).
    overrides: explicit (min, opt, max) shapes per input name, used as given (checked against the
    model's rank and static dims). Raises ValueError naming the input and axis when a dynamic dim has
    no role and no override, or when a given shape contradicts the model.
    """
    ranges = dict(DEFAULT_RANGES)
    given = {}
    for role, r in (("batch", batch), ("seq", seq), ("capacity", capacity)):
        if r is not None:
            ranges[role] = given[role] = check_range(tuple(r), role)
    overrides = dict(overrides or {})
    inputs = model_inputs(model)
    # A model with a static cache capacity (export_onnx's default) cannot take more new tokens than
    # that: the *default* seq range stops there (a seq range given by the caller is checked instead).
    static_tmax = next((i.dims[2] for i in inputs if is_cache(i.name) and len(i.dims) == 4
                        and isinstance(i.dims[2], int)), None)
    if seq is None and static_tmax is not None:
        lo, opt, hi = ranges["seq"]
        hi = min(hi, static_tmax)
        ranges["seq"] = (min(lo, hi), min(opt, hi), hi)
    names = [i.name for i in inputs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"profile given for {unknown}, which are not inputs of the model (inputs: {names})")
    _check_given_roles(inputs, given, overrides)
    profile: Profile = {}
    param_role: dict[str, str] = {}
    for inp in inputs:
        if inp.name in overrides:
            mn, op, mx = (tuple(int(v) for v in s) for s in overrides[inp.name])
            for label, s in (("min", mn), ("opt", op), ("max", mx)):
                if len(s) != len(inp.dims):
                    raise ValueError(f"{label} shape {s} of input {inp.name!r} has rank {len(s)}, the model's "
                                     f"is {len(inp.dims)} {inp.dims}")
            for a, d in enumerate(inp.dims):
                if isinstance(d, int) and not mn[a] == op[a] == mx[a] == d:
                    raise ValueError(f"input {inp.name!r} axis {a} is static ({d}) in the model, profile gives "
                                     f"min/opt/max {mn[a]}/{op[a]}/{mx[a]}")
                if not 1 <= mn[a] <= op[a] <= mx[a]:
                    raise ValueError(f"input {inp.name!r} axis {a}: need 1 <= min <= opt <= max, got "
                                     f"{mn[a]}/{op[a]}/{mx[a]}")
            profile[inp.name] = (mn, op, mx)
            continue
        mn, op, mx = [], [], []
        for a, d in enumerate(inp.dims):
            if isinstance(d, int):
                lo = opt = hi = d
            else:
                role = role_of(inp.name, a)
                if role is None:
                    raise ValueError(f"input {inp.name!r} axis {a} is dynamic ({d or '?'}) and has no known role: "
                                     f"give its shapes explicitly (--min/--opt/--max-shapes or profiles=)")
                if isinstance(d, str):
                    prev = param_role.setdefault(d, role)
                    if prev != role:
                        raise ValueError(f"dim_param {d!r} is used as {prev} and as {role} (input {inp.name!r} "
                                         f"axis {a}): the model's dynamic axes are inconsistent")
                lo, opt, hi = ranges[role]
            mn.append(lo)
            op.append(opt)
            mx.append(hi)
        profile[inp.name] = (tuple(mn), tuple(op), tuple(mx))
    _check_seq_fits_capacity(profile)
    return profile


def _check_given_roles(inputs: Sequence[ModelInput], given: Mapping[str, tuple[int, int, int]],
                       overrides: Mapping) -> None:
    """A range given for a role must act on the model: where every dim of that role is static, the
    range must be that size (a --capacity 64 on a model exported with capacity 32 would otherwise
    be ignored without a word), and a role no input has is an error too."""
    for role, r in given.items():
        dims = [(i.name, a, d) for i in inputs if i.name not in overrides
                for a, d in enumerate(i.dims) if role_of(i.name, a) == role]
        if any(not isinstance(d, int) for _, _, d in dims):
            continue  # a dynamic dim takes the range
        text = ":".join(str(v) for v in r)
        if not dims:
            raise ValueError(f"{role} range {text}: the model has no {role} axis (inputs: "
                             f"{[i.name for i in inputs]})")
        name, axis, d = dims[0]
        if r != (d, d, d):
            raise ValueError(f"{role} range {text} conflicts with the model's static {role} {d} (input "
                             f"{name!r} axis {axis}); the model was exported with it")


def _check_seq_fits_capacity(profile: Profile) -> None:
    seq = next((n for n in ("hidden_states", "input_ids") if n in profile), None)
    cache = next((n for n in profile if is_cache(n)), None)
    if seq is not None and cache is not None:
        s_max = profile[seq][2][1]
        t_max = profile[cache][2][2]
        if s_max > t_max:
            raise ValueError(f"max seq {s_max} exceeds max cache capacity {t_max}: a call with that many new "
                             f"tokens could never fit the cache")


def format_shapes(profile: Profile, which: int) -> str:
    """trtexec syntax for min (0) / opt (1) / max (2): 'name:1x2x3,other:4'."""
    parts = []
    for name, shapes in profile.items():
        q = f"'{name}'" if re.search(r"[^A-Za-z0-9_./]", name) else name
        parts.append(f"{q}:{'x'.join(str(d) for d in shapes[which])}")
    return ",".join(parts)
