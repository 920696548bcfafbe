"""`dsattn export` (dsattn.tools.pipeline): default run, --hf-config / --config / --int8 runs, option errors, mismatch exit code."""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import torch

from dsattn.tools import export_cli, pipeline


def test_default_run_passes(tmp_path, capsys):
    rc = export_cli.main(["--out", str(tmp_path), "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "built-in BLOOM-like config" in out and "PASSED" in out and "decode  B=2 S=1" in out
    # the main job ends with ONNX Runtime (CPU) on the lowered model, both cases, every output
    ort_rows = [l for l in out.splitlines() if "onnxruntime-cpu" in l]
    assert len(ort_rows) == 6 and all(l.rstrip().endswith("PASS") for l in ort_rows), out
    model = onnx.load(tmp_path / pipeline.MODEL_NAME)
    assert {n.op_type for n in model.graph.node} >= {"QKVGemm", "SoftmaxContext"}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["dsattn.config"])["bigscience_bloom"] is True


def test_hf_config_llama_gqa_int8(tmp_path, seed):
    hf = dict(model_type="llama", hidden_size=64, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=1, vocab_size=16, rms_norm_eps=1e-5)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    res = pipeline.export_main(hf_config=str(tmp_path / "config.json"), dtype="float32", int8=True, group_size=16,
                          batch=3, seq=4, capacity=6, out=tmp_path / "out", seed=seed, log=lambda s: None)
    assert res.passed, (res.checks, res.validations)
    assert len(res.validations) == 1 and res.validations[0].passed
    assert res.config.kv_heads == 2 and res.config.norm_type == "rmsnorm" and res.config.rotary == 16
    assert [c.case for c in res.checks][::3] == ["prefill B=3 S=4", "decode B=3 S=1"]
    assert res.model_paths == [str(tmp_path / "out" / pipeline.MODEL_NAME)]


def test_config_file_bf16(tmp_path, seed):
    cfg = dict(hidden_size=64, heads=4, rotary_dim=8, rotate_every_two=True, epsilon=1e-5, qkv_bias=False)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    res = pipeline.export_main(config=str(tmp_path / "c.json"), dtype="bfloat16", batch=2, seq=3, capacity=5,
                          out=tmp_path, seed=seed, log=lambda s: None)
    assert res.passed, res.checks
    assert res.validations == []  # ONNX Runtime CPU has no bfloat16 MatMul: skipped, with a note


def test_mismatch_exits_nonzero(tmp_path, monkeypatch, capsys):
    real = pipeline.export_models

    def export_then_perturb(module, out_dir, **kw):
        paths = real(module, out_dir, **kw)
        with torch.no_grad():
            module.attn_ob.add_(0.5)  # the PyTorch module now differs from the exported graph
        return paths

    monkeypatch.setattr(pipeline, "export_models", export_then_perturb)
    rc = export_cli.main(["--out", str(tmp_path), "--dtype", "float32", "--seq", "2", "--capacity", "3"])
    out = capsys.readouterr().out
    assert rc == 1 and "MISMATCH" in out and "FAILED" in out


@pytest.mark.parametrize("argv, needle", [
    (["--batch", "0"], "--batch: expected a positive integer, got '0'"),
    (["--seq", "x"], "--seq: expected a positive integer, got 'x'"),
    (["--group-size", "8"], "--group-size 8 needs --int8"),
    (["--dtype", "float64"], "--dtype: invalid choice: 'float64'"),
    (["--seq", "8", "--capacity", "8"], "--capacity 8: must be >= --seq + 1 = 9"),
    (["--config", "/nonexistent.json"], "--config: no such file: '/nonexistent.json'"),
    (["--int8", "--group-size", "7"], "--group-size 7 does not divide"),
])
def test_bad_options_exit_2(argv, needle, capsys):
    assert _rc(argv) == 2
    assert needle in capsys.readouterr().err


def _rc(argv) -> int:
    """Exit status of `dsattn export ARGV`: argparse's own checks exit, the job's return 2."""
    try:
        return export_cli.main(argv)
    except SystemExit as e:
        return e.code


def test_bad_config_contents(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps(dict(hidden_size=64, heads=4, num_kv=3)))
    (tmp_path / "h.json").write_text(json.dumps(dict(model_type="t5")))
    for argv, needle in ((["--config", str(tmp_path / "c.json")], "AttentionConfig.num_kv=3"),
                         (["--hf-config", str(tmp_path / "h.json")], "model_type='t5' is not supported")):
        assert _rc(argv) == 2 and needle in capsys.readouterr().err


def test_dispatcher_help():
    r = subprocess.run([sys.executable, "-m", "dsattn.tools.cli", "export", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--hf-config" in r.stdout and "BLOOM-like" in r.stdout
