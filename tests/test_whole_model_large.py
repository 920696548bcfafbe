"""A whole decoder past protobuf's 2 GB limit: the export keeps its weights in external data, and
the model still runs (ONNX Runtime on the lowered model, which references the same data file).

The checkpoint (one LLaMA layer with a very wide MLP: 2.2 GB of float32 weights) is written on
the fly, one tensor shard at a time, so that the test never holds it twice; the phases run one
after another and release their memory (peak about two copies of the weights).
"""
from __future__ import annotations

import gc
import json

import pytest
import torch

pytest.importorskip("transformers")

from dsattn.export.model_onnx import export_hf_model  # noqa: E402
from dsattn.tools.generate import generate  # noqa: E402

pytestmark = pytest.mark.slow

HIDDEN, HEADS, INTER, VOCAB = 512, 4, 360448, 128  # MLP 3 * 512 * 360448 * 4 B = 2.21 GB


def _write_checkpoint(folder, seed):
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir()
    LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=1,
                num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=32,
                bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * shape[-1] ** -0.5

    p = "model.layers.0."
    shards = {
        "small": {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g),
                  "lm_head.weight": rnd(VOCAB, HIDDEN), "model.norm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=g),
                  p + "input_layernorm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=g),
                  p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(HIDDEN, generator=g),
                  **{p + f"self_attn.{n}_proj.weight": rnd(HIDDEN, HIDDEN) for n in "qkvo"}},
        "gate": {p + "mlp.gate_proj.weight": None}, "up": {p + "mlp.up_proj.weight": None},
        "down": {p + "mlp.down_proj.weight": None},
    }
    weight_map = {}
    for i, (name, tensors) in enumerate(shards.items()):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        if name != "small":  # one big tensor per shard, made just before it is written
            key = next(iter(tensors))
            tensors = {key: rnd(HIDDEN, INTER) if name == "down" else rnd(INTER, HIDDEN)}
        save_file(tensors, folder / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_export_past_2gb_uses_external_data_and_runs(tmp_path, seed):
    import onnx

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    _write_checkpoint(ckpt, seed)
    res = export_hf_model(ckpt, out, log=print)
    del res  # the exported decoder (2.2 GB)
    gc.collect()
    model, data = out / "model.onnx", out / "model.onnx.data"
    assert data.stat().st_size > 2 * 1024**3
    assert model.stat().st_size < 16 * 1024**2
    proto = onnx.load(str(model), load_external_data=False)
    ext = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert ext == {"model.onnx.data"}
    del proto
    prompts = [[5, 9, 17], [33]]
    ref = generate(out, input_ids=prompts, runtime="torch", max_new_tokens=3, eos_token_id=[])
    gc.collect()
    got = generate(out, input_ids=prompts, runtime="ort", max_new_tokens=3, eos_token_id=[])
    assert got.tokens == ref.tokens
    assert float((got.last_logits - ref.last_logits).abs().max() / ref.last_logits.abs().max()) < 1e-4
    assert (out / "model.ort.onnx").stat().st_size < 16 * 1024**2  # the lowered graph reuses the data file
