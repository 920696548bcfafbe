"""Build TensorRT engines from dsattn ONNX models with the dsattn plugin library.

``build_engine`` uses the TensorRT Python API (imported lazily: this module imports without
TensorRT); ``trtexec_command`` writes the equivalent trtexec command line and needs nothing.

What both do (TensorRT >= 10.8; TensorRT 11 is strongly typed only):
- load the plugin library through the builder's plugin registry (``load_library``: it calls the
  library's ``setLoggerFinder`` and ``getCreators``; trtexec ``--dynamicPlugins``),
- parse the ONNX model (custom nodes -> creators ``(op_type, plugin_version, plugin_namespace)``),
- create the network strongly typed (precision comes from the model; the flag is a no-op in 11),
- one optimization profile for batch / seq / cache capacity (engines.profiles),
- enable ``PreviewFeature.ALIASED_PLUGIN_IO_10_03`` so the KV cache outputs alias their inputs,
- an optional timing cache file (read if present, written back),
- write the plan (and the timing cache) atomically (dsattn.fileio): a failed build or write leaves
  an older plan untouched.

The plugin library is *not* serialized into the plan: TensorRT serializes plugin libraries only
into version-compatible engines (``setPluginsToSerialize``), and a plan carrying plugin code
deserializes only where the runtime allows host code (``setEngineHostCodeAllowed``). So a plan is
always run with the plugin library loaded first: ``EngineRunner(plan, plugins=LIB)``,
``dsattn validate --engine PLAN --plugins LIB``, ``trtexec --loadEngine=PLAN --dynamicPlugins=LIB``.

Status: none of the TensorRT calls here has run: TensorRT could not be installed where this project is tested
(docs/DESIGN.md, "Verification"). The pure logic (profiles, command lines, argument checks) is unit-tested.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from dsattn.engines.profiles import Profile, derive_profile, format_shapes
from dsattn.fileio import check_output_path, load_onnx, write_bytes_atomic

MIN_TENSORRT = "10.8"
_INSTALL_HINT = (f"TensorRT >= {MIN_TENSORRT} Python package is required: install it from NVIDIA "
                 "(pip install tensorrt-cu12 or tensorrt-cu13 --extra-index-url https://pypi.nvidia.com, "
                 "or the TensorRT tar/deb packages) on a machine with an NVIDIA GPU")


def import_tensorrt():
    """``import tensorrt`` with a clear error when it is missing or too old."""
    try:
        import tensorrt as trt  # noqa: PLC0415 (lazy on purpose)
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    from packaging.version import Version

    version = getattr(trt, "__version__", "0")
    if Version(version) < Version(MIN_TENSORRT):
        raise RuntimeError(f"{_INSTALL_HINT}; found tensorrt {version}")
    return trt


# Plugin libraries loaded into TensorRT's (process-wide) plugin registry: loadLibrary fails when the
# library's creators are already registered, so a library is loaded once per process however many
# builds and runners use it.
_LOADED: dict[str, object] = {}


def load_plugin_libraries(registry, libs) -> None:
    """Loads each plugin library into ``registry`` once per process (see _LOADED)."""
    for lib in libs:
        key = os.path.realpath(lib)
        if key in _LOADED:
            continue
        handle = registry.load_library(str(lib))
        if handle is None:
            raise RuntimeError(f"TensorRT could not load plugin library {str(lib)!r} (see the log above; "
                               f"loadLibrary also fails when its creators are already registered)")
        _LOADED[key] = handle


def _plugin_paths(plugins) -> list[Path]:
    if isinstance(plugins, (str, Path)):
        plugins = [plugins]
    paths = [Path(p) for p in plugins]
    if not paths:
        raise ValueError("plugins must name the dsattn plugin library (libdsattn_plugins.so), got none")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"plugin library {str(p)!r} does not exist (build it: cmake -S plugins -B "
                                    f"build/plugins -DTensorRT_INCLUDE_DIR=... && cmake --build build/plugins)")
    return paths


def resolve_profile(onnx_path, profiles: Profile | None = None, *, batch=None, seq=None, capacity=None) -> Profile:
    """`profiles` as given (checked against the model) or derived from the model's dynamic dims."""
    model = load_onnx(onnx_path, "ONNX model", load_external_data=False)  # one-line errors for bad files
    check_dsattn_nodes(model, str(onnx_path))
    return derive_profile(model, batch=batch, seq=seq, capacity=capacity, overrides=profiles)


def check_dsattn_nodes(model, where: str) -> None:
    """Every dsattn node's attributes against the op contract before TensorRT sees them: its ONNX
    parser reads INT attributes as int32 (a larger value would arrive truncated) and passes only the
    fields the plugin's creator lists, so what it would silently change is rejected here, naming
    the node."""
    from dsattn.export import opspec

    def nodes(g):
        for n in g.node:
            yield n
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from nodes(sub)

    for n in nodes(model.graph):
        if n.domain == opspec.DOMAIN:
            label = f"{where}: {n.domain}::{n.op_type} node {n.name or '<unnamed>'!r}"
            if n.op_type not in opspec.OPS:
                raise ValueError(f"{label}: unknown dsattn op (known: {sorted(opspec.OPS)})")
            opspec.resolve(n.op_type, opspec.node_attributes(n, label), label)


