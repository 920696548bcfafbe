"""CPU test: the kernels library configures and builds with CMake + nvcc (no GPU needed), and
exports every C entry point its headers declare.

Skipped (with the reason) where nvcc or cmake is absent. One architecture (sm_90a) keeps the build
short on CI's 2 cores.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "plugins" / "kernels"

# A declaration of an exported function in a kernels header: "<type> dsattn_xxx(".
_DECL = re.compile(r"^\s*(?:[A-Za-z_][\w\s\*]*?[\s\*])(dsattn_\w+)\s*\(", re.M)


def declared_functions(header: Path) -> set[str]:
    text = re.sub(r"//[^\n]*", "", header.read_text())  # comments mention names too
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return {m.group(1) for m in _DECL.finditer(text) if not m.group(0).lstrip().startswith("typedef")}


def test_declared_functions_parser():
    names = declared_functions(KERNELS / "qkv_gemm.h")
    assert {"dsattn_qkv_gemm", "dsattn_qkv_gemm_workspace_size", "dsattn_gemm_ctx_create",
            "dsattn_gemm_ctx_destroy"} <= names


def cublaslt_root() -> str | None:
    """The prefix of the pip package nvidia-cublas (extra `kernels`: headers + libcublasLt), which
    CI installs because its bare nvcc ships no cuBLAS; None when not installed."""
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        for sub in ("cu13", "cu12", "cublas"):
            root = Path(base) / sub
            if (root / "include" / "cublasLt.h").is_file():
                return str(root)
    return None


def _tool(name):
    p = shutil.which(name)
    if p is None:
        pytest.skip(f"{name} not found on PATH: cannot build the CUDA kernels here")
    return p


def test_kernels_library_builds_and_exports(tmp_path):
    _tool("nvcc")
    cmake = _tool("cmake")
    nm = _tool("nm")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    build = tmp_path / "build"
    # With cuBLASLt available (CUDA toolkit or the nvidia-cublas package), QKVGemm's cuBLASLt path
    # must compile too: require it rather than let CMake compile it out.
    root = cublaslt_root()
    lt = [f"-DDSATTN_CUBLASLT_ROOT={root}", "-DDSATTN_REQUIRE_CUBLASLT=ON"] if root else []
    cfg = subprocess.run([cmake, "-S", str(REPO / "plugins"), "-B", str(build), *gen,
                          "-DCMAKE_CUDA_ARCHITECTURES=90a", "-DCMAKE_BUILD_TYPE=Release",
                          "-DDSATTN_BUILD_PLUGINS=OFF", *lt],
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout[-4000:]}\n{cfg.stderr[-4000:]}"
    bld = subprocess.run([cmake, "--build", str(build), "--target", "dsattn_kernels", "-j2"],
                         capture_output=True, text=True, timeout=1500)
    assert bld.returncode == 0, f"build failed:\n{bld.stdout[-6000:]}\n{bld.stderr[-3000:]}"
    so = build / "kernels" / "libdsattn_kernels.so"
    assert so.is_file(), f"{so} not produced"
    out = subprocess.run([nm, "-D", "--defined-only", str(so)], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    # Every op whose sources are present must export what its header declares.
    expected = set()
    for header in sorted(KERNELS.glob("*.h")):
        if header.name == "dsattn_common.h":
            continue
        if not list(KERNELS.glob(f"{header.stem}*.cu")):
            continue  # header landed before its kernels
        expected |= declared_functions(header)
    assert "dsattn_qkv_gemm" in expected
    missing = sorted(expected - exported)
    assert not missing, f"{so.name} does not export {missing}"
