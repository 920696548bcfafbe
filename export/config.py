"""AttentionConfig: the DeepSpeed-inference config fields that matter for attention.

Field names and defaults follow DeepSpeed's ``DeepSpeedInferenceConfig``
(``ops/transformer/inference/config.py`` in the DeepSpeed repository), with the
attention-relevant extras made explicit (``qkv_bias``, ``attn_out_bias``, ``layer_id``,
``scale_attn_by_inverse_layer_idx``, ``mp_rank``). Everything is validated on construction;
errors name the field and its value.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

__all__ = ["AttentionConfig", "parse_dtype", "check_int", "int32_tensor", "INT32_MAX"]

#: Every int the exported graph carries (attributes, sizes, positions) must fit int32: TensorRT's
#: ONNX parser reads INT attributes as int32, and seq_lens / start_pos are int32 tensors.
INT32_MAX = 2**31 - 1

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "int8": torch.int8,
}
_NORMS = {"layernorm": 1, "layer_norm": 1, "rmsnorm": 2, "rms_norm": 2}


def parse_dtype(value: Any, name: str = "dtype") -> torch.dtype:
    """'fp16' / 'float16' / torch.float16 ... -> torch.dtype (float32, float16, bfloat16, int8)."""
    if isinstance(value, torch.dtype):
        if value not in set(_DTYPES.values()):
            raise ValueError(f"{name} must be one of float32, float16, bfloat16, int8, got {value}")
        return value
    if isinstance(value, str) and value.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.lower().removeprefix("torch.")]
    raise ValueError(f"{name} must be one of {sorted(_DTYPES)} or a torch.dtype, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, v: Any, lo: int = -INT32_MAX - 1, hi: int = INT32_MAX) -> int:
    """``v`` as a Python int in [lo, hi]: floats (even 4.0), bools and strings are rejected, not
    truncated or parsed; numpy integers are accepted. The message names ``name`` and the value."""
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
    v = int(v)
    if not lo <= v <= hi:
        where = "does not fit int32" if not -INT32_MAX - 1 <= v <= INT32_MAX else f"must be in [{lo}, {hi}]"
        raise ValueError(f"{name}={v} {where}")
    return v


def int32_tensor(name: str, values: Any, device=None) -> torch.Tensor:
    """An int32 tensor from ints (a list, an integer tensor or array), each checked as by
    ``check_int``: a float tensor or a 1.5 in a list is an error, not truncated."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        kind = (values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values).dtype.kind
        if kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {values.dtype}")
        arr = (values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values).astype(np.int64)
    else:
        obj = np.asarray(values, dtype=object)
        arr = np.asarray([check_int(name, v) for v in obj.reshape(-1)], dtype=np.int64).reshape(obj.shape)
    if arr.size and (arr.min() < -INT32_MAX - 1 or arr.max() > INT32_MAX):
        raise ValueError(f"{name}: values {arr.min()}..{arr.max()} do not fit int32")
    return torch.from_numpy(arr.astype(np.int32)).to(device)


