"""Whole decoders from a local checkpoint folder: export (--hf-model) and generation on every
runtime that runs here, against transformers' own generate.

Each family: a random tiny checkpoint written with save_pretrained, exported whole, then greedy
generation of 16 tokens for a left-padded batch of 3 prompts of different lengths must give
exactly transformers' tokens on the PyTorch modules (torch) and on ONNX Runtime CPU (the lowered
model), fp32; the last step's logits within 1e-4 relative.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from trt_standin import StandInContext  # noqa: E402
from whole_cases import FAMILIES, make_checkpoint  # noqa: E402

from dsattn.export.model_onnx import export_hf_model  # noqa: E402
from dsattn.tools.generate import CapacityError, ExportedModel, OrtRuntime, TorchRuntime, generate  # noqa: E402

PAD = 0
NEW = 16


def _prompts(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # three lengths, never the pad/eos ids, so every row has a different amount of left padding
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 2, 4)]


def _hf_generate(hf, prompts, new=NEW, eos=None):
    L = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=PAD,
                          eos_token_id=eos, output_logits=True, return_dict_in_generate=True)
    rows = out.sequences[:, L:].tolist()
    if eos is not None:  # transformers pads finished rows; keep each row up to and including its EOS
        rows = [r[:r.index(eos) + 1] if eos in r else r for r in rows]
    return rows, out.logits[-1]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (transformers model, export folder); built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            hf = make_checkpoint(family, root / "ckpt", seed=1234)
            export_hf_model(root / "ckpt", root / "out", log=lambda s: None)
            cache[family] = (hf, root / "out", root / "ckpt")
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_transformers(family, exported, seed):
    hf, out, _ = exported(family)
    prompts = _prompts(seed)
    ref, ref_logits = _hf_generate(hf, prompts)
    for runtime in ("torch", "ort"):
        res = generate(out, input_ids=prompts, runtime=runtime, max_new_tokens=NEW, eos_token_id=[],
                       pad_token_id=PAD)
        assert res.tokens == ref, f"{family} on {runtime}: {res.tokens} != transformers {ref}"
        rel = _rel(res.last_logits, ref_logits)
        print(f"{family} {runtime}: last-step logits rel err {rel:.2e}")
        assert rel < 1e-4, f"{family} on {runtime}: last-step logits rel err {rel}"


def test_exported_graph_io(exported):
    import onnx

    _, out, _ = exported("llama")
    m = onnx.load(str(out / "model.onnx"))
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    assert ins == ["input_ids", "seq_lens", "start_pos", "past_key.0", "past_value.0", "past_key.1", "past_value.1"]
    assert outs == ["logits", "present_key.0", "present_value.0", "present_key.1", "present_value.1"]
    ops = [n.op_type for n in m.graph.node if n.domain == "dsattn"]
    assert ops.count("QKVGemm") == 2 and ops.count("SoftmaxContext") == 2
    dims = [d.dim_param or d.dim_value for d in m.graph.input[3].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, 64, 16]  # capacity = max_position_embeddings (64)
    em = ExportedModel.open(out)
    assert em.capacity == 64 and em.spec.num_layers == 2 and em.logits == "all"


def test_eos_stops_each_row(exported, seed):
    """A row stops at its EOS (same as transformers with that eos_token_id); the others go on."""
    hf, out, _ = exported("gptj")
    prompts = _prompts(seed)
    free, _ = _hf_generate(hf, prompts)
    eos = free[1][3]  # row 1 produces this token at step 4 (maybe earlier, maybe other rows too)
    ref, _ = _hf_generate(hf, prompts, eos=eos)
    res = generate(out, input_ids=prompts, runtime="ort", max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    assert res.tokens == ref
    assert res.finished[1] and len(res.tokens[1]) <= 4 and res.tokens[1][-1] == eos
    assert any(len(r) == NEW for r in res.tokens) or all(res.finished)


def test_last_logits_only_and_capacity(exported, tmp_path, seed):
    hf, _, ckpt = exported("qwen2")
    res = export_hf_model(ckpt, tmp_path / "last", logits="last", capacity=24, log=lambda s: None)
    import onnx

    m = onnx.load(res.model_path)
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 128]
    assert [d.dim_value for d in m.graph.input[3].type.tensor_type.shape.dim][2] == 24
    prompts = _prompts(seed)
    ref, _ = _hf_generate(hf, prompts)
    got = generate(tmp_path / "last", input_ids=prompts, runtime="ort", max_new_tokens=NEW, eos_token_id=[],
                   pad_token_id=PAD)
    assert got.tokens == ref


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def _copy_ckpt(src, dst, drop=()):
    import shutil

    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def _edit_config(folder, **changes):
    import json

    p = folder / "config.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def test_bad_checkpoints(exported, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from dsattn.export.model import CheckpointError, load_hf_model

    _, _, ckpt = exported("llama")
    with pytest.raises(CheckpointError, match=r"missing_dir: no such folder"):
        load_hf_model(tmp_path / "missing_dir")
    bad = _copy_ckpt(ckpt, tmp_path / "noweights", drop=["model.safetensors"])
    with pytest.raises(CheckpointError, match=r"noweights: no weights \(model.safetensors"):
        load_hf_model(bad)
    bad = _copy_ckpt(ckpt, tmp_path / "noconfig", drop=["config.json"])
    with pytest.raises(CheckpointError, match=r"noconfig/config.json: missing"):
        load_hf_model(bad)
    bad = _copy_ckpt(ckpt, tmp_path / "gpt2")
    _edit_config(bad, model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"gpt2/config.json: model_type='gpt2' is not supported"):
        load_hf_model(bad)
    bad = _copy_ckpt(ckpt, tmp_path / "rope")
    _edit_config(bad, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0})
    with pytest.raises(CheckpointError, match=r"rope/config.json: rope_parameters.rope_type='linear'"):
        load_hf_model(bad)
    bad = _copy_ckpt(ckpt, tmp_path / "dtype")
    _edit_config(bad, dtype="bfloat16")
    with pytest.raises(CheckpointError, match=r"dtype/config.json: dtype='bfloat16' but the weights in "
                                              r"model.safetensors are float32"):
        load_hf_model(bad)
    bad = _copy_ckpt(ckpt, tmp_path / "untied")
    sd = load_file(bad / "model.safetensors")
    del sd["lm_head.weight"]
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((bad / "config.json").read_text())["tie_word_embeddings"] is False
    with pytest.raises(CheckpointError, match=r"weights missing from model.safetensors: lm_head.weight .*"
                                              r"tie_word_embeddings=false"):
        load_hf_model(bad)


def test_prompt_longer_than_capacity(exported):
    _, out, _ = exported("llama")
    prompts = [[5] * 3, [7] * 65]
    with pytest.raises(ValueError, match=r"prompt row 1 has 65 tokens, more than the cache capacity 64"):
        generate(out, input_ids=prompts, runtime="torch", max_new_tokens=2)


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_capacity_overflow_during_generation(exported, tmp_path, runtime, seed):
    hf, _, ckpt = exported("mistral")
    out = tmp_path / "cap12"
    export_hf_model(ckpt, out, capacity=12, log=lambda s: None)
    prompts = _prompts(seed)  # longest 7: positions 7..11 hold generated tokens 1..5, token 6 from the last call
    ref, _ = _hf_generate(hf, prompts)
    with pytest.raises(CapacityError, match=r"capacity 12 reached before token 7 \(row 0: prompt 7 tokens \+ 0 left "
                                            r"padding \+ 5 of its 6 generated tokens = 12 cached; row 1: prompt 2 "
                                            r"tokens \+ 5 left padding") as e:
        generate(out, input_ids=prompts, runtime=runtime, max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    assert e.value.partial.tokens == [r[:6] for r in ref]


@pytest.mark.parametrize("runtime", ["torch", "ort"])
def test_overflowing_row_leaves_every_cache_untouched(exported, runtime):
    """A call in which one row would write past the capacity fails as a whole: no row's cache changes."""
    _, out, _ = exported("qwen2")
    em = ExportedModel.open(out)
    rt = TorchRuntime(em) if runtime == "torch" else OrtRuntime(em)
    cache = rt.new_cache(2)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    rt.forward(ids, torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32), cache)
    before = [[t.clone() for t in kv] for kv in cache]
    with pytest.raises((ValueError, RuntimeError), match=r"overflow"):
        rt.forward(torch.tensor([[11], [12]]), torch.tensor([3, em.capacity], dtype=torch.int32),
                   torch.zeros(2, dtype=torch.int32), cache)
    for kv, old in zip(cache, before):
        for t, o in zip(kv, old):
            assert torch.equal(t, o)


