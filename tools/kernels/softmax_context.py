"""ctypes binding of dsattn_softmax_context (plugins/kernels/softmax_context.h) on PyTorch CUDA tensors.

    ctx = softmax_context(qkv, past_key, past_value, seq_lens, start_pos,
                          num_heads=32, head_size=128, rotary_dim=128)

Arguments follow OPS.md §2 (and dsattn.export.ops.softmax_context): qkv T [B, S, (H + 2*Hkv)*D];
past_key / past_value T [B, Hkv, Tmax, D], updated IN PLACE (rows seq_lens[b] .. seq_lens[b]+S-1);
seq_lens int32 [B] and start_pos int32 [B] (or None) on the same device. Returns the context
T [B, S, H*D]. With ``check=True`` (default) the call waits for the stream and raises ValueError
naming the offending row when the device-side row check failed (cache overflow, bad seq_lens or
start_pos); nothing was written then. ``check=False`` keeps the call asynchronous (CUDA-graph
capturable with preallocated ``out``/``workspace``/``status``); read ``status`` yourself.
"""
from __future__ import annotations

import ctypes
import math
from typing import Optional, Sequence

from . import _lib

__all__ = ["SoftmaxContextParams", "softmax_context", "workspace_size", "PATH_AUTO", "PATH_PREFILL_MMA"]

# softmax_context.h
MAX_HEAD_SIZE = 256
HEAD_MULTIPLE = 8
PATH_AUTO, PATH_PREFILL_MMA = 0, 1


