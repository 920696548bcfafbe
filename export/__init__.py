"""PyTorch side: config, reference ops, modules, converters, int8, ONNX export."""
