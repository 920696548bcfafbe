"""`dsattn export`: build a dsattn attention module, export it to ONNX, check it.

With no arguments it uses the built-in small BLOOM-like config (``BUILTIN_CONFIG``: hidden 256,
8 heads of 32, alibi, LayerNorm eps 1e-5, float16, random weights) and writes
``./build/dsattn_attention.onnx``: one model with dynamic batch and sequence axes. Then it runs
``onnx.checker`` and the ONNX reference evaluator (the dsattn ops as Python implementations) at a
prefill shape and at a decode shape (the decode step consumes the prefill's cache), comparing
each with the PyTorch module, and exits non-zero on a mismatch.

Importable: ``export_main(...) -> ExportResult`` does the whole job; ``build_module(...)``,
``export_models(...) -> list[str]`` (the exported model paths, for the runtime validation) and
``check_models(...)`` are its steps.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import torch

from .config import AttentionConfig, parse_dtype
from .modules import BloomSelfAttention, DeepSpeedSelfAttention

__all__ = ["BUILTIN_CONFIG", "HF_FAMILIES", "Check", "ExportResult", "build_module", "export_models",
           "check_models", "export_main", "add_arguments", "run", "main"]

#: The built-in small BLOOM-like layer of `dsattn export` with no arguments.
BUILTIN_CONFIG = dict(hidden_size=256, heads=8, dtype="float16", bigscience_bloom=True, epsilon=1e-5,
                      max_out_tokens=64)
#: Hugging Face model_type -> (transformers config class, layer class) built by --hf-config.
HF_FAMILIES = {"bloom": ("BloomConfig", "bloom.modeling_bloom.BloomBlock"),
               "llama": ("LlamaConfig", "llama.modeling_llama.LlamaDecoderLayer"),
               "gpt_neox": ("GPTNeoXConfig", "gpt_neox.modeling_gpt_neox.GPTNeoXLayer"),
               "gptj": ("GPTJConfig", "gptj.modeling_gptj.GPTJBlock"),
               "mistral": ("MistralConfig", "mistral.modeling_mistral.MistralDecoderLayer"),
               "qwen2": ("Qwen2Config", "qwen2.modeling_qwen2.Qwen2DecoderLayer")}
MODEL_NAME = "dsattn_attention.onnx"


@dataclass
class Check:
    """One comparison: reference evaluator vs the PyTorch module, one output at one shape."""

    case: str
    output: str
    max_abs: float
    max_rel: float
    tol: float
    passed: bool


@dataclass
class ExportResult:
    model_paths: list[str]
    config: AttentionConfig
    description: str
    seed: int
    checker_ok: bool = False
    checks: list[Check] = field(default_factory=list)
    validations: list = field(default_factory=list)  # dsattn.tools.validate reports (ONNX Runtime)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (self.checker_ok and bool(self.checks) and all(c.passed for c in self.checks)
                and all(v.passed for v in self.validations))


# ------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------

def _load_json(path, what: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {str(path)!r}: expected a JSON object, got {type(d).__name__}")
    return d


def _hf_layer(hf_config_path, seed: int):
    d = _load_json(hf_config_path, "--hf-config")
    mt = d.get("model_type")
    if mt not in HF_FAMILIES:
        raise ValueError(f"--hf-config {str(hf_config_path)!r}: model_type={mt!r} is not supported "
                         f"(supported: {', '.join(HF_FAMILIES)})")
    import importlib

    import transformers

    cfg_name, layer_path = HF_FAMILIES[mt]
    mod_name, layer_name = layer_path.rsplit(".", 1)
    cfg_cls = getattr(transformers, cfg_name)
    layer_cls = getattr(importlib.import_module(f"transformers.models.{mod_name}"), layer_name)
    kw = {k: v for k, v in d.items() if k not in ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")}
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    layer = layer_cls(cfg, layer_idx=0).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # HF zero-inits biases: random values so every term is exercised
        for p in layer.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return layer, f"{mt} layer from {hf_config_path} (random weights)"


def build_module(*, config: Optional[str] = None, hf_config: Optional[str] = None, dtype=None, int8: bool = False,
                 group_size: int = 0, seed: int = 0) -> tuple[DeepSpeedSelfAttention, str]:
    """The module to export: from an AttentionConfig JSON file, a HF config.json (a random layer
    of that family through from_hf), or the built-in BLOOM-like config. dtype overrides the
    file's (int8 weights: ``int8=True``). Returns (module in eval mode, description)."""
    if config is not None and hf_config is not None:
        raise ValueError("give at most one of config / hf_config")
    dt = parse_dtype(dtype, "dtype") if dtype is not None else None
    if dt == torch.int8:
        raise ValueError("dtype int8: use int8=True with a float dtype for the activations")
    torch.manual_seed(seed)
    if hf_config is not None:
        from .convert import from_hf

        layer, desc = _hf_layer(hf_config, seed)
        m = from_hf(layer)
        if dt is not None:
            m = m.to(dt)
    else:
        if config is not None:
            d = _load_json(config, "--config")
            desc = f"AttentionConfig from {config}"
        else:
            d = dict(BUILTIN_CONFIG)
            desc = "built-in BLOOM-like config"
        if dt is not None:
            d["dtype"] = str(dt).removeprefix("torch.")
        cfg = AttentionConfig.from_dict(d)
        m = (BloomSelfAttention if cfg.bigscience_bloom else DeepSpeedSelfAttention)(cfg)
    if int8:
        from .quant import quantize_int8

        if m.quantized:
            raise ValueError("the config already has dtype int8; drop --int8 or set a float dtype")
        quantize_int8(m, group_size)
    elif group_size:
        raise ValueError(f"group_size={group_size} needs int8=True")
    return m.eval(), desc