# ------------------------------------------------------------------------------------------------
# int8, command line
# ------------------------------------------------------------------------------------------------

def test_int8_whole_model(exported, tmp_path, seed):
    """int8 weights in every linear layer (and the LM head): ONNX Runtime gives the tokens of the
    PyTorch int8 modules; the logits stay close to the float32 model's (the error is reported)."""
    hf, _, ckpt = exported("llama")
    out = tmp_path / "int8"
    export_hf_model(ckpt, out, int8=True, group_size=16, int8_lm_head=True, log=lambda s: None)
    import onnx

    m = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in m.graph.node if n.domain == "dsattn"]
    # per layer: QKVGemm (quantized), the output projection and 3 MLP matmuls; plus the LM head
    assert ops.count("Int8MatMul") == 2 * 4 + 1 and ops.count("QKVGemm") == 2
    assert not any(n.op_type in ("Gemm", "MatMul") for n in m.graph.node)
    prompts = _prompts(seed)
    ref, ref_logits = _hf_generate(hf, prompts, new=1)
    torch_res = generate(out, input_ids=prompts, runtime="torch", max_new_tokens=NEW, eos_token_id=[],
                         pad_token_id=PAD)
    ort_res = generate(out, input_ids=prompts, runtime="ort", max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    assert ort_res.tokens == torch_res.tokens
    assert _rel(ort_res.last_logits, torch_res.last_logits) < 1e-4
    first = generate(out, input_ids=prompts, runtime="ort", max_new_tokens=1, eos_token_id=[], pad_token_id=PAD)
    err = _rel(first.last_logits, ref_logits)
    print(f"int8 (group 16, LM head too) vs float32 transformers: prefill logits rel err {err:.3e}")
    assert 0 < err < 0.05


def test_cli_export_and_generate_with_tokenizer(tmp_path, capsys, seed):
    from whole_cases import save_word_tokenizer

    from dsattn.tools.cli import main

    hf = make_checkpoint("gpt_neox", tmp_path / "ckpt", seed=seed)
    tok = save_word_tokenizer(tmp_path / "ckpt")
    assert main(["export", "--hf-model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--logits", "last",
                 "--capacity", "40", "--seed", str(seed)]) == 0
    log = capsys.readouterr().out
    for stage in ("[1/4] loading", "layer 2/2: GPTNeoXLayer", "[3/4] exporting the whole decoder", "tokenizer.json",
                  "ONNX Runtime cpu decode 3", "PASSED"):
        assert stage in log, stage
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    prompts = ["w5 w17 w33 w9", "w7 w8"]
    rows = [tok(p)["input_ids"] for p in prompts]
    ref, _ = _hf_generate(hf, rows, new=6)
    assert main(["generate", str(tmp_path / "out" / "model.onnx"), "--prompt", prompts[0], "--prompt", prompts[1],
                 "--max-new-tokens", "6", "--runtime", "ort", "--eos-token-id", "-1"]) == 0
    out = capsys.readouterr().out
    for b in range(2):
        text = tok.decode(ref[b], skip_special_tokens=True)
        assert f"--- completion {b} (6 tokens) ---\n{text}\n" in out
    assert "step 6:" in out and "tokens/s" in out


def test_cli_errors(exported, tmp_path, capsys):
    from dsattn.tools import cli

    def main(argv):  # usage errors leave through argparse's SystemExit(2)
        try:
            return cli.main(argv)
        except SystemExit as e:
            return e.code

    _, out, ckpt = exported("llama")
    assert main(["export", "--hf-model", str(tmp_path / "nope")]) == 2
    assert "--hf-model: " in capsys.readouterr().err
    assert main(["export", "--logits", "last"]) == 2
    assert "--logits needs --hf-model" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "hello"]) == 2
    assert "--prompt needs a tokenizer" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--input-ids", "1,2"]) == 2
    assert "expected one exported .onnx in the folder" in capsys.readouterr().err
    assert main(["generate", str(out), "--input-ids", "1,2", "--input-ids", "3", "--max-new-tokens", "70",
                 "--eos-token-id", "-1"]) == 1
    err = capsys.readouterr().err
    assert ("KV cache capacity 64 reached before token 64 (row 0: prompt 2 tokens + 0 left padding + 62 of its 63 "
            "generated tokens = 64 cached; row 1: prompt 1 tokens + 1 left padding + 62 of its 63") in err
    assert main(["generate", str(out), "--input-ids", "1,200"]) == 2
    assert "token ids [200] are outside the vocabulary [0, 128)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# TensorRT profiles and validate on the whole-model graph
