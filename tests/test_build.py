"""CPU test: the kernels library builds with the README's own command (no GPU needed) and exports
every C entry point its headers declare.

The build runs the README's kernels-only command verbatim apart from the build directory (a temporary
one) and, where the CUDA toolkit ships no cuBLAS (CI), the cuBLASLt root the README documents for
pip's nvidia-cublas. No architecture is passed: the test checks that the documented default (sm_80 and
sm_90a) is what gets built. Skipped (with the reason) where nvcc, cmake or ninja is absent.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from buildtools import find_tool

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "plugins" / "kernels"
README_BUILD = "cmake -S plugins -B build/plugins -G Ninja && cmake --build build/plugins"
DEFAULT_ARCHS = {"sm_80", "sm_90a"}

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




def readme_build_commands(build_dir: Path) -> list[list[str]]:
    """The README's kernels-only build command, split into its two cmake calls, with build/plugins
    replaced by ``build_dir``. Fails when the README no longer shows the command."""
    text = (REPO / "README.md").read_text()
    assert README_BUILD in text, f"README.md no longer shows the kernels build command {README_BUILD!r}"
    return [[str(build_dir) if a == "build/plugins" else a for a in shlex.split(part)]
            for part in README_BUILD.split("&&")]


def test_readme_build_commands_parse():
    cmds = readme_build_commands(Path("/tmp/x"))
    assert cmds == [["cmake", "-S", "plugins", "-B", "/tmp/x", "-G", "Ninja"],
                    ["cmake", "--build", "/tmp/x"]]


def test_default_architectures_precede_project():
    """The default must be set before project(): enabling CUDA defines CMAKE_CUDA_ARCHITECTURES."""
    text = (REPO / "plugins" / "CMakeLists.txt").read_text()
    default = text.index("set(CMAKE_CUDA_ARCHITECTURES 80 90a")
    assert default < text.index("project(dsattn")


def test_no_build_time_switches_or_test_hooks():
    """The library holds the chosen path for each case: no macro a build could set to pick another
    variant (only DSATTN_HAVE_CUBLASLT, which CMake sets from what it found), no debug / probe entry
    points (tests force a path through the params' documented `path` field)."""
    switch = re.compile(r"^\s*#\s*ifndef\s+(DSATTN_\w+)", re.M)
    found = {m.group(1) for f in KERNELS.iterdir() if f.suffix in (".cu", ".cuh", ".h")
             for m in switch.finditer(f.read_text())}
    assert found <= {"DSATTN_HAVE_CUBLASLT"}, f"build-time switches in plugins/kernels: {sorted(found - {'DSATTN_HAVE_CUBLASLT'})}"
    hooks = sorted(n for h in KERNELS.glob("*.h") for n in declared_functions(h) if re.search(r"debug|probe|force", n))
    assert not hooks, f"test hooks exported: {hooks}"


def test_kernels_library_builds_with_readme_command(tmp_path):
    find_tool("nvcc")
    find_tool("cmake")
    find_tool("ninja")
    nm = find_tool("nm")
    build = tmp_path / "build"
    configure, build_cmd = readme_build_commands(build)
    # Where the toolkit has no cuBLAS, the README's documented root for pip's nvidia-cublas.
    root = cublaslt_root()
    if root:
        configure.append(f"-DDSATTN_CUBLASLT_ROOT={root}")
    # Nothing from the caller's environment may pick the architectures; at most 2 compile jobs.
    env = {k: v for k, v in os.environ.items() if k not in ("CUDAARCHS", "CMAKE_GENERATOR")}
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = "2"
    cfg = subprocess.run(configure, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout[-4000:]}\n{cfg.stderr[-4000:]}"
    if root:  # with cuBLASLt available, QKVGemm's cuBLASLt path must compile too (not compiled out)
        assert "dsattn: cuBLASLt: " in cfg.stdout, f"cuBLASLt not found under {root}:\n{cfg.stdout[-4000:]}"
    cache = (build / "CMakeCache.txt").read_text()
    archs = re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$", cache, re.M)
    assert archs and archs.group(1) == "80;90a", f"configured architectures: {archs and archs.group(1)!r}"
    bld = subprocess.run(build_cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert bld.returncode == 0, f"build failed:\n{bld.stdout[-6000:]}\n{bld.stderr[-3000:]}"
    so = build / "kernels" / "libdsattn_kernels.so"
    assert so.is_file(), f"{so} not produced"
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:  # the machine code actually in the library
        elf = subprocess.run([cuobjdump, "--list-elf", str(so)], capture_output=True, text=True, check=True).stdout
        assert set(re.findall(r"\.(sm_\d+a?)\.cubin", elf)) == DEFAULT_ARCHS, elf
    out = subprocess.run([nm, "-D", "--defined-only", str(so)], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    expected = set()
    for header in sorted(KERNELS.glob("*.h")):
        if header.name != "dsattn_common.h":
            expected |= declared_functions(header)
    assert {"dsattn_qkv_gemm", "dsattn_softmax_context", "dsattn_int8_matmul"} <= expected
    missing = sorted(expected - exported)
    assert not missing, f"{so.name} does not export {missing}"
    # Only what the headers declare: no test-only or exploration entry points.
    extra = sorted(n for n in exported if n.startswith("dsattn_") and n not in expected)
    assert not extra, f"{so.name} exports {extra}, which no header declares"
