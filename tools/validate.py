"""Validation: run a dsattn model on every runtime asked for and compare with the fp32 reference.

``validate(model_path, ...)`` generates consistent random inputs per case (``prefill``: seq_lens = 0,
S = ``seq`` new tokens with left padding; ``decode``: S = 1 with ragged seq_lens and start_pos), then
runs

- the reference: ``dsattn.export.ops.reference_evaluator`` on the custom-op graph converted to
  float32 (the truth), and on the graph in its own precision T (to measure what T costs);
- ONNX Runtime on ``lower_for_ort(model)`` for each provider (``cpu``, ``cuda``, or a full
  provider name); a provider that this onnxruntime does not have is an error that lists the
  available ones; ``cuda-dsattn`` runs the model itself (not lowered) on the CUDA provider with the
  dsattn custom-op library (``dsattn.tools.ort_runtime``; ``ort_library`` names the library);
- TensorRT when ``engine`` or ``plugins`` are given, through ``dsattn.engines`` (``run_engine`` on
  the plan; without ``engine`` a plan is built from the model with the plugins). TensorRT missing
  is then an error of the report (the user asked for it); without engine/plugins it is a note;

and compares every runtime's outputs with the fp32 reference through Polygraphy's ``Comparator``
(``CompareFunc.simple``, per-output atol/rtol, max error statistic).

Accuracy rule (docs/DESIGN.md). For an output of type T the default tolerance is

    atol = max(2 x max|reference in T - reference in fp32|, floor_T),  rtol = 0 (16-bit T)

with floor_T = 1e-3 for float16 and 8e-3 for bfloat16. For float32 outputs the reference in T *is*
the fp32 reference, so the rule reduces to the floor: atol = 1e-5 and rtol = 1e-5 (an element
passes when |diff| <= atol or |diff| / |ref| <= rtol, Polygraphy's rule; the rtol term covers
accumulation-order noise on large fp32 values). NaN never passes. ``atol``/``rtol`` override the
rule: a float applies to every output, a mapping ``{output_name: value}`` to single outputs (the
key ``""`` is the default for the others, as in Polygraphy).

Input files (``save_inputs``/``load_inputs``) use Polygraphy's JSON format (a list of feed dicts,
one per case, so ``polygraphy run --load-inputs`` reads them too). bfloat16 arrays are stored as
raw 2-byte values; loading also accepts float32 arrays whose values are exact in bfloat16.
"""
from __future__ import annotations

import ctypes
import math
import os
import random
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from dsattn.export import opspec

from .lower import lower_for_ort

__all__ = [
    "validate", "ValidationReport", "ReportRow", "CASES", "default_tolerance", "resolve_provider",
    "make_session", "run_session", "to_float32_model", "make_inputs", "check_feeds", "Reference", "reference",
    "compare",
]

CASES = ("prefill", "decode")
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
# Floors of the accuracy rule (docs/DESIGN.md) and the fp32 choice documented above.
ATOL_FLOOR = {TensorProto.FLOAT16: 1e-3, TensorProto.BFLOAT16: 8e-3, TensorProto.FLOAT: 1e-5}
RTOL_DEFAULT = {TensorProto.FLOAT16: 0.0, TensorProto.BFLOAT16: 0.0, TensorProto.FLOAT: 1e-5}
_LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def _np_dtype(elem: int):
    if elem == TensorProto.BFLOAT16:
        return np.dtype(_bf16())
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _elem_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem).lower()


# ------------------------------------------------------------------------------------------------
# ONNX Runtime helpers (bfloat16-capable: numpy has no bfloat16, ORT's Python binding only takes it
# as an OrtValue over raw 16-bit data)
# ------------------------------------------------------------------------------------------------

def resolve_provider(name: str) -> str:
    """'cpu' / 'cuda' / a full provider name -> the provider name; error if ORT does not have it.
    'cuda-dsattn' (the exported model on CUDA with the dsattn custom ops) resolves to itself."""
    import onnxruntime as ort

    from .ort_runtime import PROVIDER as DSATTN_PROVIDER

    if not isinstance(name, str) or not name:
        raise ValueError(f"provider must be a non-empty string, got {name!r}")
    if name.lower() == DSATTN_PROVIDER:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"provider {name!r} needs CUDAExecutionProvider, which onnxruntime {ort.__version__} "
                             f"does not have (available: {', '.join(ort.get_available_providers())}); "
                             "install onnxruntime-gpu")
        return DSATTN_PROVIDER
    full = PROVIDER_ALIASES.get(name.lower(), name)
    available = ort.get_available_providers()
    if full not in available:
        raise ValueError(f"ONNX Runtime provider {name!r} ({full}) is not available in onnxruntime "
                         f"{ort.__version__}; available: {', '.join(available)}"
                         + (" (install onnxruntime-gpu for CUDA)" if full == "CUDAExecutionProvider" else ""))
    return full


