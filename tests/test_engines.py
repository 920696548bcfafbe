"""dsattn.engines without TensorRT (CPU, CI): profile derivation from ONNX input shapes, the trtexec
command line, clear errors when TensorRT is missing or too old, the build-engine CLI.

The TensorRT calls themselves (build_engine's builder/parser/config, EngineRunner) cannot run here:
no TensorRT is installable in this workplace (DESIGN.md).
"""
from __future__ import annotations

import shlex
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

from dsattn.engines import build as build_mod
from dsattn.engines import profiles
from dsattn.tools import cli


def _model(path, *, tmax="static", extra_dynamic=False, start_pos=True):
    """A tiny model with the export contract's I/O names (a stand-in body: Identity nodes)."""
    cap = 64 if tmax == "static" else "capacity"
    ins = [
        helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT16, ["batch", "seq", 256]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT16, ["batch", 2, cap, 64]),
        helper.make_tensor_value_info("past_value", TensorProto.FLOAT16, ["batch", 2, cap, 64]),
        helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["batch"]),
    ]
    if start_pos:
        ins.append(helper.make_tensor_value_info("start_pos", TensorProto.INT32, ["batch"]))
    if extra_dynamic:
        ins.append(helper.make_tensor_value_info("mystery", TensorProto.FLOAT, ["n", 3]))
    outs = [helper.make_tensor_value_info(f"o{i}", t.type.tensor_type.elem_type, None) for i, t in enumerate(ins)]
    nodes = [helper.make_node("Identity", [i.name], [o.name]) for i, o in zip(ins, outs)]
    model = helper.make_model(helper.make_graph(nodes, "g", ins, outs), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model(tmp_path):
    return _model(tmp_path / "m.onnx")


def test_profile_defaults_static_capacity(model):
    p = profiles.derive_profile(model)
    # batch 1:1:8; seq default max stops at the static capacity 64; capacity static
    assert p["hidden_states"] == ((1, 1, 256), (1, 1, 256), (8, 64, 256))
    assert p["past_key"] == ((1, 2, 64, 64), (1, 2, 64, 64), (8, 2, 64, 64))
    assert p["past_value"] == p["past_key"]
    assert p["seq_lens"] == ((1,), (1,), (8,))
    assert p["start_pos"] == ((1,), (1,), (8,))


def test_profile_given_ranges_dynamic_capacity(tmp_path):
    m = _model(tmp_path / "d.onnx", tmax="dynamic", start_pos=False)
    p = profiles.derive_profile(m, batch=(1, 2, 4), seq=(1, 16, 128), capacity=(128, 512, 1024))
    assert p["hidden_states"] == ((1, 1, 256), (2, 16, 256), (4, 128, 256))
    assert p["past_key"] == ((1, 2, 128, 64), (2, 2, 512, 64), (4, 2, 1024, 64))
    assert "start_pos" not in p


def test_profile_errors(tmp_path, model):
    with pytest.raises(ValueError, match=r"mystery.*axis 0.*no known role"):
        profiles.derive_profile(_model(tmp_path / "x.onnx", extra_dynamic=True))
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        profiles.derive_profile(model, batch=(2, 1, 4))
    with pytest.raises(ValueError, match="max seq 100 exceeds max cache capacity 64"):
        profiles.derive_profile(model, seq=(1, 1, 100))
    with pytest.raises(ValueError, match="axis 2 is static"):
        profiles.derive_profile(model, overrides={"hidden_states": ((1, 1, 256), (1, 1, 256), (1, 1, 128))})
    with pytest.raises(ValueError, match="not inputs of the model"):
        profiles.derive_profile(model, overrides={"nope": ((1,), (1,), (1,))})
    with pytest.raises(ValueError, match="rank"):
        profiles.derive_profile(model, overrides={"seq_lens": ((1, 1), (1, 1), (1, 1))})


def test_parse_helpers():
    assert profiles.parse_range("1:2:3", "--batch") == (1, 2, 3)
    assert profiles.parse_range("7", "--batch") == (7, 7, 7)
    for bad in ("1:2", "a:b:c", "0:1:2", "3:2:1", "-1:1:1"):
        with pytest.raises(ValueError, match="--batch"):
            profiles.parse_range(bad, "--batch")
    assert profiles.parse_shape_list("a:1x2,'b.c':3", "--min-shapes") == {"a": (1, 2), "b.c": (3,)}
    with pytest.raises(ValueError, match="--min-shapes"):
        profiles.parse_shape_list("a:1x", "--min-shapes")
    with pytest.raises(ValueError, match="twice"):
        profiles.parse_shape_list("a:1,a:2", "--min-shapes")


def test_trtexec_command_exact(model, tmp_path):
    lib = tmp_path / "libdsattn_plugins.so"
    cmd = build_mod.trtexec_command(model, lib, tmp_path / "m.plan", batch=(1, 2, 4), seq=(1, 1, 32),
                                    timing_cache=tmp_path / "tc.bin")
    m, lb, pl, tc = (str(x) for x in (model, lib, tmp_path / "m.plan", tmp_path / "tc.bin"))
    assert shlex.split(cmd) == [
        "trtexec", f"--onnx={m}", f"--dynamicPlugins={lb}", f"--setPluginsToSerialize={lb}",
        "--minShapes=hidden_states:1x1x256,past_key:1x2x64x64,past_value:1x2x64x64,seq_lens:1,start_pos:1",
        "--optShapes=hidden_states:2x1x256,past_key:2x2x64x64,past_value:2x2x64x64,seq_lens:2,start_pos:2",
        "--maxShapes=hidden_states:4x32x256,past_key:4x2x64x64,past_value:4x2x64x64,seq_lens:4,start_pos:4",
        "--preview=+aliasedPluginIO1003", "--stronglyTyped", f"--timingCacheFile={tc}", f"--saveEngine={pl}",
    ]


def test_trtexec_command_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_mod.trtexec_command(tmp_path / "none.onnx", "lib.so", "o.plan")
    with pytest.raises(ValueError, match="plugins"):
        build_mod.trtexec_command(model, [], "o.plan")


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_build_engine_without_tensorrt(model, tmp_path, no_tensorrt):
    lib = tmp_path / "libdsattn_plugins.so"
    lib.write_bytes(b"")
    with pytest.raises(ImportError, match=r"TensorRT >= 10\.8 Python package is required: install it from NVIDIA"):
        build_mod.build_engine(model, lib, tmp_path / "m.plan")
    from dsattn.engines import EngineRunner

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ImportError, match="TensorRT >= 10.8"):
        EngineRunner(plan)
    from dsattn.engines import run_engine  # the entry point dsattn validate --engine calls

    with pytest.raises(ImportError, match="TensorRT >= 10.8"):
        run_engine(plan, {}, plugins=[])


