"""CLI, lowering for ONNX Runtime, validation, benchmarks and kernel bindings."""
