"""Atomic file output: every file dsattn writes goes through this module.

ONNX models and their external data, TensorRT plans and timing caches, input files and
BENCHMARKS.md are first written into a private staging folder created *inside the destination
folder* (so the final ``os.replace`` is a rename on one file system, never a copy), checked there,
then renamed into place. A write that fails half-way (full disk, file size limit, a checker that
rejects the result, an exception in the writer) leaves the previous file byte-for-byte untouched
and raises ``WriteError`` naming the file; the staging folder is removed.

A model with external data is two files; they are renamed data first, model last, so a reader
never finds a new model that points at a data file that is not there yet. A rerun always writes a
fresh data file: nothing is ever appended to an old ``OUT.data`` (``onnx.save`` appends to an
existing one).

Used by ``dsattn export`` (tools and Python API), ``lower``, ``validate --save-inputs``,
``build-engine`` and ``bench``::

    from dsattn.fileio import atomic_output, write_bytes_atomic, save_onnx_atomic

    with atomic_output("out/model.plan") as tmp:   # tmp: a path in a staging folder next to it
        tmp.write_bytes(blob)                      # renamed onto out/model.plan on success
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

__all__ = ["WriteError", "atomic_output", "write_bytes_atomic", "write_text_atomic", "save_onnx_atomic",
           "check_output_path", "same_file", "needs_external_data", "load_onnx", "external_data_files",
           "EXTERNAL_DATA_THRESHOLD"]

PathLike = Union[str, os.PathLike]

#: Initializer bytes above which a model is saved with external data: protobuf cannot serialize a
#: message past 2 GiB, and the graph itself needs some room besides the weights.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


class WriteError(OSError):
    """A file could not be written; the message is one line naming the file and the reason.
    The previous file at that path (if any) is unchanged."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file too large for this file system or the process's file size limit"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def check_output_path(path: PathLike, what: str = "output") -> Path:
    """Checks, before any work is done, that ``path`` can become a file: it is not a folder, its
    folder exists and is writable. Raises ValueError ``"{what} 'path': ..."`` otherwise."""
    p = Path(path)
    if str(path) == "":
        raise ValueError(f"{what}: empty path")
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise ValueError(f"{what} {str(path)!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{what} {str(path)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: folder {str(parent)!r} is not writable")
    return p


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths exist and name the same file (symbolic and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_output(path: PathLike, *, check: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yields a staging path with the same file name as ``path``, in a private folder next to it.

    Everything the caller writes into that folder (the file itself and companions such as
    ``NAME.data``) is renamed into ``path``'s folder when the block ends without an exception and
    ``check(staged_path)`` (if given) returns; the staged file itself is renamed last. On any
    failure nothing is renamed, the staging folder is removed and ``WriteError`` is raised (an
    exception of ``check`` or of the block that is not an OSError propagates as it is, so a
    checker's ValueError keeps its message)."""
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise WriteError(f"cannot write {str(dest)!r}: {_reason(exc)}") from exc
    staged = stage / dest.name
    try:
        try:
            yield staged
            if not staged.is_file():
                raise WriteError(f"cannot write {str(dest)!r}: the writer produced no file")
            if check is not None:
                check(staged)
            # Companions (external data) first, the file itself last.
            for f in sorted(stage.iterdir(), key=lambda q: q.name == dest.name):
                os.replace(f, parent / f.name)
        except WriteError:
            raise
        except OSError as exc:
            raise WriteError(f"cannot write {str(dest)!r}: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def needs_external_data(model) -> bool:
    """True when ``model`` (onnx.ModelProto) is too large for one protobuf file. Counts the
    initializer bytes, since ``ByteSize()`` itself fails past 2 GiB."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.raw_data else t.ByteSize()
        if total > EXTERNAL_DATA_THRESHOLD:
            return True
    return False


def save_onnx_atomic(model, path: PathLike, *, check: Optional[Callable[[Path], None]] = None,
                     external_data: Optional[bool] = None) -> Path:
    """Saves an onnx.ModelProto to ``path`` atomically. ``external_data`` None: only when the
    model needs it (``needs_external_data``); the weights then go to ``<file name>.data`` next to
    the model, always written fresh, and ``model``'s tensors then point at that file (as with
    ``onnx.save``). ``check(staged_path)`` runs on the staged copy (external
    data beside it) before anything is renamed, e.g. ``onnx.checker.check_model(p, full_check=True)``."""
    import onnx

    if external_data is None:
        external_data = needs_external_data(model)
    dest = Path(path)
    with atomic_output(dest, check=check) as tmp:
        if external_data:
            # As with onnx.save, the tensors of `model` are moved into the data file (their bytes
            # leave the proto): a copy would double the memory of a model that is already > 2 GiB.
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=dest.name + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
    return dest


# ------------------------------------------------------------------------------------------------
# reading models: the counterpart of the checks above, so every command rejects a bad input file
# with one line instead of a protobuf or file-system traceback
# ------------------------------------------------------------------------------------------------

def load_onnx(path: PathLike, what: str = "model", *, load_external_data: bool = True):
    """onnx.load with one-line ValueErrors naming ``what`` and the file: missing, a folder, empty,
    not an ONNX model (another format, truncated), or external data missing/unreadable."""
    import onnx
    from google.protobuf.message import DecodeError

    p = os.fspath(path)
    if not os.path.exists(p):
        raise ValueError(f"{what} {p!r} does not exist")
    if os.path.isdir(p):
        raise ValueError(f"{what} {p!r} is a folder, expected an ONNX file")
    try:
        size = os.path.getsize(p)
    except OSError as exc:
        raise ValueError(f"{what} {p!r}: cannot read ({_reason(exc)})") from None
    if size == 0:
        raise ValueError(f"{what} {p!r} is empty")
    try:
        model = onnx.load(p, load_external_data=False)
    except DecodeError:
        raise ValueError(f"{what} {p!r} is not an ONNX model (cannot be parsed: another format, or truncated)") from None
    except OSError as exc:
        raise ValueError(f"{what} {p!r}: cannot read ({_reason(exc)})") from None
    except Exception as exc:  # onnx.load reads .json/.txt names as text formats: their parse errors
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ValueError(f"{what} {p!r} is not an ONNX model (cannot be parsed: {msg})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ValueError(f"{what} {p!r} is not an ONNX model (no IR version or graph)")
    missing = [f for f in external_data_files(model, os.path.dirname(p)) if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"{what} {p!r}: external data file {missing[0]!r} is missing")
    if load_external_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, os.path.dirname(p) or ".")
        except Exception as exc:  # onnx raises ValidationError, OSError or ValueError here
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{what} {p!r}: cannot load its external data ({msg})") from None
    return model


def external_data_files(model, base_dir: PathLike) -> list[str]:
    """The external data files a model's tensors point at (paths under ``base_dir``)."""
    import onnx

    def tensors(g):
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(sub)

    files = []
    for t in tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            f = os.path.join(os.fspath(base_dir), loc)
            if f not in files:
                files.append(f)
    return files
