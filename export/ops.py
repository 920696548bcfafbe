"""Reference implementations of the three dsattn ops (OPS.md, version 1).

One meaning, one implementation: the eager bodies of the torch custom ops
(``torch.ops.dsattn.qkv_gemm`` / ``softmax_context`` / ``int8_matmul``) are the fp32 reference.
``run_node`` feeds numpy arrays through the same bodies (the oracle for the ONNX reference
evaluator, ONNX Runtime validation, kernel tests and the plugin host harness), and
``reference_evaluator`` registers them with ``onnx.reference.ReferenceEvaluator``.

Every computation runs in float32 (norm, GEMM accumulation, rotary, softmax) and the outputs are
rounded once to the input type T. The attention reads the keys and values back from the updated
cache (rounded to T), exactly as a kernel that appends to the cache and then attends over it does.

Shapes (OPS.md notation): B batch, S new tokens, H query heads, Hkv key/value heads, D head size,
hidden model width, Tmax cache capacity, N output features, K input features.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from . import opspec
from .opspec import DOMAIN, OP_TYPES, OP_VERSION

__all__ = [
    "qkv_gemm",
    "softmax_context",
    "int8_matmul",
    "run_node",
    "reference_evaluator",
    "OP_TYPES",
    "DOMAIN",
    "OP_VERSION",
]

_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fail(msg: str) -> None:
    raise ValueError(msg)


def _check_float(name: str, t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_TYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the node's T is {dtype} (every T of a node is the same type)")


def _dequant(weight: torch.Tensor, weight_scale: torch.Tensor, group_size: int, wname: str) -> torch.Tensor:
    """int8 [N, K] and float32 [N, K/group_size] -> float32 [N, K]: scale[n, k // g] * q[n, k]."""
    if weight.dtype != torch.int8:
        raise TypeError(f"{wname} must be int8 when quantized, got {weight.dtype}")
    if weight.dim() != 2:
        _fail(f"{wname} must be 2-D int8 [N, K], got shape {tuple(weight.shape)}")
    if weight_scale is None:
        _fail("weight_scale is required for an int8 weight")
    if weight_scale.dtype != torch.float32:
        raise TypeError(f"weight_scale must be float32, got {weight_scale.dtype}")
    n, k = weight.shape
    g = k if group_size == 0 else group_size
    if k % g != 0:
        _fail(f"attribute group_size={group_size} does not divide K={k} of {wname}")
    if tuple(weight_scale.shape) != (n, k // g):
        _fail(f"weight_scale must have shape [N, K/group_size] = {[n, k // g]}, got {list(weight_scale.shape)}")
    scale = weight_scale.to(torch.float32).repeat_interleave(g, dim=1)
    return weight.to(torch.float32) * scale


# ------------------------------------------------------------------------------------------------
# QKVGemm
# ------------------------------------------------------------------------------------------------

def _qkv_gemm_impl(input, weight, bias, gamma, beta, weight_scale, norm_type, epsilon, quantized,
                   group_size, emit_normed):
    _check_float("input", input)
    T = input.dtype
    if input.dim() != 3:
        _fail(f"input must be [B, S, hidden], got shape {tuple(input.shape)}")
    hidden = input.shape[-1]
    opspec.resolve("QKVGemm", dict(norm_type=norm_type, epsilon=epsilon, quantized=quantized,
                                   group_size=group_size, emit_normed=emit_normed))
    if quantized:
        w = _dequant(weight, weight_scale, group_size, "weight")  # [N, hidden]
        if w.shape[1] != hidden:
            _fail(f"int8 weight must be [N, hidden={hidden}], got shape {tuple(weight.shape)}")
        w = w.t()
    else:
        _check_float("weight", weight, T)
        if weight_scale is not None:
            _fail("weight_scale is given but quantized=0")
        if weight.dim() != 2 or weight.shape[0] != hidden:
            _fail(f"weight must be [hidden={hidden}, N], got shape {tuple(weight.shape)}")
        w = weight.to(torch.float32)
    n = w.shape[1]
    x = input.to(torch.float32)
    if norm_type != 0:
        if gamma is None:
            _fail(f"gamma is required when norm_type={norm_type}")
        _check_float("gamma", gamma, T)
        if tuple(gamma.shape) != (hidden,):
            _fail(f"gamma must be [hidden={hidden}], got shape {tuple(gamma.shape)}")
    if norm_type == 1:
        if beta is None:
            _fail("beta is required when norm_type=1 (LayerNorm)")
        _check_float("beta", beta, T)
        if tuple(beta.shape) != (hidden,):
            _fail(f"beta must be [hidden={hidden}], got shape {tuple(beta.shape)}")
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
        x = (x - mean) / torch.sqrt(var + epsilon) * gamma.float() + beta.float()
    elif norm_type == 2:
        if beta is not None:
            _fail("beta must be absent when norm_type=2 (RMSNorm has no bias)")
        x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + epsilon) * gamma.float()
    else:
        if gamma is not None or beta is not None:
            _fail("gamma/beta must be absent when norm_type=0")
    qkv = x @ w
    if bias is not None:
        _check_float("bias", bias, T)
        if tuple(bias.shape) != (n,):
            _fail(f"bias must be [N={n}], got shape {tuple(bias.shape)}")
        qkv = qkv + bias.float()
    out = [qkv.to(T)]
    if emit_normed:
        out.append(x.to(T, copy=True))  # custom-op outputs may not alias inputs (norm_type=0)
    return out


@torch.library.custom_op("dsattn::qkv_gemm", mutates_args=())
def _qkv_gemm_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    weight_scale: Optional[torch.Tensor],
    norm_type: int,
    epsilon: float,
    quantized: int,
    group_size: int,
    emit_normed: int,
) -> list[torch.Tensor]:
    return _qkv_gemm_impl(input, weight, bias, gamma, beta, weight_scale, norm_type, epsilon,
                          quantized, group_size, emit_normed)


