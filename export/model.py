"""Whole decoders on the dsattn ops, loaded from a local Hugging Face checkpoint folder.

``load_hf_model(DIR)`` reads a ``save_pretrained`` folder (config.json + safetensors; never a hub
download) of one of the converted families and returns a ``DsattnDecoder``: the embeddings, every
layer (its attention converted by ``from_hf``: input norm + fused QKV GEMM + SoftmaxContext +
output projection; the MLP and the second norm as plain PyTorch ops that export to standard ONNX),
the final norm and the LM head.

Layer structure per family (h: the layer input; ``attn`` includes the input norm):

| family | residual | MLP | norms | LM head |
|---|---|---|---|---|
| BLOOM | h += attn(h); h += mlp(ln2(h)) | gelu (tanh form) | LayerNorm; word-embedding LayerNorm | tied |
| LLaMA, Mistral, Qwen2 | h += attn(h); h += mlp(ln2(h)) | down(silu(gate) * up) | RMSNorm (fp32 inside) | tied or not |
| GPT-NeoX | parallel: h += attn(h) + mlp(ln2(h)) (or sequential) | gelu | LayerNorm | untied |
| GPT-J | parallel: h += attn(h) + mlp(ln1(h)) | gelu_new | LayerNorm (ln_1 shared) | untied, with bias |

The forward pass reproduces the transformers modules operation by operation (same activation
formulas, RMSNorm upcast to float32, the same order of the residual additions), so that greedy
generation gives the same tokens as transformers in float32.

``DsattnDecoder.forward(input_ids [B,S] int64, seq_lens [B] int32, start_pos [B] int32,
caches: list of (key, value) [B,Hkv,Tmax,D]) -> (logits, new caches)``: ``seq_lens`` counts the
tokens already cached per row (the same for every layer), ``start_pos`` is the first real token
of each row (left padding). ``logits`` is [B, S, vocab], or [B, 1, vocab] (the last position)
when ``last_logits_only`` is set, which is all that generation needs.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import parse_dtype
from .convert import HF_FAMILIES
from .modules import DeepSpeedSelfAttention, KVCache

__all__ = ["FAMILIES", "DecoderSpec", "Linear", "Norm", "MLP", "DecoderLayer", "DsattnDecoder", "CheckpointError",
           "CheckpointInfo", "inspect_checkpoint", "load_hf_model", "load_hf_layer", "TOKENIZER_FILES"]

#: Hugging Face model_type -> family name used in messages (the families of convert.HF_FAMILIES).
FAMILIES = {"bloom": "BLOOM", "llama": "LLaMA", "gpt_neox": "GPT-NeoX", "gptj": "GPT-J", "mistral": "Mistral",
            "qwen2": "Qwen2"}
assert set(FAMILIES) == set(HF_FAMILIES), "every converted family has a whole-decoder loader"
#: Files of a checkpoint folder that the export copies beside the model (tokenizer and generation
#: defaults), so ``dsattn generate`` finds them there.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "generation_config.json", "chat_template.jinja")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_DTYPE_NAMES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be exported; the message names the file and the field."""


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------

