"""Converters from Hugging Face transformers modules to dsattn modules.

``from_hf(layer)`` takes a decoder layer (input norm + attention, converted together into one
pre-norm module) or a bare attention module (converted with ``pre_layer_norm=False``):

| family | layer / attention class | norm | positions | QKV layout |
|---|---|---|---|---|
| BLOOM | BloomBlock / BloomAttention | LayerNorm | alibi | per-head interleaved (kept, qkv_layout=1) |
| LLaMA (and GQA) | LlamaDecoderLayer / LlamaAttention | RMSNorm | rotate_half | separate q/k/v -> blocked |
| GPT-NeoX | GPTNeoXLayer / GPTNeoXAttention | LayerNorm | rotate_half, partial | per-head interleaved -> blocked |
| GPT-J | GPTJBlock / GPTJAttention | LayerNorm | rotate_every_two, partial | separate q/k/v (no bias) -> blocked |
| Mistral | MistralDecoderLayer / MistralAttention | RMSNorm | rotate_half | separate q/k/v (no bias) -> blocked |
| Qwen2 | Qwen2DecoderLayer / Qwen2Attention | RMSNorm | rotate_half | separate q/k/v (with bias) -> blocked |

Sliding-window attention (Mistral's ``config.sliding_window``; Qwen2's per-layer window, set when
``use_sliding_window`` is on and the layer index is >= ``max_window_layers``) maps onto
``local_window`` unchanged: transformers masks key ``kv_idx`` for query ``q_idx`` unless
``q_idx - sliding_window < kv_idx <= q_idx``, both counted in cache positions (left padding
included), which is OPS.md's ``j > p_i - local_window`` with ``p_i = seq_lens[b] + i``.

The dsattn module computes the layer's attention output (norm + attention + output projection,
without the residual) for the layer's input hidden states. Positions for rotary are counted from
each row's first valid token (``start_pos``), which equals HF with ``position_ids =
cumsum(attention_mask) - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import AttentionConfig
from .modules import BloomSelfAttention, DeepSpeedSelfAttention

__all__ = ["from_hf", "HFFamily", "HF_FAMILIES", "SUPPORTED"]


@dataclass(frozen=True)
class HFFamily:
    """One converted transformers family: where its classes live (``transformers.models.<module>``)."""

    config_class: str
    module: str
    layer_class: str
    attention_class: str


#: Hugging Face ``model_type`` -> the family's transformers classes (the table above, in code).
HF_FAMILIES: dict[str, HFFamily] = {
    "bloom": HFFamily("BloomConfig", "bloom.modeling_bloom", "BloomBlock", "BloomAttention"),
    "llama": HFFamily("LlamaConfig", "llama.modeling_llama", "LlamaDecoderLayer", "LlamaAttention"),
    "gpt_neox": HFFamily("GPTNeoXConfig", "gpt_neox.modeling_gpt_neox", "GPTNeoXLayer", "GPTNeoXAttention"),
    "gptj": HFFamily("GPTJConfig", "gptj.modeling_gptj", "GPTJBlock", "GPTJAttention"),
    "mistral": HFFamily("MistralConfig", "mistral.modeling_mistral", "MistralDecoderLayer", "MistralAttention"),
    "qwen2": HFFamily("Qwen2Config", "qwen2.modeling_qwen2", "Qwen2DecoderLayer", "Qwen2Attention"),
}
#: Class names ``from_hf`` converts: each family's decoder layer and bare attention module.
SUPPORTED = tuple(c for f in HF_FAMILIES.values() for c in (f.layer_class, f.attention_class))


def _rope(config, name: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) of an HF config; only plain RoPE is supported."""
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"{name}: rope_type={rope_type!r} (RoPE scaling) is not supported; only 'default'")
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return float(theta), float(factor)


def _dtype_of(*params) -> torch.dtype:
    dts = {p.dtype for p in params if p is not None}
    if len(dts) != 1:
        raise ValueError(f"the HF module mixes parameter dtypes {sorted(map(str, dts))}")
    return dts.pop()