def export_models(module: DeepSpeedSelfAttention, out_dir, *, batch: int, seq: int, capacity: int) -> list[str]:
    """Export ``module`` into ``out_dir``; returns the exported model paths (one model with
    dynamic batch and sequence axes, valid for prefill and decode)."""
    from .onnx_export import export_onnx

    return [export_onnx(module, Path(out_dir) / MODEL_NAME, batch=batch, seq=seq, capacity=capacity, dynamic=True)]


def _tolerance(T: torch.dtype) -> float:
    # The evaluator runs the same fp32 reference ops as the module; only the standard ops outside
    # them (MatMul/Add in T) may round differently: one ulp-scale of T relative to the output.
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[T]


def check_models(paths: Sequence[str], module: DeepSpeedSelfAttention, *, batch: int, seq: int, capacity: int,
                 seed: int, log: Callable[[str], None] = print) -> tuple[bool, list[Check]]:
    """onnx.checker + reference evaluator vs the module: a prefill of ``seq`` tokens on a
    left-padded batch, then one decode step that consumes the prefill's cache."""
    import onnx

    from .ops import reference_evaluator

    ok = True
    checks: list[Check] = []
    T = module.activation_dtype
    for path in paths:
        try:
            onnx.checker.check_model(path, full_check=True)
            log(f"  onnx.checker: ok ({path})")
        except Exception as e:  # report, exit non-zero
            ok = False
            log(f"  onnx.checker: FAILED ({path}): {e}")
            continue
        ev = reference_evaluator(path)
        g = torch.Generator().manual_seed(seed)
        hid = module.config.hidden_size
        cache = module.new_cache(batch, capacity, start_pos=[b % max(seq - 1, 1) for b in range(batch)])
        feeds_cache = (cache.key.clone(), cache.value.clone(), cache.seq_lens.clone(), cache.start_pos.clone())
        for case, S in (("prefill", seq), ("decode", 1)):
            x = torch.randn(batch, S, hid, generator=g).to(T)
            with torch.no_grad():
                out, new = module(x, cache)
            k, v, sl, sp = feeds_cache
            got = ev.run(None, {"hidden_states": _np(x), "past_key": _np(k), "past_value": _np(v),
                                "seq_lens": sl.numpy(), "start_pos": sp.numpy()})
            for name, a, e in zip(("output", "present_key", "present_value"), got, (out, new.key, new.value)):
                a32, e32 = np.asarray(a, dtype=np.float32), e.float().numpy()
                err = float(np.abs(a32 - e32).max()) if a32.shape == e32.shape else float("inf")
                rel = err / max(float(np.abs(e32).max()), 1e-30)
                tol = _tolerance(T)
                good = a32.shape == e32.shape and not np.isnan(a32).any() and rel <= tol
                checks.append(Check(f"{case} B={batch} S={S}", name, err, rel, tol, good))
                log(f"  {case:7s} B={batch} S={S:<3d} {name:13s} max abs err {err:.3g}  rel {rel:.3g}  "
                    f"(tol {tol:g}) {'ok' if good else 'MISMATCH'}")
            # the decode step continues from what the exported model wrote
            cache = new
            feeds_cache = (_from_np(got[1], T), _from_np(got[2], T), new.seq_lens.clone(), new.start_pos.clone())
    return ok, checks


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().cpu().numpy()