@_qkv_gemm_op.register_fake
def _(input, weight, bias, gamma, beta, weight_scale, norm_type, epsilon, quantized, group_size,
      emit_normed):
    n = weight.shape[0] if quantized else weight.shape[1]
    out = [input.new_empty((*input.shape[:-1], n))]
    if emit_normed:
        out.append(input.new_empty(input.shape))
    return out


def qkv_gemm(input, weight, bias=None, gamma=None, beta=None, weight_scale=None, *, norm_type=None,
             epsilon=None, quantized=None, group_size=None, emit_normed=None):
    """``dsattn::QKVGemm``: ``qkv = norm(input) @ W + bias``.

    input T [B, S, hidden]; weight T [hidden, N] (quantized=0) or int8 [N, hidden] (quantized=1);
    bias T [N] or None; gamma T [hidden] (norm_type 1, 2); beta T [hidden] (norm_type 1);
    weight_scale float32 [N, hidden / group_size] (quantized=1; group_size 0 = per channel).
    Attributes left None take their OPS.md defaults (``opspec``).
    Returns qkv T [B, S, N], or (qkv, normed T [B, S, hidden]) when emit_normed=1.
    """
    a = opspec.resolve("QKVGemm", dict(norm_type=norm_type, epsilon=epsilon, quantized=quantized,
                                       group_size=group_size, emit_normed=emit_normed))
    out = torch.ops.dsattn.qkv_gemm(input, weight, bias, gamma, beta, weight_scale, a["norm_type"], a["epsilon"],
                                    a["quantized"], a["group_size"], a["emit_normed"])
    return (out[0], out[1]) if a["emit_normed"] else out[0]


# ------------------------------------------------------------------------------------------------
# SoftmaxContext
# ------------------------------------------------------------------------------------------------