def _norm_params(norm: Optional[nn.Module], kind: str):
    """-> (gamma, beta, eps) of a LayerNorm / RMSNorm module."""
    if norm is None:
        return None, None, 1e-12
    if kind == "layernorm":
        if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
            raise NotImplementedError(f"expected an affine nn.LayerNorm, got {type(norm).__name__}")
        if norm.bias is None:
            raise NotImplementedError("LayerNorm without bias is not supported")
        return norm.weight, norm.bias, float(norm.eps)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None or not hasattr(norm, "weight"):
        raise NotImplementedError(f"unsupported RMSNorm class {type(norm).__name__}")
    return norm.weight, None, float(eps)


def _sliding_window(attn: nn.Module, config, name: str) -> Optional[int]:
    """The sliding window (in tokens) the HF attention layer masks with, or None for full causal.

    Mistral: ``config.sliding_window`` applies to every layer (the model builds its mask with
    ``create_sliding_window_causal_mask`` whenever it is set). Qwen2: the attention module's own
    ``sliding_window`` (None unless ``use_sliding_window`` and this layer is a
    "sliding_attention" layer). LLaMA has none. transformers' condition ``kv_idx > q_idx - W``
    on cache positions is OPS.md's ``j > p_i - local_window``, so W is passed through unchanged.
    """
    if name.startswith("Mistral"):
        w = getattr(config, "sliding_window", None)
        where = "config.sliding_window"
    elif name.startswith("Qwen2"):
        w = getattr(attn, "sliding_window", None)
        where = "sliding_window (use_sliding_window / layer_types)"
    else:
        return None
    if w is None:
        return None
    if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
        raise ValueError(f"{name}: {where}={w!r} must be a positive int or None")
    return w


@torch.no_grad()
def _build(cls, cfg: AttentionConfig, gamma, beta, w_qkv_out_major, b_qkv, w_o_out_major, b_o, dtype):
    m = cls(cfg)
    m.to(dtype)
    if m.norm_w is not None:
        m.norm_w.copy_(gamma)
    if m.norm_b is not None:
        m.norm_b.copy_(beta)
    m.attn_qkvw.copy_(w_qkv_out_major.t())
    if m.attn_qkvb is not None:
        m.attn_qkvb.copy_(b_qkv)
    m.attn_ow.copy_(w_o_out_major.t())
    if m.attn_ob is not None:
        m.attn_ob.copy_(b_o)
    return m.eval()


def _common(hidden, heads, dtype, norm, max_out_tokens, **kw) -> dict:
    d = dict(hidden_size=hidden, heads=heads, dtype=dtype, max_out_tokens=max_out_tokens,
             pre_layer_norm=norm is not None)
    d.update(kw)
    return d


