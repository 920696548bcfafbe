"""Run a dsattn TensorRT plan (used by ``dsattn validate --engine``).

    runner = EngineRunner("model.plan", plugins="libdsattn_plugins.so")
    outputs = runner.run({"hidden_states": x, "past_key": k, ...})   # numpy or torch -> numpy

The plugin library is always loaded before the plan is deserialized: plans from build_engine carry
no plugin code (engines/build.py says why), so ``plugins`` is required.

Inputs may be numpy arrays or torch tensors (CPU or CUDA); they are copied to CUDA torch tensors of
the engine's dtype (a dtype mismatch raises instead of converting). Outputs come back as numpy
arrays (bfloat16 as ml_dtypes.bfloat16).

KV cache aliasing: with ``ALIASED_PLUGIN_IO_10_03`` the engine writes present_key / present_value
into the memory of past_key / past_value (``ICudaEngine.getAliasedInputTensor`` names the input an
output aliases). Each such output is bound to its input's buffer, as trtexec does, and that buffer
is always a private copy of the caller's array: ``tensor.to("cuda")`` returns the caller's own
tensor when it is already there, and the engine would then overwrite the caller's cache.

Status: never run (TensorRT could not be installed where this project is tested); TensorRT is imported lazily. The binding logic
is tested on the CPU against a stand-in engine (tests/test_engines.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dsattn.engines.build import import_tensorrt, load_plugin_libraries


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
    """Loads the plugin libraries, deserializes a plan and runs it on one stream."""

    def __init__(self, plan, plugins, *, verbose: bool = False):
        plan = Path(plan)
        if not plan.is_file():
            raise FileNotFoundError(f"engine plan {str(plan)!r} does not exist")
        libs = [Path(p) for p in ([plugins] if isinstance(plugins, (str, Path)) else (plugins or ()))]
        if not libs:
            raise ValueError("plugins: EngineRunner needs the dsattn plugin library (libdsattn_plugins.so) to "
                             "deserialize the plan; plans are built without plugin code")
        for lib in libs:
            if not lib.is_file():
                raise FileNotFoundError(f"plugin library {str(lib)!r} does not exist")
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("EngineRunner needs a CUDA GPU (torch.cuda.is_available() is False)")
        self._trt = trt
        self._device = torch.device("cuda")
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        load_plugin_libraries(self._runtime.get_plugin_registry(), libs)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan} (built by another TensorRT version or for "
                               "another GPU? see the log above)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self._engine.get_tensor_mode(n) != mode]
        aliased = getattr(self._engine, "get_aliased_input_tensor", None)
        #: output name -> the input whose buffer it shares (present_* -> past_*)
        self.aliases = {o: a for o in self.output_names if aliased is not None and (a := aliased(o))}

    def run(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        missing = sorted(set(self.input_names) - set(feed))
        extra = sorted(set(feed) - set(self.input_names))
        if missing or extra:
            raise ValueError(f"feed must hold exactly the engine inputs {self.input_names}; missing {missing}, "
                             f"unexpected {extra}")
        written = set(self.aliases.values())  # inputs the engine writes into
        bound = {}
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
            value = value.to(self._device).contiguous()
            if name in written:  # never let the engine write into the caller's tensor
                value = value.clone()
            bound[name] = value
            if not self._context.set_input_shape(name, tuple(value.shape)):
                raise ValueError(f"input {name!r} shape {tuple(value.shape)} is outside the engine's profile")
            self._context.set_tensor_address(name, value.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} shape {shape} unresolved after setting input shapes")
            dtype = _torch_dtype(self._trt, self._engine.get_tensor_dtype(name))
            src = self.aliases.get(name)
            if src is not None:
                t = bound[src]
                if tuple(t.shape) != shape or t.dtype != dtype:
                    raise RuntimeError(f"output {name!r} ({shape}, {dtype}) aliases input {src!r} "
                                       f"({tuple(t.shape)}, {t.dtype}) but does not match it")
            else:
                t = torch.empty(shape, dtype=dtype, device=self._device)
            outputs[name] = t
            self._context.set_tensor_address(name, t.data_ptr())
        self._execute()
        return {n: _to_numpy(t) for n, t in outputs.items()}

    def run_bound(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Run on caller-owned device tensors, bound as they are (no copies): ``inputs`` must hold
        every engine input and ``outputs`` every output. An aliased output (``self.aliases``) may be
        bound to the buffer of the input it aliases, so the engine updates that tensor in place
        (KV caches that persist across calls). Shapes are checked against what the engine infers."""
        missing = sorted(set(self.input_names) - set(inputs)) + sorted(set(self.output_names) - set(outputs))
        if missing:
            raise ValueError(f"run_bound: no tensor bound for {missing}")
        for name in self.input_names:
            t = inputs[name]
            if not self._context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"input {name!r} shape {tuple(t.shape)} is outside the engine's profile")
            self._context.set_tensor_address(name, t.data_ptr())
        for name in self.output_names:
            t = outputs[name]
            shape = tuple(self._context.get_tensor_shape(name))
            if tuple(t.shape) != shape:
                raise ValueError(f"output {name!r}: bound tensor has shape {tuple(t.shape)}, the engine "
                                 f"computes {shape}")
            self._context.set_tensor_address(name, t.data_ptr())
        self._execute()

    def _execute(self) -> None:
        import torch

        stream = torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
        stream.synchronize()


def run_engine(engine, feeds: Mapping[str, Any], *, plugins) -> dict[str, Any]:
    """One-shot helper for ``dsattn validate --engine``: deserialize `engine`, run `feeds` once."""
    return EngineRunner(engine, plugins).run(feeds)