class SoftmaxContextParams(ctypes.Structure):
    """Mirror of dsattn_softmax_context_params (field order and types as in softmax_context.h)."""

    _fields_ = [
        ("qkv", ctypes.c_void_p),
        ("key_cache", ctypes.c_void_p),
        ("value_cache", ctypes.c_void_p),
        ("seq_lens", ctypes.c_void_p),
        ("start_pos", ctypes.c_void_p),
        ("alibi_slopes", ctypes.c_void_p),
        ("context", ctypes.c_void_p),
        ("status", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("seq_len", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("num_kv_heads", ctypes.c_int64),
        ("head_size", ctypes.c_int64),
        ("max_seq_len", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("rope_theta", ctypes.c_float),
        ("qkv_layout", ctypes.c_int32),
        ("causal", ctypes.c_int32),
        ("local_window", ctypes.c_int32),
        ("rotary_dim", ctypes.c_int32),
        ("rotary_style", ctypes.c_int32),
        ("dtype", ctypes.c_int),
        ("path", ctypes.c_int32),
    ]


def _prototypes(lib: ctypes.CDLL) -> ctypes.CDLL:
    if getattr(lib, "_dsattn_softmax_context_protos", False):
        return lib
    P = ctypes.POINTER(SoftmaxContextParams)
    lib.dsattn_softmax_context_workspace_size.argtypes = [P]
    lib.dsattn_softmax_context_workspace_size.restype = ctypes.c_size_t
    lib.dsattn_softmax_context_validate.argtypes = [P, ctypes.c_char_p, ctypes.c_size_t]
    lib.dsattn_softmax_context_validate.restype = ctypes.c_int
    lib.dsattn_softmax_context.argtypes = [P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.dsattn_softmax_context.restype = ctypes.c_int
    lib._dsattn_softmax_context_protos = True
    return lib


def _int_attr(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def _params(qkv, past_key, past_value, seq_lens, start_pos, out, status, slopes, *, num_heads,
            num_kv_heads, head_size, scale, qkv_layout, causal, local_window, rotary_dim,
            rotary_style, rope_theta, path) -> SoftmaxContextParams:
    p = SoftmaxContextParams()
    p.qkv = qkv.data_ptr()
    p.key_cache = past_key.data_ptr()
    p.value_cache = past_value.data_ptr()
    p.seq_lens = seq_lens.data_ptr()
    p.start_pos = start_pos.data_ptr() if start_pos is not None else None
    p.alibi_slopes = slopes.data_ptr() if slopes is not None else None
    p.context = out.data_ptr()
    p.status = status.data_ptr()
    p.batch, p.seq_len = qkv.shape[0], qkv.shape[1]
    p.num_heads, p.num_kv_heads, p.head_size = num_heads, num_kv_heads, head_size
    p.max_seq_len = past_key.shape[2]
    p.scale, p.rope_theta = scale, rope_theta
    p.qkv_layout, p.causal, p.local_window = qkv_layout, causal, local_window
    p.rotary_dim, p.rotary_style = rotary_dim, rotary_style
    p.dtype = _lib.torch_dtype_code(qkv.dtype)
    p.path = path
    return p


def workspace_size(params: SoftmaxContextParams, lib=None) -> int:
    """Bytes of device scratch dsattn_softmax_context needs for ``params`` (0 if invalid)."""
    return int(_prototypes(_lib.load(lib)).dsattn_softmax_context_workspace_size(ctypes.byref(params)))


def _check(name, t, device, dtype=None, shape=None):
    _lib.check_tensor(name, t, device, dtype, shape, align=16, device_of="qkv")


def softmax_context(qkv, past_key, past_value, seq_lens, start_pos=None, *, num_heads: int,
                    num_kv_heads: Optional[int] = None, head_size: int, scale: Optional[float] = None,
                    qkv_layout: int = 0, causal: int = 1, local_window: int = 0, rotary_dim: int = 0,
                    rotary_style: int = 0, rope_theta: float = 10000.0,
                    alibi_slopes: Optional[Sequence[float]] = None, lib=None, out=None,
                    workspace=None, status=None, check: bool = True, path: int = PATH_AUTO):
    """Run dsattn::SoftmaxContext on CUDA tensors; returns the context T [B, S, H*D].

    past_key / past_value are updated in place. ``alibi_slopes`` is a sequence of H floats or a
    float32 CUDA tensor [H]; None or empty means no ALiBi. ``out`` (T [B, S, H*D]),
    ``workspace`` (uint8 CUDA tensor) and ``status`` (int32 CUDA tensor [1]) may be preallocated.
    ``path`` PATH_PREFILL_MMA forces the mma.sync prefill kernel (tests; see softmax_context.h).
    """
    import torch

    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.device.type != "cuda":
        raise ValueError(f"qkv must be a CUDA tensor, got device {qkv.device}")
    dev = qkv.device
    H = _int_attr("num_heads", num_heads, 1)
    Hkv = H if num_kv_heads is None else _int_attr("num_kv_heads", num_kv_heads, 1)
    D = _int_attr("head_size", head_size, 1)
    if H % Hkv:
        raise ValueError(f"num_kv_heads={Hkv} must divide num_heads={H}")
    if D % HEAD_MULTIPLE or D > MAX_HEAD_SIZE:
        raise ValueError(f"head_size={D} must be a multiple of {HEAD_MULTIPLE} and <= {MAX_HEAD_SIZE}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if qkv.dim() != 3 or qkv.shape[2] != (H + 2 * Hkv) * D:
        raise ValueError(f"qkv must be [B, S, (H + 2*Hkv)*D = {(H + 2 * Hkv) * D}], got shape {tuple(qkv.shape)}")
    B, S = int(qkv.shape[0]), int(qkv.shape[1])
    _check("qkv", qkv, dev)
    _lib.torch_dtype_code(qkv.dtype)
    if past_key.dim() != 4 or tuple(past_key.shape[:2]) != (B, Hkv) or past_key.shape[3] != D:
        raise ValueError(f"past_key must be [B={B}, Hkv={Hkv}, Tmax, D={D}], got shape {tuple(past_key.shape)}")
    _check("past_key", past_key, dev, qkv.dtype)
    _check("past_value", past_value, dev, qkv.dtype, past_key.shape)
    _check("seq_lens", seq_lens, dev, torch.int32, (B,))
    if start_pos is not None:
        _check("start_pos", start_pos, dev, torch.int32, (B,))
    slopes = None
    if alibi_slopes is not None:
        if isinstance(alibi_slopes, torch.Tensor):
            slopes = alibi_slopes
        elif len(alibi_slopes):
            slopes = torch.tensor([float(s) for s in alibi_slopes], dtype=torch.float32, device=dev)
        if slopes is not None:
            _check("alibi_slopes", slopes, dev, torch.float32, (H,))
    if out is None:
        out = torch.empty(B, S, H * D, dtype=qkv.dtype, device=dev)
    else:
        _check("out", out, dev, qkv.dtype, (B, S, H * D))
    if status is None:
        status = torch.empty(1, dtype=torch.int32, device=dev)
    else:
        _check("status", status, dev, torch.int32, (1,))

    lib = _prototypes(_lib.load(lib))
    p = _params(qkv, past_key, past_value, seq_lens, start_pos, out, status, slopes, num_heads=H,
                num_kv_heads=Hkv, head_size=D, scale=float(scale), qkv_layout=int(qkv_layout),
                causal=int(causal), local_window=int(local_window), rotary_dim=int(rotary_dim),
                rotary_style=int(rotary_style), rope_theta=float(rope_theta), path=int(path))
    msg = ctypes.create_string_buffer(512)
    if lib.dsattn_softmax_context_validate(ctypes.byref(p), msg, len(msg)) != _lib.CUDA_SUCCESS:
        raise ValueError(f"softmax_context: {msg.value.decode()}")
    need = int(lib.dsattn_softmax_context_workspace_size(ctypes.byref(p)))
    if workspace is None:
        workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=dev)
    elif workspace.numel() * workspace.element_size() < need:
        raise ValueError(f"workspace has {workspace.numel() * workspace.element_size()} bytes, needs {need}")
    with torch.cuda.device(dev):
        err = lib.dsattn_softmax_context(ctypes.byref(p), ctypes.c_void_p(workspace.data_ptr()),
                                         ctypes.c_size_t(workspace.numel() * workspace.element_size()),
                                         _lib.current_stream_handle(dev))
    _lib.check(lib, err, "dsattn_softmax_context")
    if check:
        code = int(status.item())  # synchronizes with the stream
        if code != 0:
            b = code - 1
            lens = seq_lens.tolist()
            starts = start_pos.tolist() if start_pos is not None else [0] * B
            Tmax = int(past_key.shape[2])
            raise ValueError(
                f"softmax_context: row b={b} rejected on the device (nothing was written): "
                f"seq_lens[{b}]={lens[b]}, S={S}, Tmax={Tmax}, start_pos[{b}]={starts[b]}; needs "
                f"0 <= seq_lens[b], seq_lens[b] + S <= Tmax and 0 <= start_pos[b] <= seq_lens[b] + S")
    return out