def _rotary(x: torch.Tensor, pos: torch.Tensor, rotary_dim: int, style: int, theta: float) -> torch.Tensor:
    """Rotate the first rotary_dim dims of x [S, heads, D] (fp32) at positions pos [S] (fp32)."""
    half = rotary_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=x.device) / rotary_dim))
    ang = pos[:, None] * inv_freq[None, :]  # [S, rotary_dim/2]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if style == 0:  # rotate_half: pairs (i, i + rotary_dim/2)
        a, b = rot[..., :half], rot[..., half:]
        rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:  # rotate_every_two: pairs (2i, 2i+1)
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rot, rest], dim=-1)


def _softmax_context_impl(qkv, past_key, past_value, seq_lens, start_pos, num_heads, num_kv_heads,
                          head_size, scale, qkv_layout, causal, local_window, rotary_dim,
                          rotary_style, rope_theta, alibi_slopes):
    _check_float("qkv", qkv)
    T = qkv.dtype
    _check_float("past_key", past_key, T)
    _check_float("past_value", past_value, T)
    opspec.resolve("SoftmaxContext", dict(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, scale=scale, qkv_layout=qkv_layout,
        causal=causal, local_window=local_window, rotary_dim=rotary_dim, rotary_style=rotary_style,
        rope_theta=rope_theta, alibi_slopes=alibi_slopes))
    H, Hkv, D = num_heads, num_kv_heads, head_size
    slopes = list(alibi_slopes)
    if qkv.dim() != 3 or qkv.shape[-1] != (H + 2 * Hkv) * D:
        _fail(f"qkv must be [B, S, (H + 2*Hkv)*D = {(H + 2 * Hkv) * D}], got shape {tuple(qkv.shape)}")
    B, S, _ = qkv.shape
    if past_key.dim() != 4 or past_key.shape[0] != B or past_key.shape[1] != Hkv or past_key.shape[3] != D:
        _fail(f"past_key must be [B={B}, Hkv={Hkv}, Tmax, D={D}], got shape {tuple(past_key.shape)}")
    if past_value.shape != past_key.shape:
        _fail(f"past_value shape {tuple(past_value.shape)} differs from past_key shape {tuple(past_key.shape)}")
    Tmax = past_key.shape[2]
    if seq_lens.dtype != torch.int32:
        raise TypeError(f"seq_lens must be int32, got {seq_lens.dtype}")
    if tuple(seq_lens.shape) != (B,):
        _fail(f"seq_lens must be [B={B}], got shape {tuple(seq_lens.shape)}")
    lens = [int(v) for v in seq_lens.tolist()]
    if start_pos is None:
        starts = [0] * B
    else:
        if start_pos.dtype != torch.int32:
            raise TypeError(f"start_pos must be int32, got {start_pos.dtype}")
        if tuple(start_pos.shape) != (B,):
            _fail(f"start_pos must be [B={B}], got shape {tuple(start_pos.shape)}")
        starts = [int(v) for v in start_pos.tolist()]
    # Validate every row before anything is written: an error leaves the cache as it was.
    for b in range(B):
        if lens[b] < 0:
            _fail(f"seq_lens[{b}]={lens[b]} is negative")
        if lens[b] + S > Tmax:
            _fail(f"KV cache overflow in row b={b}: seq_lens[{b}]={lens[b]} + S={S} new tokens > Tmax={Tmax}")
        if not 0 <= starts[b] <= lens[b] + S:
            _fail(f"start_pos[{b}]={starts[b]} must be in [0, seq_lens[{b}] + S = {lens[b] + S}]")

    dev = qkv.device
    x = qkv.to(torch.float32)
    if qkv_layout == 0:
        q = x[..., : H * D].reshape(B, S, H, D)
        k = x[..., H * D: (H + Hkv) * D].reshape(B, S, Hkv, D)
        v = x[..., (H + Hkv) * D:].reshape(B, S, Hkv, D)
    else:
        x = x.reshape(B, S, H, 3, D)
        q, k, v = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    present_key = past_key.clone()
    present_value = past_value.clone()
    context = torch.zeros(B, S, H, D, dtype=torch.float32, device=dev)
    group = H // Hkv
    slope_t = torch.tensor(slopes, dtype=torch.float32, device=dev) if slopes else None
    for b in range(B):
        L0, L = lens[b], lens[b] + S
        p = torch.arange(L0, L, device=dev)  # absolute positions of the new tokens
        qb, kb = q[b], k[b]
        if rotary_dim:
            rp = (p - starts[b]).to(torch.float32)
            qb = _rotary(qb, rp, rotary_dim, rotary_style, rope_theta)
            kb = _rotary(kb, rp, rotary_dim, rotary_style, rope_theta)
        present_key[b, :, L0:L] = kb.transpose(0, 1).to(T)
        present_value[b, :, L0:L] = v[b].transpose(0, 1).to(T)
        keys = present_key[b, :, :L].to(torch.float32).repeat_interleave(group, dim=0)  # [H, L, D]
        vals = present_value[b, :, :L].to(torch.float32).repeat_interleave(group, dim=0)
        logits = scale * torch.einsum("shd,hld->hsl", qb, keys)  # [H, S, L]
        j = torch.arange(L, device=dev)
        if slope_t is not None:
            logits = logits + slope_t[:, None, None] * (j - starts[b]).to(torch.float32)[None, None, :]
        valid = (j >= starts[b])[None, :].expand(S, L)
        if causal:
            valid = valid & (j[None, :] <= p[:, None])
        if local_window:
            valid = valid & (j[None, :] > p[:, None] - local_window)
        context[b] = _attend(logits, vals, valid)
    return context.reshape(B, S, H * D).to(T), present_key, present_value


