"""DeepSpeedSelfAttention / BloomSelfAttention built on the dsattn ops, and the KV cache.

Dataflow (DeepSpeed's ``ds_attention.py``):
``qkv = QKVGemm(norm(x))`` -> ``SoftmaxContext(qkv, cache)`` -> output projection (+ bias).
The returned output excludes the residual (DeepSpeed adds the residual and ``attn_ob`` in the MLP;
we add ``attn_ob`` here so the module is one attention block on its own).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import ops
from .config import AttentionConfig, int32_tensor
from .quant import quantize_weight, row_group_scales

__all__ = ["KVCache", "DeepSpeedSelfAttention", "BloomSelfAttention", "bloom_alibi_slopes", "quantize_int8",
           "load_deepspeed_int8"]


@dataclass
class KVCache:
    """Fixed-capacity KV cache of one layer.

    key, value: T [B, Hkv, Tmax, D]; seq_lens: int32 [B], tokens already cached per row;
    start_pos: int32 [B], first valid key position per row (left padding; zeros when none).
    """

    key: torch.Tensor
    value: torch.Tensor
    seq_lens: torch.Tensor
    start_pos: torch.Tensor

    def __post_init__(self) -> None:
        if self.key.dim() != 4:
            raise ValueError(f"KVCache.key must be [B, Hkv, Tmax, D], got shape {tuple(self.key.shape)}")
        if self.value.shape != self.key.shape:
            raise ValueError(f"KVCache.value shape {tuple(self.value.shape)} != key shape {tuple(self.key.shape)}")
        for name in ("seq_lens", "start_pos"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise TypeError(f"KVCache.{name} must be an int32 tensor, got {getattr(t, 'dtype', type(t))}")
            if t.dim() != 1 or t.shape[0] != self.key.shape[0]:
                raise ValueError(f"KVCache.{name} must be [B={self.key.shape[0]}], got shape {tuple(t.shape)}")

    @property
    def batch(self) -> int:
        return self.key.shape[0]

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    @classmethod
    def empty(cls, batch: int, num_kv_heads: int, capacity: int, head_size: int, *,
              dtype: torch.dtype = torch.float16, device=None,
              start_pos: Union[None, Sequence[int], torch.Tensor] = None) -> "KVCache":
        """A fresh cache: zeros, seq_lens = 0, start_pos as given (left padding) or zeros."""
        for name, v in (("batch", batch), ("num_kv_heads", num_kv_heads), ("capacity", capacity),
                        ("head_size", head_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        key = torch.zeros(batch, num_kv_heads, capacity, head_size, dtype=dtype, device=device)
        if start_pos is None:
            sp = torch.zeros(batch, dtype=torch.int32, device=device)
        else:
            sp = int32_tensor("start_pos", start_pos, device)  # 1.5 is an error, not truncated to 1
            if tuple(sp.shape) != (batch,):
                raise ValueError(f"start_pos must have {batch} entries, got shape {tuple(sp.shape)}")
            if bool((sp < 0).any()) or bool((sp >= capacity).any()):
                raise ValueError(f"start_pos must be in [0, capacity={capacity}), got {sp.tolist()}")
        return cls(key, torch.zeros_like(key), torch.zeros(batch, dtype=torch.int32, device=device), sp)


# A pytree node, so torch.export / torch.compile can take and return a KVCache directly.
torch.export.register_dataclass(KVCache, serialized_type_name="dsattn.export.KVCache")


def bloom_alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes of HF ``build_alibi_tensor`` (float32 math, as HF computes them)."""
    cp2 = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(cp2) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + cp2, dtype=torch.int32))
    if cp2 != num_heads:
        extra = torch.tensor(2 ** (-(2 ** -(math.log2(2 * cp2) - 3))), dtype=torch.float32)
        n = min(cp2, num_heads - cp2)
        slopes = torch.cat([slopes, torch.pow(extra, torch.arange(1, 1 + 2 * n, 2, dtype=torch.int32))])
    return [float(s) for s in slopes]


