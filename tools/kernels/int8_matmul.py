"""ctypes binding of dsattn_int8_matmul (plugins/kernels/int8_matmul.h) on PyTorch CUDA tensors.

    y = int8_matmul(x, weight, weight_scale, bias, group_size=128)   # x @ dequant(weight)^T + bias

Arguments follow OPS.md §3 (and dsattn.export.ops.int8_matmul): x T [..., K]; weight int8 [N, K]
(output-major); weight_scale float32 [N, K / group_size] (group_size 0 = per output channel, i.e.
[N, 1]); bias T [N] or None. Returns T [..., N]. The call is asynchronous on torch's current stream.
Kernel restrictions beyond OPS.md (checked here and in C): K % 16 == 0 and group_size % 16 == 0.
"""
from __future__ import annotations

import ctypes

from . import _lib

__all__ = ["Int8MatMulParams", "int8_matmul", "workspace_size", "raw_call", "PATH_AUTO", "PATH_SKINNY",
           "PATH_TILED", "PATH_FP32", "PATH_TILED_MMA", "K_MULTIPLE", "GROUP_MULTIPLE"]

# int8_matmul.h
PATH_AUTO, PATH_SKINNY, PATH_TILED, PATH_FP32, PATH_TILED_MMA = 0, 1, 2, 3, 4
K_MULTIPLE = 16
GROUP_MULTIPLE = 16


class Int8MatMulParams(ctypes.Structure):
    """Mirror of dsattn_int8_matmul_params (field order and types as in int8_matmul.h)."""

    _fields_ = [
        ("input", ctypes.c_void_p),
        ("weight", ctypes.c_void_p),
        ("weight_scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("output", ctypes.c_void_p),
        ("M", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("K", ctypes.c_int64),
        ("group_size", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("path", ctypes.c_int32),
    ]


def _prototypes(lib: ctypes.CDLL) -> ctypes.CDLL:
    if getattr(lib, "_dsattn_int8_matmul_protos", False):
        return lib
    P = ctypes.POINTER(Int8MatMulParams)
    lib.dsattn_int8_matmul_workspace_size.argtypes = [P]
    lib.dsattn_int8_matmul_workspace_size.restype = ctypes.c_size_t
    lib.dsattn_int8_matmul.argtypes = [P, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.dsattn_int8_matmul.restype = ctypes.c_int
    lib._dsattn_int8_matmul_protos = True
    return lib


def workspace_size(params: Int8MatMulParams, lib=None) -> int:
    """dsattn_int8_matmul_workspace_size of hand-made params (bytes)."""
    l = _prototypes(_lib.load(lib))
    return int(l.dsattn_int8_matmul_workspace_size(ctypes.byref(params)))


def raw_call(params: Int8MatMulParams, workspace_ptr: int = 0, workspace_bytes: int = 0, *, lib=None,
             stream=None) -> int:
    """Call dsattn_int8_matmul with hand-made params (tests of the C-level validation; params.path
    forces a kernel path); returns the cudaError_t code without raising."""
    l = _prototypes(_lib.load(lib))
    s = ctypes.c_void_p(stream) if isinstance(stream, int) else (stream or ctypes.c_void_p(0))
    return int(l.dsattn_int8_matmul(ctypes.byref(params), ctypes.c_void_p(workspace_ptr),
                                    ctypes.c_size_t(workspace_bytes), s))


def _check(name, t, device, dtype=None, shape=None):
    # the kernels need 16-byte aligned x, weight and output rows; others their element size
    _lib.check_tensor(name, t, device, dtype, shape,
                      align=16 if name in ("x", "weight", "out") else (t.element_size() if hasattr(t, "element_size") else 1))


def int8_matmul(x, weight, weight_scale, bias=None, *, group_size: int = 0, lib=None, out=None,
                path: int = PATH_AUTO):
    """``x @ dequant(weight)^T + bias`` through dsattn_int8_matmul; returns T [..., N].

    x T [..., K] (float16, bfloat16 or float32), contiguous; weight int8 [N, K]; weight_scale float32
    [N, K / group_size] ([N, 1] for group_size 0); bias T [N] or None. ``out`` is an optional
    preallocated T [..., N] output (benchmarks, CUDA graphs); ``path`` forces a kernel path
    (PATH_SKINNY, PATH_TILED, PATH_FP32, PATH_TILED_MMA; tests and benchmarks).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"x must be a CUDA tensor, got device {x.device}")
    if x.dim() < 1:
        raise ValueError(f"x must be [..., K], got a 0-d tensor")
    dtype_code = _lib.torch_dtype_code(x.dtype)
    dev = x.device
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be int8 [N, K], got shape {list(weight.shape)}")
    N, K = (int(s) for s in weight.shape)
    if x.shape[-1] != K:
        raise ValueError(f"x has K={x.shape[-1]} (shape {list(x.shape)}) but weight is [N={N}, K={K}]")
    if N < 1 or K < 1:
        raise ValueError(f"weight must have N >= 1 and K >= 1, got shape {[N, K]}")
    if K % K_MULTIPLE:
        raise ValueError(f"K={K} must be a multiple of {K_MULTIPLE} (16-byte int8 weight rows)")
    if group_size < 0 or (group_size and (K % group_size or group_size % GROUP_MULTIPLE)):
        raise ValueError(f"group_size={group_size} must be 0 (per channel) or a divisor of K={K} that is a "
                         f"multiple of {GROUP_MULTIPLE}")
    groups = 1 if group_size == 0 else K // group_size
    _check("x", x, dev)
    _check("weight", weight, dev, torch.int8, (N, K))
    _check("weight_scale", weight_scale, dev, torch.float32, (N, groups))
    if bias is not None:
        _check("bias", bias, dev, x.dtype, (N,))
    out_shape = (*x.shape[:-1], N)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=dev)
    else:
        _check("out", out, dev, x.dtype, out_shape)
    M = x.numel() // K
    p = Int8MatMulParams(input=x.data_ptr(), weight=weight.data_ptr(), weight_scale=weight_scale.data_ptr(),
                         bias=bias.data_ptr() if bias is not None else None, output=out.data_ptr(), M=M, N=N, K=K,
                         group_size=group_size, dtype=dtype_code, path=int(path))
    l = _prototypes(_lib.load(lib))
    ws_bytes = int(l.dsattn_int8_matmul_workspace_size(ctypes.byref(p)))
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev) if ws_bytes else None
    err = raw_call(p, ws.data_ptr() if ws is not None else 0, ws_bytes, lib=l,
                   stream=_lib.current_stream_handle(dev))
    _lib.check(l, err, f"dsattn_int8_matmul(M={M}, N={N}, K={K}, group_size={group_size}, dtype={x.dtype}, "
                       f"path={path})")
    return out
