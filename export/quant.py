"""int8 weight-only quantization (OPS.md §3) and loading of DeepSpeed int8 weights.

Symmetric, DeepSpeed's GroupQuantizer generalized to K-groups: per output channel n and K-group g,
``scale = max|w| / 127`` and ``q = clamp(round(w / scale), -127, 127)``; dequantized
``w = scale[n, k // group_size] * q[n, k]``. Activations keep their type T.
"""
from __future__ import annotations

from typing import Optional

import torch

from .modules import DeepSpeedSelfAttention

__all__ = ["quantize_weight", "quantize_int8", "load_deepspeed_int8"]


def quantize_weight(w_out_major: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (int8 [N, K], float32 scale [N, K / group_size]); group_size 0 = per channel."""
    if not isinstance(w_out_major, torch.Tensor) or w_out_major.dim() != 2 or not w_out_major.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor [N, K], got {getattr(w_out_major, 'shape', w_out_major)!r}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0, got {group_size!r}")
    n, k = w_out_major.shape
    g = k if group_size == 0 else group_size
    if k % g:
        raise ValueError(f"group_size={group_size} does not divide K={k}")
    w = w_out_major.detach().to(torch.float32).reshape(n, k // g, g)
    scale = w.abs().amax(-1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: q = 0, scale 0
    q = torch.clamp(torch.round(w / safe[..., None]), -127, 127).to(torch.int8).reshape(n, k)
    return q, scale.contiguous()


def _set_int8(module: DeepSpeedSelfAttention, name: str, q: torch.Tensor, scale: torch.Tensor) -> None:
    if name in module._parameters:
        del module._parameters[name]
    module.register_buffer(name, q)
    setattr(module, name + "_scale", scale)


@torch.no_grad()
def quantize_int8(module: DeepSpeedSelfAttention, group_size: int = 0) -> DeepSpeedSelfAttention:
    """Quantize the QKV and output-projection weights of ``module`` to int8, in place.

    The weights become int8 buffers in output-major layout (attn_qkvw [N, hidden],
    attn_ow [hidden, Hp*D]) with float32 scales ``attn_qkvw_scale`` / ``attn_ow_scale``
    [N, K / group_size]; ``group_size`` (0 = per output channel) must divide both K's
    (hidden for the QKV GEMM, Hp*D for the output projection). Biases and norms stay in T.
    Returns the module.
    """
    if not isinstance(module, DeepSpeedSelfAttention):
        raise TypeError(f"module must be a DeepSpeedSelfAttention/BloomSelfAttention, got {type(module).__name__}")
    if module.quantized:
        raise ValueError("module is already quantized")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 0:
        raise ValueError(f"group_size must be an int >= 0, got {group_size!r}")
    for name, k in (("attn_qkvw", module.attn_qkvw.shape[0]), ("attn_ow", module.attn_ow.shape[0])):
        if group_size and k % group_size:
            raise ValueError(f"group_size={group_size} does not divide K={k} of {name}")
    module._activation_dtype = module.activation_dtype
    q, s = quantize_weight(module.attn_qkvw.t(), group_size)
    _set_int8(module, "attn_qkvw", q, s)
    q, s = quantize_weight(module.attn_ow.t(), group_size)
    _set_int8(module, "attn_ow", q, s)
    module.quantized = True
    module.qkv_group_size = group_size
    module.out_group_size = group_size
    return module


def _row_group_scales(name: str, scale: torch.Tensor, rows: int, q_groups: Optional[int]) -> torch.Tensor:
    """DeepSpeed ``.scale`` (first q_groups floats are the row-group scales) -> float32 [rows, 1]."""
    scale = torch.as_tensor(scale)
    if q_groups is None:
        q_groups = scale.shape[0] if scale.dim() == 2 else scale.numel()
    if not isinstance(q_groups, int) or q_groups <= 0 or rows % q_groups:
        raise ValueError(f"q_groups={q_groups!r} for {name} must be a positive divisor of its {rows} rows")
    flat = scale.reshape(-1).to(torch.float32)
    if flat.numel() < q_groups:
        raise ValueError(f"{name}_scale has {flat.numel()} values, fewer than q_groups={q_groups}")
    # DeepSpeed dequantize.cu: row r belongs to group r // (rows / groups); w = scale[g] * q.
    return flat[:q_groups].repeat_interleave(rows // q_groups).reshape(rows, 1).contiguous()


@torch.no_grad()
def load_deepspeed_int8(module: DeepSpeedSelfAttention, attn_qkvw: torch.Tensor, attn_qkvw_scale: torch.Tensor,
                        attn_ow: torch.Tensor, attn_ow_scale: torch.Tensor, *, q_groups: Optional[int] = None,
                        ow_q_groups: Optional[int] = None) -> DeepSpeedSelfAttention:
    """Load DeepSpeed int8 weights (``[out, in]`` int8 with a ``.scale`` of row-group scales).

    attn_qkvw: int8 [(Hp + 2*KVp)*D, hidden]; attn_ow: int8 [hidden, Hp*D]; the scales are
    DeepSpeed's ``.scale`` tensors, whose first ``q_groups`` floats are the scales of ``q_groups``
    equal row groups (default: rows of a 2-D scale, else its number of values). Each row group's
    scale is repeated for its rows (per-channel scales, OPS.md). The module must not be quantized
    yet; its norms and biases are kept (load them separately).
    """
    if not isinstance(module, DeepSpeedSelfAttention):
        raise TypeError(f"module must be a DeepSpeedSelfAttention/BloomSelfAttention, got {type(module).__name__}")
    if module.quantized:
        raise ValueError("module is already quantized")
    exp_qkv = (module.attn_qkvw.shape[1], module.attn_qkvw.shape[0])
    exp_o = (module.attn_ow.shape[1], module.attn_ow.shape[0])
    for name, w, exp in (("attn_qkvw", attn_qkvw, exp_qkv), ("attn_ow", attn_ow, exp_o)):
        if not isinstance(w, torch.Tensor) or w.dtype != torch.int8:
            raise TypeError(f"{name} must be an int8 tensor, got {getattr(w, 'dtype', type(w).__name__)}")
        if tuple(w.shape) != exp:
            raise ValueError(f"{name} must be int8 [out, in] = {list(exp)}, got {list(w.shape)}")
    s_qkv = _row_group_scales("attn_qkvw", attn_qkvw_scale, exp_qkv[0], q_groups)
    s_o = _row_group_scales("attn_ow", attn_ow_scale, exp_o[0], ow_q_groups if ow_q_groups is not None else q_groups)
    module._activation_dtype = module.activation_dtype
    dev = module.attn_qkvw.device
    _set_int8(module, "attn_qkvw", attn_qkvw.to(dev).contiguous(), s_qkv.to(dev))
    _set_int8(module, "attn_ow", attn_ow.to(dev).contiguous(), s_o.to(dev))
    module.quantized = True
    module.qkv_group_size = 0
    module.out_group_size = 0
    return module