class DeepSpeedSelfAttention(nn.Module):
    """DeepSpeed-inference self-attention (one tensor-parallel rank).

    Parameters (DeepSpeed names; float layout input-major so that ``y = x @ W``):
      norm_w, norm_b: T [hidden] pre-attention norm (norm_b only for LayerNorm; absent when
        ``pre_layer_norm=False``);
      attn_qkvw: T [hidden, (Hp + 2*KVp)*D], blocked ``[Q | K | V]`` (per-head interleaved for
        BLOOM); attn_qkvb: T [(Hp + 2*KVp)*D] (if ``qkv_bias``);
      attn_ow: T [Hp*D, hidden]; attn_ob: T [hidden] (if ``attn_out_bias``).
    After ``quantize_int8`` the weights are int8 buffers in output-major layout
    (attn_qkvw [N, hidden], attn_ow [hidden, Hp*D]) with float32 ``*_scale`` buffers.

    forward(hidden_states T [B, S, hidden], cache: KVCache) -> (output T [B, S, hidden], KVCache
    with the new keys/values written and seq_lens advanced by S). The output excludes the residual.
    """

    qkv_layout = 0

    def __init__(self, config: AttentionConfig):
        super().__init__()
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, got {type(config).__name__}")
        self._check_config(config)
        self.config = config
        c = config
        T = c.compute_dtype
        hid, hidp, n = c.hidden_size, c.heads_per_partition * c.head_size, c.qkv_size_per_partition
        self.norm_w = nn.Parameter(torch.empty(hid, dtype=T)) if c.pre_layer_norm else None
        self.norm_b = (nn.Parameter(torch.empty(hid, dtype=T))
                       if c.pre_layer_norm and c.norm_type == "layernorm" else None)
        self.attn_qkvw = nn.Parameter(torch.empty(hid, n, dtype=T))
        self.attn_qkvb = nn.Parameter(torch.empty(n, dtype=T)) if c.qkv_bias else None
        self.attn_ow = nn.Parameter(torch.empty(hidp, hid, dtype=T))
        self.attn_ob = nn.Parameter(torch.empty(hid, dtype=T)) if c.attn_out_bias else None
        # float32 [N, K / group_size] scales of the int8 weights (set by quantize_int8)
        self.register_buffer("attn_qkvw_scale", None)
        self.register_buffer("attn_ow_scale", None)
        self.quantized = False
        self.qkv_group_size = 0
        self.out_group_size = 0
        self.alibi_slopes: list[float] = []
        self._activation_dtype = T
        self.reset_parameters()
        if c.dtype == torch.int8:
            quantize_int8(self)

    def _check_config(self, c: AttentionConfig) -> None:
        if c.bigscience_bloom:
            raise ValueError("AttentionConfig.bigscience_bloom=True: use BloomSelfAttention")

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Random weights (normal, std 1/sqrt(fan_in)), norm gains near 1, small random biases."""
        if self.quantized:
            raise RuntimeError("reset_parameters on a quantized module; build a new module instead")

        def rnd(p, std, mean=0.0):
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=generator) * std + mean)

        rnd(self.norm_w, 0.1, 1.0)
        rnd(self.norm_b, 0.1)
        rnd(self.attn_qkvw, self.attn_qkvw.shape[0] ** -0.5)
        rnd(self.attn_qkvb, 0.1)
        rnd(self.attn_ow, self.attn_ow.shape[0] ** -0.5)
        rnd(self.attn_ob, 0.1)

    def new_cache(self, batch: int, capacity: Optional[int] = None,
                  start_pos: Union[None, Sequence[int], torch.Tensor] = None) -> KVCache:
        """Empty KV cache for this module: [batch, KVp, capacity (default max_out_tokens), D]."""
        c = self.config
        device = self.attn_qkvw.device
        return KVCache.empty(batch, c.kv_heads_per_partition, c.max_out_tokens if capacity is None else capacity,
                             c.head_size, dtype=self.activation_dtype, device=device, start_pos=start_pos)

    @property
    def activation_dtype(self) -> torch.dtype:
        """The activation type T of this module (hidden_states, cache, output)."""
        return self._activation_dtype

    def _apply(self, fn, recurse=True):
        # .to(dtype)/.half()/.float() moves T with the float parameters; int8 scales stay float32
        # (OPS.md: weight_scale is float32 whatever T is).
        out = super()._apply(fn, recurse)
        for p in (self.attn_ow, self.norm_w, self.attn_ob, self.attn_qkvb):
            if p is not None and p.is_floating_point():
                self._activation_dtype = p.dtype
                break
        for name in ("attn_qkvw_scale", "attn_ow_scale"):
            t = getattr(self, name)
            if t is not None and t.dtype != torch.float32:
                setattr(self, name, t.float())
        return out

    def _softmax_attrs(self) -> dict:
        c = self.config
        return dict(num_heads=c.heads_per_partition, num_kv_heads=c.kv_heads_per_partition,
                    head_size=c.head_size, scale=c.scale, qkv_layout=self.qkv_layout,
                    causal=int(c.triangular_masking), local_window=c.window_size if c.local_attention else 0,
                    rotary_dim=c.rotary, rotary_style=c.rotary_style, rope_theta=c.rope_theta,
                    alibi_slopes=list(self.alibi_slopes))

    def forward(self, hidden_states: torch.Tensor, cache: KVCache):
        c = self.config
        T = self.activation_dtype
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3 or hidden_states.shape[-1] != c.hidden_size:
            raise ValueError(f"hidden_states must be [B, S, hidden={c.hidden_size}], got "
                             f"{tuple(getattr(hidden_states, 'shape', ()))}")
        if hidden_states.dtype != T:
            raise TypeError(f"hidden_states dtype {hidden_states.dtype} != module dtype {T}")
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        qkv = ops.qkv_gemm(hidden_states, self.attn_qkvw, self.attn_qkvb, self.norm_w, self.norm_b,
                           self.attn_qkvw_scale, norm_type=c.norm_type_id, epsilon=c.epsilon,
                           quantized=int(self.quantized), group_size=self.qkv_group_size)
        ctx, key, value = ops.softmax_context(qkv, cache.key, cache.value, cache.seq_lens, cache.start_pos,
                                              **self._softmax_attrs())
        bias = self.attn_ob if c.mp_rank == 0 else None  # ranks' partial sums add up to the full layer
        if self.quantized:
            out = ops.int8_matmul(ctx, self.attn_ow, self.attn_ow_scale, bias, group_size=self.out_group_size)
        else:
            out = torch.matmul(ctx, self.attn_ow)
            if bias is not None:
                out = out + bias
        S = hidden_states.shape[1]
        return out, KVCache(key, value, cache.seq_lens + S, cache.start_pos)

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden={c.hidden_size}, heads={c.heads_per_partition}/{c.heads}, kv_heads={c.kv_heads_per_partition}, "
                f"head_size={c.head_size}, scale={c.scale:.6g}, rotary_dim={c.rotary}, quantized={self.quantized}")


class BloomSelfAttention(DeepSpeedSelfAttention):
    """BLOOM attention (DeepSpeed ``BloomSelfAttention``): per-head interleaved fused QKV
    ``[q_h | k_h | v_h]`` and ALiBi slopes of HF ``build_alibi_tensor`` (this rank's heads)."""

    qkv_layout = 1

    def __init__(self, config: AttentionConfig):
        super().__init__(config)
        c = config
        slopes = bloom_alibi_slopes(c.heads)
        hp = c.heads_per_partition
        self.alibi_slopes = slopes[c.mp_rank * hp:(c.mp_rank + 1) * hp]

    def _check_config(self, c: AttentionConfig) -> None:
        if not c.bigscience_bloom:
            raise ValueError("BloomSelfAttention needs AttentionConfig.bigscience_bloom=True, got False")


# ------------------------------------------------------------------------------------------------
# int8 weights of a module (the math is in quant.py)
# ------------------------------------------------------------------------------------------------

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
    s_qkv = row_group_scales("attn_qkvw", attn_qkvw_scale, exp_qkv[0], q_groups)
    s_o = row_group_scales("attn_ow", attn_ow_scale, exp_o[0], ow_q_groups if ow_q_groups is not None else q_groups)
    module._activation_dtype = module.activation_dtype
    dev = module.attn_qkvw.device
    _set_int8(module, "attn_qkvw", attn_qkvw.to(dev).contiguous(), s_qkv.to(dev))
    _set_int8(module, "attn_ow", attn_ow.to(dev).contiguous(), s_o.to(dev))
    module.quantized = True
    module.qkv_group_size = 0
    module.out_group_size = 0
    return module