# ------------------------------------------------------------------------------------------------

def test_engine_profile_of_whole_model(exported):
    from dsattn.engines.build import trtexec_command
    from dsattn.engines.profiles import derive_profile

    _, out, _ = exported("llama")
    path = out / "model.onnx"
    prof = derive_profile(path)
    assert prof["input_ids"] == ((1, 1), (1, 1), (8, 64))  # seq capped by the capacity 64
    for i in range(2):
        for kind in ("key", "value"):
            assert prof[f"past_{kind}.{i}"] == ((1, 2, 64, 16), (1, 2, 64, 16), (8, 2, 64, 16))
    assert prof["seq_lens"] == ((1,), (1,), (8,))
    prof = derive_profile(path, batch=(1, 2, 4), seq=(1, 1, 32))
    assert prof["input_ids"][2] == (4, 32) and prof["past_value.1"][1] == (2, 2, 64, 16)
    with pytest.raises(ValueError, match="max seq 100 exceeds max cache capacity 64"):
        derive_profile(path, seq=(1, 1, 100))
    with pytest.raises(ValueError, match="capacity range 1:128:128 conflicts with the model's static capacity 64"):
        derive_profile(path, capacity=(1, 128, 128))
    cmd = trtexec_command(path, [str(path)], out / "model.plan")  # any existing file stands in for the library
    assert "--preview=+aliasedPluginIO1003" in cmd
    assert "past_value.1:8x2x64x16" in cmd and "input_ids:8x64" in cmd


