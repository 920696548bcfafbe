"""The CLI under bad input: every failure is one line on stderr naming the argument or file, exit 2
for bad usage and 1 for a runtime failure, no traceback; and no command ever damages a file it did
not mean to write (the data-loss cases compare the old file's bytes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import onnx
import pytest

from dsattn import fileio
from dsattn.tools import cli

CAPACITY = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An exported model (static capacity 16) and the bad inputs the table refers to."""
    import torch

    from dsattn.export import AttentionConfig, DeepSpeedSelfAttention, export_onnx

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=4, dtype="float32", qkv_bias=False,
                                               rotary_dim=8)).eval()
    model = export_onnx(m, d / "m.onnx", batch=2, seq=3, capacity=CAPACITY)
    raw = open(model, "rb").read()
    (d / "empty.onnx").write_bytes(b"")
    (d / "text.onnx").write_text("this is not an ONNX model\n")
    (d / "trunc.onnx").write_bytes(raw[: len(raw) // 3])
    fileio.save_onnx_atomic(onnx.load(model), d / "ext.onnx", external_data=True)
    (d / "ext.onnx.data").rename(d / "moved.data")  # ext.onnx now points at a missing file
    fileio.save_onnx_atomic(onnx.load(model), d / "withdata.onnx", external_data=True)
    big = onnx.load(model)  # an INT attribute past int32, which TensorRT's parser would truncate
    sc = next(n for n in big.graph.node if n.op_type == "SoftmaxContext")
    next(a for a in sc.attribute if a.name == "local_window").i = 2**33 + 3
    onnx.save(big, d / "bigattr.onnx")
    (d / "bigwin.json").write_text(json.dumps(dict(hidden_size=64, heads=4, local_attention=True,
                                                   window_size=2**40)))
    (d / "folder").mkdir()
    (d / "lib.so").write_bytes(b"")
    (d / "inputs.json").write_text("[not json")
    hf = dict(model_type="llama", hidden_size=64, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=1, vocab_size=16)
    for name, cfg in HF_CONFIGS.items():
        (d / f"hf_{name}.json").write_text(json.dumps({**hf, **cfg}))
    return {"model": model, "dir": str(d), "bigattr": str(d / "bigattr.onnx"), "bigwin": str(d / "bigwin.json"), **{f"hf_{k}": str(d / f"hf_{k}.json") for k in HF_CONFIGS}, **{k: str(d / f"{k}.onnx") for k in ("empty", "text", "trunc", "ext",
                                                                                 "withdata")},
            "folder": str(d / "folder"), "lib": str(d / "lib.so"), "badjson": str(d / "inputs.json")}


def run_cli(argv, capsys):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


HF_CONFIGS = {"misspelled": dict(hiden_size=64), "f64": dict(torch_dtype="float64"),
              "negative": dict(intermediate_size=-5), "string": dict(num_attention_heads="4"),
              "heads": dict(num_attention_heads=3, num_key_value_heads=3), "kv": dict(num_key_value_heads=3),
              "f16": dict(torch_dtype="float16")}

# (argv with {placeholders}, exit status, regex the one stderr line must match)
TABLE = [
    # export: checked before the module is built or exported
    (["export", "--out", "{dir}/o", "--providers", ",,"], 2, r"--providers ',,': empty entry"),
    (["export", "--out", "{dir}/o", "--providers", ""], 2, r"--providers: empty"),
    (["export", "--out", "{dir}/o", "--providers", "cuda"], 2,
     r"--providers 'cuda': ONNX Runtime provider 'cuda' \(CUDAExecutionProvider\) is not available"),
    (["export", "--out", "{dir}/o", "--seed", str(2**70)], 2, r"--seed 1180591620717411303424: must be < 2\*\*63"),
    (["export", "--out", "{lib}"], 2, r"--out '.*lib.so' is a file, expected a folder"),
    (["export", "--out", "{dir}/o", "--capacity", str(2**40)], 2, r"--capacity 1099511627776 does not fit int32"),
    (["export", "--out", "{dir}/o", "--capacity", str(2**31 - 100), "--seq", "2"], 2,
     r"--capacity 2147483548: the example KV cache the export traces with \(batch 2\) needs 4096.0 GiB, more than"),
    (["export", "--out", "{dir}/o", "--providers", "cuda", "--no-validate"], 2,
     r"--providers 'cuda' with --no-validate: the providers would not run"),
    (["export", "--out", "{dir}/o", "--config", "{model}"], 2, r"--config '.*m.onnx': not valid JSON \(not UTF-8"),
    (["export", "--out", "{dir}/o", "--int8", "--group-size", "7"], 2, r"--group-size 7 does not divide K=256"),
    (["export", "--out", "{dir}/o", "--seq", str(2**40)], 2, r"--seq 1099511627776 does not fit int32"),
    # Hugging Face configs: named fields, never a traceback, never a silent default
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_misspelled}"], 2,
     r"--hf-config '.*hf_misspelled.json': unknown field 'hiden_size' \(did you mean 'hidden_size'\?\)"),
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_f64}"], 2, r"torch_dtype='float64' is not supported"),
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_negative}"], 2, r"intermediate_size=-5 must be a positive integer"),
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_string}"], 2, r"num_attention_heads='4' must be a positive"),
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_heads}"], 2,
     r"--hf-config '.*hf_heads.json': transformers cannot build a llama layer from it: .*not a multiple"),
    (["export", "--out", "{dir}/o", "--hf-config", "{hf_kv}"], 2,
     r"--hf-config '.*hf_kv.json': AttentionConfig.num_kv=3: must divide heads=4"),
    # bad model files into every command that reads one
    *[([cmd, "{%s}" % bad, *extra], 2, rf"{what} '.*{bad}\.onnx'{msg}")
      for cmd, extra, what in (("lower", [], "MODEL"), ("validate", [], "MODEL"),
                               ("build-engine", ["--plugins", "l.so", "--print-trtexec"], "ONNX model"))
      for bad, msg in (("empty", " is empty"), ("text", r" is not an ONNX model"), ("trunc", r" is not an ONNX model"),
                       ("ext", r": external data file .* is missing"))],
    (["lower", "{dir}/missing.onnx"], 2, r"MODEL '.*missing.onnx' does not exist"),
    (["lower", "{folder}"], 2, r"MODEL '.*folder' is a folder"),
    (["validate", "{folder}"], 2, r"MODEL '.*folder' is a folder"),
    # outputs that cannot be files
    (["lower", "{model}", "-o", "{folder}"], 2, r"-o/--output '.*folder' is a folder"),
    (["lower", "{model}", "-o", "{dir}/nodir/x.onnx"], 2, r"-o/--output '.*x.onnx': folder '.*nodir' does not exist"),
    (["lower", "{model}", "-o", "{model}"], 2, r"-o/--output '.*m.onnx' would overwrite '.*m.onnx'"),
    (["lower", "{withdata}", "-o", "{withdata}.data"], 2, r"would overwrite '.*withdata.onnx.data'"),
    (["validate", "{model}", "--save-inputs", "{dir}/nodir/in.json"], 2,
     r"--save-inputs '.*in.json': folder '.*nodir' does not exist"),
    (["build-engine", "{model}", "--plugins", "{lib}", "-o", "{dir}/nodir/m.plan"], 2,
     r"engine output '.*m.plan': folder '.*nodir' does not exist"),
    # options that would do nothing
    (["validate", "{model}", "--providers", ",,"], 2, r"--providers ',,': empty entry"),
    (["validate", "{model}", "--providers", "cpu,"], 2, r"--providers 'cpu,': empty entry"),
    (["validate", "{model}", "--providers", ""], 2, r"--providers: none given and no TensorRT engine/plugins"),
    (["validate", "{model}", "--atol", "nosuch:0.1"], 2, r"--atol: \['nosuch'\] not an output of the model"),
    (["validate", "{model}", "--rtol", "0.1", "outpt:0.2"], 2, r"--rtol: \['outpt'\] not an output"),
    (["validate", "{model}", "--cases", ""], 2, r"--cases: empty"),
    (["validate", "{model}", "--cases", "prefill,,decode"], 2, r"--cases 'prefill,,decode': empty entry"),
    (["build-engine", "{model}", "--plugins", "l.so", "--print-trtexec", "--capacity", "64"], 2,
     rf"capacity range 64:64:64 conflicts with the model's static capacity {CAPACITY}"),
    (["validate", "{model}", "--providers", "cuda"], 2, r"--providers: ONNX Runtime provider 'cuda' .* not available"),
    (["validate", "{model}", "--engine", "{dir}/none.plan"], 2, r"--engine: '.*none.plan' does not exist"),
    (["validate", "{model}", "--plugins", "{dir}/none.so"], 2, r"--plugins: '.*none.so' does not exist"),
    (["build-engine", "", "--plugins", "l.so", "--print-trtexec"], 2, r"MODEL and -o/--output must not be empty"),
    # INT attributes past int32: rejected by every command, never truncated
    *[([cmd, "{bigattr}", *extra], 2, r"SoftmaxContext node .*: attribute local_window=8589934595 does not fit int32")
      for cmd, extra in (("lower", ["-o", "{dir}/big.ort.onnx"]), ("validate", []),
                         ("build-engine", ["--plugins", "l.so", "--print-trtexec"]))],
    (["export", "--out", "{dir}/o", "--config", "{bigwin}"], 2,
     r"--config '.*bigwin.json': AttentionConfig.window_size=1099511627776 does not fit int32"),
    # sizes and numbers
    (["validate", "{model}", "--batch", str(2**31 - 1)], 2,
     r"--batch 2147483647, seq=7, capacity=16: the generated inputs need .* GiB, more than half"),
    (["validate", "{model}", "--batch", "0"], 2, r"--batch 0: must be a positive integer"),
    (["validate", "{model}", "--seed", "-1"], 2, r"--seed -1: must be in \[0, 2\*\*63\)"),
    (["validate", "{model}", "--load-inputs", "{badjson}"], 2, r"--load-inputs '.*inputs.json'"),
    (["validate", "{model}", "--load-inputs", "{dir}/none.json"], 2, r"--load-inputs '.*none.json'"),
    (["validate", "{model}", "--capacity", "8"], 2, rf"--capacity 8 conflicts with the model's static cache capacity"),
]


