"""CLI, lowering for ONNX Runtime, validation, benchmarks and kernel bindings."""
from .lower import lower_for_ort
from .validate import validate
