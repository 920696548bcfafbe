"""The main job behind `dsattn export`: build a dsattn module, export it to ONNX, check the export,
then lower it and validate it on ONNX Runtime.

Each stage lives where its data flows (``dsattn.export`` builds and exports, ``dsattn.tools.lower``
and ``dsattn.tools.validate`` lower and compare); this module only chains them::

    build_module -> export_models -> check_models -> validate_models      (export_main runs all)

With no arguments the module is the built-in small BLOOM-like layer (``BUILTIN_CONFIG``: hidden
256, 8 heads of 32, alibi, LayerNorm eps 1e-5, float16, random weights), written to
``./build/dsattn_attention.onnx``: one model with dynamic batch and sequence axes.

``check_models`` runs ``onnx.checker`` and then holds the PyTorch module to the exported graph at a
prefill shape (left-padded batch) and at a decode step that consumes the cache the graph wrote:
the graph evaluated in fp32 by the ONNX reference evaluator is the truth, and the module's outputs
are compared with it by validate's comparator under the accuracy rule (so a module that drifted
from its export fails exactly as a runtime would).
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import torch

from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, quantize_int8
from dsattn.export.config import parse_dtype
from dsattn.export.convert import HF_FAMILIES, from_hf
from dsattn.export.onnx_export import export_onnx

from .validate import ReportRow, compare, reference, validate

__all__ = ["BUILTIN_CONFIG", "MODEL_NAME", "ExportResult", "build_module", "export_models", "check_models",
           "validate_models", "export_main"]

#: The built-in small BLOOM-like layer of `dsattn export` with no arguments.
BUILTIN_CONFIG = dict(hidden_size=256, heads=8, dtype="float16", bigscience_bloom=True, epsilon=1e-5,
                      max_out_tokens=64)
MODEL_NAME = "dsattn_attention.onnx"
# config.json keys that describe the checkpoint rather than the layer's architecture.
_HF_META_KEYS = ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype")


@dataclass
class ExportResult:
    model_paths: list[str]
    config: AttentionConfig
    description: str
    seed: int
    checker_ok: bool = False
    checks: list[ReportRow] = field(default_factory=list)  # the PyTorch module vs the exported graph
    validations: list = field(default_factory=list)  # ValidationReports (ONNX Runtime, lowered)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (self.checker_ok and bool(self.checks) and all(c.passed for c in self.checks)
                and all(v.passed for v in self.validations))


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------

def _load_json(path, what: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {str(path)!r}: not valid JSON (not UTF-8 text)") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {str(path)!r}: expected a JSON object, got {type(d).__name__}")
    return d


# Keys of real config.json files that carry no architecture (kept by transformers as they are).
_HF_EXTRA_KEYS = ("auto_map", "quantization_config", "task_specific_params")
# Sizes that must be positive ints (the layer would otherwise fail deep inside torch).
_HF_SIZES = ("hidden_size", "n_embd", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
             "intermediate_size", "n_inner", "num_hidden_layers", "n_layer", "vocab_size", "max_position_embeddings",
             "n_positions", "rotary_dim")


def _hf_check_fields(d: dict, cfg_cls, where: str) -> None:
    """A misspelled or unknown field would be kept by transformers as a stray attribute while the
    class default stays in place (a 'hiden_size' exports a 4096-wide layer): every field must be
    one the config class takes, or one transformers converts (legacy rope_theta/rope_scaling);
    values must have the default's type, sizes must be positive."""
    import difflib
    import inspect

    from transformers.utils import logging as hf_logging

    defaults = cfg_cls().to_dict()
    known = (set(defaults) | set(inspect.signature(cfg_cls.__init__).parameters)
             | set(getattr(cfg_cls, "attribute_map", {})) | set(_HF_META_KEYS) | set(_HF_EXTRA_KEYS))
    unknown = []
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the probes below are not the user's config
    try:
        for k, v in d.items():
            if k in known or k.startswith("_"):
                continue
            try:
                probe = cfg_cls(**{k: v}).to_dict()
            except Exception:  # transformers reads the key (and rejects this value): not unknown
                continue
            if {a: b for a, b in probe.items() if a != k} == {a: b for a, b in defaults.items() if a != k}:
                unknown.append(k)
    finally:
        hf_logging.set_verbosity(level)
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                 for k in unknown]
        raise ValueError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for "
                         f"{cfg_cls.__name__} (a misspelled field would leave the default in place)")
    attr_map = getattr(cfg_cls, "attribute_map", {})
    for k, v in d.items():
        ref = defaults.get(attr_map.get(k, k))
        bad = None
        if k in _HF_SIZES or attr_map.get(k) in _HF_SIZES:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                bad = "a positive integer"
        elif isinstance(ref, bool):
            bad = None if isinstance(v, bool) else "true or false"
        elif isinstance(ref, int):
            bad = None if v is None or (isinstance(v, int) and not isinstance(v, bool)) else "an integer"
        elif isinstance(ref, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            bad = None if ok or v is None else "a finite number"
        elif isinstance(ref, str):
            bad = None if isinstance(v, str) else "a string"
        if bad:
            raise ValueError(f"{where}: {k}={v!r} must be {bad}")


def _hf_dtype(d: dict, where: str) -> Optional[torch.dtype]:
    """The checkpoint's dtype (``torch_dtype``, ``dtype`` in newer files): the layer is built in it
    unless --dtype says otherwise."""
    v = d.get("dtype", d.get("torch_dtype"))
    if v is None:
        return None
    key = "dtype" if "dtype" in d else "torch_dtype"
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if not isinstance(v, str) or v.removeprefix("torch.") not in names:
        raise ValueError(f"{where}: {key}={v!r} is not supported (float32, float16 or bfloat16; or pass --dtype)")
    return names[v.removeprefix("torch.")]


def _hf_layer(hf_config_path, seed: int):
    """Layer 0 of the family named by a Hugging Face config.json, with random weights; returns
    (layer, description, the config's dtype or None)."""
    where = f"--hf-config {str(hf_config_path)!r}"
    d = _load_json(hf_config_path, "--hf-config")
    mt = d.get("model_type")
    if mt not in HF_FAMILIES:
        raise ValueError(f"{where}: model_type={mt!r} is not supported (supported: {', '.join(HF_FAMILIES)})")
    import transformers

    fam = HF_FAMILIES[mt]
    cfg_cls = getattr(transformers, fam.config_class)
    layer_cls = getattr(importlib.import_module(f"transformers.models.{fam.module}"), fam.layer_class)
    _hf_check_fields(d, cfg_cls, where)
    dtype = _hf_dtype(d, where)
    try:
        cfg = cfg_cls(**{k: v for k, v in d.items() if k not in _HF_META_KEYS})
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        layer = layer_cls(cfg, layer_idx=0).eval()
    except Exception as exc:  # transformers' own checks (e.g. heads not dividing hidden_size)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{where}: transformers cannot build a {mt} layer from it: {msg}") from None
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # HF zero-inits biases: random values so every term is exercised
        for p in layer.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return layer, f"{mt} layer from {hf_config_path} (random weights)", dtype


def build_module(*, config: Optional[str] = None, hf_config: Optional[str] = None, dtype=None, int8: bool = False,
                 group_size: int = 0, seed: int = 0, hf_model: Optional[str] = None,
                 layer: Optional[int] = None) -> tuple[DeepSpeedSelfAttention, str]:
    """The module to export: from an AttentionConfig JSON file, a HF config.json (a random layer
    of that family through from_hf), layer ``layer`` of a checkpoint folder ``hf_model`` (its real
    weights), or the built-in BLOOM-like config. dtype overrides the file's (int8 weights:
    ``int8=True``). Returns (module in eval mode, description)."""
    if sum(x is not None for x in (config, hf_config, hf_model)) > 1:
        raise ValueError("give at most one of config / hf_config / hf_model")
    if (hf_model is None) != (layer is None):
        raise ValueError("hf_model and layer go together (one layer of a checkpoint folder)")
    dt = parse_dtype(dtype, "dtype") if dtype is not None else None
    if dt == torch.int8:
        raise ValueError("dtype int8: use int8=True with a float dtype for the activations")
    torch.manual_seed(seed)
    if hf_model is not None:
        from dsattn.export.model import load_hf_layer

        m = load_hf_layer(hf_model, layer, dtype=dt)
        desc = f"layer {layer} of {hf_model} (its real weights)"
    elif hf_config is not None:
        hf_layer, desc, hf_dt = _hf_layer(hf_config, seed)
        m = from_hf(hf_layer)
        if dt is not None or hf_dt is not None:
            m = m.to(dt or hf_dt)
            desc += f", dtype {str(dt or hf_dt)[6:]} from " + ("--dtype" if dt is not None else "its torch_dtype")
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
        if m.quantized:
            raise ValueError("the config already has dtype int8; drop --int8 or set a float dtype")
        quantize_int8(m, group_size)
    elif group_size:
        raise ValueError(f"group_size={group_size} needs int8=True")
    return m.eval(), desc


# ------------------------------------------------------------------------------------------------
# export and check
# ------------------------------------------------------------------------------------------------

def export_models(module: DeepSpeedSelfAttention, out_dir, *, batch: int, seq: int, capacity: int) -> list[str]:
    """Export ``module`` into ``out_dir``; returns the exported model paths (one model with
    dynamic batch and sequence axes, valid for prefill and decode)."""
    return [export_onnx(module, Path(out_dir) / MODEL_NAME, batch=batch, seq=seq, capacity=capacity, dynamic=True)]


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.detach().cpu().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().cpu().numpy().copy()  # a snapshot: the module may update its cache in place


def check_models(paths: Sequence[str], module: DeepSpeedSelfAttention, *, batch: int, seq: int, capacity: int,
                 seed: int, log: Callable[[str], None] = print) -> tuple[bool, list[ReportRow]]:
    """onnx.checker, then the module against its exported graph (validate's reference and
    comparator): a prefill of ``seq`` tokens on a left-padded batch, then one decode step that
    consumes the cache the graph wrote. Returns (checker ok, one row per case and output)."""
    ok = True
    rows: list[ReportRow] = []
    T = module.activation_dtype
    for path in paths:
        try:
            onnx.checker.check_model(path, full_check=True)
            log(f"  onnx.checker: ok ({path})")
        except Exception as e:  # report, exit non-zero
            ok = False
            log(f"  onnx.checker: FAILED ({path}): {e}")
            continue
        model = onnx.load(path)
        g = torch.Generator().manual_seed(seed)
        cache = module.new_cache(batch, capacity, start_pos=[b % max(seq - 1, 1) for b in range(batch)])
        past = (_np(cache.key), _np(cache.value))
        for case, S in (("prefill", seq), ("decode", 1)):
            x = torch.randn(batch, S, module.config.hidden_size, generator=g).to(T)
            feeds = {"hidden_states": _np(x), "past_key": past[0], "past_value": past[1],
                     "seq_lens": _np(cache.seq_lens), "start_pos": _np(cache.start_pos)}
            ref = reference(model, feeds)
            with torch.no_grad():
                out, cache = module(x, cache)
            got = {"output": _np(out), "present_key": _np(cache.key), "present_value": _np(cache.value)}
            label = f"{case} B={batch} S={S}"
            for r in compare(label, "pytorch", ref, got):
                rows.append(r)
                log(f"  {case:7s} B={batch} S={S:<3d} {r.output:13s} max abs err {r.max_abs:.3g}  "
                    f"(atol {r.atol:.3g}) {'ok' if r.passed else 'MISMATCH'}")
            # the graph's decode step continues from the cache it wrote (the module from its own)
            past = (ref.in_t["present_key"], ref.in_t["present_value"])
    return ok, rows


def _is_bf16(path: str) -> bool:
    """True when the exported model's activations are bfloat16."""
    m = onnx.load(path, load_external_data=False)
    return any(i.name == "hidden_states" and i.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
               for i in m.graph.input)


def validate_models(paths: Sequence[str], *, providers: Sequence[str], batch: int, seq: int, seed: int,
                    log: Callable[[str], None], step: str = "") -> list:
    """Lower each exported model for ONNX Runtime, run it on ``providers`` and compare it with the
    reference (dsattn.tools.validate); returns the ValidationReports."""
    reports = []
    providers = tuple(providers)
    for p in paths:
        if _is_bf16(p) and all(x.lower() == "cpu" for x in providers):
            # Known ONNX Runtime limit, not a dsattn failure: its CPU provider has no bfloat16
            # MatMul/Add kernels (the lowered dsattn nodes themselves compute in float32).
            log(f"{step} skipped: ONNX Runtime's CPU provider has no bfloat16 MatMul kernels; "
                "validate this model with --providers cuda")
            continue
        log(f"{step} ONNX Runtime ({', '.join(providers)}) on the lowered {os.path.basename(p)} vs the reference")
        rep = validate(p, providers=providers, batch=batch, seq=seq, seed=seed)
        for line in rep.table().splitlines():
            log("  " + line)
        reports.append(rep)
    return reports


# ------------------------------------------------------------------------------------------------
# the whole job
# ------------------------------------------------------------------------------------------------

def export_main(*, config: Optional[str] = None, hf_config: Optional[str] = None, dtype=None, int8: bool = False,
                group_size: int = 0, batch: int = 2, seq: int = 8, capacity: int = 32, out="build",
                seed: Optional[int] = None, log: Callable[[str], None] = print,
                ort_providers: Sequence[str] = ("cpu",), hf_model: Optional[str] = None,
                layer: Optional[int] = None) -> ExportResult:
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
                            tuple(ort_providers), hf_model, layer)