@pytest.mark.parametrize("argv,rc,pattern", TABLE, ids=[" ".join(t[0])[:70] for t in TABLE])
def test_cli_error_table(files, capsys, argv, rc, pattern):
    import re

    got_rc, out, err = run_cli([a.format(**files) for a in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got_rc == rc, (got_rc, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1, err  # one line (argparse's usage lines excepted: none of these reach it)
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith(f"dsattn {argv[0]}: error: "), lines[0]


def test_verbose_adds_the_traceback(files, capsys):
    rc, _, err = run_cli(["--verbose", "lower", files["empty"]], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].endswith("is empty")
    rc, _, err = run_cli(["lower", files["empty"], "--verbose"], capsys)  # after COMMAND too
    assert rc == 2 and "Traceback" in err


# ------------------------------------------------------------------------------------------------
# data loss: the input and an older output keep their bytes on every failure
# ------------------------------------------------------------------------------------------------

def _snapshot(folder):
    return {p: open(os.path.join(folder, p), "rb").read() for p in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, p))}


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_lower_never_overwrites_its_input_through_a_link(files, tmp_path, capsys, link):
    src = tmp_path / "m.onnx"
    src.write_bytes(open(files["model"], "rb").read())
    (os.symlink if link == "symlink" else os.link)(src, tmp_path / "link.onnx")
    before = _snapshot(tmp_path)
    rc, _, err = run_cli(["lower", src, "-o", tmp_path / "link.onnx"], capsys)
    assert rc == 2 and "would overwrite" in err and err.count("\n") == 1
    assert _snapshot(tmp_path) == before


def test_lower_keeps_the_old_output_when_the_checker_rejects(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous lowered model")

    def reject(*a, **k):
        raise onnx.checker.ValidationError("bad node")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    rc, _, err = run_cli(["lower", files["model"], "-o", out], capsys)
    assert rc == 1 and "fails onnx.checker (bad node)" in err and err.count("\n") == 1
    assert out.read_bytes() == b"previous lowered model" and _snapshot(tmp_path) == {"out.onnx": out.read_bytes()}


def test_lower_rerun_rewrites_external_data(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fileio, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "out.onnx"
    sizes = []
    for _ in range(2):
        rc, _, err = run_cli(["lower", files["model"], "-o", out], capsys)
        assert rc == 0, err
        sizes.append((tmp_path / "out.onnx.data").stat().st_size)
    assert sizes[0] == sizes[1] > 0 and sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]


_LIMITED = textwrap.dedent("""
    import resource, sys
    from dsattn.tools.cli import main
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    sys.exit(main(sys.argv[1:]))
""")


def _limited(argv, limit):
    """The CLI in a subprocess under `ulimit -f` (RLIMIT_FSIZE, bytes): a write past it fails with
    EFBIG, as on a full disk."""
    return subprocess.run([sys.executable, "-c", _LIMITED.replace("(LIMIT, LIMIT)", f"({limit}, {limit})"), *map(str, argv)],
                          capture_output=True, text=True)


def test_failed_writes_keep_old_files(files, tmp_path):
    lowered = tmp_path / "low.onnx"
    lowered.write_bytes(b"old lowered model")
    saved = tmp_path / "in.json"
    saved.write_text("[old inputs]")
    before = _snapshot(tmp_path)
    r = _limited(["lower", files["model"], "-o", lowered], 2048)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "cannot write" in r.stderr and "file size limit" in r.stderr
    r = _limited(["validate", files["model"], "--save-inputs", saved, "--cases", "decode"], 256)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write" in r.stderr and str(saved) in r.stderr
    assert _snapshot(tmp_path) == before  # both old files byte-identical, no staging left behind


def test_hf_config_torch_dtype_is_used(files, tmp_path, capsys):
    """A config.json's torch_dtype is the dtype of the exported layer (--dtype overrides it)."""
    from onnx import TensorProto

    rc, out, err = run_cli(["export", "--hf-config", files["hf_f16"], "--out", tmp_path, "--seq", "2",
                            "--capacity", "3", "--batch", "1", "--no-validate", "--seed", "1"], capsys)
    assert rc == 0, err
    assert "dtype float16 from its torch_dtype" in out
    m = onnx.load(tmp_path / "dsattn_attention.onnx", load_external_data=False)
    assert {i.name: i.type.tensor_type.elem_type for i in m.graph.input}["hidden_states"] == TensorProto.FLOAT16


def test_json_named_file_is_not_a_model(tmp_path, capsys):
    """onnx.load reads a .json name as ONNX's JSON text format: its parse error is one line too."""
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    rc, _, err = run_cli(["lower", tmp_path / "config.json"], capsys)
    assert rc == 2 and "is not an ONNX model (cannot be parsed" in err and err.count("\n") == 1


def test_head_size_zero_and_empty_gqa_batch(tmp_path, capsys):
    """head_size=0 is an attribute error naming it (not a ZeroDivisionError); a batch of 0 rows on a
    GQA model validates (empty outputs on every runtime), instead of failing inside ONNX Runtime."""
    import numpy as np
    from onnx import TensorProto as TP
    from polygraphy.json import save_json

    from ort_cases import SC_CASES, sc_model

    c = SC_CASES[1]  # GQA: 4 query heads on 2 KV heads
    bad = sc_model(TP.FLOAT, c)
    next(a for a in bad.graph.node[0].attribute if a.name == "head_size").i = 0
    onnx.save(bad, tmp_path / "hs0.onnx")
    for cmd in (["lower", tmp_path / "hs0.onnx", "-o", tmp_path / "x.onnx"], ["validate", tmp_path / "hs0.onnx"]):
        rc, _, err = run_cli(cmd, capsys)
        assert rc == 2 and "attribute head_size must be an int in [1, 65536], got 0" in err and err.count("\n") == 1
    onnx.save(sc_model(TP.FLOAT, c), tmp_path / "gqa.onnx")
    H, Hkv, D, T = c.H, c.Hkv, c.D, c.Tmax
    save_json([{"qkv": np.zeros((0, 1, (H + 2 * Hkv) * D), np.float32),
                "past_key": np.zeros((0, Hkv, T, D), np.float32), "past_value": np.zeros((0, Hkv, T, D), np.float32),
                "seq_lens": np.zeros(0, np.int32), "start_pos": np.zeros(0, np.int32)}], str(tmp_path / "b0.json"))
    rc, out, err = run_cli(["validate", tmp_path / "gqa.onnx", "--load-inputs", tmp_path / "b0.json"], capsys)
    assert rc == 0 and "PASSED" in out, err
