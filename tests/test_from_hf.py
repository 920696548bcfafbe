"""from_hf parity: dsattn modules vs the transformers modules they were converted from (fp32).

Each family runs a one-layer transformers model on a left-padded batch: a prefill, then token-by-
token decode through its cache. Hooks capture the layer's input hidden states and its attention
output (input norm + attention + output projection, no residual); the dsattn module converted
from that layer must reproduce it through its own KV cache (rel error < 1e-4).
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from dsattn.export import from_hf  # noqa: E402
from dsattn.export.modules import BloomSelfAttention, DeepSpeedSelfAttention  # noqa: E402

RTOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _bloom(seed):
    from transformers import BloomConfig, BloomModel

    cfg = BloomConfig(vocab_size=32, hidden_size=48, n_layer=1, n_head=6, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = BloomModel(cfg).eval()
    layer = model.h[0]
    return model, layer, layer.self_attention, cfg, False


def _llama(seed, heads=4, kv=2):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=kv, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, attention_bias=True)
    cfg._attn_implementation = "eager"
    model = LlamaModel(cfg).eval()
    layer = model.layers[0]
    return model, layer, layer.self_attn, cfg, True


def _neox(seed):
    from transformers import GPTNeoXConfig, GPTNeoXModel

    cfg = GPTNeoXConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=4, layer_norm_eps=1e-5,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    cfg._attn_implementation = "eager"
    model = GPTNeoXModel(cfg).eval()
    layer = model.layers[0]
    return model, layer, layer.attention, cfg, True


def _gptj(seed):
    from transformers import GPTJConfig, GPTJModel

    cfg = GPTJConfig(vocab_size=32, n_embd=64, n_layer=1, n_head=4, rotary_dim=8, n_positions=64,
                     layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = GPTJModel(cfg).eval()
    layer = model.h[0]
    return model, layer, layer.attn, cfg, True


def _mistral(seed, window=None):
    from transformers import MistralConfig, MistralModel

    cfg = MistralConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, sliding_window=window,
                        rope_parameters={"rope_type": "default", "rope_theta": 3000.0})
    cfg._attn_implementation = "eager"
    model = MistralModel(cfg).eval()
    layer = model.layers[0]
    return model, layer, layer.self_attn, cfg, True


def _qwen2(seed, window=None):
    from transformers import Qwen2Config, Qwen2Model

    # max_window_layers=0: the one layer is a "sliding_attention" layer when use_sliding_window is on.
    cfg = Qwen2Config(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      use_sliding_window=window is not None, sliding_window=window, max_window_layers=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 7000.0})
    cfg._attn_implementation = "eager"
    model = Qwen2Model(cfg).eval()
    layer = model.layers[0]
    return model, layer, layer.self_attn, cfg, True


# Sliding-window variants use window 4 with a 7-token prompt and 3 decode steps, so the longest row
# (no padding) has keys dropping out of the window in prefill and decode (an off-by-one changes it).
FAMILIES = {"bloom": _bloom, "llama_gqa": _llama, "gpt_neox": _neox, "gptj": _gptj, "mistral": _mistral,
            "mistral_swa4": lambda s: _mistral(s, 4), "qwen2": _qwen2, "qwen2_swa4": lambda s: _qwen2(s, 4)}


def _randomize(model, gen):
    # HF initializes biases to zero and norms to one; random values make every term count.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else p.shape[-1] ** -0.5)
                    + (1.0 if p.dim() == 1 and torch.all(p == 1) else 0.0))


def _run_parity(family, seed, pads=(0, 2, 4), prompt=7, steps=3):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, layer, attn, cfg, uses_positions = FAMILIES[family](seed)
    _randomize(model, gen)
    m = from_hf(layer)
    assert isinstance(m, BloomSelfAttention if family == "bloom" else DeepSpeedSelfAttention)
    B, hid = len(pads), cfg.hidden_size

    captured = {}

    def pre(mod, args, kwargs):
        captured["x"] = args[0] if args else kwargs["hidden_states"]

    def post(mod, args, kwargs, out):
        o = out[0]
        if family == "bloom":  # BloomAttention adds the residual inside; take it back out
            residual = args[1] if len(args) > 1 else kwargs["residual"]
            o = o - residual
        captured["attn"] = o

    h1 = layer.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = attn.register_forward_hook(post, with_kwargs=True)
    try:
        mask = torch.ones(B, prompt, dtype=torch.long)
        for b, p in enumerate(pads):
            mask[b, :p] = 0
        cache_hf = transformers.DynamicCache(config=cfg)
        kw = {}
        if uses_positions:
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        emb = torch.randn(B, prompt, hid, generator=gen)
        with torch.no_grad():
            model(inputs_embeds=emb, attention_mask=mask, cache=cache_hf, use_cache=True, **kw)
        cache = m.new_cache(B, capacity=prompt + steps + 2, start_pos=list(pads))
        with torch.no_grad():
            out, cache = m(captured["x"], cache)
        errs = []
        for b, p in enumerate(pads):  # padded query rows are undefined in HF; compare real tokens
            errs.append(_rel(out[b, p:], captured["attn"][b, p:]))
        assert cache.seq_lens.tolist() == [prompt] * B
        for step in range(steps):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
            kw = {"position_ids": (mask.sum(-1, keepdim=True) - 1)} if uses_positions else {}
            emb = torch.randn(B, 1, hid, generator=gen)
            with torch.no_grad():
                model(inputs_embeds=emb, attention_mask=mask, cache=cache_hf, use_cache=True, **kw)
                out, cache = m(captured["x"], cache)
            errs.append(_rel(out, captured["attn"]))
    finally:
        h1.remove()
        h2.remove()
    return errs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_hf_parity_prefill_and_decode(family, seed):
    errs = _run_parity(family, seed)
    print(f"{family}: max rel error {max(errs):.3g} over prefill + decode")
    assert max(errs) < RTOL, errs


def test_from_hf_llama_mha_and_mqa(seed):
    for heads, kv in ((4, 4), (4, 1)):
        FAMILIES["_tmp"] = lambda s, h=heads, k=kv: _llama(s, h, k)
        try:
            errs = _run_parity("_tmp", seed, pads=(1, 0), prompt=5, steps=2)
        finally:
            del FAMILIES["_tmp"]
        assert max(errs) < RTOL, (heads, kv, errs)


def test_from_hf_bare_attention_has_no_norm(seed):
    from transformers import BloomConfig, BloomModel

    model = BloomModel(BloomConfig(vocab_size=8, hidden_size=16, n_layer=1, n_head=2)).eval()
    m = from_hf(model.h[0].self_attention)
    assert m.norm_w is None and m.config.pre_layer_norm is False and m.config.norm_type_id == 0


def test_from_hf_rejects_unsupported():
    with pytest.raises(NotImplementedError, match="Linear is not supported"):
        from_hf(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="int"):
        from_hf(3)


@pytest.mark.parametrize("family,window", [("mistral", None), ("mistral_swa4", 4), ("qwen2", None),
                                           ("qwen2_swa4", 4)])
def test_from_hf_mistral_qwen2_mapping(family, window, seed):
    model, layer, attn, cfg, _ = FAMILIES[family](seed)
    m = from_hf(layer)
    c = m.config
    assert c.norm_type == "rmsnorm" and c.rotate_half and c.num_kv == 2 and c.heads == 4
    assert c.local_attention == (window is not None)
    if window is not None:
        assert c.window_size == window
    assert c.qkv_bias == family.startswith("qwen2") and c.attn_out_bias is False
    assert c.rope_theta == (3000.0 if family.startswith("mistral") else 7000.0)
    bare = from_hf(attn)  # the attention module alone keeps the window, drops the norm
    assert bare.norm_w is None and bare.config.local_attention == (window is not None)


def test_from_hf_qwen2_full_attention_layers_below_max_window_layers(seed):
    from transformers import Qwen2Config, Qwen2Model

    cfg = Qwen2Config(vocab_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=5,
                      max_window_layers=1)
    model = Qwen2Model(cfg).eval()
    assert from_hf(model.layers[0]).config.local_attention is False
    c1 = from_hf(model.layers[1]).config
    assert c1.local_attention is True and c1.window_size == 5


def test_from_hf_rejects_bad_sliding_window(seed):
    model, layer, *_ = _mistral(seed, 4)
    for bad in (0, -2):  # transformers' strict config already refuses non-int values
        layer.self_attn.config.sliding_window = bad
        with pytest.raises(ValueError, match="sliding_window"):
            from_hf(layer)


@pytest.mark.parametrize("model_type,extra", [("mistral", dict(sliding_window=3)),
                                              ("qwen2", dict(use_sliding_window=True, sliding_window=3,
                                                             max_window_layers=0))])
def test_hf_config_export_mistral_qwen2_window(tmp_path, seed, model_type, extra):
    # `dsattn export --hf-config` builds layer 0 of the family; a window shorter than the exported
    # prefill (seq 4) is checked against the ONNX reference evaluator and ONNX Runtime.
    import json

    from dsattn.tools import pipeline

    hf = dict(model_type=model_type, hidden_size=64, intermediate_size=32, num_attention_heads=4,
              num_key_value_heads=2, num_hidden_layers=1, vocab_size=16, rms_norm_eps=1e-5, **extra)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    res = pipeline.export_main(hf_config=str(tmp_path / "config.json"), dtype="float32", batch=3, seq=4, capacity=6,
                          out=tmp_path / "out", seed=seed, log=lambda s: None)
    assert res.passed, (res.checks, res.validations)
    assert len(res.validations) == 1 and res.validations[0].passed
    assert res.config.local_attention and res.config.window_size == 3
    assert res.config.qkv_bias == (model_type == "qwen2") and not res.config.attn_out_bias
