"""dsattn.engines without TensorRT (CPU, CI): profile derivation from ONNX input shapes, the trtexec
command line, clear errors when TensorRT is missing or too old, the build-engine CLI.

The TensorRT calls themselves (build_engine's builder/parser/config, EngineRunner) cannot run here:
no TensorRT is installable where this project is tested (docs/DESIGN.md).
"""
from __future__ import annotations

import shlex
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper
from trt_standin import StandInContext

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
        "trtexec", f"--onnx={m}", f"--dynamicPlugins={lb}",
        "--minShapes=hidden_states:1x1x256,past_key:1x2x64x64,past_value:1x2x64x64,seq_lens:1,start_pos:1",
        "--optShapes=hidden_states:2x1x256,past_key:2x2x64x64,past_value:2x2x64x64,seq_lens:2,start_pos:2",
        "--maxShapes=hidden_states:4x32x256,past_key:4x2x64x64,past_value:4x2x64x64,seq_lens:4,start_pos:4",
        "--preview=+aliasedPluginIO1003", "--stronglyTyped", f"--timingCacheFile={tc}", f"--saveEngine={pl}",
    ]


def test_trtexec_command_errors(model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
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
        EngineRunner(plan, lib)
    from dsattn.engines import run_engine  # the entry point dsattn validate --engine calls

    with pytest.raises(ImportError, match="TensorRT >= 10.8"):
        run_engine(plan, {}, plugins=[lib])
    # the plan carries no plugin code: the library is required, before TensorRT is even imported
    with pytest.raises(ValueError, match="needs the dsattn plugin library"):
        EngineRunner(plan, [])


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
    assert cli.main(["build-engine", str(model), "--plugins", str(lib), "-o", str(tmp_path / "o.plan")]) == 1
    assert "TensorRT >= 10.8 Python package is required" in capsys.readouterr().err


def test_cli_explicit_shapes(model, capsys, no_tensorrt):
    shapes = "hidden_states:{b}x1x256,past_key:{b}x2x64x64,past_value:{b}x2x64x64,seq_lens:{b},start_pos:{b}"
    rc = cli.main(["build-engine", str(model), "--plugins", "l.so", "--print-trtexec",
                   "--min-shapes", shapes.format(b=1), "--opt-shapes", shapes.format(b=3),
                   "--max-shapes", shapes.format(b=5)])
    assert rc == 0
    assert "--optShapes=hidden_states:3x1x256" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# profiles against the model's static dims
# ------------------------------------------------------------------------------------------------

def test_range_for_a_static_dim_must_match_it(model, capsys, no_tensorrt):
    # the model's cache capacity is static 64: another --capacity would be ignored without a word
    with pytest.raises(ValueError, match=r"capacity range 32:32:32 conflicts with the model's static capacity 64 "
                                         r"\(input 'past_key' axis 2\)"):
        profiles.derive_profile(model, capacity=(32, 32, 32))
    assert profiles.derive_profile(model, capacity=(64, 64, 64))["past_key"][2][2] == 64
    assert cli.main(["build-engine", str(model), "--plugins", "l.so", "--print-trtexec", "--capacity", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "capacity range 32:32:32 conflicts" in err


# ------------------------------------------------------------------------------------------------
# EngineRunner against a stand-in TensorRT (binding logic only: no TensorRT exists here)
# ------------------------------------------------------------------------------------------------

class _FakeTRT(types.SimpleNamespace):
    """The slice of the tensorrt module EngineRunner uses, recording the calls it gets. The engine:
    inputs hidden_states f32 [B,S,4], past_key f32 [B,1,8,4]; outputs output f32 [B,S,4] and
    present_key, which aliases past_key (as ALIASED_PLUGIN_IO_10_03 engines report it)."""

    def __init__(self, log):
        import torch  # noqa: F401

        trt = self
        super().__init__(__version__="10.9.0", float32="f32", float16="f16", int32="i32", int8="i8",
                         int64="i64", bool="b", TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))
        self.log = log

        class Logger:
            VERBOSE, WARNING = 0, 1

            def __init__(self, level):
                pass

        class Engine:
            names = ["hidden_states", "past_key", "output", "present_key"]
            num_io_tensors = 4

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, n):
                return "in" if n in ("hidden_states", "past_key") else "out"

            def get_tensor_dtype(self, n):
                return "f32"

            def get_aliased_input_tensor(self, n):
                return "past_key" if n == "present_key" else None

            def create_execution_context(self):
                trt.context = StandInContext(
                    lambda shapes, n: {"output": shapes["hidden_states"], "present_key": shapes["past_key"]}[n])
                return trt.context

        class Registry:
            def load_library(self, path):
                log.append(("load_library", path))
                return object()

        class Runtime:
            def __init__(self, logger):
                pass

            def get_plugin_registry(self):
                return Registry()

            def deserialize_cuda_engine(self, blob):
                log.append(("deserialize", bytes(blob)))
                return Engine()

        self.Logger, self.Runtime = Logger, Runtime


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    import torch

    log = []
    trt = _FakeTRT(log)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build_mod, "_LOADED", {})
    lib = tmp_path / "libdsattn_plugins.so"
    lib.write_bytes(b"")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    return trt, log, lib, plan


