"""`dsattn export --hf-model DIR`: a checkpoint folder -> the whole decoder in ONNX, then a check.

Stages: load and convert every layer, quantize (``--int8``), export (``export_hf_model``), copy the
tokenizer files; then hold the exported graph, lowered and run by ONNX Runtime on each provider, to
the PyTorch modules it was exported from: a left-padded batch of random prompts, a prefill and
decode steps fed with the PyTorch modules' greedy tokens, the last-position logits compared at
every call (relative to the largest logit; float32 1e-4, 16-bit types 2e-2).
"""
from __future__ import annotations

import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

__all__ = ["ModelCheck", "ModelExportResult", "check_model", "export_model_main", "TOLERANCE"]

#: Max |logits - reference| / max |reference| per call.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


@dataclass
class ModelCheck:
    provider: str
    call: str
    rel_err: float
    tol: float
    same_token: bool

    @property
    def passed(self) -> bool:
        return self.rel_err <= self.tol  # NaN compares False


@dataclass
class ModelExportResult:
    model_path: str
    description: str
    seed: int
    checks: list[ModelCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def check_model(model_path: str, decoder, *, providers: Sequence[str], seed: int, steps: int = 3,
                log: Callable[[str], None] = print) -> tuple[list[ModelCheck], list[str]]:
    """ONNX Runtime (lowered, each provider) vs the PyTorch ``decoder`` on the same calls."""
    from .generate import ExportedModel, OrtRuntime, TorchRuntime, left_pad

    em = ExportedModel.open(model_path)
    T = em.dtype
    g = torch.Generator().manual_seed(seed)
    cap = em.capacity
    lens = [min(n, cap - steps) for n in (5, 2, 3)]
    if min(lens) < 1:
        return [], [f"capacity {cap} is too small for the check ({steps} decode steps)"]
    prompts = [torch.randint(0, em.spec.vocab_size, (n,), generator=g).tolist() for n in lens]
    ids, start = left_pad(prompts, 0)
    ref = TorchRuntime(decoder, capacity=cap)
    checks, notes = [], []
    for prov in providers:
        if T == torch.bfloat16 and prov == "cpu":
            notes.append("ONNX Runtime cpu skipped: its CPU provider has no bfloat16 MatMul kernels "
                         "(check with --providers cuda)")
            log("  " + notes[-1])
            continue
        rt = OrtRuntime(em, device="cuda" if prov == "cuda" else "cpu")
        c_ref, c_rt = ref.new_cache(len(prompts)), rt.new_cache(len(prompts))
        seq_lens = torch.zeros(len(prompts), dtype=torch.int32)
        feed = ids
        for i in range(steps + 1):
            a = ref.forward(feed, seq_lens, start, c_ref)
            b = rt.forward(feed, seq_lens, start, c_rt)
            rel = float((b - a).abs().max() / a.abs().max().clamp_min(1e-30))
            name = "prefill" if i == 0 else f"decode {i}"
            chk = ModelCheck(prov, name, rel, TOLERANCE[T], bool(torch.equal(a.argmax(-1), b.argmax(-1))))
            checks.append(chk)
            log(f"  ONNX Runtime {prov} {name:9s} logits rel err {rel:.2e} (tol {chk.tol:g}) "
                f"{'ok' if chk.passed else 'MISMATCH'}{'' if chk.same_token else ', greedy tokens differ'}")
            seq_lens = seq_lens + feed.shape[1]
            feed = a.argmax(-1, keepdim=True)
    return checks, notes


def export_model_main(hf_model: str, *, out="build", dtype=None, int8: bool = False, group_size: int = 0,
                      int8_lm_head: bool = False, capacity: Optional[int] = None, logits: str = "all",
                      providers: Sequence[str] = ("cpu",), seed: Optional[int] = None,
                      log: Callable[[str], None] = print) -> ModelExportResult:
    """The whole `dsattn export --hf-model` job; ``providers=()`` skips the ONNX Runtime check."""
    from dsattn.export.model_onnx import export_hf_model

    t0 = time.perf_counter()
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        exp = export_hf_model(hf_model, out, dtype=dtype, int8=int8, group_size=group_size, int8_lm_head=int8_lm_head,
                              capacity=capacity, logits=logits, log=log)
    res = ModelExportResult(exp.model_path, exp.description, seed)
    if providers:
        log(f"[check] ONNX Runtime ({', '.join(providers)}) on the lowered model vs the PyTorch modules (seed={seed})")
        res.checks, res.notes = check_model(exp.model_path, exp.model, providers=providers, seed=seed, log=log)
    res.seconds = time.perf_counter() - t0
    log(f"{'PASSED' if res.passed else 'FAILED'} in {res.seconds:.1f} s: {exp.model_path}")
    return res
