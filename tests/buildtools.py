"""Finding the native build tools for the CPU build tests: a missing tool skips the test with its name."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# nvcc is often installed without being on PATH.
_CUDA_BIN = Path("/usr/local/cuda/bin")


def find_tool(name: str) -> str:
    path = shutil.which(name) or (str(_CUDA_BIN / name) if (_CUDA_BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} not found on PATH or in {_CUDA_BIN}: cannot build the native libraries here")
    return path
