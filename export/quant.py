"""int8 weight-only quantization math (OPS.md §3): weights to int8 + scales, DeepSpeed's scales.

Tensor functions only; ``quantize_int8`` / ``load_deepspeed_int8`` in ``modules`` apply them to a
module's weights. Symmetric, DeepSpeed's GroupQuantizer generalized to K-groups: per output channel
n and K-group g, ``scale = max|w| / 127`` and ``q = clamp(round(w / scale), -127, 127)``; dequantized
``w = scale[n, k // group_size] * q[n, k]``. Activations keep their type T.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["quantize_weight", "row_group_scales"]


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


def row_group_scales(name: str, scale: torch.Tensor, rows: int, q_groups: Optional[int]) -> torch.Tensor:
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