def _from_np(a: np.ndarray, T: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32)).to(T)


def export_main(*, config: Optional[str] = None, hf_config: Optional[str] = None, dtype=None, int8: bool = False,
                group_size: int = 0, batch: int = 2, seq: int = 8, capacity: int = 32, out="build",
                seed: Optional[int] = None, log: Callable[[str], None] = print,
                ort_providers: Sequence[str] = ("cpu",)) -> ExportResult:
    """The whole `dsattn export` job; returns an ExportResult (``.passed``, ``.model_paths``).
    ``ort_providers``: ONNX Runtime providers that run the lowered model as a last check
    (``()`` skips it)."""
    for name, v in (("batch", batch), ("seq", seq), ("capacity", capacity)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if capacity < seq + 1:
        raise ValueError(f"capacity={capacity} must be >= seq + 1 = {seq + 1} (prefill, then one decode step)")
    if seq < 2:
        raise ValueError(f"seq must be >= 2 for the prefill check, got {seq}")
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    # The exporter logs optional-dependency notes (torchvision) and deprecation warnings of its
    # own internals; they are not about this export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        return _export_main(config, hf_config, dtype, int8, group_size, batch, seq, capacity, out, seed, log,
                            tuple(ort_providers))


def module_dtype_is_bf16(path: str) -> bool:
    """True when the exported model's activations are bfloat16."""
    m = onnx.load(path, load_external_data=False)
    return any(i.name == "hidden_states" and i.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
               for i in m.graph.input)


def validate_models(paths: Sequence[str], *, providers: Sequence[str], batch: int, seq: int, seed: int,
                    log: Callable[[str], None], step: str = "") -> list:
    """Lower each exported model for ONNX Runtime, run it on ``providers`` and compare it with the
    reference (dsattn.tools.validate); returns the ValidationReports."""
    from dsattn.tools.validate import validate

    reports = []
    providers = tuple(providers)
    for p in paths:
        if module_dtype_is_bf16(p) and all(x.lower() == "cpu" for x in providers):
            # Known ONNX Runtime limit, not a dsattn failure: its CPU provider has no bfloat16
            # MatMul/Add kernels (the lowered dsattn nodes themselves compute in float32).
            log(f"{step} skipped: ONNX Runtime's CPU provider has no bfloat16 MatMul kernels; "
                "validate this model with --providers cuda")
            continue
        log(f"{step} ONNX Runtime ({', '.join(providers)}) on the lowered {os.path.basename(p)} vs the reference")
        rep = validate(p, providers=tuple(providers), batch=batch, seq=seq, seed=seed)
        for line in rep.table().splitlines():
            log("  " + line)
        reports.append(rep)
    return reports


