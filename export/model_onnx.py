"""ONNX export of a whole DsattnDecoder, and ``export_hf_model``: checkpoint folder -> model.onnx.

Graph I/O (the names users know from Optimum / onnxruntime-genai where they fit):

| name | type / shape | |
|---|---|---|
| ``input_ids`` | int64 [B, S] | new tokens (left-padded prompts in the first call) |
| ``seq_lens`` | int32 [B] | tokens already cached per row (0 for a fresh prompt) |
| ``start_pos`` | int32 [B] | first real token of each row (left padding) |
| ``past_key.{i}``, ``past_value.{i}`` | T [B, Hkv, Tmax, D] | layer i's cache buffers |
| ``logits`` | T [B, S, vocab] or [B, 1, vocab] | all positions, or the last one (``logits="last"``) |
| ``present_key.{i}``, ``present_value.{i}`` | T [B, Hkv, Tmax, D] | the caches with the new tokens written |

B and S are dynamic; Tmax is the capacity chosen at export. Each ``present_*.{i}`` is produced
directly by layer i's ``dsattn::SoftmaxContext`` from ``past_*.{i}`` (checked after the export),
so a runtime may bind both to one buffer: TensorRT aliases them in the plugin, ONNX Runtime writes
the lowered ScatterND in place when input and output share the buffer.

Models over 2 GB keep their weights in ``<model>.onnx.data`` (external data).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import onnx
import torch

from dsattn.fileio import write_bytes_atomic

from .model import TOKENIZER_FILES, DsattnDecoder, load_hf_model
from .onnx_export import OPSET, _ONNX_OF_TORCH, _post_process, register_onnx_schemas, translation_table

__all__ = ["export_decoder", "export_hf_model", "HFExportResult", "MODEL_FILE", "default_capacity",
           "CAPACITY_CAP", "input_names", "output_names"]

MODEL_FILE = "model.onnx"
#: Default capacity = the config's max positions, capped here: the caches of every layer are
#: allocated at full capacity for every row, so a 32k-position model would otherwise reserve
#: gigabytes per sequence by default.
CAPACITY_CAP = 4096
_EXTERNAL_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph


def input_names(num_layers: int) -> list[str]:
    names = ["input_ids", "seq_lens", "start_pos"]
    for i in range(num_layers):
        names += [f"past_key.{i}", f"past_value.{i}"]
    return names


def output_names(num_layers: int) -> list[str]:
    names = ["logits"]
    for i in range(num_layers):
        names += [f"present_key.{i}", f"present_value.{i}"]
    return names


def default_capacity(max_positions: Optional[int]) -> int:
    return min(max_positions or CAPACITY_CAP, CAPACITY_CAP)


class _Flat(torch.nn.Module):
    def __init__(self, model: DsattnDecoder):
        super().__init__()
        self.m = model

    def forward(self, input_ids, seq_lens, start_pos, past: list[torch.Tensor]):
        caches = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, new = self.m(input_ids, seq_lens, start_pos, caches)
        out = [logits]
        for k, v in new:
            out += [k, v]
        return tuple(out)


def _param_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _check_aliasing(model: onnx.ModelProto, num_layers: int) -> None:
    """Every present_*.{i} must come straight from a SoftmaxContext that reads past_*.{i}."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for i in range(num_layers):
        for kind, slot in (("key", 1), ("value", 2)):
            n = producer.get(f"present_{kind}.{i}")
            if n is None or n.op_type != "SoftmaxContext" or n.input[slot] != f"past_{kind}.{i}":
                raise RuntimeError(f"exported graph: present_{kind}.{i} is not SoftmaxContext output {slot} of "
                                   f"past_{kind}.{i} (got {n.op_type if n is not None else 'no producer'}); the "
                                   "cache could not be aliased")