def test_validate_whole_model(exported):
    from dsattn.tools.validate import validate

    _, out, _ = exported("bloom")
    rep = validate(str(out / "model.onnx"), providers=("cpu",), seed=5)
    outputs = {r.output for r in rep.rows}
    assert outputs == {"logits", "present_key.0", "present_value.0", "present_key.1", "present_value.1"}
    assert {r.case for r in rep.rows} == {"prefill", "decode"}
    assert rep.passed, rep.table()


def test_trt_runtime_without_tensorrt_is_a_clear_error(exported):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    _, out, _ = exported("llama")
    with pytest.raises(ImportError, match=r"TensorRT >= .* Python package is required"):
        generate(out, input_ids=[[1, 2]], runtime="trt", device="cuda")
    with pytest.raises(ValueError, match=r"runtime trt runs on cuda only"):
        generate(out, input_ids=[[1, 2]], runtime="trt", device="cpu")


def test_sampling_filters_match_transformers(seed):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                         TopKLogitsWarper, TopPLogitsWarper)

    from dsattn.tools.generate import sampling_logits

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 128, generator=g) * 3
    for temperature, top_k, top_p in ((0.7, 0, 1.0), (1.0, 10, 1.0), (1.3, 0, 0.8), (0.5, 20, 0.6), (1.0, 0, 0.01)):
        procs = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                                    + ([TopKLogitsWarper(top_k)] if top_k else [])
                                    + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
        ref = procs(None, logits.clone())
        got = sampling_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        assert torch.equal(torch.isinf(got), torch.isinf(ref)), (temperature, top_k, top_p)
        assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)])


def test_sampling_is_seeded(exported):
    _, out, _ = exported("llama")
    prompts = [[5, 6, 7], [9]]
    kw = dict(input_ids=prompts, runtime="torch", max_new_tokens=8, eos_token_id=[], do_sample=True)
    a = generate(out, seed=11, temperature=1.5, **kw)
    b = generate(out, seed=11, temperature=1.5, **kw)
    c = generate(out, seed=12, temperature=1.5, **kw)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = generate(out, input_ids=prompts, runtime="torch", max_new_tokens=8, eos_token_id=[])
    assert generate(out, seed=3, top_k=1, **kw).tokens == greedy.tokens
    assert generate(out, seed=3, top_p=1e-6, **kw).tokens == greedy.tokens
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(out, seed=3, top_p=0, **kw)


def test_cli_single_layer_with_real_weights(exported, tmp_path, capsys):
    """--hf-model DIR --layer N: the single-layer job (export, check, ORT validation) on layer N's
    attention with the checkpoint's weights."""
    import onnx
    from safetensors.torch import load_file

    from dsattn.tools.cli import main

    _, _, ckpt = exported("llama")
    assert main(["export", "--hf-model", str(ckpt), "--layer", "1", "--out", str(tmp_path), "--seed", "4"]) == 0
    log = capsys.readouterr().out
    assert "layer 1 of" in log and "PASSED" in log
    m = onnx.load(str(tmp_path / "dsattn_attention.onnx"))
    assert [i.name for i in m.graph.input][:2] == ["hidden_states", "past_key"]
    sd = load_file(ckpt / "model.safetensors")
    gamma = next(onnx.numpy_helper.to_array(t) for t in m.graph.initializer
                 if t.dims == [64] and "norm" in t.name)
    assert torch.equal(torch.from_numpy(gamma.copy()), sd["model.layers.1.input_layernorm.weight"])


