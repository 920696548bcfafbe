"""Find and load libdsattn_kernels.so (the framework-free CUDA kernels) through ctypes.

Search order: an explicit ``path`` argument, else ``build/plugins/kernels/libdsattn_kernels.so``
relative to the repository root (where ``cmake -S plugins -B build/plugins`` puts it). Nothing is
read from the environment, so tests and benchmarks always load the library they say they load.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

LIB_NAME = "libdsattn_kernels.so"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO_ROOT / "build" / "plugins" / "kernels" / LIB_NAME

BUILD_HINT = (
    "build it with:\n"
    f"  cmake -S {REPO_ROOT / 'plugins'} -B {REPO_ROOT / 'build' / 'plugins'} -G Ninja\n"
    f"  cmake --build {REPO_ROOT / 'build' / 'plugins'}"
)

# cudaError_t values the bindings name explicitly (cuda_runtime_api.h).
CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_SUPPORTED = 801

_cache: dict[str, ctypes.CDLL] = {}
_lock = threading.Lock()


def find_library(path: str | os.PathLike | None = None) -> Path:
    """Return the path of the kernels library, or raise FileNotFoundError naming where it looked."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / LIB_NAME
        if not p.is_file():
            raise FileNotFoundError(f"dsattn kernels library: path={str(path)!r} is not a file "
                                    f"(looked for {p}); {BUILD_HINT}")
        return p
    if DEFAULT_PATH.is_file():
        return DEFAULT_PATH
    raise FileNotFoundError(f"dsattn kernels library not found at {DEFAULT_PATH} (the default "
                            f"location; pass path=... to load another); {BUILD_HINT}")


def load(path: str | os.PathLike | ctypes.CDLL | None = None) -> ctypes.CDLL:
    """Load (once per resolved path) and return the kernels library. A CDLL passes through."""
    if isinstance(path, ctypes.CDLL):
        return path
    p = str(find_library(path).resolve())
    with _lock:
        lib = _cache.get(p)
        if lib is None:
            # The CUDA runtime must be initialised by the caller's framework first (torch), so the
            # library shares its primary context; RTLD_GLOBAL is not needed.
            lib = ctypes.CDLL(p)
            _cache[p] = lib
        return lib


def error_string(lib: ctypes.CDLL, err: int) -> str:
    """cudaGetErrorName/String of ``err`` through the library's cudart (falls back to the code)."""
    try:
        name = lib.cudaGetErrorName
        name.restype = ctypes.c_char_p
        name.argtypes = [ctypes.c_int]
        desc = lib.cudaGetErrorString
        desc.restype = ctypes.c_char_p
        desc.argtypes = [ctypes.c_int]
        return f"{name(err).decode()} ({err}): {desc(err).decode()}"
    except (AttributeError, OSError):  # pragma: no cover - cudart always linked in practice
        return f"cudaError {err}"


class KernelError(RuntimeError):
    """A dsattn kernel entry point returned a cudaError_t other than cudaSuccess."""

    def __init__(self, what: str, code: int, message: str):
        super().__init__(f"{what} failed: {message}")
        self.code = code


def check(lib: ctypes.CDLL, err: int, what: str) -> None:
    """Raise KernelError naming ``what`` and the CUDA error when ``err`` is not cudaSuccess."""
    if err != CUDA_SUCCESS:
        raise KernelError(what, int(err), error_string(lib, int(err)))


def torch_dtype_code(dtype) -> int:
    """dsattn_dtype (dsattn_common.h) of a torch dtype; TypeError for anything else."""
    import torch

    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    if dtype not in codes:
        raise TypeError(f"dtype={dtype} is not supported (float32, float16 or bfloat16)")
    return codes[dtype]


def current_stream_handle(device) -> ctypes.c_void_p:
    """cudaStream_t of torch's current stream on ``device``."""
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def check_tensor(name: str, t, device, dtype=None, shape=None, *, align: int = 1, device_of: str = "x") -> None:
    """Check a tensor argument of a kernel binding: a contiguous torch tensor on ``device`` with the
    given dtype and shape, whose data pointer is ``align``-byte aligned; raises TypeError/ValueError
    naming the argument and what it got."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (the device of {device_of})")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (shape {list(t.shape)}, strides {list(t.stride())})")
    if align > 1 and t.numel() and t.data_ptr() % align:
        raise ValueError(f"{name} must be {align}-byte aligned (data_ptr {t.data_ptr():#x})")