@dataclass
class AttentionConfig:
    """Attention config of one layer (one tensor-parallel rank when ``mp_size > 1``).

    Attributes (DeepSpeed name, default):
      hidden_size: model width (required, > 0).
      heads: query heads of the whole model (required); ``heads % mp_size == 0``.
      num_kv: key/value heads (GQA/MQA); -1 means ``heads`` (DeepSpeed's convention).
      mp_size, mp_rank: tensor parallelism; the module holds heads
        ``[mp_rank*heads/mp_size, (mp_rank+1)*heads/mp_size)`` and its output is this rank's
        partial sum (the output bias is added by rank 0 only, so the ranks' outputs sum to the
        full layer's).
      dtype: float32 / float16 / bfloat16, or int8 (int8 weights with float16 activations, as in
        DeepSpeed).
      pre_layer_norm: True: the QKV GEMM normalizes its input first (``norm_type``); False: no
        normalization in this module (post-LN models).
      norm_type: "layernorm" or "rmsnorm". epsilon: norm epsilon (DeepSpeed default 1e-12).
      scale_attention, use_mup, scale_attn_by_inverse_layer_idx, layer_id: DeepSpeed's
        norm_factor variants, folded into ``scale`` (see ``scale``).
      triangular_masking: causal attention. local_attention, window_size: sliding window.
      rotary_dim: -1 or 0 = no rotary; > 0 rotates the first ``rotary_dim`` dims of each head.
      rotate_half / rotate_every_two: GPT-NeoX/LLaMA style or GPT-J style (exactly one may be set
        when rotary is on; DeepSpeed's defaults are rotate_every_two=True, rotate_half=False).
      rope_theta: rotary base.
      max_out_tokens: default KV-cache capacity in tokens (prompt + generated).
      bigscience_bloom: BLOOM attention (per-head interleaved fused QKV, alibi); use
        ``BloomSelfAttention``.
      qkv_bias, attn_out_bias: whether the QKV and output projections have a bias.
    """

    hidden_size: int
    heads: int
    num_kv: int = -1
    mp_size: int = 1
    mp_rank: int = 0
    dtype: Any = torch.float16
    pre_layer_norm: bool = True
    norm_type: str = "layernorm"
    epsilon: float = 1e-12
    scale_attention: bool = True
    use_mup: bool = False
    scale_attn_by_inverse_layer_idx: bool = False
    layer_id: int = 0
    triangular_masking: bool = True
    local_attention: bool = False
    window_size: int = 256
    rotary_dim: int = -1
    rotate_half: bool = False
    rotate_every_two: bool = True
    rope_theta: float = 10000.0
    max_out_tokens: int = 1024
    bigscience_bloom: bool = False
    qkv_bias: bool = True
    attn_out_bias: bool = True

    def __post_init__(self) -> None:
        def bad(name, why):
            raise ValueError(f"AttentionConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("hidden_size", "heads", "num_kv", "mp_size", "mp_rank", "layer_id", "window_size",
                     "rotary_dim", "max_out_tokens"):
            setattr(self, name, check_int(f"AttentionConfig.{name}", getattr(self, name)))
        for name in ("pre_layer_norm", "scale_attention", "use_mup", "scale_attn_by_inverse_layer_idx",
                     "triangular_masking", "local_attention", "rotate_half", "rotate_every_two",
                     "bigscience_bloom", "qkv_bias", "attn_out_bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"AttentionConfig.{name} must be a bool, got {getattr(self, name)!r}")
        self.dtype = parse_dtype(self.dtype, "AttentionConfig.dtype")
        if self.hidden_size <= 0:
            bad("hidden_size", "must be > 0")
        if self.heads <= 0:
            bad("heads", "must be > 0")
        if self.hidden_size % self.heads:
            bad("hidden_size", f"must be divisible by heads={self.heads}")
        if self.num_kv != -1 and self.num_kv <= 0:
            bad("num_kv", "must be -1 (= heads) or > 0")
        if self.heads % self.kv_heads:
            bad("num_kv", f"must divide heads={self.heads}")
        if self.mp_size <= 0:
            bad("mp_size", "must be > 0")
        if self.heads % self.mp_size or self.kv_heads % self.mp_size:
            bad("mp_size", f"must divide heads={self.heads} and the KV heads={self.kv_heads}")
        if not 0 <= self.mp_rank < self.mp_size:
            bad("mp_rank", f"must be in [0, mp_size={self.mp_size})")
        if not isinstance(self.norm_type, str) or self.norm_type.lower() not in _NORMS:
            bad("norm_type", f"must be one of {sorted(_NORMS)}")
        self.norm_type = {1: "layernorm", 2: "rmsnorm"}[_NORMS[self.norm_type.lower()]]
        if not isinstance(self.epsilon, (int, float)) or isinstance(self.epsilon, bool) or not (
                math.isfinite(self.epsilon) and self.epsilon >= 0):
            bad("epsilon", "must be a finite float >= 0")
        self.epsilon = float(self.epsilon)
        if self.layer_id < 0:
            bad("layer_id", "must be >= 0")
        if self.local_attention and self.window_size <= 0:
            bad("window_size", "must be > 0 when local_attention is set")
        if self.rotary_dim < -1:
            bad("rotary_dim", "must be -1 (off), 0 (off) or > 0")
        if self.rotary_dim > 0:
            if self.rotary_dim % 2 or self.rotary_dim > self.head_size:
                bad("rotary_dim", f"must be even and <= head size {self.head_size}")
            if self.rotate_half == self.rotate_every_two:
                bad("rotate_half", f"exactly one of rotate_half / rotate_every_two (={self.rotate_every_two}) "
                    "must be set when rotary_dim > 0")
        if not isinstance(self.rope_theta, (int, float)) or isinstance(self.rope_theta, bool) or not (
                math.isfinite(self.rope_theta) and self.rope_theta > 0):
            bad("rope_theta", "must be a finite float > 0")
        self.rope_theta = float(self.rope_theta)
        if self.max_out_tokens <= 0:
            bad("max_out_tokens", "must be > 0")
        if self.bigscience_bloom:
            if self.kv_heads != self.heads:
                bad("num_kv", "BLOOM has no grouped KV heads (must be -1 or heads)")
            if self.rotary_dim > 0:
                bad("rotary_dim", "BLOOM uses alibi, not rotary")

    # ---- derived values -----------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.heads if self.num_kv == -1 else self.num_kv

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.heads

    @property
    def heads_per_partition(self) -> int:
        return self.heads // self.mp_size

    @property
    def kv_heads_per_partition(self) -> int:
        return self.kv_heads // self.mp_size

    @property
    def qkv_size_per_partition(self) -> int:
        return (self.heads_per_partition + 2 * self.kv_heads_per_partition) * self.head_size

    @property
    def compute_dtype(self) -> torch.dtype:
        """Activation dtype T (int8 weights compute in float16, as DeepSpeed)."""
        return torch.float16 if self.dtype == torch.int8 else self.dtype

    @property
    def scale(self) -> float:
        """Score scale fed to SoftmaxContext: DeepSpeed's norm_factor variants folded in.

        DeepSpeed: ``norm_factor = sqrt(sqrt(D))`` (``sqrt(D)`` with muP), times
        ``sqrt(layer_id+1)`` with inverse-layer-idx scaling; the score GEMM uses
        ``alpha = (1/norm_factor)^2`` when ``scale_attention`` (else 1). BLOOM always scales
        (its softmax layer_scale is ``1/norm_factor^2``) and its alibi layer scaling cancels.
        """
        D = self.head_size
        if not (self.scale_attention or self.bigscience_bloom):
            return 1.0
        nf = math.sqrt(D) if self.use_mup else math.sqrt(math.sqrt(D))
        if self.scale_attn_by_inverse_layer_idx and not self.bigscience_bloom:
            nf *= math.sqrt(self.layer_id + 1)
        return 1.0 / (nf * nf)

    @property
    def norm_type_id(self) -> int:
        """OPS.md norm_type of the QKV GEMM: 0 none, 1 LayerNorm, 2 RMSNorm."""
        return _NORMS[self.norm_type] if self.pre_layer_norm else 0

    @property
    def rotary_style(self) -> int:
        return 0 if self.rotate_half else 1

    @property
    def rotary(self) -> int:
        return max(self.rotary_dim, 0)

    # ---- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dtype"] = str(self.dtype).removeprefix("torch.")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AttentionConfig":
        if not isinstance(d, Mapping):
            raise TypeError(f"AttentionConfig.from_dict needs a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AttentionConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "AttentionConfig":
        return dataclasses.replace(self, **changes)