def from_hf(module: nn.Module, *, max_out_tokens: int = 1024) -> DeepSpeedSelfAttention:
    """Convert an HF decoder layer (norm + attention) or attention module to a dsattn module.

    Supported classes: see ``SUPPORTED`` (the module docstring has the table). The result has the
    HF module's dtype and device, is in eval mode, and owns copies of the weights.
    ``max_out_tokens`` is the default KV-cache capacity of ``new_cache``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_hf needs a torch.nn.Module, got {type(module).__name__}")
    name = type(module).__name__
    if name not in SUPPORTED:
        raise NotImplementedError(f"from_hf: {name} is not supported (supported: {', '.join(SUPPORTED)})")
    device = next(module.parameters()).device

    if name.startswith("Bloom"):
        attn = module.self_attention if name == "BloomBlock" else module
        norm = module.input_layernorm if name == "BloomBlock" else None
        gamma, beta, eps = _norm_params(norm, "layernorm")
        qkv, dense = attn.query_key_value, attn.dense
        dtype = _dtype_of(qkv.weight, dense.weight)
        cfg = AttentionConfig(**_common(attn.hidden_size, attn.num_heads, dtype, norm, max_out_tokens,
                                        epsilon=eps, norm_type="layernorm", bigscience_bloom=True,
                                        qkv_bias=qkv.bias is not None, attn_out_bias=dense.bias is not None))
        # BLOOM's fused QKV is already per-head interleaved [q_h | k_h | v_h] (qkv_layout=1).
        m = _build(BloomSelfAttention, cfg, gamma, beta, qkv.weight, qkv.bias, dense.weight, dense.bias, dtype)
        return m.to(device)

    if name.startswith(("Llama", "Mistral", "Qwen2")):
        is_layer = name.endswith("DecoderLayer")
        attn = module.self_attn if is_layer else module
        norm = module.input_layernorm if is_layer else None
        c = attn.config
        gamma, _, eps = _norm_params(norm, "rmsnorm")
        H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, attn.head_dim
        if H * D != c.hidden_size:
            raise NotImplementedError(f"{name}: head_dim={D} * heads={H} != hidden_size={c.hidden_size} is not supported")
        theta, factor = _rope(c, name)
        rd = int(D * factor)
        w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)  # blocked [Q|K|V]
        b = (torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias], 0)
             if attn.q_proj.bias is not None else None)
        dtype = _dtype_of(w, attn.o_proj.weight)
        window = _sliding_window(attn, c, name)
        cfg = AttentionConfig(**_common(c.hidden_size, H, dtype, norm, max_out_tokens, num_kv=Hkv,
                                        norm_type="rmsnorm", epsilon=eps, rotary_dim=rd, rotate_half=True,
                                        rotate_every_two=False, rope_theta=theta, qkv_bias=b is not None,
                                        attn_out_bias=attn.o_proj.bias is not None,
                                        local_attention=window is not None,
                                        **({"window_size": window} if window is not None else {})))
        return _build(DeepSpeedSelfAttention, cfg, gamma, None, w, b, attn.o_proj.weight, attn.o_proj.bias,
                      dtype).to(device)

    if name.startswith("GPTNeoX"):
        attn = module.attention if name == "GPTNeoXLayer" else module
        norm = module.input_layernorm if name == "GPTNeoXLayer" else None
        c = attn.config
        gamma, beta, eps = _norm_params(norm, "layernorm")
        H, D, hid = c.num_attention_heads, attn.head_size, c.hidden_size
        theta, _ = _rope(c, name)
        # HF views the fused output as [..., H, 3*D]: per head [q_h | k_h | v_h]. Reorder the
        # output rows to blocked [Q | K | V] (qkv_layout=0, the DeepSpeed layout).
        w = attn.query_key_value.weight.reshape(H, 3, D, hid).transpose(0, 1).reshape(3 * H * D, hid)
        bq = attn.query_key_value.bias
        b = bq.reshape(H, 3, D).transpose(0, 1).reshape(-1) if bq is not None else None
        dtype = _dtype_of(w, attn.dense.weight)
        cfg = AttentionConfig(**_common(hid, H, dtype, norm, max_out_tokens, norm_type="layernorm", epsilon=eps,
                                        rotary_dim=attn.rotary_ndims, rotate_half=True, rotate_every_two=False,
                                        rope_theta=theta, qkv_bias=b is not None,
                                        attn_out_bias=attn.dense.bias is not None))
        return _build(DeepSpeedSelfAttention, cfg, gamma, beta, w, b, attn.dense.weight, attn.dense.bias,
                      dtype).to(device)

    # GPT-J
    attn = module.attn if name == "GPTJBlock" else module
    norm = module.ln_1 if name == "GPTJBlock" else None
    c = attn.config
    gamma, beta, eps = _norm_params(norm, "layernorm")
    H, D, hid = attn.num_attention_heads, attn.head_dim, attn.embed_dim
    rd = attn.rotary_dim
    if rd is None:
        if H != 1:
            raise NotImplementedError(f"{name}: rotary_dim=None with {H} heads (HF rotates hidden_size dims) is not supported")
        rd = D
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)
    dtype = _dtype_of(w, attn.out_proj.weight)
    # GPT-J's sinusoidal table uses base 10000 (create_sinusoidal_positions).
    cfg = AttentionConfig(**_common(hid, H, dtype, norm, max_out_tokens, norm_type="layernorm", epsilon=eps,
                                    rotary_dim=rd, rotate_half=False, rotate_every_two=True, rope_theta=10000.0,
                                    qkv_bias=attn.q_proj.bias is not None,
                                    attn_out_bias=attn.out_proj.bias is not None))
    bq = (torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]) if attn.q_proj.bias is not None else None)
    return _build(DeepSpeedSelfAttention, cfg, gamma, beta, w, bq, attn.out_proj.weight, attn.out_proj.bias,
                  dtype).to(device)