def _export_main(config, hf_config, dtype, int8, group_size, batch, seq, capacity, out, seed, log,
                 ort_providers, hf_model=None, layer=None) -> ExportResult:
    t0 = time.perf_counter()
    steps = 4 if ort_providers else 3
    log(f"[1/{steps}] building module (seed={seed})")
    module, desc = build_module(config=config, hf_config=hf_config, dtype=dtype, int8=int8,
                                group_size=group_size, seed=seed, hf_model=hf_model, layer=layer)
    log(f"  {desc}: {type(module).__name__}({module.extra_repr()}), dtype {str(module.activation_dtype)[6:]}"
        + (f", int8 weights (group_size={module.qkv_group_size})" if module.quantized else ""))
    log(f"[2/{steps}] exporting to ONNX in {out} (dynamic batch/seq, capacity {capacity})")
    t1 = time.perf_counter()
    paths = export_models(module, out, batch=batch, seq=seq, capacity=capacity)
    log(f"  wrote {', '.join(paths)} in {time.perf_counter() - t1:.1f} s")
    res = ExportResult(paths, module.config, desc, seed)
    log(f"[3/{steps}] checking: onnx.checker, PyTorch module vs the exported graph (ONNX reference evaluator)")
    res.checker_ok, res.checks = check_models(paths, module, batch=batch, seq=seq, capacity=capacity, seed=seed,
                                              log=log)
    if ort_providers:
        res.validations = validate_models(paths, providers=ort_providers, batch=batch, seq=seq, seed=seed, log=log,
                                          step=f"[4/{steps}]")
    res.seconds = time.perf_counter() - t0
    log(f"{'PASSED' if res.passed else 'FAILED'} in {res.seconds:.1f} s")
    return res
