"""dsattn: DeepSpeed-inference style attention from PyTorch to ONNX, ONNX Runtime and TensorRT.

Subpackages live in the repository's top-level folders:
``dsattn.export`` (``export/``), ``dsattn.engines`` (``engines/``), ``dsattn.tools`` (``tools/``).
"""

__version__ = "0.1.0"