def _attend(logits: torch.Tensor, vals: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """softmax(logits) . vals over the visible keys only (OPS.md "Non-finite values").

    logits [H, S, L], vals [H, L, D], valid [S, L] -> [S, H, D], all fp32. A masked key is excluded
    from the softmax and from the weighted sum: it is never multiplied by its zero probability, so
    NaN / inf in its cache row cannot reach the result. NaN in attended data propagates: a NaN
    logit (q or a visible key) makes the row NaN through the softmax; a non-finite element d of a
    visible key's value makes element d NaN. A row without visible keys is zeros.
    """
    logits = logits.masked_fill(~valid[None], float("-inf"))
    m = logits.amax(-1, keepdim=True)  # NaN when a visible logit is NaN (amax propagates NaN)
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # no key / only -inf logits: weights 0
    e = torch.exp(logits - m)  # masked keys: exp(-inf) = 0
    denom = e.sum(-1, keepdim=True)
    probs = e / torch.where(denom == 0, torch.ones_like(denom), denom)  # a zero sum means zero weights
    # The product takes the finite values only; an einsum over all keys would multiply a masked
    # key's NaN by its zero probability. Non-finite values of visible keys come back as NaN in the
    # elements they reach.
    finite = torch.isfinite(vals)
    ctx = torch.einsum("hsl,hld->shd", probs, torch.where(finite, vals, torch.zeros_like(vals)))
    if not bool(finite.all()):
        reach = torch.einsum("sl,hld->shd", valid.to(torch.float32), (~finite).to(torch.float32)) > 0
        ctx = torch.where(reach, torch.full_like(ctx, float("nan")), ctx)
    return ctx


@torch.library.custom_op("dsattn::softmax_context", mutates_args=())
def _softmax_context_op(
    qkv: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seq_lens: torch.Tensor,
    start_pos: Optional[torch.Tensor],
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    scale: float,
    qkv_layout: int,
    causal: int,
    local_window: int,
    rotary_dim: int,
    rotary_style: int,
    rope_theta: float,
    alibi_slopes: list[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _softmax_context_impl(qkv, past_key, past_value, seq_lens, start_pos, num_heads,
                                 num_kv_heads, head_size, scale, qkv_layout, causal, local_window,
                                 rotary_dim, rotary_style, rope_theta, alibi_slopes)


@_softmax_context_op.register_fake
def _(qkv, past_key, past_value, seq_lens, start_pos, num_heads, num_kv_heads, head_size, scale,
      qkv_layout, causal, local_window, rotary_dim, rotary_style, rope_theta, alibi_slopes):
    B, S = qkv.shape[0], qkv.shape[1]
    return (qkv.new_empty((B, S, num_heads * head_size)), torch.empty_like(past_key),
            torch.empty_like(past_value))


def softmax_context(qkv, past_key, past_value, seq_lens, start_pos=None, *, num_heads, head_size,
                    num_kv_heads=None, scale=None, qkv_layout=None, causal=None, local_window=None,
                    rotary_dim=None, rotary_style=None, rope_theta=None, alibi_slopes=None,
                    inplace=False):
    """``dsattn::SoftmaxContext``: split QKV, rotary, append to the KV cache, attention.

    qkv T [B, S, (H + 2*Hkv)*D]; past_key, past_value T [B, Hkv, Tmax, D]; seq_lens int32 [B]
    (tokens already cached); start_pos int32 [B] or None (first valid key, left padding).
    Returns (context T [B, S, H*D], present_key, present_value T [B, Hkv, Tmax, D]); the presents
    are new tensors (past with the new rows written) unless ``inplace=True``, which writes into
    past_key/past_value and returns them. Attributes left None take their OPS.md defaults or
    derived values (``opspec``: num_kv_heads = num_heads, scale = 1/sqrt(head_size)).
    """
    a = opspec.resolve("SoftmaxContext", dict(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_size=head_size, scale=scale, qkv_layout=qkv_layout,
        causal=causal, local_window=local_window, rotary_dim=rotary_dim, rotary_style=rotary_style,
        rope_theta=rope_theta, alibi_slopes=alibi_slopes))
    ctx, pk, pv = torch.ops.dsattn.softmax_context(
        qkv, past_key, past_value, seq_lens, start_pos, a["num_heads"], a["num_kv_heads"], a["head_size"],
        a["scale"], a["qkv_layout"], a["causal"], a["local_window"], a["rotary_dim"], a["rotary_style"],
        a["rope_theta"], list(a["alibi_slopes"]))
    if inplace:
        past_key.copy_(pk)
        past_value.copy_(pv)
        return ctx, past_key, past_value
    return ctx, pk, pv


# ------------------------------------------------------------------------------------------------
# Int8MatMul
# ------------------------------------------------------------------------------------------------

def _int8_matmul_impl(input, weight, weight_scale, bias, group_size):
    _check_float("input", input)
    T = input.dtype
    if input.dim() < 1:
        _fail("input must have at least one dimension [..., K]")
    opspec.resolve("Int8MatMul", dict(group_size=group_size))
    w = _dequant(weight, weight_scale, group_size, "weight")  # [N, K]
    if w.shape[1] != input.shape[-1]:
        _fail(f"weight is [N, K={w.shape[1]}] but input has K={input.shape[-1]} (shape {tuple(input.shape)})")
    y = input.to(torch.float32) @ w.t()
    if bias is not None:
        _check_float("bias", bias, T)
        if tuple(bias.shape) != (w.shape[0],):
            _fail(f"bias must be [N={w.shape[0]}], got shape {tuple(bias.shape)}")
        y = y + bias.float()
    return y.to(T)


@torch.library.custom_op("dsattn::int8_matmul", mutates_args=())
def _int8_matmul_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor],
    group_size: int,
) -> torch.Tensor:
    return _int8_matmul_impl(input, weight, weight_scale, bias, group_size)


@_int8_matmul_op.register_fake
def _(input, weight, weight_scale, bias, group_size):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def int8_matmul(input, weight, weight_scale, bias=None, *, group_size=None):
    """``dsattn::Int8MatMul``: ``y = input @ dequant(weight)^T + bias``.

    input T [..., K]; weight int8 [N, K]; weight_scale float32 [N, K / group_size] (group_size 0 or
    None = per output channel); bias T [N] or None. Returns T [..., N].
    """
    a = opspec.resolve("Int8MatMul", dict(group_size=group_size))
    return torch.ops.dsattn.int8_matmul(input, weight, weight_scale, bias, a["group_size"])


# ------------------------------------------------------------------------------------------------
# numpy oracle and ONNX reference evaluator
# ------------------------------------------------------------------------------------------------

def _np_to_torch(name: str, a: np.ndarray) -> torch.Tensor:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"input {name} must be a numpy array or None, got {type(a).__name__}")
    if a.dtype.name == "bfloat16":  # ml_dtypes.bfloat16: bf16 -> fp32 is exact
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32))).to(torch.bfloat16)
    try:  # other dtypes pass through; the op itself reports a wrong dtype by input name
        return torch.from_numpy(np.array(a))  # a copy: inputs are never modified, may be read-only
    except TypeError:
        raise TypeError(f"input {name} has unsupported dtype {a.dtype}") from None


