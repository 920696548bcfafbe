"""PyTorch side: config, reference ops, modules, converters, int8, ONNX export.

Public API (DESIGN.md): AttentionConfig, DeepSpeedSelfAttention, BloomSelfAttention, KVCache,
from_hf, quantize_int8, export_onnx. The reference ops live in ``dsattn.export.ops``.
"""
from . import ops
from .config import AttentionConfig
from .modules import BloomSelfAttention, DeepSpeedSelfAttention, KVCache
from .modules import load_deepspeed_int8, quantize_int8

__all__ = ["AttentionConfig", "DeepSpeedSelfAttention", "BloomSelfAttention", "KVCache", "from_hf",
           "quantize_int8", "load_deepspeed_int8", "export_onnx", "ops"]


def __getattr__(name):
    # from_hf pulls in transformers and export_onnx onnxscript: import them only when used.
    if name == "from_hf":
        from .convert import from_hf

        return from_hf
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'dsattn.export' has no attribute {name!r}")