def export_decoder(model: DsattnDecoder, path: Union[str, os.PathLike], *, capacity: int, logits: str = "all",
                   opset: int = OPSET, metadata: Optional[dict] = None) -> str:
    """Export ``model`` (see the module docstring for the graph I/O); returns the path written.

    capacity: Tmax of every cache; logits: "all" ([B, S, vocab]) or "last" ([B, 1, vocab]).
    ``metadata`` entries are added to the model's metadata_props (strings).
    """
    if not isinstance(model, DsattnDecoder):
        raise TypeError(f"model must be a DsattnDecoder, got {type(model).__name__}")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 2:
        raise ValueError(f"capacity must be an int >= 2, got {capacity!r}")
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' or 'last', got {logits!r}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(path)!r}")
    register_onnx_schemas()
    s = model.spec
    L, T, dev = s.num_layers, model.dtype, model.device
    B, S = 2, 2  # torch.export specializes sizes 0 and 1
    args = (torch.zeros(B, S, dtype=torch.int64, device=dev), torch.zeros(B, dtype=torch.int32, device=dev),
            torch.zeros(B, dtype=torch.int32, device=dev),
            [t for kv in model.new_caches(B, capacity) for t in kv])
    bd = torch.export.Dim("batch", min=1)
    sd = torch.export.Dim("seq", min=1, max=capacity)
    dyn = {"input_ids": {0: bd, 1: sd}, "seq_lens": {0: bd}, "start_pos": {0: bd}, "past": [{0: bd}] * (2 * L)}
    big = _param_bytes(model) > _EXTERNAL_THRESHOLD
    was = model.last_logits_only
    model.last_logits_only = logits == "last"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            prog = torch.onnx.export(_Flat(model).eval(), args, dynamo=True, input_names=input_names(L),
                                     output_names=output_names(L), dynamic_shapes=dyn, opset_version=opset,
                                     custom_translation_table=translation_table(), optimize=True, verbose=False)
    finally:
        model.last_logits_only = was
    from dsattn.fileio import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, check=lambda p: onnx.checker.check_model(str(p), full_check=True)) as tmp:
        # Saving straight from the exporter's IR keeps a >2 GB model out of one in-memory protobuf;
        # the graph (without its weights) is then fixed up and written over it, the data file
        # (``<name>.data`` beside it) unchanged.
        prog.save(str(tmp), external_data=big)
        del prog
        proto = onnx.load(str(tmp), load_external_data=False)
        proto = _post_process(proto, _ONNX_OF_TORCH[T], check_types=False)
        _check_aliasing(proto, L)
        for k, v in (metadata or {}).items():
            proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
        onnx.save_model(proto, str(tmp))
    stale = path.with_name(path.name + ".data")
    if not big and stale.exists():
        stale.unlink()  # the data file of an earlier, larger export at this path
    return str(path)


@dataclass
class HFExportResult:
    model_path: str
    description: str
    copied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model: Optional[DsattnDecoder] = None


def export_hf_model(hf_model, out, *, dtype=None, int8: bool = False, group_size: int = 0, int8_lm_head: bool = False,
                    capacity: Optional[int] = None, logits: str = "all",
                    log: Callable[[str], None] = print) -> HFExportResult:
    """The checkpoint folder ``hf_model`` -> ``out/model.onnx`` (the whole decoder), with its
    tokenizer files copied beside it.

    dtype: float32/float16/bfloat16 (default: the checkpoint's); int8: weight-only int8 for every
    linear layer (``int8_lm_head``: the LM head too); capacity: Tmax (default: the config's max
    positions, at most CAPACITY_CAP); logits: "all" or "last". ``log`` gets one line per stage and
    per layer. The result carries the DsattnDecoder that was exported (``.model``).
    """
    t0 = time.perf_counter()
    if group_size and not int8:
        raise ValueError(f"group_size={group_size} needs int8")
    if int8_lm_head and not int8:
        raise ValueError("int8_lm_head needs int8")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 2):
        raise ValueError(f"capacity must be an int >= 2, got {capacity!r}")
    out = Path(out)
    steps = 4
    log(f"[1/{steps}] loading {hf_model}")
    model = load_hf_model(hf_model, dtype=dtype, log=log)
    s = model.spec
    if int8:
        log(f"[2/{steps}] int8 weights for every linear layer{' and the LM head' if int8_lm_head else ''} "
            f"(group_size={group_size})")
        model.quantize_int8(group_size, lm_head=int8_lm_head)
    else:
        log(f"[2/{steps}] no quantization ({s.dtype})")
    cap = capacity or default_capacity(s.max_positions)
    if s.max_positions and cap > s.max_positions:
        log(f"  note: capacity {cap} exceeds the config's max positions {s.max_positions}")
    meta = {"dsattn.module": "DsattnDecoder", "dsattn.spec": s.to_json(), "dsattn.capacity": cap,
            "dsattn.logits": logits, "dsattn.int8": "" if not int8 else str(group_size),
            "dsattn.int8_lm_head": str(int(int8_lm_head)), "dsattn.hf_model": str(Path(hf_model).resolve())}
    log(f"[3/{steps}] exporting the whole decoder to ONNX: {s.num_layers} layers, capacity {cap}, "
        f"logits {logits}, dtype {s.dtype}")
    t1 = time.perf_counter()
    path = export_decoder(model, out / MODEL_FILE, capacity=cap, logits=logits, metadata=meta)
    extra = " + external data" if Path(path + ".data").exists() else ""
    log(f"  wrote {path}{extra} in {time.perf_counter() - t1:.1f} s")
    log(f"[4/{steps}] copying tokenizer files")
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(hf_model) / name
        if src.is_file():
            write_bytes_atomic(out / name, src.read_bytes())
            copied.append(name)
    log(f"  {', '.join(copied) if copied else 'none found (generate then needs --input-ids)'}")
    return HFExportResult(path, f"{s.model_type} decoder from {hf_model}", copied, time.perf_counter() - t0, model)
