"""PyTorch side: config, reference ops, modules, converters, int8, ONNX export.

Public API (docs/DESIGN.md): AttentionConfig, DeepSpeedSelfAttention, BloomSelfAttention, KVCache,
from_hf, quantize_int8, load_deepspeed_int8, export_onnx; whole decoders: DsattnDecoder,
load_hf_model, export_hf_model. The reference ops live in
``dsattn.export.ops``, the op contract in ``dsattn.export.opspec``.

Names are imported on first use: ``opspec`` (plain Python) must stay importable without pulling in
torch, transformers or onnxscript, so that the lowering can read the contract cheaply.
"""
import importlib

__all__ = ["AttentionConfig", "DeepSpeedSelfAttention", "BloomSelfAttention", "KVCache", "from_hf",
           "quantize_int8", "load_deepspeed_int8", "export_onnx", "ops", "opspec", "DsattnDecoder", "load_hf_model",
           "export_hf_model"]

# public name -> submodule that defines it
_HOME = {"AttentionConfig": "config", "DeepSpeedSelfAttention": "modules", "BloomSelfAttention": "modules",
         "KVCache": "modules", "quantize_int8": "modules", "load_deepspeed_int8": "modules",
         "from_hf": "convert", "export_onnx": "onnx_export",
         # whole decoders from a local checkpoint folder
         "DsattnDecoder": "model", "load_hf_model": "model", "export_hf_model": "model_onnx"}


def __getattr__(name):
    if name in ("ops", "opspec"):
        return importlib.import_module(f"{__name__}.{name}")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dsattn.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
