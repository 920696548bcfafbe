"""Tiny random checkpoints of the six converted families, written with save_pretrained (shared by
the whole-model tests)."""
from __future__ import annotations

import torch

VOCAB = 128


def _config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    if family == "bloom":
        return tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, layer_norm_epsilon=1e-5, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, attention_bias=True, mlp_bias=True,
                              rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64, layer_norm_eps=1e-5,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "partial_rotary_factor": 0.5}, **common)
    if family == "gpt_neox_sequential":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64, use_parallel_residual=False, hidden_act="gelu_new",
                                **common)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, layer_norm_epsilon=1e-5,
                             **common)
    if family == "mistral":  # window 6: the prompts (<= 7 tokens) + 16 new tokens slide past it
        return tf.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=64, sliding_window=6,
                                rope_parameters={"rope_type": "default", "rope_theta": 3000.0}, **common)
    if family == "qwen2":  # tied embeddings, q/k/v bias
        return tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
                              rope_parameters={"rope_type": "default", "rope_theta": 7000.0}, **common)
    raise ValueError(family)


FAMILIES = ("bloom", "llama", "gpt_neox", "gpt_neox_sequential", "gptj", "mistral", "qwen2")


def make_checkpoint(family: str, folder, seed: int, dtype=torch.float32):
    """A random checkpoint of ``family`` saved into ``folder``; returns the transformers model."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _config(family)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    # transformers initializes with std 0.02, zero biases and unit norms: logits would be nearly
    # flat (greedy near-ties) and biases untested. Scaled random values make every term count.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                is_gain = name.endswith("weight") and ("norm" in name or "ln" in name)
                base = 1.0 if is_gain else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
    model = model.to(dtype)
    model.save_pretrained(folder)
    return model


def save_word_tokenizer(folder, eos_token: str = "w2"):
    """A word-level tokenizer over the tiny vocabulary (token i is the word ``w{i}``), saved with
    save_pretrained into ``folder``: what a real checkpoint folder carries, without a download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", eos_token=eos_token, pad_token="w0")
    fast.save_pretrained(folder)
    return fast