def test_default_capacity_is_capped():
    from dsattn.export.model_onnx import CAPACITY_CAP, default_capacity

    assert default_capacity(64) == 64
    assert default_capacity(131072) == CAPACITY_CAP == 4096
    assert default_capacity(None) == CAPACITY_CAP


def test_ort_runtime_lowers_in_memory_when_the_folder_is_not_writable(exported, tmp_path, monkeypatch):
    import shutil

    import dsattn.fileio
    from dsattn.tools import generate as gen_mod

    _, out, _ = exported("gptj")
    copy = tmp_path / "ro"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.ort.onnx"))

    def refuse(*a, **k):
        raise dsattn.fileio.WriteError("cannot write: read-only file system")

    monkeypatch.setattr(dsattn.fileio, "save_onnx_atomic", refuse)
    em = ExportedModel.open(copy)
    lowered = gen_mod.lowered_model(em)
    assert not isinstance(lowered, str) and not (copy / "model.ort.onnx").exists()
    a = generate(em, input_ids=[[4, 5, 6]], runtime="ort", max_new_tokens=4, eos_token_id=[])
    b = generate(em, input_ids=[[4, 5, 6]], runtime="torch", max_new_tokens=4, eos_token_id=[])
    assert a.tokens == b.tokens


def test_ort_runtime_updates_the_bound_caches_in_place(exported):
    _, out, _ = exported("mistral")
    rt = OrtRuntime(ExportedModel.open(out))
    cache = rt.new_cache(2)
    ptrs = [t.data_ptr() for kv in cache for t in kv]
    rt.forward(torch.tensor([[5, 6, 7], [0, 8, 9]]), torch.zeros(2, dtype=torch.int32),
               torch.tensor([0, 1], dtype=torch.int32), cache)
    assert [t.data_ptr() for kv in cache for t in kv] == ptrs
    for k, v in cache:
        assert k[:, :, :3].abs().sum() > 0 and v[:, :, :3].abs().sum() > 0  # positions 0..2 written
        assert not k[:, :, 3:].any() and not v[:, :, 3:].any()  # the rest untouched (zeros)


def test_trt_runtime_binds_presents_to_their_past_buffers(exported):
    """The binding logic of the TensorRT runtime, against a stand-in for the engine's context (no
    TensorRT here): every present_* gets the address of the past_* buffer it aliases, the logits a
    fresh buffer, every input its shape."""
    from dsattn.tools.generate import TrtRuntime

    _, out, _ = exported("llama")
    em = ExportedModel.open(out)

    def output_shape(shapes, name):  # what the engine infers from the bound input shapes
        B, S = shapes["input_ids"]
        return (B, S, em.spec.vocab_size) if name == "logits" else shapes[name.replace("present_", "past_")]

    from dsattn.engines.runner import EngineRunner

    class Runner:
        run_bound = EngineRunner.run_bound  # the real binding code, over the stand-in context

        input_names = ["input_ids", "seq_lens", "start_pos", "past_key.0", "past_value.0", "past_key.1",
                       "past_value.1"]
        output_names = ["logits", "present_key.0", "present_value.0", "present_key.1", "present_value.1"]
        aliases = {o: o.replace("present_", "past_") for o in output_names[1:]}

        def __init__(self):
            self._context = StandInContext(output_shape)
            self.ran = 0

        def _execute(self):
            self.ran += 1

    rt = TrtRuntime.__new__(TrtRuntime)
    rt.runner, rt.model, rt.device = Runner(), em, torch.device("cpu")
    rt.capacity, rt.vocab_size = em.capacity, em.spec.vocab_size
    cache = rt.new_cache(2)
    logits = rt.forward(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.zeros(2, dtype=torch.int32),
                        torch.zeros(2, dtype=torch.int32), cache)
    ctx = rt.runner._context
    assert rt.runner.ran == 1 and logits.shape == (2, 128)
    assert ctx.shapes["input_ids"] == (2, 3) and ctx.shapes["past_key.1"] == (2, 2, 64, 16)
    for i, (k, v) in enumerate(cache):
        assert ctx.addr[f"present_key.{i}"] == ctx.addr[f"past_key.{i}"] == k.data_ptr()
        assert ctx.addr[f"present_value.{i}"] == ctx.addr[f"past_value.{i}"] == v.data_ptr()
    assert ctx.addr["logits"] not in {t.data_ptr() for kv in cache for t in kv}


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_sampling_temperature_must_be_finite_and_positive(temperature):
    from dsattn.tools.generate import generate

    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        generate(None, input_ids=[[5, 6, 7]], do_sample=True, temperature=temperature)