def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation by transformers' name, with transformers' own formula (bit-for-bit in fp32)."""
    if name == "bloom_gelu":  # transformers bloom_gelu_forward
        return lambda x: x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    if name == "gelu_new":  # transformers NewGELUActivation
        c = math.sqrt(2.0 / math.pi)
        return lambda x: 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "gelu":
        return F.gelu
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name in ("silu", "swish"):
        return F.silu
    if name == "relu":
        return F.relu
    raise NotImplementedError(f"activation {name!r} is not supported (supported: bloom_gelu, gelu, gelu_new, "
                              "gelu_pytorch_tanh, silu, relu)")


ACTIVATIONS = ("bloom_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "relu")


class Linear(nn.Module):
    """``y = x @ W^T + b`` with W [N, K] (transformers' layout), or int8 weight-only through
    ``dsattn::Int8MatMul`` after ``quantize(group_size)``.

    The float form flattens x to 2-D so that the export emits one ``Gemm(transB=1)`` on the stored
    weight: no transposed copy of the weight (a tied LM head shares the embedding's initializer).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        # The tensors are shared with the source module, not copied: a converted checkpoint must not
        # hold its weights twice (the transformers model is dropped after the conversion).
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(),
                                                                                    requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_buffer("weight_scale", None)
        self.quantized = False
        self.group_size = 0

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @torch.no_grad()
    def quantize(self, group_size: int = 0) -> "Linear":
        from .quant import quantize_weight

        if self.quantized:
            raise ValueError("Linear is already quantized")
        q, s = quantize_weight(self.weight, group_size)  # [N, K] is already output-major
        del self._parameters["weight"]
        self.register_buffer("weight", q)
        self.weight_scale = s
        self.quantized = True
        self.group_size = group_size
        return self

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.weight_scale is not None and self.weight_scale.dtype != torch.float32:
            self.weight_scale = self.weight_scale.float()  # OPS.md: scales stay float32
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized:
            return ops.int8_matmul(x, self.weight, self.weight_scale, self.bias, group_size=self.group_size)
        y = F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class Norm(nn.Module):
    """LayerNorm (``kind='layernorm'``) or RMSNorm in transformers' LLaMA form (float32 inside)."""

    def __init__(self, kind: str, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float):
        super().__init__()
        if kind not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm kind must be 'layernorm' or 'rmsnorm', got {kind!r}")
        self.kind, self.eps = kind, float(eps)
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class MLP(nn.Module):
    """``fc_out(act(fc_in(x)))`` or the gated form ``down(act(gate(x)) * up(x))``."""

    def __init__(self, act: str, fc_in: Linear, fc_out: Linear, up: Optional[Linear] = None):
        super().__init__()
        self.act_name = act
        self.act = _act(act)
        self.fc_in, self.fc_out, self.up = fc_in, fc_out, up

    def linears(self) -> list[Linear]:
        return [m for m in (self.fc_in, self.up, self.fc_out) if m is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        if h.dtype == torch.bfloat16:
            # float32 inside, one rounding: ONNX Runtime's CUDA provider has no bfloat16 Pow or Erf
            # (gelu_new, gelu), and PyTorch computes a bfloat16 activation in float32 anyway.
            h = self.act(h.float()).to(torch.bfloat16)
        else:
            h = self.act(h)
        if self.up is not None:
            h = h * self.up(x)
        return self.fc_out(h)


class DecoderLayer(nn.Module):
    """One decoder layer: ``attn`` (input norm fused into its QKV GEMM), ``mlp_norm``, ``mlp``.

    sequential: ``h = h + attn(h); h = h + mlp(mlp_norm(h))``;
    parallel: ``h = (attn(h) + mlp(mlp_norm(h))) + h`` (GPT-NeoX, GPT-J).
    """

    def __init__(self, attn: DeepSpeedSelfAttention, mlp_norm: Norm, mlp: MLP, parallel: bool):
        super().__init__()
        self.attn, self.mlp_norm, self.mlp, self.parallel = attn, mlp_norm, mlp, parallel

    def forward(self, h: torch.Tensor, cache: KVCache):
        a, cache = self.attn(h, cache)
        if self.parallel:
            return (a + self.mlp(self.mlp_norm(h))) + h, cache
        h = h + a
        return h + self.mlp(self.mlp_norm(h)), cache


@dataclass
class DecoderSpec:
    """What a DsattnDecoder is made of (stored in the exported model's metadata)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    dtype: str
    tie_word_embeddings: bool
    max_positions: Optional[int] = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DecoderSpec":
        return cls(**json.loads(text))


class DsattnDecoder(nn.Module):
    """A whole decoder on the dsattn ops (see the module docstring for the structure)."""

    def __init__(self, spec: DecoderSpec, embed: nn.Embedding, embed_norm: Optional[Norm],
                 layers: Sequence[DecoderLayer], final_norm: Norm, lm_head: Linear):
        super().__init__()
        self.spec = spec
        self.embed, self.embed_norm = embed, embed_norm
        self.layers = nn.ModuleList(layers)
        self.final_norm, self.lm_head = final_norm, lm_head
        self.last_logits_only = False
        self.int8_group_size: Optional[int] = None  # set by quantize_int8
        self.int8_lm_head = False

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_caches(self, batch: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = self.spec
        return [(torch.zeros(batch, s.num_kv_heads, capacity, s.head_size, dtype=self.dtype, device=self.device),
                 torch.zeros(batch, s.num_kv_heads, capacity, s.head_size, dtype=self.dtype, device=self.device))
                for _ in range(s.num_layers)]

    @torch.no_grad()
    def quantize_int8(self, group_size: int = 0, lm_head: bool = False) -> "DsattnDecoder":
        """int8 weight-only for every linear layer (QKV, output projection, MLP; the LM head when
        ``lm_head``), in place. ``group_size`` 0 = per output channel; it must divide every K."""
        from .modules import quantize_int8

        if self.int8_group_size is not None:
            raise ValueError("the decoder is already quantized")
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 0:
            raise ValueError(f"group_size must be an int >= 0, got {group_size!r}")
        if group_size:
            for i, layer in enumerate(self.layers):
                for name, lin in zip(("fc_in", "up", "fc_out"), (layer.mlp.fc_in, layer.mlp.up, layer.mlp.fc_out)):
                    if lin is not None and lin.in_features % group_size:
                        raise ValueError(f"group_size={group_size} does not divide K={lin.in_features} of "
                                         f"layers.{i}.mlp.{name}")
            if lm_head and self.lm_head.in_features % group_size:
                raise ValueError(f"group_size={group_size} does not divide K={self.lm_head.in_features} of lm_head")
        for layer in self.layers:
            quantize_int8(layer.attn, group_size)
            for lin in layer.mlp.linears():
                lin.quantize(group_size)
        if lm_head:
            if self.lm_head.weight is self.embed.weight:  # tied: the embedding keeps the float table
                self.lm_head = Linear(self.embed.weight.detach().clone(), self.lm_head.bias)
            self.lm_head.quantize(group_size)
        self.int8_group_size = group_size
        self.int8_lm_head = bool(lm_head)
        return self

    def forward(self, input_ids: torch.Tensor, seq_lens: torch.Tensor, start_pos: torch.Tensor,
                caches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        if len(caches) != len(self.layers):
            raise ValueError(f"caches must hold {len(self.layers)} (key, value) pairs, got {len(caches)}")
        h = self.embed(input_ids)
        if self.embed_norm is not None:
            h = self.embed_norm(h)
        S = input_ids.shape[1]
        new = []
        for layer, (k, v) in zip(self.layers, caches):
            h, c = layer(h, KVCache(k, v, seq_lens, start_pos))
            new.append((c.key, c.value))
        if self.last_logits_only:
            h = h[:, S - 1:]
        return self.lm_head(self.final_norm(h)), new


# ------------------------------------------------------------------------------------------------
# checkpoint folder
# ------------------------------------------------------------------------------------------------

@dataclass
class CheckpointInfo:
    """What ``inspect_checkpoint`` found in a folder (before any weights are read)."""

    path: Path
    config: dict
    model_type: str
    weight_files: list[Path]
    dtype: torch.dtype  # the float dtype of the stored weights


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _safetensors_dtypes(path: Path) -> dict[str, str]:
    """tensor name -> safetensors dtype string, read from the file header only."""
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def inspect_checkpoint(path) -> CheckpointInfo:
    """Check a ``save_pretrained`` folder without loading it: the folder, config.json, a supported
    model_type, plain RoPE, the weight files, one float dtype. Raises CheckpointError naming the
    file and the field."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such folder (give a local save_pretrained folder; hub names are not downloaded)")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a folder (give the save_pretrained folder, not a file in it)")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (a save_pretrained folder has config.json)")
    cfg = _read_json(cfg_path)
    mt = cfg.get("model_type")
    if mt not in FAMILIES:
        raise CheckpointError(f"{cfg_path}: model_type={mt!r} is not supported (supported: {', '.join(FAMILIES)})")
    rope = cfg.get("rope_scaling") or {}
    params = cfg.get("rope_parameters") or {}
    for fname, d in (("rope_scaling", rope), ("rope_parameters", params)):
        if isinstance(d, dict):
            rt = d.get("rope_type", d.get("type", "default"))
            if rt not in ("default", None):
                raise CheckpointError(f"{cfg_path}: {fname}.rope_type={rt!r} (RoPE scaling) is not supported; "
                                      "only plain RoPE ('default')")
    if mt == "bloom" and cfg.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError(f"{cfg_path}: apply_residual_connection_post_layernorm=true is not supported")
    files: list[Path] = []
    if (p / "model.safetensors").is_file():
        files = [p / "model.safetensors"]
    elif (p / "model.safetensors.index.json").is_file():
        idx_path = p / "model.safetensors.index.json"
        wm = _read_json(idx_path).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{idx_path}: weight_map is missing or empty")
        for name in sorted(set(wm.values())):
            if not (p / name).is_file():
                raise CheckpointError(f"{p / name}: missing (listed in {idx_path.name} weight_map)")
            files.append(p / name)
    elif (p / "pytorch_model.bin").is_file() or (p / "pytorch_model.bin.index.json").is_file():
        raise CheckpointError(f"{p}: only pytorch_model.bin weights found; save the checkpoint with safetensors "
                              "(save_pretrained(..., safe_serialization=True))")
    else:
        raise CheckpointError(f"{p}: no weights (model.safetensors or model.safetensors.index.json) in the folder")
    dtypes: dict[str, tuple[str, str]] = {}
    for f in files:
        for name, dt in _safetensors_dtypes(f).items():
            if dt in _DTYPE_NAMES:
                dtypes.setdefault(dt, (str(f), name))
    if not dtypes:
        raise CheckpointError(f"{files[0]}: no floating-point tensors")
    if len(dtypes) > 1:
        desc = ", ".join(f"{dt} ({fn}: {tn})" for dt, (fn, tn) in sorted(dtypes.items()))
        raise CheckpointError(f"{p}: the weights mix dtypes {desc}; one float dtype is supported")
    dtype = _DTYPE_NAMES[next(iter(dtypes))]
    if dtype == torch.float64:
        raise CheckpointError(f"{files[0]}: float64 weights are not supported")
    declared = cfg.get("dtype", cfg.get("torch_dtype"))
    if declared is not None and declared != str(dtype).removeprefix("torch."):
        field_name = "dtype" if "dtype" in cfg else "torch_dtype"
        raise CheckpointError(f"{cfg_path}: {field_name}={declared!r} but the weights in {files[0].name} are "
                              f"{str(dtype).removeprefix('torch.')}")
    return CheckpointInfo(p, cfg, mt, files, dtype)


def _load_transformers(info: CheckpointInfo):
    """The transformers model of the folder (eager attention, float32 on the CPU), with every
    missing weight reported instead of being initialized at random."""
    import transformers
    from transformers import AutoModelForCausalLM

    level = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # missing keys are reported below, not as a warning
    transformers.utils.logging.disable_progress_bar()  # the export logs its own stages
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(info.path), local_files_only=True, dtype=torch.float32, attn_implementation="eager",
            output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{info.path}: transformers could not load the checkpoint: {e}") from None
    finally:
        transformers.logging.set_verbosity(level)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        where = ", ".join(f.name for f in info.weight_files)
        tie = info.config.get("tie_word_embeddings")
        hint = (f" (config.json tie_word_embeddings={str(tie).lower()}: an untied LM head needs its own weight)"
                if any("lm_head" in k or "embed_out" in k for k in missing) else "")
        raise CheckpointError(f"{info.path}: weights missing from {where}: {', '.join(missing[:8])}"
                              f"{' ...' if len(missing) > 8 else ''}{hint}")
    mismatched = loading.get("mismatched_keys") or []
    if mismatched:
        raise CheckpointError(f"{info.path}: weights whose shape does not match config.json: {mismatched[:4]}")
    return model.eval()


def _norm_of(module: nn.Module, kind: str) -> Norm:
    if kind == "layernorm":
        return Norm("layernorm", module.weight, module.bias, module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return Norm("rmsnorm", module.weight, None, eps)


def _lin(m: nn.Linear) -> Linear:
    return Linear(m.weight, m.bias)


def _parts(hf, mt: str, cfg_path: Path):
    """-> (embedding, embed_norm, [(hf_layer, mlp_norm, MLP, parallel)], final_norm, lm_head weight/bias)."""
    c = hf.config
    if mt == "bloom":
        base = hf.transformer
        layers = [(l, _norm_of(l.post_attention_layernorm, "layernorm"),
                   MLP("bloom_gelu", _lin(l.mlp.dense_h_to_4h), _lin(l.mlp.dense_4h_to_h)), False) for l in base.h]
        return (base.word_embeddings, _norm_of(base.word_embeddings_layernorm, "layernorm"), layers,
                _norm_of(base.ln_f, "layernorm"))
    if mt in ("llama", "mistral", "qwen2"):
        base = hf.model
        act = c.hidden_act
        if act not in ACTIVATIONS:
            raise CheckpointError(f"{cfg_path}: hidden_act={act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if getattr(c, "pretraining_tp", 1) not in (1, None):
            raise CheckpointError(f"{cfg_path}: pretraining_tp={c.pretraining_tp} is not supported (only 1)")
        layers = [(l, _norm_of(l.post_attention_layernorm, "rmsnorm"),
                   MLP(act, _lin(l.mlp.gate_proj), _lin(l.mlp.down_proj), _lin(l.mlp.up_proj)), False)
                  for l in base.layers]
        return base.embed_tokens, None, layers, _norm_of(base.norm, "rmsnorm")
    if mt == "gpt_neox":
        base = hf.gpt_neox
        act = c.hidden_act
        if act not in ACTIVATIONS:
            raise CheckpointError(f"{cfg_path}: hidden_act={act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        layers = [(l, _norm_of(l.post_attention_layernorm, "layernorm"),
                   MLP(act, _lin(l.mlp.dense_h_to_4h), _lin(l.mlp.dense_4h_to_h)), bool(l.use_parallel_residual))
                  for l in base.layers]
        return base.embed_in, None, layers, _norm_of(base.final_layer_norm, "layernorm")
    # gptj
    base = hf.transformer
    act = c.activation_function
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{cfg_path}: activation_function={act!r} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    layers = [(l, _norm_of(l.ln_1, "layernorm"), MLP(act, _lin(l.mlp.fc_in), _lin(l.mlp.fc_out)), True)
              for l in base.h]
    return base.wte, None, layers, _norm_of(base.ln_f, "layernorm")


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def load_hf_model(path, *, dtype=None, log: Callable[[str], None] = lambda s: None) -> DsattnDecoder:
    """A DsattnDecoder with the real weights of the checkpoint folder ``path``.

    dtype: float32 / float16 / bfloat16 (default: the checkpoint's). ``log`` receives one line per
    stage and per layer. Raises CheckpointError (a ValueError) naming the file and the field for a
    folder that cannot be exported; NotImplementedError for layer features from_hf does not
    support.
    """
    from .convert import from_hf

    info = inspect_checkpoint(path)
    T = info.dtype if dtype is None else parse_dtype(dtype, "dtype")
    if T == torch.int8:
        raise ValueError("dtype int8: use int8 weights (quantize_int8 / --int8) with a float dtype")
    log(f"  {info.path}: {FAMILIES[info.model_type]} checkpoint, weights {str(info.dtype)[6:]} in "
        f"{', '.join(f.name for f in info.weight_files)}")
    hf = _load_transformers(info)
    cfg_path = info.path / "config.json"
    try:
        embed, embed_norm, parts, final_norm = _parts(hf, info.model_type, cfg_path)
    except AttributeError as e:
        raise CheckpointError(f"{cfg_path}: unexpected {type(hf).__name__} structure ({e})") from None
    head = hf.get_output_embeddings()
    tied = head.weight is embed.weight
    c = hf.config
    layers = []
    for i, (hf_layer, mlp_norm, mlp, parallel) in enumerate(parts):
        try:
            attn = from_hf(hf_layer)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: layer {i}: {e}") from None
        layers.append(DecoderLayer(attn, mlp_norm, mlp, parallel))
        log(f"  layer {i + 1}/{len(parts)}: {type(hf_layer).__name__} -> {type(attn).__name__}"
            f"({attn.extra_repr()}), MLP {mlp.act_name}{' gated' if mlp.up is not None else ''}"
            f"{', parallel residual' if parallel else ''}")
    emb = nn.Embedding.from_pretrained(embed.weight.detach(), freeze=True)
    lm_head = Linear(emb.weight if tied else head.weight, head.bias)
    a0 = layers[0].attn.config
    gen = {}
    if (info.path / "generation_config.json").is_file():
        gen = _read_json(info.path / "generation_config.json")
    eos = _ids(gen.get("eos_token_id", getattr(c, "eos_token_id", None)))
    pad = gen.get("pad_token_id", getattr(c, "pad_token_id", None))
    bos = gen.get("bos_token_id", getattr(c, "bos_token_id", None))
    max_pos = next((getattr(c, n) for n in ("max_position_embeddings", "n_positions", "seq_length")
                    if isinstance(getattr(c, n, None), int)), None)
    spec = DecoderSpec(model_type=info.model_type, vocab_size=emb.num_embeddings, hidden_size=emb.embedding_dim,
                       num_layers=len(layers), num_heads=a0.heads, num_kv_heads=a0.kv_heads, head_size=a0.head_size,
                       dtype=str(T).removeprefix("torch."), tie_word_embeddings=tied, max_positions=max_pos,
                       eos_token_id=eos, pad_token_id=None if pad is None else int(pad),
                       bos_token_id=None if bos is None else int(bos))
    model = DsattnDecoder(spec, emb, embed_norm, layers, final_norm, lm_head).eval()
    del hf
    return model.to(T)


def load_hf_layer(path, layer: int, *, dtype=None, log: Callable[[str], None] = lambda s: None
                  ) -> DeepSpeedSelfAttention:
    """The attention module (input norm + attention + output projection) of layer ``layer`` of
    the checkpoint folder, with its real weights."""
    from .convert import from_hf

    info = inspect_checkpoint(path)
    T = info.dtype if dtype is None else parse_dtype(dtype, "dtype")
    hf = _load_transformers(info)
    cfg_path = info.path / "config.json"
    _, _, parts, _ = _parts(hf, info.model_type, cfg_path)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(parts):
        raise CheckpointError(f"{cfg_path}: layer {layer!r} does not exist (the model has {len(parts)} layers)")
    try:
        m = from_hf(parts[layer][0])
    except (NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: layer {layer}: {e}") from None
    log(f"  layer {layer}/{len(parts)}: {type(parts[layer][0]).__name__} -> {type(m).__name__}({m.extra_repr()})")
    return m.to(T).eval()
