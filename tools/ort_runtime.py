"""ONNX Runtime CUDA running the exported dsattn model itself, on the dsattn kernels.

``libdsattn_ort.so`` (plugins/ort, built by the plugins' CMake with ``-DONNXRUNTIME_INCLUDE_DIR``)
registers ``dsattn::QKVGemm``, ``dsattn::SoftmaxContext`` and ``dsattn::Int8MatMul`` as custom ops
of the CUDA execution provider. ``make_session`` opens an *exported* model (not the lowered one)
with that library registered, so the graph that goes to TensorRT runs with the same kernels as the
TensorRT plugins. The provider name for ``dsattn validate --providers`` is ``cuda-dsattn``.

The library is found at, in order: the ``library`` argument, ``$DSATTN_ORT_LIB``, then
``build/plugins/libdsattn_ort.so`` under the repository root.

KV cache in place: bind the same CUDA OrtValue to ``past_key`` and ``present_key`` (likewise the
values) with I/O binding; the op then appends to that buffer without copying. With separate
buffers it copies the cache once per call. A cache overflow (seq_lens + S > Tmax) is an error of
the run with nothing written; under CUDA graph replay (``cuda_graph=True``) errors cannot reach the
host and the context comes back as NaN instead (as with TensorRT).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import onnx

__all__ = ["PROVIDER", "LIBRARY_ENV", "find_library", "check_model", "make_session"]

PROVIDER = "cuda-dsattn"
LIBRARY_ENV = "DSATTN_ORT_LIB"
_DEFAULT = Path(__file__).resolve().parents[1] / "build" / "plugins" / "libdsattn_ort.so"


def find_library(library: Optional[Union[str, os.PathLike]] = None) -> str:
    """Path of libdsattn_ort.so (see the module doc); an error names where it looked."""
    if library is not None:
        path, origin = Path(library), "library argument"
    elif os.environ.get(LIBRARY_ENV):
        path, origin = Path(os.environ[LIBRARY_ENV]), f"${LIBRARY_ENV}"
    else:
        path, origin = _DEFAULT, "the default build location"
    if not path.is_file():
        raise FileNotFoundError(
            f"libdsattn_ort.so not found at {path} ({origin}); build it with "
            "`cmake -S plugins -B build/plugins -DONNXRUNTIME_INCLUDE_DIR=<ONNX Runtime include dir> && "
            f"cmake --build build/plugins --target dsattn_ort`, or set {LIBRARY_ENV}")
    return str(path)


def check_model(model: onnx.ModelProto) -> None:
    """Reject dsattn nodes that break the op contract (``dsattn.export.opspec``: unknown ops or
    attributes, wrong kinds, values out of range). ONNX Runtime's custom-op API reads attributes by
    name only (it cannot list a node's attributes), so the library itself cannot see an unknown one;
    it checks every known one (kind, range, the rules between them) at session creation."""
    from dsattn.export import opspec

    def walk(g):
        for n in g.node:
            if n.domain == opspec.DOMAIN:
                label = f"dsattn::{n.op_type} node {n.name!r}"
                if n.op_type not in opspec.OPS:
                    raise ValueError(f"node {n.name!r}: unknown dsattn op {n.op_type!r} "
                                     f"(known: {', '.join(opspec.OP_TYPES)})")
                opspec.resolve(n.op_type, opspec.node_attributes(n, label), label)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)

    walk(model.graph)


def _load(model: Union[str, os.PathLike, onnx.ModelProto, bytes]) -> tuple[onnx.ModelProto, Optional[str]]:
    """(the graph, its file or None). A file is read without its external data: the checks need the
    graph only, and ONNX Runtime then opens the file itself (weights of any size)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, bytes):
        return onnx.load_from_string(model), None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path, bytes or an onnx.ModelProto, got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ValueError(f"model {path!r} does not exist")
    return onnx.load(path, load_external_data=False), path


def make_session(model: Union[str, os.PathLike, onnx.ModelProto, bytes], *,
                 library: Optional[Union[str, os.PathLike]] = None, cuda_graph: bool = False, device_id: int = 0,
                 log_severity: int = 3):
    """An InferenceSession of the exported ``model`` on CUDAExecutionProvider with libdsattn_ort.so
    registered. ``cuda_graph`` turns on the CUDA EP's graph capture (static shapes, every input and
    output bound to CUDA memory through I/O binding, every node on CUDA)."""
    import onnxruntime as ort

    from .lower import MAX_IR_VERSION

    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id must be an int >= 0, got {device_id!r}")
    lib = find_library(library)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(f"provider {PROVIDER!r} needs ONNX Runtime's CUDAExecutionProvider, which onnxruntime "
                         f"{ort.__version__} does not have (available: {', '.join(ort.get_available_providers())}); "
                         "install onnxruntime-gpu")
    proto, path = _load(model)
    check_model(proto)
    source: Union[str, bytes] = path if path is not None else b""
    if proto.ir_version > MAX_IR_VERSION:
        # ONNX Runtime refuses newer IR versions than it knows; the graph itself needs nothing newer.
        proto = onnx.load(path) if path is not None else proto
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        copy.ir_version = MAX_IR_VERSION
        source = copy.SerializeToString()
    elif path is None:
        source = proto.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = log_severity
    so.register_custom_ops_library(lib)
    cuda = {"device_id": str(device_id),
            # fp32 nodes next to ours must stay fp32 (the accuracy rule compares against fp32).
            "use_tf32": "0"}
    if cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    providers = [("CUDAExecutionProvider", cuda)] if cuda_graph else [("CUDAExecutionProvider", cuda),
                                                                     "CPUExecutionProvider"]
    sess = ort.InferenceSession(source, so, providers=providers)
    if "CUDAExecutionProvider" not in sess.get_providers():
        raise RuntimeError(f"ONNX Runtime could not start CUDAExecutionProvider (session providers: "
                           f"{sess.get_providers()}); check the CUDA/cuDNN libraries it needs")
    return sess
