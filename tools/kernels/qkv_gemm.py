"""ctypes binding of dsattn_qkv_gemm (plugins/kernels/qkv_gemm.h) on PyTorch CUDA tensors.

    qkv = qkv_gemm(x, weight, bias, gamma, beta, norm_type=1)            # LayerNorm -> x @ W + b
    qkv, normed = qkv_gemm(x, weight, bias, gamma, None, norm_type=2, emit_normed=1)

Arguments follow OPS.md §1 (and dsattn.export.ops.qkv_gemm): x T [..., hidden]; weight T [hidden, N]
(quantized=0) or int8 [N, hidden] (quantized=1); bias T [N]; gamma/beta T [hidden]; weight_scale
float32 [N, hidden / group_size]. The call is asynchronous on torch's current stream.
"""
from __future__ import annotations

import ctypes
import math
import threading

from . import _lib

__all__ = ["QKVGemmParams", "QKVGemmContext", "qkv_gemm", "default_context", "workspace_size", "raw_call"]


class QKVGemmParams(ctypes.Structure):
    """Mirror of dsattn_qkv_gemm_params (field order and types as in qkv_gemm.h)."""

    _fields_ = [
        ("input", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("gamma", ctypes.c_void_p),
        ("beta", ctypes.c_void_p),
        ("weight_scale", ctypes.c_void_p),
        ("qkv", ctypes.c_void_p),
        ("normed", ctypes.c_void_p),
        ("M", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("K", ctypes.c_int64),
        ("group_size", ctypes.c_int64),
        ("norm_type", ctypes.c_int32),
        ("quantized", ctypes.c_int32),
        ("emit_normed", ctypes.c_int32),
        ("epsilon", ctypes.c_float),
        ("dtype", ctypes.c_int),
    ]


def _prototypes(lib: ctypes.CDLL) -> ctypes.CDLL:
    if getattr(lib, "_dsattn_qkv_gemm_protos", False):
        return lib
    P = ctypes.POINTER(QKVGemmParams)
    lib.dsattn_gemm_ctx_create.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.dsattn_gemm_ctx_create.restype = ctypes.c_int
    lib.dsattn_gemm_ctx_destroy.argtypes = [ctypes.c_void_p]
    lib.dsattn_gemm_ctx_destroy.restype = ctypes.c_int
    lib.dsattn_qkv_gemm_workspace_size.argtypes = [P]
    lib.dsattn_qkv_gemm_workspace_size.restype = ctypes.c_size_t
    lib.dsattn_qkv_gemm.argtypes = [ctypes.c_void_p, P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.dsattn_qkv_gemm.restype = ctypes.c_int
    lib._dsattn_qkv_gemm_protos = True
    return lib


class QKVGemmContext:
    """Owns a dsattn_gemm_ctx (cuBLASLt handle + per-shape plan cache). Thread-safe to share."""

    def __init__(self, lib=None):
        self.lib = _prototypes(_lib.load(lib))
        h = ctypes.c_void_p()
        _lib.check(self.lib, self.lib.dsattn_gemm_ctx_create(ctypes.byref(h)), "dsattn_gemm_ctx_create")
        self.handle = h

    def close(self) -> None:
        if self.handle is not None and self.handle.value:
            self.lib.dsattn_gemm_ctx_destroy(self.handle)
        self.handle = None

    def __del__(self):  # the context holds host memory and a cuBLASLt handle
        try:
            self.close()
        except Exception:
            pass


_default: dict[int, QKVGemmContext] = {}
_default_lock = threading.Lock()


def default_context(lib=None) -> QKVGemmContext:
    """One shared context per loaded library (created on first use)."""
    l = _prototypes(_lib.load(lib))
    with _default_lock:
        ctx = _default.get(id(l))
        if ctx is None:
            ctx = _default[id(l)] = QKVGemmContext(l)
        return ctx


def workspace_size(params: QKVGemmParams, lib=None) -> int:
    l = _prototypes(_lib.load(lib))
    return int(l.dsattn_qkv_gemm_workspace_size(ctypes.byref(params)))


def raw_call(params: QKVGemmParams, workspace_ptr: int, workspace_bytes: int, *, ctx=None, lib=None,
             stream=None) -> int:
    """Call dsattn_qkv_gemm with hand-made params (tests of the C-level validation); returns the
    cudaError_t code without raising."""
    l = _prototypes(_lib.load(lib))
    c = ctx if ctx is not None else default_context(l)
    s = ctypes.c_void_p(stream) if isinstance(stream, int) else (stream or ctypes.c_void_p(0))
    return int(l.dsattn_qkv_gemm(c.handle, ctypes.byref(params), ctypes.c_void_p(workspace_ptr),
                                 ctypes.c_size_t(workspace_bytes), s))



def qkv_gemm(x, weight, bias=None, gamma=None, beta=None, weight_scale=None, *, norm_type=1,
             epsilon=1e-5, quantized=0, group_size=0, emit_normed=0, ctx=None, lib=None,
             out=None, normed_out=None):
    """Run dsattn_qkv_gemm; returns qkv T [..., N], or (qkv, normed T [..., hidden]) with emit_normed.

    ``out`` / ``normed_out`` are optional preallocated outputs (benchmarks, CUDA graphs).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"x must be a CUDA tensor, got device {x.device}")
    dt = x.dtype
    code = _lib.torch_dtype_code(dt)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must be [..., hidden] with hidden >= 1, got shape {list(x.shape)}")
    K = int(x.shape[-1])
    M = int(math.prod(x.shape[:-1]))
    dev = x.device
    _lib.check_tensor("x", x, dev)
    if norm_type not in (0, 1, 2):
        raise ValueError(f"norm_type must be 0 (none), 1 (LayerNorm) or 2 (RMSNorm), got {norm_type!r}")
    if quantized not in (0, 1):
        raise ValueError(f"quantized must be 0 or 1, got {quantized!r}")
    if emit_normed not in (0, 1):
        raise ValueError(f"emit_normed must be 0 or 1, got {emit_normed!r}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0, got {group_size!r}")
    if quantized:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be int8 [N, hidden={K}] when quantized=1, got "
                             f"{getattr(weight, 'shape', weight)!r}")
        _lib.check_tensor("weight", weight, dev, torch.int8)
        N = int(weight.shape[0])
        if weight.shape[1] != K:
            raise ValueError(f"weight must be int8 [N, hidden={K}], got shape {list(weight.shape)}")
        g = K if group_size == 0 else group_size
        if K % g != 0:
            raise ValueError(f"group_size={group_size} does not divide hidden={K}")
        if weight_scale is None:
            raise ValueError("weight_scale is required when quantized=1")
        _lib.check_tensor("weight_scale", weight_scale, dev, torch.float32, (N, K // g))
    else:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [hidden={K}, N], got {getattr(weight, 'shape', weight)!r}")
        _lib.check_tensor("weight", weight, dev, dt)
        if weight.shape[0] != K:
            raise ValueError(f"weight must be [hidden={K}, N] (input-major, x @ W), got shape "
                             f"{list(weight.shape)}")
        N = int(weight.shape[1])
        if weight_scale is not None:
            raise ValueError("weight_scale is given but quantized=0")
        if group_size != 0:
            raise ValueError(f"group_size={group_size} is only meaningful with quantized=1")
    if N < 1:
        raise ValueError(f"weight has N={N} output features; need >= 1")
    if bias is not None:
        _lib.check_tensor("bias", bias, dev, dt, (N,))
    if norm_type != 0:
        if gamma is None:
            raise ValueError(f"gamma is required when norm_type={norm_type}")
        _lib.check_tensor("gamma", gamma, dev, dt, (K,))
    elif gamma is not None or beta is not None:
        raise ValueError("gamma/beta must be absent when norm_type=0")
    if norm_type == 1:
        if beta is None:
            raise ValueError("beta is required when norm_type=1 (LayerNorm)")
        _lib.check_tensor("beta", beta, dev, dt, (K,))
    elif norm_type == 2 and beta is not None:
        raise ValueError("beta must be absent when norm_type=2 (RMSNorm has no bias)")

    lead = tuple(x.shape[:-1])
    if out is None:
        out = torch.empty(*lead, N, device=dev, dtype=dt)
    else:
        _lib.check_tensor("out", out, dev, dt, (*lead, N))
    if emit_normed:
        if normed_out is None:
            normed_out = torch.empty_like(x)
        else:
            _lib.check_tensor("normed_out", normed_out, dev, dt, tuple(x.shape))

    l = _prototypes(_lib.load(lib))
    c = ctx if ctx is not None else default_context(l)

    def ptr(t):
        return None if t is None else t.data_ptr()

    p = QKVGemmParams(
        input=ptr(x), weight=ptr(weight), bias=ptr(bias), gamma=ptr(gamma) if norm_type else None,
        beta=ptr(beta) if norm_type == 1 else None, weight_scale=ptr(weight_scale) if quantized else None,
        qkv=ptr(out), normed=ptr(normed_out) if emit_normed else None, M=M, N=N, K=K,
        group_size=group_size, norm_type=norm_type, quantized=quantized, emit_normed=emit_normed,
        epsilon=float(epsilon), dtype=code)
    if M > 0:
        nbytes = int(l.dsattn_qkv_gemm_workspace_size(ctypes.byref(p)))
        ws = torch.empty(nbytes, device=dev, dtype=torch.uint8) if nbytes else None
        with torch.cuda.device(dev):
            err = l.dsattn_qkv_gemm(c.handle, ctypes.byref(p), ctypes.c_void_p(ptr(ws)),
                                    ctypes.c_size_t(nbytes), _lib.current_stream_handle(dev))
        _lib.check(l, err, f"dsattn_qkv_gemm(M={M}, N={N}, K={K}, dtype={dt}, norm_type={norm_type}, "
                           f"quantized={quantized}, emit_normed={emit_normed})")
    return (out, normed_out) if emit_normed else out