def test_build_engine_checks_before_tensorrt(model, tmp_path, no_tensorrt):
    # argument errors are reported before TensorRT is needed
    with pytest.raises(FileNotFoundError, match="plugin library"):
        build_mod.build_engine(model, tmp_path / "missing.so", tmp_path / "m.plan")
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"")
    with pytest.raises(ValueError, match="workspace_bytes"):
        build_mod.build_engine(model, lib, tmp_path / "m.plan", workspace_bytes=0)


def test_old_tensorrt_rejected(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0.1"))
    with pytest.raises(RuntimeError, match=r"found tensorrt 10\.0\.1"):
        build_mod.import_tensorrt()


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["build-engine", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--plugins", "--print-trtexec", "--batch", "--seq", "--capacity", "--min-shapes", "--timing-cache"):
        assert flag in out


def test_cli_print_trtexec(model, tmp_path, capsys, no_tensorrt):
    rc = cli.main(["build-engine", str(model), "--plugins", "lib.so", "--print-trtexec", "--batch", "2",
                   "-o", str(tmp_path / "o.plan")])
    assert rc == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith("trtexec --onnx=") and "--minShapes=hidden_states:2x1x256" in line
    assert f"--saveEngine={tmp_path / 'o.plan'}" in line
    assert "plugin library 'lib.so' does not exist on this machine" in captured.err


def test_cli_bad_options(model, capsys, no_tensorrt):
    assert cli.main(["build-engine", str(model), "--plugins", "l.so", "--print-trtexec", "--batch", "0:1:2"]) == 2
    assert "--batch must satisfy" in capsys.readouterr().err
    assert cli.main(["build-engine", str(model), "--plugins", "l.so", "--print-trtexec",
                     "--min-shapes", "seq_lens:1"]) == 2
    assert "must be given together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["build-engine", str(model)])  # --plugins is required
    assert e.value.code == 2


def test_cli_build_without_tensorrt(model, tmp_path, capsys, no_tensorrt):
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"")
    assert cli.main(["build-engine", str(model), "--plugins", str(lib), "-o", str(tmp_path / "o.plan")]) == 2
    assert "TensorRT >= 10.8 Python package is required" in capsys.readouterr().err


def test_cli_explicit_shapes(model, capsys, no_tensorrt):
    shapes = "hidden_states:{b}x1x256,past_key:{b}x2x64x64,past_value:{b}x2x64x64,seq_lens:{b},start_pos:{b}"
    rc = cli.main(["build-engine", str(model), "--plugins", "l.so", "--print-trtexec",
                   "--min-shapes", shapes.format(b=1), "--opt-shapes", shapes.format(b=3),
                   "--max-shapes", shapes.format(b=5)])
    assert rc == 0
    assert "--optShapes=hidden_states:3x1x256" in capsys.readouterr().out
