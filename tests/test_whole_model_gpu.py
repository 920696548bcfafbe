"""Whole decoders on ONNX Runtime CUDA (the lowered model), float16 and bfloat16, against
transformers computing in the same dtype on the same GPU.

Greedy tokens must be equal for 16 steps on a left-padded batch of 3 prompts, or the first
divergence of a row must be explained by a logit margin below the dtype's resolution: at that step
transformers' own logits of its token and of ours differ by at most a few units in the last place
of the dtype at the logits' magnitude (the two computations round differently; a near-tie can flip).
The KV caches stay on the GPU (I/O binding), which these runs exercise.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from whole_cases import make_checkpoint  # noqa: E402

from dsattn.export.model_onnx import export_hf_model  # noqa: E402
from dsattn.tools.generate import generate  # noqa: E402

pytestmark = pytest.mark.gpu

PAD, NEW = 0, 16
FAMILIES = ("bloom", "llama", "gpt_neox", "gptj", "mistral", "qwen2")
#: units in the last place (at the logits' magnitude) a near-tie may be off by
ULPS = 8


def _ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _prompts(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 2, 4)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ort_cuda_tokens_equal_transformers(family, dtype, tmp_path, seed):
    if not _ort_cuda_available():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    T = getattr(torch, dtype)
    hf = make_checkpoint(family, tmp_path / "ckpt", seed=seed)
    export_hf_model(tmp_path / "ckpt", tmp_path / "out", dtype=dtype, log=lambda s: None)
    hf = hf.to(device="cuda", dtype=T)
    prompts = _prompts(seed)
    L = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    ref = out.sequences[:, L:].tolist()
    steps = []
    res = generate(tmp_path / "out", input_ids=prompts, runtime="ort", device="cuda", max_new_tokens=NEW,
                   eos_token_id=[], pad_token_id=PAD, on_step=lambda s, t: steps.append(s))
    assert len(steps) == NEW
    ulp = torch.finfo(T).eps
    for b in range(len(prompts)):
        for k in range(NEW):
            if res.tokens[b][k] == ref[b][k]:
                continue
            lg = out.logits[k][b].float()
            margin = float(lg[ref[b][k]] - lg[res.tokens[b][k]])
            bound = ULPS * ulp * float(lg.abs().max())
            print(f"{family} {dtype} row {b}: first divergence at step {k + 1}: transformers {ref[b][k]}, ours "
                  f"{res.tokens[b][k]}, transformers' logit margin {margin:.3g} (bound {bound:.3g})")
            assert margin <= bound, (f"row {b} diverges at step {k + 1} with a logit margin {margin:.3g} > "
                                     f"{ULPS} ulps of {dtype} ({bound:.3g})")
            break  # after a divergence the rows continue from different tokens
        else:
            print(f"{family} {dtype} row {b}: {NEW} tokens equal")


def test_ort_cuda_float32_exact_and_cache_stays_on_device(tmp_path, seed):
    """float32 on ONNX Runtime CUDA gives transformers' tokens exactly, and the runtime's caches
    are CUDA tensors that ONNX Runtime updates in place."""
    if not _ort_cuda_available():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    from dsattn.tools.generate import ExportedModel, OrtRuntime, left_pad

    hf = make_checkpoint("llama", tmp_path / "ckpt", seed=seed)
    export_hf_model(tmp_path / "ckpt", tmp_path / "out", log=lambda s: None)
    prompts = _prompts(seed)
    L = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD,
                          eos_token_id=None)[:, L:].tolist()
    rt = OrtRuntime(ExportedModel.open(tmp_path / "out"), device="cuda")
    res = generate(None, input_ids=prompts, runtime=rt, max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    assert res.tokens == ref
    cache = rt.new_cache(3)
    ptrs = [t.data_ptr() for kv in cache for t in kv]
    x, start = left_pad(prompts, PAD)
    rt.forward(x, torch.zeros(3, dtype=torch.int32), start, cache)
    assert all(t.is_cuda for kv in cache for t in kv)
    assert [t.data_ptr() for kv in cache for t in kv] == ptrs
    assert float(cache[0][0].abs().sum()) > 0  # written in place


def test_torch_runtime_on_cuda_float32(tmp_path, seed):
    """The PyTorch modules on the GPU (reference ops) give transformers' tokens exactly in float32."""
    hf = make_checkpoint("qwen2", tmp_path / "ckpt", seed=seed)
    export_hf_model(tmp_path / "ckpt", tmp_path / "out", log=lambda s: None)
    prompts = _prompts(seed)
    L = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD,
                          eos_token_id=None)[:, L:].tolist()
    res = generate(tmp_path / "out", input_ids=prompts, runtime="torch", device="cuda", max_new_tokens=NEW,
                   eos_token_id=[], pad_token_id=PAD)
    assert res.tokens == ref