def trtexec_command(onnx_path, plugins, out, profiles: Profile | None = None, *, batch=None, seq=None,
                    capacity=None, timing_cache=None, trtexec: str = "trtexec",
                    extra: Sequence[str] = ()) -> str:
    """The trtexec command line equivalent to ``build_engine`` (flag names from TensorRT's
    samples/common/sampleOptions.cpp). ``--stronglyTyped`` is required by TensorRT 10 for our typed
    models and an accepted no-op in TensorRT 11."""
    onnx_path = Path(onnx_path)
    libs = [Path(p) for p in ([plugins] if isinstance(plugins, (str, Path)) else plugins)]
    if not libs:
        raise ValueError("plugins must name the dsattn plugin library, got none")
    profile = resolve_profile(onnx_path, profiles, batch=batch, seq=seq, capacity=capacity)
    args = [trtexec, f"--onnx={onnx_path}"]
    # The plan holds no plugin code (see the module docstring): --dynamicPlugins again when running it.
    args += [f"--dynamicPlugins={p}" for p in libs]
    if profile:
        args += [f"--minShapes={format_shapes(profile, 0)}", f"--optShapes={format_shapes(profile, 1)}",
                 f"--maxShapes={format_shapes(profile, 2)}"]
    args += ["--preview=+aliasedPluginIO1003", "--stronglyTyped"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    args += list(extra)
    args.append(f"--saveEngine={out}")
    return " ".join(shlex.quote(a) for a in args)


def _progress_monitor(trt, stream):
    """A trt.IProgressMonitor printing one line per finished phase and a bar for the step counts."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, tuple[int, str | None]] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = (int(num_steps), parent_phase)

        def step_complete(self, phase_name, step):
            total, parent = self._steps.get(phase_name, (0, None))
            if parent is None and total > 0:
                done = int(30 * (step + 1) / total)
                stream.write(f"\r{phase_name[:40]:40s} [{'#' * done}{'.' * (30 - done)}] {step + 1}/{total}")
                stream.flush()
            return True  # never cancel

        def phase_finish(self, phase_name):
            total, parent = self._steps.pop(phase_name, (0, None))
            if parent is None:
                stream.write(f"\r{phase_name[:40]:40s} done{' ' * 40}\n")
                stream.flush()

    return Monitor()


def build_engine(onnx_path, plugins, out, *, profiles: Profile | None = None, batch=None, seq=None,
                 capacity=None, timing_cache=None, workspace_bytes: int | None = None, progress: bool = True,
                 verbose: bool = False) -> Path:
    """Build and save a TensorRT plan; returns `out` as a Path.

    onnx_path: model exported by dsattn.export.export_onnx (custom nodes in domain ``dsattn``).
    plugins: path (or paths) of libdsattn_plugins.so. out: the plan file to write.
    profiles: {input: (min, opt, max)} shapes; by default derived from the model's dynamic dims with
    the batch / seq / capacity ranges (each (min, opt, max); defaults in engines.profiles).
    timing_cache: file read when it exists and written after the build.
    """
    onnx_path = Path(onnx_path)
    libs = _plugin_paths(plugins)
    out = check_output_path(out, "engine output")
    if workspace_bytes is not None and (not isinstance(workspace_bytes, int) or workspace_bytes <= 0):
        raise ValueError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    profile = resolve_profile(onnx_path, profiles, batch=batch, seq=seq, capacity=capacity)
    trt = import_tensorrt()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    load_plugin_libraries(builder.get_plugin_registry(), libs)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:  # deprecated no-op in TensorRT 11 (always strongly typed)
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")

    config = builder.create_builder_config()
    config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    net_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    missing = sorted(net_inputs - set(profile))
    if missing:
        raise ValueError(f"no profile shapes for network inputs {missing}")
    opt_profile = builder.create_optimization_profile()
    for name, (mn, op, mx) in profile.items():
        if name in net_inputs:
            opt_profile.set_shape(name, trt.Dims(mn), trt.Dims(op), trt.Dims(mx))
    config.add_optimization_profile(opt_profile)

    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        check_output_path(cache_path, "timing cache")
        try:
            blob = cache_path.read_bytes() if cache_path.exists() else b""
        except OSError as exc:
            raise ValueError(f"timing cache {str(cache_path)!r}: cannot read ({exc.strerror})") from None
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress:
        config.progress_monitor = _progress_monitor(trt, sys.stderr)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    write_bytes_atomic(out, bytes(memoryview(plan)))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return out


__all__: Iterable[str] = ["build_engine", "trtexec_command", "import_tensorrt", "resolve_profile",
                          "load_plugin_libraries", "MIN_TENSORRT"]