def _cpu_runner(runner):
    """Runs the stand-in on the CPU: the 'engine' zeroes every output buffer through its address,
    as a kernel writing present_key in place would."""
    import ctypes

    import torch

    runner._device = torch.device("cpu")
    ctx = runner._context

    def execute():
        for name in runner.output_names:
            n = 1
            for d in ctx.get_tensor_shape(name):
                n *= d
            ctypes.memset(ctx.addr[name], 0, 4 * n)

    runner._execute = execute
    return runner


def test_runner_loads_plugins_before_deserializing_once_per_process(fake_trt):
    from dsattn.engines import EngineRunner

    trt, log, lib, plan = fake_trt
    EngineRunner(plan, lib)
    assert log == [("load_library", str(lib)), ("deserialize", b"PLAN")]
    EngineRunner(plan, [lib])  # loadLibrary would fail on creators already registered: not loaded again
    assert log[2:] == [("deserialize", b"PLAN")]


@pytest.mark.parametrize("as_torch", [False, True])
def test_runner_binds_aliased_outputs_to_a_private_copy(fake_trt, as_torch, seed):
    import numpy as np
    import torch

    from dsattn.engines import EngineRunner

    trt, log, lib, plan = fake_trt
    runner = _cpu_runner(EngineRunner(plan, lib))
    assert runner.aliases == {"present_key": "past_key"}
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    past = rng.standard_normal((2, 1, 8, 4)).astype(np.float32)
    # a torch tensor already on the runner's device: .to(device) would return this very tensor
    caller_past = torch.from_numpy(past.copy()) if as_torch else past.copy()
    out = runner.run({"hidden_states": x, "past_key": caller_past})
    ctx = trt.context
    assert ctx.addr["present_key"] == ctx.addr["past_key"]  # bound to its input's buffer
    assert ctx.addr["output"] != ctx.addr["past_key"]
    if as_torch:
        assert ctx.addr["past_key"] != caller_past.data_ptr()
    np.testing.assert_array_equal(np.asarray(caller_past), past)  # the caller's cache is untouched
    assert out["present_key"].shape == past.shape and not out["present_key"].any()  # the engine's write
    assert out["output"].shape == x.shape and not out["output"].any()


# ------------------------------------------------------------------------------------------------
# what TensorRT's ONNX parser sees: no empty input name on a dsattn node
# ------------------------------------------------------------------------------------------------

_NO_BIAS = {
    "llama_rmsnorm_no_bias": (dict(qkv_bias=False, attn_out_bias=False, norm_type="rmsnorm", rotary_dim=8,
                                   rotate_half=True, rotate_every_two=False, num_kv=2), None),
    "post_ln_int8_no_bias": (dict(qkv_bias=False, pre_layer_norm=False), 0),
    "layernorm_no_bias_int8": (dict(qkv_bias=False, rotary_dim=8), 8),
}


