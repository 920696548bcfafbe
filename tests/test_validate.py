"""dsattn.tools.validate and `dsattn validate`: generated cases, the accuracy rule through Polygraphy,
detection of a wrong runtime, input files, bad input, missing runtimes."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import numpy_helper

from dsattn.tools import validate

# dsattn.tools.validate is the function (docs/DESIGN.md); the module behind it:
V = importlib.import_module("dsattn.tools.validate")
from dsattn.tools.lower import lower_for_ort

from ort_cases import SC_CASES, sc_model


@pytest.fixture
def fp16_model(tmp_path):
    path = tmp_path / "attn_fp16.onnx"
    onnx.save(sc_model(TP.FLOAT16, SC_CASES[5]), path)  # rotary, GQA
    return str(path)


def test_validate_fp16_passes_with_rule(fp16_model, seed):
    rep = validate(fp16_model, seed=seed)
    assert rep.passed, rep.table()
    assert rep.seed == seed and rep.precision == "float16"
    assert {r.case for r in rep.rows} == {"prefill", "decode"}
    assert {r.runtime for r in rep.rows} == {"reference-float16", "onnxruntime-cpu"}
    assert {r.output for r in rep.rows} == {"context", "present_key", "present_value"}
    for r in rep.rows:
        assert r.atol >= 1e-3 and r.rtol == 0.0  # the fp16 floor
        ref_row = next(x for x in rep.rows if x.case == r.case and x.output == r.output
                       and x.runtime == "reference-float16")
        assert r.atol == pytest.approx(max(2 * ref_row.max_abs, 1e-3))
    table = rep.table()
    assert "onnxruntime-cpu" in table and "PASSED" in table and "max abs err" in table


def test_validate_fp32_and_bf16(tmp_path, seed):
    for elem, floor in ((TP.FLOAT, 1e-5), (TP.BFLOAT16, 8e-3)):
        path = tmp_path / f"m{elem}.onnx"
        onnx.save(sc_model(elem, SC_CASES[3]), path)  # BLOOM layout, alibi
        rep = validate(str(path), seed=seed, batch=2, seq=5, capacity=11)
        assert rep.passed, rep.table()
        assert min(r.atol for r in rep.rows) == pytest.approx(floor)


def test_validate_detects_a_wrong_runtime(fp16_model, monkeypatch, seed):
    """A lowering that is 1% off in the attention scale must fail the comparison."""
    def broken(model, **kw):
        lowered = lower_for_ort(model, **kw)
        for init in lowered.graph.initializer:
            if init.name.endswith("/scale"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
        return lowered

    monkeypatch.setattr(V, "lower_for_ort", broken)
    rep = validate(fp16_model, seed=seed)
    assert not rep.passed
    bad = [r for r in rep.rows if not r.passed]
    assert bad and all(r.runtime == "onnxruntime-cpu" and r.output == "context" for r in bad)


def test_tolerance_overrides(fp16_model, seed):
    rep = validate(fp16_model, seed=seed, atol={"context": 0.0}, rtol=0.0)
    ctx = [r for r in rep.rows if r.output == "context" and r.runtime == "onnxruntime-cpu"]
    assert ctx and all(r.atol == 0.0 and not r.passed for r in ctx)  # fp16 rounding is > 0
    others = [r for r in rep.rows if r.output != "context"]
    assert all(r.atol >= 1e-3 for r in others)
    with pytest.raises(ValueError, match="atol must be a finite number"):
        validate(fp16_model, atol=-1.0)


@pytest.mark.parametrize("elem", [TP.FLOAT16, TP.BFLOAT16])
def test_save_and_load_inputs_roundtrip(tmp_path, elem, seed):
    path = tmp_path / "m.onnx"
    onnx.save(sc_model(elem, SC_CASES[1]), path)
    saved = tmp_path / "inputs.json"
    rep1 = validate(str(path), seed=seed, save_inputs=str(saved))
    rep2 = validate(str(path), load_inputs=str(saved))
    assert rep1.passed and rep2.passed, rep1.table() + rep2.table()
    assert [r.max_abs for r in rep1.rows] == [r.max_abs for r in rep2.rows]
    assert [r.case for r in rep2.rows][0] == "loaded[0]"


def test_load_inputs_checked_by_name(tmp_path, fp16_model):
    from polygraphy.json import save_json

    model = onnx.load(fp16_model)
    rng = np.random.default_rng(0)
    feeds = V.make_inputs(model, "decode", batch=2, seq=3, capacity=14, rng=rng)
    bad_shape = dict(feeds, past_key=feeds["past_key"][:, :1])
    bad_type = dict(feeds, seq_lens=feeds["seq_lens"].astype(np.int64))
    bad_dtype = dict(feeds, qkv=feeds["qkv"].astype(np.float32))
    missing = {k: v for k, v in feeds.items() if k != "start_pos"}
    inconsistent = dict(feeds, seq_lens=np.zeros(3, np.int32))
    for data, match in ((bad_shape, "'past_key'.*expects 2 at dimension 1"),
                        (bad_type, "'seq_lens' has dtype int64, the model expects int32"),
                        (bad_dtype, "'qkv' has dtype float32, the model expects float16"),
                        (missing, "input 'start_pos' is missing"),
                        (inconsistent, "'seq_lens' has 3 at dimension 0 \\('B'\\)")):
        f = tmp_path / "bad.json"
        save_json([data], str(f))
        with pytest.raises(ValueError, match=match):
            validate(fp16_model, load_inputs=str(f))
    # a loaded cache overflow is rejected by the reference, naming the row
    over = dict(feeds, seq_lens=np.array([14, 0], np.int32))
    f = tmp_path / "over.json"
    save_json([over], str(f))
    with pytest.raises(ValueError, match="reference rejects.*overflow in row b=0"):
        validate(fp16_model, load_inputs=str(f))


def test_missing_provider_is_named(fp16_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ValueError, match="'cuda'.*not available.*available: .*CPUExecutionProvider"):
        validate(fp16_model, providers=("cpu", "cuda"))


def test_tensorrt_requested_but_missing(fp16_model, tmp_path, seed):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    (tmp_path / "m.plan").write_bytes(b"plan")
    rep = validate(fp16_model, seed=seed, engine=str(tmp_path / "m.plan"), cases=("decode",))
    assert not rep.passed
    assert any("TensorRT" in e and "not importable" in e for e in rep.errors)
    assert rep.rows and all(r.passed for r in rep.rows)  # the other runtimes still ran


def test_sizes_from_model_and_conflicts(tmp_path, seed):
    path = tmp_path / "static.onnx"
    onnx.save(sc_model(TP.FLOAT, SC_CASES[0], dynamic=False), path)  # B=3, S=6, Tmax=12
    rep = validate(str(path), seed=seed)
    assert rep.passed and any("decode skipped" in n for n in rep.notes)
    with pytest.raises(ValueError, match="batch=2 conflicts with the model's static batch 3"):
        validate(str(path), batch=2)
    with pytest.raises(ValueError, match="cases: unknown case 'train'"):
        validate(str(path), cases=("train",))
    with pytest.raises(ValueError, match="does not exist"):
        validate(str(tmp_path / "nope.onnx"))


def test_cli(fp16_model, tmp_path, capsys, monkeypatch):
    from dsattn.tools.cli import main
    from dsattn.tools.validate_cli import parse_tolerances

    assert parse_tolerances(["1e-3", "context:2e-3"], "--atol") == {"": 1e-3, "context": 2e-3}
    with pytest.raises(ValueError, match="--atol: cannot read 'context:x'"):
        parse_tolerances(["context:x"], "--atol")
    assert main(["validate", fp16_model, "--atol", "1e-2", "context:2e-2", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "2.000e-02" in out
    assert main(["validate", fp16_model, "--atol", "context:0", "--rtol", "0", "--seed", "7"]) == 1
    assert main(["validate", fp16_model, "--providers", "nosuch"]) == 2
    assert "'nosuch'" in capsys.readouterr().err


def test_tensorrt_plumbing_with_a_stand_in_runtime(fp16_model, tmp_path, monkeypatch, seed):
    """TensorRT is not installable here: check the glue to dsattn.engines (build with the plugins
    when no plan is given, run_engine per case, rows named 'tensorrt') with a stand-in that runs the
    lowered graph on ORT CPU, and that a stand-in returning garbage fails."""
    import dsattn.engines as engines

    sess = V.make_session(lower_for_ort(onnx.load(fp16_model)), "cpu")
    calls = {}

    def fake_build(model_path, plugins, out, **kw):
        calls["build"] = (model_path, list(plugins), kw)
        return out

    def fake_run(engine, feeds, *, plugins=()):
        calls.setdefault("run", []).append((engine, list(plugins)))
        return V.run_session(sess, feeds)

    monkeypatch.setattr(engines, "import_tensorrt", lambda: None)
    monkeypatch.setattr(engines, "build_engine", fake_build)
    monkeypatch.setattr(engines, "run_engine", fake_run)
    lib = str(tmp_path / "libdsattn_plugins.so")
    plan = str(tmp_path / "given.plan")
    open(lib, "wb").close()
    open(plan, "wb").close()
    rep = validate(fp16_model, seed=seed, plugins=[lib], batch=2, seq=4, capacity=14)
    assert rep.passed, rep.table()
    assert {r.output for r in rep.rows if r.runtime == "tensorrt"} == {"context", "present_key", "present_value"}
    path, plugins, kw = calls["build"]
    assert path == fp16_model and plugins == [lib]
    assert kw == dict(batch=(1, 2, 2), seq=(1, 4, 4), capacity=(14, 14, 14))
    assert len(calls["run"]) == 2 and calls["run"][0][0].endswith("validate.plan")

    def garbage(engine, feeds, *, plugins=()):
        out = V.run_session(sess, feeds)
        out["context"] = out["context"] + np.float16(0.01)
        return out

    monkeypatch.setattr(engines, "run_engine", garbage)
    rep = validate(fp16_model, seed=seed, engine=plan, plugins=[lib])
    assert not rep.passed and "build" in calls
    assert {r.output for r in rep.rows if not r.passed} == {"context"}
    assert all(r.runtime == "tensorrt" for r in rep.rows if not r.passed)


def test_engine_without_plugins_is_an_error(fp16_model, tmp_path, monkeypatch, seed):
    """A plan carries no plugin code: the library must be loaded before deserializing it."""
    import dsattn.engines as engines

    monkeypatch.setattr(engines, "import_tensorrt", lambda: None)
    (tmp_path / "given.plan").write_bytes(b"plan")
    rep = validate(fp16_model, seed=seed, engine=str(tmp_path / "given.plan"), cases=("decode",))
    assert not rep.passed
    assert any("needs the plugin library too" in e for e in rep.errors), rep.errors


def test_missing_engine_or_plugin_file_fails_first(fp16_model, tmp_path, seed):
    for kw, match in ((dict(engine=str(tmp_path / "none.plan")), r"engine: '.*none.plan' does not exist"),
                      (dict(plugins=[str(tmp_path / "none.so")]), r"plugins: '.*none.so' does not exist")):
        with pytest.raises(ValueError, match=match):
            validate(fp16_model, seed=seed, **kw)