def make_session(model: Union[onnx.ModelProto, bytes], provider: str):
    """An InferenceSession on exactly ``provider`` (CPU is never a silent substitute)."""
    import onnxruntime as ort

    full = resolve_provider(provider)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT warns about every CPU-placed shape op on CUDA
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    # The lowered graph computes in fp32 on purpose; TF32 tensor-core MatMuls (on by default in ORT's
    # CUDA EP on Ampere and newer) would cost ~3 decimal digits and fail the fp32 comparison.
    options = {"use_tf32": "0"} if full == "CUDAExecutionProvider" else {}
    providers = [(full, options)] if full == "CPUExecutionProvider" else [(full, options), "CPUExecutionProvider"]
    sess = ort.InferenceSession(data, so, providers=providers)
    if full not in sess.get_providers():
        raise RuntimeError(f"ONNX Runtime could not start {full} (session providers: {sess.get_providers()}); "
                           "check the CUDA/cuDNN libraries it needs")
    return sess


def _ort_value(a: np.ndarray):
    import onnxruntime as ort

    a = np.ascontiguousarray(a)
    if a.dtype == _bf16():
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(a)


def run_session(sess, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``sess`` on numpy feeds (bfloat16 as ml_dtypes arrays); outputs come back on the host."""
    binding = sess.io_binding()
    for name, arr in feeds.items():
        binding.bind_ortvalue_input(name, _ort_value(arr))
    names = [o.name for o in sess.get_outputs()]
    for name in names:
        binding.bind_output(name, "cpu")
    sess.run_with_iobinding(binding)
    result = {}
    for name, ov in zip(names, binding.get_outputs()):
        if ov.data_type() == "tensor(bfloat16)":
            out = np.empty(ov.shape(), dtype=np.uint16)
            if out.size:
                ctypes.memmove(out.ctypes.data, ov.data_ptr(), out.nbytes)
            result[name] = out.view(_bf16())
        else:
            result[name] = ov.numpy()
    return result


# ------------------------------------------------------------------------------------------------
# model helpers
# ------------------------------------------------------------------------------------------------

def _convert_tensor(t: TensorProto, src: int) -> None:
    if t.data_type == src:
        arr = numpy_helper.to_array(t).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _convert_graph(g: onnx.GraphProto, src: int) -> None:
    for t in g.initializer:
        _convert_tensor(t, src)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == src:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == src:
                a.i = TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR:
                _convert_tensor(a.t, src)
            elif a.type == onnx.AttributeProto.GRAPH:
                _convert_graph(a.g, src)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _convert_graph(sub, src)


def to_float32_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float16 / bfloat16 tensor, value and Cast target in float32:
    the same graph computed in fp32 (the reference of the accuracy rule)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for src in _LOW_PRECISION:
        _convert_graph(out.graph, src)
    return out


def _graph_inputs(model: onnx.ModelProto) -> list[tuple[str, int, list[Union[int, str, None]]]]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[Union[int, str, None]] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append((vi.name, tt.elem_type, dims))
    return specs


def _roles(model: onnx.ModelProto) -> dict[str, str]:
    """Graph input name -> role ('cache', 'seq_lens', 'start_pos') from the SoftmaxContext nodes
    (and, for hand-written graphs, the contract's input names)."""
    roles: dict[str, str] = {}
    for name, _, _ in _graph_inputs(model):
        if name in ("past_key", "past_value"):
            roles[name] = "cache"
        elif name in ("seq_lens", "start_pos"):
            roles[name] = name

    role_of = {"past_key": "cache", "past_value": "cache", "seq_lens": "seq_lens", "start_pos": "start_pos"}
    sc_inputs = opspec.op("SoftmaxContext").input_names

    def walk(g):
        for n in g.node:
            if n.domain == opspec.DOMAIN and n.op_type == "SoftmaxContext":
                for name, spec_name in zip(n.input, sc_inputs):
                    if name and spec_name in role_of:
                        roles[name] = role_of[spec_name]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    return roles


def _precision(model: onnx.ModelProto) -> int:
    floats = [e for _, e, _ in _graph_inputs(model) if e in (TensorProto.FLOAT, *_LOW_PRECISION)]
    for e in _LOW_PRECISION:
        if e in floats:
            return e
    return TensorProto.FLOAT


@dataclass
class _Dims:
    batch: int
    seq: int
    capacity: int


def _resolve_sizes(model, batch: Optional[int], seq: Optional[int], capacity: Optional[int]) -> tuple[_Dims, Optional[int]]:
    """Sizes for the generated inputs: static dims of the model win; a conflicting explicit argument
    is an error. Returns the sizes and the static S (None when S is dynamic)."""
    roles = _roles(model)
    static_b = static_s = static_t = None
    for name, _, dims in _graph_inputs(model):
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            static_b = static_b or dims[0]
        if roles.get(name) == "cache" and len(dims) == 4 and isinstance(dims[2], int) and dims[2] > 0:
            static_t = dims[2]
        if roles.get(name) is None and len(dims) >= 3 and isinstance(dims[1], int) and dims[1] > 0:
            static_s = dims[1]
    for arg, val, static, what in (("batch", batch, static_b, "batch"), ("capacity", capacity, static_t, "cache capacity Tmax")):
        if val is not None and static is not None and val != static:
            raise ValueError(f"{arg}={val} conflicts with the model's static {what} {static}")
    b = static_b or (3 if batch is None else batch)
    s = static_s or (7 if seq is None else seq)
    if seq is not None and static_s is not None and seq != static_s:
        raise ValueError(f"seq={seq} conflicts with the model's static sequence length {static_s}")
    t = static_t or (s + 16 if capacity is None else capacity)
    for arg, v in (("batch", b), ("seq", s), ("capacity", t)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if s > t:
        raise ValueError(f"seq={s} new tokens do not fit the cache capacity {t}")
    return _Dims(b, s, t), static_s


def _check_input_memory(model, roles, B: int, S: int, T: int) -> None:
    """The generated inputs (drawn in float64) against this machine's memory: a huge batch or
    capacity is an error naming them, not a MemoryError inside numpy."""
    need = 16 * B  # seq_lens / start_pos drafts (int64)
    for name, _, dims in _graph_inputs(model):
        sizes = [d if isinstance(d, int) and d > 0 else B if axis == 0 else T if roles.get(name) == "cache" else S
                 for axis, d in enumerate(dims)]
        need += 8 * math.prod(sizes)
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have // 2:
        raise ValueError(f"batch={B}, seq={S}, capacity={T}: the generated inputs need {need / 2**30:.1f} GiB, more "
                         f"than half of this machine's {have / 2**30:.1f} GiB of memory")


def make_inputs(model: onnx.ModelProto, case: str, *, batch: int, seq: int, capacity: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random, consistent feeds for ``case`` ('prefill' or 'decode'): float inputs ~ N(0, 1) in the
    model's types (the caches are random everywhere: what lies outside the valid rows must not
    matter), seq_lens + S <= capacity and 0 <= start_pos <= seq_lens + S - 1 per row."""
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    B, T = batch, capacity
    S = seq if case == "prefill" else 1
    if case == "prefill":
        lens = np.zeros(B, np.int64)
        # left padding: row 0 unpadded, the others padded by 0..S-1 tokens (at least one padded row)
        start = rng.integers(0, S, size=B)
        start[0] = 0
        if B > 1 and S > 1 and not start[1:].any():
            start[1] = rng.integers(1, S)
    else:
        lens = rng.integers(min(1, T - 1), T, size=B)  # ragged, 1 .. Tmax-1 cached tokens
        lens[0] = T - 1  # one row fills the cache to the last slot
        start = np.array([rng.integers(0, l + 1) for l in lens])
        start[0] = 0
    roles = _roles(model)
    _check_input_memory(model, roles, B, S, T)
    feeds: dict[str, np.ndarray] = {}
    for name, elem, dims in _graph_inputs(model):
        role = roles.get(name)
        if role in ("seq_lens", "start_pos"):
            if elem != TensorProto.INT32:
                raise ValueError(f"input {name!r} ({role}) must be int32, the model declares {_elem_name(elem)}")
            feeds[name] = (lens if role == "seq_lens" else start).astype(np.int32)
            continue
        vocab = _vocab_of(model, name) if elem in (TensorProto.INT64, TensorProto.INT32) else None
        if elem not in (TensorProto.FLOAT, *_LOW_PRECISION) and vocab is None:
            raise ValueError(f"cannot generate input {name!r} of type {_elem_name(elem)}: only float inputs, "
                             "token ids (indices of an embedding Gather), seq_lens and start_pos are generated "
                             "(use load_inputs)")
        shape = []
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif axis == 0:
                shape.append(B)
            elif role == "cache" and axis == 2:
                shape.append(T)
            elif role is None and axis == 1:
                shape.append(S)
            else:
                raise ValueError(f"cannot choose a size for dimension {axis} ({d!r}) of input {name!r} "
                                 "(use load_inputs)")
        if vocab is not None:  # token ids (whole decoders' input_ids)
            feeds[name] = rng.integers(0, vocab, size=shape).astype(_np_dtype(elem))
            continue
        feeds[name] = rng.standard_normal(shape).astype(np.float32).astype(_np_dtype(elem))
    return feeds


def _vocab_of(model: onnx.ModelProto, name: str) -> Optional[int]:
    """Rows of the embedding table when graph input ``name`` is the indices of a Gather over an
    initializer (token ids), else None."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == name and n.input[0] in dims:
            return dims[n.input[0]][0]
    return None


def check_feeds(model: onnx.ModelProto, feeds: Mapping[str, Any], where: str = "inputs") -> dict[str, np.ndarray]:
    """Check loaded feeds against the model's inputs (names, element types, ranks, static dims and
    consistent symbolic dims); returns them converted (bfloat16 from raw or exact float32)."""
    if not isinstance(feeds, Mapping):
        raise TypeError(f"{where}: expected a mapping input name -> array, got {type(feeds).__name__}")
    specs = _graph_inputs(model)
    names = [n for n, _, _ in specs]
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise ValueError(f"{where}: unknown input(s) {extra}; the model's inputs are {names}")
    out, params = {}, {}
    for name, elem, dims in specs:
        if name not in feeds:
            raise ValueError(f"{where}: input {name!r} is missing")
        arr = feeds[name]
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{where}: input {name!r} must be a numpy array, got {type(arr).__name__}")
        want = _np_dtype(elem)
        if elem == TensorProto.BFLOAT16 and arr.dtype != want:
            if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:  # raw bf16 from Polygraphy JSON
                arr = arr.view(want)
            elif arr.dtype == np.float32 and np.array_equal(arr.astype(want).astype(np.float32), arr, equal_nan=True):
                arr = arr.astype(want)
        if arr.dtype != want:
            raise ValueError(f"{where}: input {name!r} has dtype {arr.dtype}, the model expects {_elem_name(elem)}")
        if arr.ndim != len(dims):
            raise ValueError(f"{where}: input {name!r} has shape {list(arr.shape)} (rank {arr.ndim}), the model "
                             f"expects rank {len(dims)} {dims}")
        for axis, (got, d) in enumerate(zip(arr.shape, dims)):
            if isinstance(d, int) and d > 0 and got != d:
                raise ValueError(f"{where}: input {name!r} has shape {list(arr.shape)}, the model expects "
                                 f"{d} at dimension {axis} ({dims})")
            if isinstance(d, str):
                seen = params.setdefault(d, (got, name))
                if seen[0] != got:
                    raise ValueError(f"{where}: input {name!r} has {got} at dimension {axis} ({d!r}) but input "
                                     f"{seen[1]!r} has {seen[0]} for the same dimension")
        out[name] = arr
    return out


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

@dataclass
class ReportRow:
    case: str
    runtime: str
    output: str
    dtype: str
    max_abs: float
    mean_abs: float
    atol: float
    rtol: float
    passed: bool


@dataclass
class ValidationReport:
    """Result of ``validate``: one row per (case, runtime, output), plus what was skipped and why.
    ``passed`` is True when every row passed and nothing requested failed."""

    model: str
    precision: str
    seed: int
    rows: list[ReportRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and bool(self.rows) and all(r.passed for r in self.rows)

    def rows_for(self, runtime: Optional[str] = None, case: Optional[str] = None) -> list[ReportRow]:
        return [r for r in self.rows if (runtime is None or r.runtime == runtime) and (case is None or r.case == case)]

    def table(self) -> str:
        head = ("case", "runtime", "output", "dtype", "max abs err", "mean abs err", "atol", "rtol", "result")
        body = [(r.case, r.runtime, r.output, r.dtype, f"{r.max_abs:.3e}", f"{r.mean_abs:.3e}", f"{r.atol:.3e}",
                 f"{r.rtol:.1e}", "PASS" if r.passed else "FAIL") for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [f"dsattn validate: {self.model} (precision {self.precision}, seed {self.seed}); "
                 "errors vs the fp32 reference", fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*b) for b in body]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    __str__ = table


# ------------------------------------------------------------------------------------------------
# the accuracy rule: the fp32 reference of one case and the comparison against it
# ------------------------------------------------------------------------------------------------

def default_tolerance(elem: int, err_t: float) -> tuple[float, float]:
    """(atol, rtol) of the accuracy rule for an output of element type ``elem`` whose reference in
    that precision is off the fp32 reference by ``err_t`` (max abs)."""
    if elem not in ATOL_FLOOR:
        return 0.0, 0.0  # integer outputs: exact
    if not math.isfinite(err_t):
        raise ValueError(f"the {_elem_name(elem)} reference itself is not finite (max error {err_t})")
    return max(2.0 * err_t, ATOL_FLOOR[elem]), RTOL_DEFAULT[elem]


def _pick(value, name: str, default: float, what: str) -> float:
    if value is None:
        return default
    if isinstance(value, Mapping):
        v = value.get(name, value.get("", None))
        return default if v is None else _check_tol(v, f"{what}[{name!r}]")
    return _check_tol(value, what)


def _check_tol(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {v!r}")
    return float(v)


def _as_f32(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32) if (a.dtype.kind == "f" or a.dtype == _bf16()) else a


def _run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from dsattn.export.ops import reference_evaluator

    ev = reference_evaluator(model)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ev.run(None, dict(feeds))))


@dataclass
class Reference:
    """The truth of one case: the model's outputs computed in fp32 (``outputs``), the same graph in
    its own precision T (``in_t``; the fp32 outputs for a float32 model) and the (atol, rtol) the
    accuracy rule allows each output (``tols``)."""

    outputs: dict[str, np.ndarray]
    in_t: dict[str, np.ndarray]
    tols: dict[str, tuple[float, float]]
    out_types: dict[str, int]
    precision: int


def reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
              model32: Optional[onnx.ModelProto] = None, atol: Union[None, float, Mapping[str, float]] = None,
              rtol: Union[None, float, Mapping[str, float]] = None) -> Reference:
    """Run the reference evaluator on ``model`` (dsattn custom ops) for ``feeds`` in fp32 and in the
    model's precision, and derive each output's tolerance (``atol``/``rtol`` override the rule as
    in ``validate``). ``model32``: ``to_float32_model(model)`` when the caller already has it.
    A ValueError from the reference (inputs it rejects) propagates."""
    precision = _precision(model)
    out_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if precision == TensorProto.FLOAT:
        ref = _run_reference(model, feeds)
        ref_t = ref
    else:
        feeds32 = {k: _as_f32(v) for k, v in feeds.items()}
        ref = _run_reference(model32 if model32 is not None else to_float32_model(model), feeds32)
        ref_t = _run_reference(model, feeds)
    tols = {}
    for n in ref:
        err_t = (float(np.abs(_as_f32(ref_t[n]).astype(np.float64) - ref[n].astype(np.float64)).max())
                 if ref[n].size and ref_t is not ref else 0.0)
        d_atol, d_rtol = default_tolerance(out_types.get(n, TensorProto.FLOAT), err_t)
        tols[n] = (_pick(atol, n, d_atol, "atol"), _pick(rtol, n, d_rtol, "rtol"))
    return Reference(ref, ref_t, tols, out_types, precision)


def compare(case: str, runtime: str, ref: Reference, got: Mapping[str, np.ndarray]) -> list[ReportRow]:
    """One runtime's outputs against the fp32 reference under the accuracy rule (Polygraphy's
    comparator, per-output atol/rtol, max error statistic); one ReportRow per output. NaN, a wrong
    shape or a missing output never passes."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    names = list(ref.outputs)
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"{runtime} case {case}: outputs {missing} are missing (got {sorted(got)})")
    ref32 = OrderedDict((n, _as_f32(ref.outputs[n])) for n in names)
    got32 = OrderedDict((n, _as_f32(got[n])) for n in names)
    rr = RunResults()
    rr.append(("reference-fp32", [IterationResult(ref32, runner_name="reference-fp32")]))
    rr.append((runtime, [IterationResult(got32, runner_name=runtime)]))
    try:
        from polygraphy.comparator import SimpleCompareFunc as make_func
    except ImportError:  # Polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        make_func = CompareFunc.simple
    func = make_func(atol={n: ref.tols[n][0] for n in names}, rtol={n: ref.tols[n][1] for n in names},
                     check_error_stat="max")
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR  # the report's table replaces Polygraphy's long log
    try:
        results = Comparator.compare_accuracy(rr, compare_func=func)
    finally:
        G_LOGGER.module_severity = old
    per_output = next(iter(results[0].values()))[0]
    rows = []
    for n in names:
        a, b = ref32[n], got32[n]
        same_shape = a.shape == b.shape
        finite = same_shape and bool(np.isfinite(b).all())
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if same_shape else np.array([np.inf])
        rows.append(ReportRow(case, runtime, n, _elem_name(ref.out_types.get(n, TensorProto.FLOAT)),
                              float(diff.max()) if diff.size else 0.0, float(diff.mean()) if diff.size else 0.0,
                              ref.tols[n][0], ref.tols[n][1], bool(per_output[n]) and finite))
    return rows


# ------------------------------------------------------------------------------------------------
# TensorRT (thin: no TensorRT builder is installed where CI runs)
# ------------------------------------------------------------------------------------------------

class _TensorRT:
    """The TensorRT runtime of a validation: ``dsattn.engines`` (build_engine / run_engine); a plan
    is built from the model with the plugins when no engine is given. Any failure (TensorRT not
    importable, no plugins, build error) is reported as an error of the validation, since the user
    asked for TensorRT."""

    def __init__(self, engine: Optional[str], plugins: Sequence[str], model_path: Optional[str], dims, tmpdir: str):
        from dsattn.engines import build_engine, import_tensorrt, run_engine

        try:
            import_tensorrt()
        except (ImportError, RuntimeError) as exc:
            raise RuntimeError(f"TensorRT was requested (engine={engine!r}, plugins={list(plugins)}) but is not "
                               f"importable: {exc}") from exc
        if not plugins:
            raise RuntimeError(f"engine {engine!r} needs the plugin library too (plugins / --plugins LIB): plans "
                               "carry no plugin code, the library is loaded before deserializing")
        if engine is None:
            if model_path is None:
                raise RuntimeError("building a TensorRT engine needs the model as a file (pass a path, not a ModelProto)")
            kw = {} if dims is None else dict(batch=(1, dims.batch, dims.batch), seq=(1, dims.seq, dims.seq),
                                                capacity=(dims.capacity,) * 3)
            engine = str(build_engine(model_path, plugins, os.path.join(tmpdir, "validate.plan"), **kw))
        self.engine, self.plugins, self._run = engine, list(plugins), run_engine

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self._run(self.engine, dict(feeds), plugins=self.plugins))


# ------------------------------------------------------------------------------------------------
# validate: options -> cases -> runtimes -> compare each case
# ------------------------------------------------------------------------------------------------

def _load_model(model_path) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_path, onnx.ModelProto):
        return model_path, model_path.graph.name or "<model>"
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path or an onnx.ModelProto, got {type(model_path).__name__}")
    path = os.fspath(model_path)
    from dsattn.fileio import load_onnx

    return load_onnx(path, "model"), path


@dataclass
class _Options:
    """validate's arguments, checked and normalized before anything runs."""

    providers: list[str]  # as given (short names label the runtimes)
    resolved: list[str]  # full ONNX Runtime provider names
    plugins: list[str]
    engine: Optional[str]
    cases: list[str]
    seed: int
    atol: Union[None, float, Mapping[str, float]]
    rtol: Union[None, float, Mapping[str, float]]
    ort_library: Optional[str] = None  # libdsattn_ort.so, when cuda-dsattn is among the providers


def _options(providers, plugins, engine, cases, seed, atol, rtol, ort_library=None) -> _Options:
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p]
    providers = list(providers)
    try:
        resolved = [resolve_provider(p) for p in providers]  # fail early, naming the provider
    except ValueError as exc:
        raise ValueError(f"providers: {exc}") from None
    if "cuda-dsattn" in resolved:
        from .ort_runtime import find_library

        ort_library = find_library(ort_library)  # fail early too, naming where it looked
    if isinstance(plugins, (str, os.PathLike)):
        plugins = [plugins]
    plugins = [os.fspath(p) for p in plugins]
    for what, f in [("engine", engine)] * (engine is not None) + [("plugins", p) for p in plugins]:
        if not os.path.isfile(f):  # before minutes of other runtimes, not after
            raise ValueError(f"{what}: {os.fspath(f)!r} does not exist")
    cases = [cases] if isinstance(cases, str) else list(cases)
    if not cases:
        raise ValueError(f"cases: none given; choose from {CASES}")
    for c in cases:
        if c not in CASES:
            raise ValueError(f"cases: unknown case {c!r}; choose from {CASES}")
    if not providers and engine is None and not plugins:
        raise ValueError("providers: none given and no TensorRT engine/plugins: nothing would be validated")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    _pick(atol, "", 0.0, "atol")
    _pick(rtol, "", 0.0, "rtol")
    return _Options(providers, resolved, plugins, engine, cases, seed, atol, rtol, ort_library)


def _case_feeds(model: onnx.ModelProto, opts: _Options, report: ValidationReport, batch, seq, capacity,
                load_inputs) -> tuple[list[tuple[str, dict[str, np.ndarray]]], Optional[_Dims]]:
    """The cases to run: the feeds of a Polygraphy JSON file, or generated ones (with their sizes)."""
    if load_inputs is not None:
        from polygraphy.json import load_json

        try:
            data = load_json(load_inputs, description="input data")
        except (OSError, ValueError) as exc:  # missing file, not JSON
            raise ValueError(f"load_inputs {os.fspath(load_inputs)!r}: cannot read input data "
                             f"({exc.strerror if isinstance(exc, OSError) else exc})") from None
        if isinstance(data, Mapping):
            data = [data]
        if not isinstance(data, list) or not data:
            raise ValueError(f"load_inputs {load_inputs!r}: expected a non-empty list of feed dicts")
        return [(f"loaded[{i}]", check_feeds(model, feeds, where=f"load_inputs {load_inputs!r} entry {i}"))
                for i, feeds in enumerate(data)], None
    dims, static_s = _resolve_sizes(model, batch, seq, capacity)
    rng = np.random.default_rng(opts.seed)
    out = []
    for c in opts.cases:
        if c == "decode" and static_s not in (None, 1):
            report.notes.append(f"case decode skipped: the model has a static sequence length {static_s}")
            continue
        out.append((c, make_inputs(model, c, batch=dims.batch, seq=dims.seq, capacity=dims.capacity, rng=rng)))
    return out, dims


def _open_runtimes(model: onnx.ModelProto, model_file: Optional[str], precision: int, opts: _Options, dims,
                   tmpdir: str, report: ValidationReport) -> dict[str, Any]:
    """runtime name -> callable(feeds) -> outputs: ONNX Runtime per provider on the lowered model,
    then TensorRT when asked for. A runtime that cannot start is an error of the report."""
    runtimes: dict[str, Any] = {}
    lowered = lower_for_ort(model)
    for full, short in zip(opts.resolved, opts.providers):
        name = f"onnxruntime-{short.lower().replace('executionprovider', '')}"
        if full == "cuda-dsattn":
            from .ort_runtime import make_session as make_dsattn_session

            try:
                sess = make_dsattn_session(model, library=opts.ort_library)
            except Exception as exc:
                report.errors.append(f"{name}: cannot create a session for the model with libdsattn_ort.so: {exc}")
                continue
            runtimes[name] = lambda feeds, sess=sess: run_session(sess, feeds)
            continue
        try:
            sess = make_session(lowered, full)
        except Exception as exc:  # a runtime that cannot even load the model fails the report
            hint = ""
            if "NOT_IMPLEMENTED" in str(exc) and precision == TensorProto.BFLOAT16:
                hint = (" (the lowered dsattn nodes compute in float32, but another node of the model runs in "
                        "bfloat16, which this provider has no kernel for; ORT CUDA has bfloat16 MatMul/Add)")
            report.errors.append(f"{name}: cannot create a session for the lowered model: {exc}{hint}")
            continue
        runtimes[name] = lambda feeds, sess=sess: run_session(sess, feeds)
    if opts.engine is None and not opts.plugins:
        report.notes.append("TensorRT: not requested (pass engine/plugins)")
        return runtimes
    try:
        runtimes["tensorrt"] = _TensorRT(opts.engine, opts.plugins, model_file, dims, tmpdir)
    except Exception as exc:
        report.errors.append(f"tensorrt: {exc}")
    return runtimes


def _run_case(report: ValidationReport, case: str, feeds: Mapping[str, np.ndarray], model: onnx.ModelProto,
              model32: onnx.ModelProto, runtimes: Mapping[str, Any], opts: _Options) -> None:
    """Reference for one case, then every runtime compared with it; rows and errors go to ``report``."""
    try:
        ref = reference(model, feeds, model32=model32, atol=opts.atol, rtol=opts.rtol)
    except ValueError as exc:
        raise ValueError(f"case {case}: the reference rejects the inputs: {exc}") from exc
    if ref.precision != TensorProto.FLOAT:  # what computing in T costs: the scale of the rule
        report.rows += compare(case, f"reference-{_elem_name(ref.precision)}", ref, ref.in_t)
    for name, run in runtimes.items():
        try:
            got = run(feeds)
        except Exception as exc:
            report.errors.append(f"{name} case {case}: run failed: {exc}")
            continue
        try:
            report.rows += compare(case, name, ref, got)
        except ValueError as exc:  # missing outputs
            report.errors.append(str(exc))


def validate(model_path, *, providers: Sequence[str] = ("cpu",), plugins: Sequence[str] = (),
             engine: Optional[str] = None, atol: Union[None, float, Mapping[str, float]] = None,
             rtol: Union[None, float, Mapping[str, float]] = None, batch: Optional[int] = None,
             seq: Optional[int] = None, capacity: Optional[int] = None, cases: Sequence[str] = CASES,
             save_inputs: Optional[str] = None, load_inputs: Optional[str] = None,
             seed: Optional[int] = None, ort_library: Optional[str] = None) -> ValidationReport:
    """Run ``model_path`` (a dsattn ONNX model with custom ops, or a ModelProto) on the reference,
    ONNX Runtime (each of ``providers``, on the lowered model) and TensorRT (when ``engine`` or
    ``plugins`` are given), compare with the fp32 reference and return a ValidationReport.

    batch, seq (prefill tokens) and capacity (Tmax) default to the model's static dims, else 3, 7
    and seq + 16. ``load_inputs`` replaces the generated cases by the feeds of a Polygraphy JSON
    file (one case per entry); ``save_inputs`` writes the feeds used. ``seed`` None draws a fresh
    seed (reported, so a run can be replayed).
    """
    model, label = _load_model(model_path)
    opts = _options(providers, plugins, engine, cases, seed, atol, rtol, ort_library)
    outputs = [o.name for o in model.graph.output]
    for what, tol in (("atol", atol), ("rtol", rtol)):
        unknown = sorted(set(tol) - set(outputs) - {""}) if isinstance(tol, Mapping) else []
        if unknown:
            raise ValueError(f"{what}: {unknown} not an output of the model (outputs: {outputs})")
    if save_inputs is not None:
        from dsattn.fileio import check_output_path

        check_output_path(save_inputs, "save_inputs")
    precision = _precision(model)
    report = ValidationReport(label, _elem_name(precision), opts.seed)
    case_feeds, dims = _case_feeds(model, opts, report, batch, seq, capacity, load_inputs)
    if save_inputs is not None:
        from polygraphy.json import save_json

        from dsattn.fileio import atomic_output

        with atomic_output(save_inputs) as tmp:  # a failed write leaves an older file untouched
            save_json([f for _, f in case_feeds], str(tmp), description="input data")
        report.notes.append(f"inputs saved to {save_inputs}")
    model32 = to_float32_model(model) if precision != TensorProto.FLOAT else model
    model_file = None if isinstance(model_path, onnx.ModelProto) else label
    with tempfile.TemporaryDirectory(prefix="dsattn-validate-") as tmpdir:
        runtimes = _open_runtimes(model, model_file, precision, opts, dims, tmpdir, report)
        for case, feeds in case_feeds:
            _run_case(report, case, feeds, model, model32, runtimes, opts)
    return report