def _export_main(config, hf_config, dtype, int8, group_size, batch, seq, capacity, out, seed, log,
                 ort_providers=("cpu",)) -> ExportResult:
    t0 = time.perf_counter()
    steps = 4 if ort_providers else 3
    log(f"[1/{steps}] building module (seed={seed})")
    module, desc = build_module(config=config, hf_config=hf_config, dtype=dtype, int8=int8,
                                group_size=group_size, seed=seed)
    c = module.config
    log(f"  {desc}: {type(module).__name__}({module.extra_repr()}), dtype {str(module.activation_dtype)[6:]}"
        + (f", int8 weights (group_size={module.qkv_group_size})" if module.quantized else ""))
    log(f"[2/{steps}] exporting to ONNX in {out} (dynamic batch/seq, capacity {capacity})")
    t1 = time.perf_counter()
    paths = export_models(module, out, batch=batch, seq=seq, capacity=capacity)
    log(f"  wrote {', '.join(paths)} in {time.perf_counter() - t1:.1f} s")
    res = ExportResult(paths, c, desc, seed)
    log(f"[3/{steps}] checking: onnx.checker, ONNX reference evaluator vs PyTorch module")
    res.checker_ok, res.checks = check_models(paths, module, batch=batch, seq=seq, capacity=capacity, seed=seed, log=log)
    if ort_providers:
        res.validations = validate_models(paths, providers=ort_providers, batch=batch, seq=seq, seed=seed, log=log,
                                          step=f"[4/{steps}]")
    res.seconds = time.perf_counter() - t0
    log(f"{'PASSED' if res.passed else 'FAILED'} in {res.seconds:.1f} s")
    return res


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _existing_file(s: str) -> str:
    if not os.path.isfile(s):
        raise argparse.ArgumentTypeError(f"no such file: {s!r}")
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export a dsattn attention layer to ONNX with dsattn custom ops, run onnx.checker and compare "
        "the ONNX reference evaluator with the PyTorch module at a prefill and a decode shape. Without "
        "--config/--hf-config: a built-in small BLOOM-like layer (hidden 256, 8 heads, alibi, float16).")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", type=_existing_file,
                     help="JSON object of AttentionConfig fields (e.g. {\"hidden_size\": 512, \"heads\": 8})")
    src.add_argument("--hf-config", metavar="FILE", type=_existing_file,
                     help="Hugging Face config.json (model_type bloom, llama, gpt_neox, gptj, mistral or qwen2): "
                          "a random-weight layer 0 of that family, converted with from_hf")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="activation/weight dtype (default: the config's; built-in: float16)")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only quantization (quantize_int8)")
    parser.add_argument("--group-size", type=_nonneg_int, default=0, metavar="N",
                        help="int8 K-group size (0 = per output channel; needs --int8)")
    parser.add_argument("--batch", type=_positive_int, default=2, help="batch size of the checks (default 2)")
    parser.add_argument("--seq", type=_positive_int, default=8, help="prompt length of the prefill check (default 8)")
    parser.add_argument("--capacity", type=_positive_int, default=32, help="KV-cache capacity Tmax (default 32)")
    parser.add_argument("--out", default="build", metavar="DIR", help="output folder (default ./build)")
    parser.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: fresh, printed)")
    parser.add_argument("--providers", default="cpu", metavar="LIST",
                        help="ONNX Runtime providers that validate the lowered model at the end (default cpu; "
                             "e.g. cpu,cuda)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the ONNX Runtime validation of the lowered model")
    parser.set_defaults(_export_parser=parser)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._export_parser
    if args.group_size and not args.int8:
        parser.error(f"argument --group-size: {args.group_size} needs --int8")
    if args.seq < 2:
        parser.error(f"argument --seq: {args.seq} must be >= 2 (the prefill check)")
    if args.capacity < args.seq + 1:
        parser.error(f"argument --capacity: {args.capacity} must be >= --seq + 1 = {args.seq + 1}")
    try:
        res = export_main(config=args.config, hf_config=args.hf_config, dtype=args.dtype, int8=args.int8,
                          group_size=args.group_size, batch=args.batch, seq=args.seq, capacity=args.capacity,
                          out=args.out, seed=args.seed,
                          ort_providers=() if args.no_validate else tuple(p for p in args.providers.split(",") if p))
    except (ValueError, TypeError, NotImplementedError) as e:
        opt = "--config" if args.config else "--hf-config" if args.hf_config else "--int8/--group-size"
        msg = str(e)
        parser.error(msg if msg.startswith("--") else f"{opt}: {msg}")
    return 0 if res.passed else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dsattn export")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
