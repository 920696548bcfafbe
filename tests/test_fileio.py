"""dsattn.fileio: atomic writes (the old file survives every failure), output path checks and the
one-line errors of load_onnx."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsattn import fileio


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_replaces_and_keeps_the_umask_mode(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"old")
    fileio.write_text_atomic(f, "new")
    assert f.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert _listing(tmp_path) == ["a.txt"]  # no staging folder left


@pytest.mark.parametrize("failure", ["oserror", "efbig", "exception", "check"])
def test_failed_write_leaves_the_old_file(tmp_path, failure):
    f = tmp_path / "m.plan"
    f.write_bytes(b"previous good plan")

    def bad_check(p):
        raise ValueError("checker says no")

    with pytest.raises((fileio.WriteError, ValueError, KeyError)) as info:
        with fileio.atomic_output(f, check=bad_check if failure == "check" else None) as tmp:
            tmp.write_bytes(b"half a pl")
            if failure == "oserror":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if failure == "efbig":
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            if failure == "exception":
                raise KeyError("writer bug")
    assert f.read_bytes() == b"previous good plan"
    assert _listing(tmp_path) == ["m.plan"]
    msg = str(info.value)
    if failure in ("oserror", "efbig"):
        assert isinstance(info.value, fileio.WriteError) and str(f) in msg and "\n" not in msg
        assert ("No space left" in msg) if failure == "oserror" else ("file size limit" in msg)
    elif failure == "check":
        assert msg == "checker says no"


def test_file_size_limit_in_a_subprocess(tmp_path):
    """The real thing: RLIMIT_FSIZE (`ulimit -f`) makes the write fail with EFBIG half-way."""
    f = tmp_path / "BENCHMARKS.md"
    f.write_text("old table\n")
    code = textwrap.dedent(f"""
        import resource, sys
        from dsattn import fileio
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            fileio.write_text_atomic({str(f)!r}, "x" * 100000)
        except fileio.WriteError as e:
            print(e)
            sys.exit(3)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "file size limit" in r.stdout and str(f) in r.stdout
    assert f.read_text() == "old table\n"
    assert _listing(tmp_path) == ["BENCHMARKS.md"]


def _model(n=4):
    w = numpy_helper.from_array(__import__("numpy").arange(n, dtype="float32"), "w")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_save_onnx_external_data_is_fresh_and_checked_before_placing(tmp_path):
    out = tmp_path / "m.onnx"
    fileio.save_onnx_atomic(_model(1000), out, external_data=True)
    size = (tmp_path / "m.onnx.data").stat().st_size
    fileio.save_onnx_atomic(_model(1000), out, external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size == size == 4000  # rewritten, not appended
    before = {p: (tmp_path / p).read_bytes() for p in _listing(tmp_path)}

    def check(p):
        onnx.checker.check_model(str(p), full_check=True)

    bad = _model(1000)
    bad.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(onnx.checker.ValidationError):
        fileio.save_onnx_atomic(bad, out, external_data=True, check=check)
    assert {p: (tmp_path / p).read_bytes() for p in _listing(tmp_path)} == before


def test_check_output_path(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        fileio.check_output_path(tmp_path, "-o")
    with pytest.raises(ValueError, match=r"folder .*nope' does not exist"):
        fileio.check_output_path(tmp_path / "nope" / "m.onnx", "-o")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        fileio.check_output_path(tmp_path / "file" / "m.onnx", "-o")
    assert fileio.check_output_path(tmp_path / "m.onnx", "-o") == tmp_path / "m.onnx"


def test_same_file_sees_links(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    os.symlink(a, tmp_path / "s")
    os.link(a, tmp_path / "h")
    assert fileio.same_file(a, tmp_path / "s") and fileio.same_file(a, tmp_path / "h")
    assert not fileio.same_file(a, tmp_path / "missing")


def test_load_onnx_one_line_errors(tmp_path):
    good = tmp_path / "g.onnx"
    fileio.save_onnx_atomic(_model(), good)
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("not a model at all\n")
    (tmp_path / "trunc.onnx").write_bytes(good.read_bytes()[:40])
    fileio.save_onnx_atomic(_model(1000), tmp_path / "ext.onnx", external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    cases = {"missing.onnx": "does not exist", "empty.onnx": "is empty", "text.onnx": "is not an ONNX model",
             "trunc.onnx": "is not an ONNX model", "ext.onnx": "external data file .* is missing", ".": "is a folder"}
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match) as e:
            fileio.load_onnx(tmp_path / name, "MODEL")
        assert str(e.value).startswith("MODEL ") and "\n" not in str(e.value)
    assert fileio.load_onnx(good).graph.node[0].op_type == "Add"
