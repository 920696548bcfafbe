"""TensorRT engine builds, trtexec command lines and the engine runner.

Import-safe without TensorRT: TensorRT is imported only inside build_engine / EngineRunner, which
raise a clear ImportError/RuntimeError when it is missing. trtexec_command and the profile logic
need nothing but onnx.
"""
from dsattn.engines.build import MIN_TENSORRT, build_engine, import_tensorrt, trtexec_command
from dsattn.engines.profiles import DEFAULT_RANGES, derive_profile
from dsattn.engines.runner import EngineRunner, run_engine

__all__ = ["build_engine", "trtexec_command", "import_tensorrt", "derive_profile", "DEFAULT_RANGES",
           "EngineRunner", "run_engine", "MIN_TENSORRT"]
