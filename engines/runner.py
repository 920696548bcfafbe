"""Run a dsattn TensorRT plan (used by ``dsattn validate --engine``).

    runner = EngineRunner("model.plan")              # plugins serialized in the plan
    outputs = runner.run({"hidden_states": x, "past_key": k, ...})   # numpy or torch -> numpy

Inputs may be numpy arrays or torch tensors (CPU or CUDA); they are copied to CUDA torch tensors of
the engine's dtype (a dtype mismatch raises instead of converting). Outputs come back as numpy
arrays (bfloat16 as ml_dtypes.bfloat16). present_key / present_value are separate buffers: the
engine leaves the caller's past_* untouched.

Status: never run (no TensorRT in this workplace); TensorRT is imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dsattn.engines.build import import_tensorrt


def _torch_dtype(trt, dt):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.int64: torch.int64, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise TypeError(f"engine tensor type {dt} is not supported by EngineRunner")
    return table[dt]


def _to_numpy(t):
    t = t.detach().cpu()
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


class EngineRunner:
    """Deserializes a plan (optionally loading plugin libraries first) and runs it on one stream."""

    def __init__(self, plan, plugins=(), *, verbose: bool = False):
        plan = Path(plan)
        if not plan.is_file():
            raise FileNotFoundError(f"engine plan {str(plan)!r} does not exist")
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("EngineRunner needs a CUDA GPU (torch.cuda.is_available() is False)")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        libs = [Path(p) for p in ([plugins] if isinstance(plugins, (str, Path)) else plugins)]
        for lib in libs:
            if not lib.is_file():
                raise FileNotFoundError(f"plugin library {str(lib)!r} does not exist")
        blob = plan.read_bytes()
        # Plans from build_engine embed the plugin library and deserialize as they are. The explicit
        # libraries are for plans built without it (trtexec without --setPluginsToSerialize); they
        # are loaded only when needed, because loadLibrary refuses a library whose creators are
        # already registered (e.g. by the plan's embedded copy).
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None and libs:
            for lib in libs:
                if self._runtime.get_plugin_registry().load_library(str(lib)) is None:
                    raise RuntimeError(f"TensorRT could not load plugin library {str(lib)!r}")
            self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan} (plugins missing? see the log above)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self._engine.get_tensor_mode(n) != mode]

    def run(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        missing = sorted(set(self.input_names) - set(feed))
        extra = sorted(set(feed) - set(self.input_names))
        if missing or extra:
            raise ValueError(f"feed must hold exactly the engine inputs {self.input_names}; missing {missing}, "
                             f"unexpected {extra}")
        keep = []
        for name in self.input_names:
            want = _torch_dtype(self._trt, self._engine.get_tensor_dtype(name))
            value = feed[name]
            if isinstance(value, np.ndarray):
                if value.dtype.name == "bfloat16":  # ml_dtypes: torch has no numpy bf16; fp32 is exact
                    value = torch.from_numpy(np.ascontiguousarray(value.astype(np.float32))).to(torch.bfloat16)
                else:
                    value = torch.from_numpy(np.ascontiguousarray(value))
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {name!r} must be a numpy array or torch tensor, got {type(value).__name__}")
            if value.dtype != want:
                raise TypeError(f"input {name!r} has dtype {value.dtype}, the engine expects {want}")
            value = value.to("cuda").contiguous()
            keep.append(value)
            if not self._context.set_input_shape(name, tuple(value.shape)):
                raise ValueError(f"input {name!r} shape {tuple(value.shape)} is outside the engine's profile")
            self._context.set_tensor_address(name, value.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} shape {shape} unresolved after setting input shapes")
            t = torch.empty(shape, dtype=_torch_dtype(self._trt, self._engine.get_tensor_dtype(name)), device="cuda")
            outputs[name] = t
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
        stream.synchronize()
        del keep
        return {n: _to_numpy(t) for n, t in outputs.items()}


def run_engine(engine, feeds: Mapping[str, Any], *, plugins=()) -> dict[str, Any]:
    """One-shot helper for ``dsattn validate --engine``: deserialize `engine`, run `feeds` once."""
    return EngineRunner(engine, plugins).run(feeds)