@pytest.mark.parametrize("name", list(_NO_BIAS))
def test_no_empty_input_on_dsattn_nodes(name, tmp_path, seed):
    """The parser hands an empty input name to the plugin as a null tensor: an absent input before
    a present one is exported as a shape-[0] initializer instead, trailing ones are left out. The
    reference evaluator and the lowering read the [0] tensor as absent (checked against torch)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from dsattn.export import AttentionConfig, DeepSpeedSelfAttention, export_onnx, quantize_int8
    from dsattn.export.ops import reference_evaluator
    from dsattn.tools.lower import lower_for_ort

    kw, group = _NO_BIAS[name]
    torch.manual_seed(seed)
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=4, dtype="float32", **kw)).eval()
    if group is not None:
        quantize_int8(m, group)
    path = export_onnx(m, tmp_path / "m.onnx", batch=2, seq=3, capacity=8)
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.domain == "dsattn"]
    assert nodes and all(all(i for i in n.input) for n in nodes), [list(n.input) for n in nodes]
    qkv = next(n for n in nodes if n.op_type == "QKVGemm")
    empties = {i.name for i in model.graph.initializer if list(i.dims) == [0]}
    assert empties & set(qkv.input)  # the bias-free layer has a middle absent input
    B, S, C = 2, 3, 8
    x = torch.randn(B, S, 32)
    cache = m.new_cache(B, C, start_pos=[0, 1])
    with torch.no_grad():
        ref, new = m(x, cache)
    feeds = {"hidden_states": x.numpy(), "past_key": cache.key.numpy(), "past_value": cache.value.numpy(),
             "seq_lens": cache.seq_lens.numpy(), "start_pos": cache.start_pos.numpy()}
    got_ev = reference_evaluator(path).run(None, feeds)
    sess = ort.InferenceSession(lower_for_ort(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, feeds)
    for got in (got_ev, got_ort):
        np.testing.assert_allclose(got[0], ref.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1], new.key.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_no_bias_export_on_ort_custom_ops(tmp_path, seed):
    """libdsattn_ort.so reads the shape-[0] bias of a bias-free export as absent (needs the library
    built: build/plugins/libdsattn_ort.so or $DSATTN_ORT_LIB, and onnxruntime-gpu)."""
    import torch

    from dsattn.export import AttentionConfig, DeepSpeedSelfAttention, export_onnx
    from dsattn.tools import ort_runtime
    from dsattn.tools.validate import validate

    try:
        ort_runtime.find_library()
    except (FileNotFoundError, ValueError) as exc:
        pytest.skip(f"libdsattn_ort.so not built: {exc}")
    torch.manual_seed(seed)
    kw, _ = _NO_BIAS["llama_rmsnorm_no_bias"]
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=64, heads=4, dtype="float16", **kw)).eval()
    path = export_onnx(m, tmp_path / "m.onnx", batch=2, seq=3, capacity=16)
    rep = validate(path, providers=["cuda-dsattn"], seed=seed)
    assert rep.passed, rep.table()


def test_no_empty_input_in_whole_decoders(tmp_path, seed):
    """Whole decoders go through the same post-processing: GPT-J (no q/k/v bias, LayerNorm) has an
    absent bias before gamma/beta in every layer."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from whole_cases import make_checkpoint

    from dsattn.export.model_onnx import export_hf_model

    make_checkpoint("gptj", tmp_path / "ckpt", seed=seed)
    res = export_hf_model(tmp_path / "ckpt", tmp_path / "out", log=lambda s: None)
    model = onnx.load(res.model_path, load_external_data=False)
    qkv = [n for n in model.graph.node if n.domain == "dsattn" and n.op_type == "QKVGemm"]
    assert len(qkv) == 2 and all(all(i for i in n.input) for n in qkv), [list(n.input) for n in qkv]
    empties = {i.name for i in model.graph.initializer if list(i.dims) == [0]}
    assert all(n.input[2] in empties for n in qkv)