def _torch_to_np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def run_node(op_type: str, inputs: Sequence[Optional[np.ndarray]], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """Evaluate one dsattn node on numpy arrays (computes in fp32, returns outputs in T).

    ``inputs`` are the positional ONNX inputs of OPS.md (None = absent optional input; trailing
    ones may be omitted); ``attrs`` use OPS.md names (missing -> OPS.md default). Returns
    (qkv,) or (qkv, normed) for QKVGemm, (context, present_key, present_value) for
    SoftmaxContext, (output,) for Int8MatMul. Inputs are never modified.
    """
    spec = opspec.op(op_type)
    names = spec.input_names
    inputs = list(inputs)
    if len(inputs) > len(names):
        _fail(f"{op_type} takes at most {len(names)} inputs {names}, got {len(inputs)}")
    for i in range(spec.n_required_inputs):
        if i >= len(inputs) or inputs[i] is None:
            _fail(f"{op_type}: required input {i} '{names[i]}' is missing")
    inputs += [None] * (len(names) - len(inputs))
    # A shape-[0] tensor in an optional slot is absent (OPS.md: how an absent input that precedes a
    # present one is written).
    inputs = [None if i >= spec.n_required_inputs and x is not None and np.shape(x) == (0,) else x
              for i, x in enumerate(inputs)]
    a = opspec.resolve(op_type, attrs)
    t = [None if x is None else _np_to_torch(n, x) for n, x in zip(names, inputs)]
    if op_type == "QKVGemm":
        out = qkv_gemm(*t, **a)
        out = out if isinstance(out, tuple) else (out,)
    elif op_type == "Int8MatMul":
        out = (int8_matmul(*t, **a),)
    else:
        out = softmax_context(*t, **a)
    return tuple(_torch_to_np(o) for o in out)


def _make_op_run_classes():
    from onnx.reference.op_run import OpRun

    classes = []
    for op_type in OP_TYPES:
        def _run(self, *inputs, _op=op_type, **attrs):
            attrs = {k: v for k, v in attrs.items() if v is not None}
            if isinstance(attrs.get("plugin_version"), bytes):
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            return run_node(_op, [None if (x is None or (isinstance(x, np.ndarray) and x.size == 0 and x.dtype == object)) else x for x in inputs], attrs)

        classes.append(type(op_type, (OpRun,), {"op_domain": DOMAIN, "_run": _run}))
    return classes


def reference_evaluator(model, **kwargs):
    """``onnx.reference.ReferenceEvaluator`` for ``model`` (ModelProto or path) with the three
    dsattn ops registered as Python implementations (via ``run_node``)."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=_make_op_run_classes(), **kwargs)
