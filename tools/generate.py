"""Text generation with an exported whole decoder, on every runtime: ``dsattn generate`` and
``generate(...)``.

A runtime is a small class (``Runtime``) that owns the KV caches of one batch and runs one call of
the decoder graph (graph I/O of ``dsattn.export.model_onnx``):

    rt = RUNTIMES["ort"](ExportedModel.open("out/model.onnx"), device="cpu")
    cache = rt.new_cache(batch)
    logits = rt.forward(input_ids, seq_lens, start_pos, cache)   # [B, vocab] float32, last position

``forward`` takes CPU tensors (input_ids int64 [B, S], seq_lens / start_pos int32 [B]), writes the
new keys and values into ``cache`` in place and returns the last position's logits on the host.
Runtimes: ``torch`` (the PyTorch modules rebuilt from the checkpoint the model was exported from),
``ort`` (ONNX Runtime on the lowered model, CPU or CUDA), ``ort-dsattn`` (ONNX Runtime CUDA on the
exported model with the dsattn custom-op library), ``trt`` (a TensorRT plan). More can be
added with ``register_runtime(name, cls)``.

On a GPU the caches stay on the device across steps: ONNX Runtime gets each cache buffer bound as
both the ``past_*`` input and the ``present_*`` output (I/O binding; the lowered ScatterND writes
in place), TensorRT binds the aliased outputs to the same buffers. Only input_ids, seq_lens,
start_pos and the logits cross to and from the host.

Generation (``generate``): prompts are left-padded into one batch (``start_pos`` = padding of each
row, ``seq_lens`` = 0), one prefill call, then one call per new token for the whole batch. Greedy by
default; sampling with temperature, top-k, top-p (applied in that order, as transformers does) and
a seed. A row stops at its EOS token (it keeps being fed the pad token, its output is ignored);
generation ends when every row stopped or ``max_new_tokens`` were produced. A step that would write
past the cache capacity is refused before it runs (``CapacityError`` naming the rows and lengths,
carrying what was generated so far); nothing is written into any row's cache by a refused step.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .cli import positive_int

__all__ = ["ExportedModel", "Runtime", "TorchRuntime", "OrtRuntime", "OrtDsattnRuntime", "TrtRuntime", "RUNTIMES",
           "register_runtime", "make_runtime", "GenerationResult", "CapacityError", "generate", "left_pad",
           "add_arguments", "run"]


class CapacityError(RuntimeError):
    """A step would write past the KV-cache capacity. ``partial`` holds the result so far."""

    def __init__(self, message: str, partial: "GenerationResult"):
        super().__init__(message)
        self.partial = partial


# ------------------------------------------------------------------------------------------------
# the exported model
# ------------------------------------------------------------------------------------------------

@dataclass
class ExportedModel:
    """An exported whole decoder: its .onnx path and what the export recorded about it."""

    path: Path
    spec: Any  # dsattn.export.model.DecoderSpec
    capacity: int
    logits: str  # "all" or "last"
    int8_group_size: Optional[int]
    int8_lm_head: bool
    hf_model: Optional[str]
    dtype: torch.dtype

    @property
    def folder(self) -> Path:
        return self.path.parent

    @classmethod
    def open(cls, path) -> "ExportedModel":
        """``path``: the exported .onnx file, or the folder holding one model.onnx."""
        import onnx

        from dsattn.export.model import DecoderSpec

        from dsattn.fileio import load_onnx

        p = Path(path)
        if p.is_dir():
            cands = [p / "model.onnx"] if (p / "model.onnx").is_file() else sorted(
                f for f in p.glob("*.onnx") if not f.name.endswith(".ort.onnx"))
            if len(cands) != 1:
                raise ValueError(f"MODEL {str(p)!r}: expected one exported .onnx in the folder, found "
                                 f"{[c.name for c in cands] or 'none'}")
            p = cands[0]
        if not p.exists():
            raise ValueError(f"MODEL {str(p)!r}: no such file or folder")
        m = load_onnx(p, "MODEL", load_external_data=False)
        meta = {e.key: e.value for e in m.metadata_props}
        if meta.get("dsattn.module") != "DsattnDecoder" or "dsattn.spec" not in meta:
            raise ValueError(f"MODEL {str(p)!r}: not a whole decoder exported by `dsattn export --hf-model` "
                             f"(metadata dsattn.module={meta.get('dsattn.module')!r})")
        spec = DecoderSpec.from_json(meta["dsattn.spec"])
        from dsattn.export.config import parse_dtype

        return cls(path=p, spec=spec, capacity=int(meta["dsattn.capacity"]), logits=meta.get("dsattn.logits", "all"),
                   int8_group_size=int(meta["dsattn.int8"]) if meta.get("dsattn.int8") else None,
                   int8_lm_head=meta.get("dsattn.int8_lm_head") == "1", hf_model=meta.get("dsattn.hf_model"),
                   dtype=parse_dtype(spec.dtype))


# ------------------------------------------------------------------------------------------------
# runtimes
# ------------------------------------------------------------------------------------------------

class Runtime:
    """Runs one decoder call at a time over caches it allocates (see the module docstring).

    Subclasses set ``name``, ``capacity``, ``vocab_size`` and implement ``new_cache`` and
    ``forward``; ``forward`` must validate nothing that the graph itself checks, and must leave every
    cache untouched when it raises.
    """

    name = "?"
    capacity: int
    vocab_size: int

    def new_cache(self, batch: int) -> Any:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, seq_lens: torch.Tensor, start_pos: torch.Tensor, cache: Any) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda': no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)")
    return torch.device(device)


class TorchRuntime(Runtime):
    """The PyTorch modules (reference ops). From an ExportedModel it rebuilds the DsattnDecoder from
    the checkpoint folder the model was exported from (same dtype and int8 settings)."""

    name = "torch"

    def __init__(self, model, *, device: str = "cpu", capacity: Optional[int] = None):
        from dsattn.export.model import DsattnDecoder, load_hf_model

        dev = _device(device)
        if isinstance(model, DsattnDecoder):
            if capacity is None:
                raise ValueError("capacity is required with a DsattnDecoder")
            dec = model
        else:
            if not isinstance(model, ExportedModel):
                model = ExportedModel.open(model)
            src = model.hf_model
            if not src or not Path(src).is_dir():
                raise ValueError(f"runtime torch: the checkpoint folder the model was exported from ({src!r}, "
                                 f"metadata dsattn.hf_model of {model.path}) is not here; the torch runtime rebuilds "
                                 "the modules from it")
            dec = load_hf_model(src, dtype=model.dtype)
            if model.int8_group_size is not None:
                dec.quantize_int8(model.int8_group_size, lm_head=model.int8_lm_head)
            capacity = model.capacity if capacity is None else capacity
        self.model = dec.to(dev).eval()
        self.model.last_logits_only = True
        self.capacity, self.vocab_size, self.device = int(capacity), dec.spec.vocab_size, dev

    def new_cache(self, batch: int) -> list:
        return [list(kv) for kv in self.model.new_caches(batch, self.capacity)]

    @torch.no_grad()
    def forward(self, input_ids, seq_lens, start_pos, cache):
        d = self.device
        logits, new = self.model(input_ids.to(d), seq_lens.to(d), start_pos.to(d), [tuple(kv) for kv in cache])
        for slot, kv in zip(cache, new):
            slot[0], slot[1] = kv
        return logits[:, -1].float().cpu()



def _onnx_elem(dtype: torch.dtype) -> int:
    from onnx import TensorProto

    return {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
            torch.bfloat16: TensorProto.BFLOAT16, torch.int64: TensorProto.INT64,
            torch.int32: TensorProto.INT32}[dtype]


def lowered_model(model: ExportedModel):
    """The lowered model (standard ONNX ops) for ONNX Runtime: a path to ``<name>.ort.onnx``, written
    beside the export once and reused while it is newer than the export (it references the
    export's external data file, if any, instead of copying the weights); or, where that folder is
    not writable and the model has no external data, the lowered ModelProto itself."""
    import onnx

    from dsattn.fileio import save_onnx_atomic
    from dsattn.tools.lower import lower_for_ort

    out = model.path.with_name(model.path.stem + ".ort.onnx")
    if out.is_file() and out.stat().st_mtime >= model.path.stat().st_mtime:
        return str(out)
    proto = onnx.load(str(model.path), load_external_data=False)
    lowered = lower_for_ort(proto)
    try:
        save_onnx_atomic(lowered, out, external_data=False)
    except OSError as e:  # dsattn.fileio.WriteError included
        if any(t.external_data for t in proto.graph.initializer):
            raise RuntimeError(f"runtime ort: cannot write the lowered model {str(out)!r} beside a model with "
                               f"external data ({e})") from None
        return lowered
    return str(out)


class OrtRuntime(Runtime):
    """ONNX Runtime on the lowered model (``lower_for_ort``), CPU or CUDA. Caches are torch tensors
    on the device bound as both past_* input and present_* output (I/O binding), so ONNX Runtime
    updates them in place and they never leave the device."""

    name = "ort"

    def __init__(self, model, *, device: str = "cpu"):
        from dsattn.tools.validate import make_session

        if not isinstance(model, ExportedModel):
            model = ExportedModel.open(model)
        self.model = model
        self.device = _device(device)
        if model.dtype == torch.bfloat16 and self.device.type == "cpu":
            raise ValueError("runtime ort on cpu: ONNX Runtime's CPU provider has no bfloat16 MatMul kernels; "
                             "use --device cuda or a float32/float16 export")
        self.sess = make_session(lowered_model(model), "cuda" if self.device.type == "cuda" else "cpu")
        self.capacity, self.vocab_size = model.capacity, model.spec.vocab_size
        self.num_layers = model.spec.num_layers

    def new_cache(self, batch: int) -> list:
        s = self.model.spec
        shape = (batch, s.num_kv_heads, self.capacity, s.head_size)
        # Zeros, not garbage: the lowered attention multiplies masked probabilities (0) with every
        # cached value, and 0 * NaN from uninitialized memory would be NaN.
        return [[torch.zeros(shape, dtype=self.model.dtype, device=self.device) for _ in range(2)]
                for _ in range(s.num_layers)]

    def _bind(self, binding, name, t: torch.Tensor, output: bool) -> None:
        # ONNX Runtime reads and writes the tensor's own memory: a contiguous copy made here would
        # be freed before the run (and an output written into it lost).
        if not t.is_contiguous():
            raise ValueError(f"runtime ort: {name} must be a contiguous tensor")
        dev = "cuda" if t.is_cuda else "cpu"
        idx = t.device.index or 0
        fn = binding.bind_output if output else binding.bind_input
        fn(name, dev, idx, _onnx_elem(t.dtype), list(t.shape), t.data_ptr())

    def forward(self, input_ids, seq_lens, start_pos, cache):
        d = self.device
        B, S = input_ids.shape
        feeds = {"input_ids": input_ids.to(d, torch.int64).contiguous(),
                 "seq_lens": seq_lens.to(d, torch.int32).contiguous(),
                 "start_pos": start_pos.to(d, torch.int32).contiguous()}
        logits = torch.empty((B, S if self.model.logits == "all" else 1, self.vocab_size), dtype=self.model.dtype,
                             device=d)
        b = self.sess.io_binding()
        for name, t in feeds.items():
            self._bind(b, name, t, False)
        for i, (k, v) in enumerate(cache):
            self._bind(b, f"past_key.{i}", k, False)
            self._bind(b, f"past_value.{i}", v, False)
            self._bind(b, f"present_key.{i}", k, True)
            self._bind(b, f"present_value.{i}", v, True)
        self._bind(b, "logits", logits, True)
        if d.type == "cuda":
            torch.cuda.synchronize(d)  # the feeds were copied on torch's stream; ORT runs on its own
        try:
            self.sess.run_with_iobinding(b)
        except Exception as e:  # onnxruntime raises its own exception types
            raise RuntimeError(f"runtime ort: {e}") from None
        return logits[:, -1].float().cpu()


class OrtDsattnRuntime(OrtRuntime):
    """The exported model itself (not lowered) on ONNX Runtime CUDA with the dsattn custom ops
    (libdsattn_ort.so through ``dsattn.tools.ort_runtime``: the TensorRT plugins' kernels). Caches
    are bound as both past_* and present_* (I/O binding), so SoftmaxContext appends in place."""

    name = "ort-dsattn"

    def __init__(self, model, *, device: str = "cuda", library: Optional[str] = None):
        from dsattn.tools.ort_runtime import make_session

        if device != "cuda":
            raise ValueError(f"runtime ort-dsattn runs on cuda only, got --device {device}")
        if not isinstance(model, ExportedModel):
            model = ExportedModel.open(model)
        self.model = model
        self.device = _device(device)
        self.sess = make_session(str(model.path), library=library)
        self.capacity, self.vocab_size = model.capacity, model.spec.vocab_size
        self.num_layers = model.spec.num_layers


class TrtRuntime(Runtime):
    """A TensorRT plan built from the exported model (``dsattn build-engine``), run with the dsattn
    plugin library through ``EngineRunner``. Each present_* output is bound to the buffer of the
    past_* input it aliases (``EngineRunner.aliases``), so the plugin appends to the caches in
    place; unlike ``EngineRunner.run`` (which protects the caller's arrays with a private copy),
    the caches here belong to the runtime and persist on the device across calls."""

    name = "trt"

    def __init__(self, model, *, device: str = "cuda", engine: Optional[str] = None, plugins: Sequence[str] = ()):
        from dsattn.engines.build import import_tensorrt

        if not isinstance(model, ExportedModel):
            model = ExportedModel.open(model)
        if device != "cuda":
            raise ValueError(f"runtime trt runs on cuda only, got device {device!r}")
        import_tensorrt()  # a clear ImportError when TensorRT is missing
        self.device = _device(device)
        plan = Path(engine) if engine else model.path.with_suffix(".plan")
        if not plan.is_file():
            raise ValueError(f"runtime trt: engine plan {str(plan)!r} does not exist (build it with "
                             f"`dsattn build-engine {model.path} --plugins LIB`, or pass --engine)")
        if not plugins:
            raise ValueError("runtime trt: --plugins LIB (libdsattn_plugins.so) is required to load the plan")
        from dsattn.engines.runner import EngineRunner

        self.runner = EngineRunner(plan, list(plugins))
        self.model = model
        self.capacity, self.vocab_size = model.capacity, model.spec.vocab_size

    new_cache = OrtRuntime.new_cache

    def forward(self, input_ids, seq_lens, start_pos, cache):
        r = self.runner
        d = self.device
        B, S = input_ids.shape
        tensors = {"input_ids": input_ids.to(d, torch.int64).contiguous(),
                   "seq_lens": seq_lens.to(d, torch.int32).contiguous(),
                   "start_pos": start_pos.to(d, torch.int32).contiguous()}
        for i, (k, v) in enumerate(cache):
            tensors[f"past_key.{i}"], tensors[f"past_value.{i}"] = k, v
        logits = torch.empty((B, S if self.model.logits == "all" else 1, self.vocab_size), dtype=self.model.dtype,
                             device=d)
        outputs = {"logits": logits}
        for name in r.output_names:
            if name != "logits":  # present_*.i writes into past_*.i
                outputs[name] = tensors[r.aliases.get(name, name.replace("present_", "past_", 1))]
        r.run_bound({n: tensors[n] for n in r.input_names}, outputs)
        return logits[:, -1].float().cpu()


RUNTIMES: dict[str, type] = {"torch": TorchRuntime, "ort": OrtRuntime, "ort-dsattn": OrtDsattnRuntime,
                             "trt": TrtRuntime}


def register_runtime(name: str, cls: type) -> None:
    """Make ``cls`` (a Runtime subclass taking (ExportedModel, *, device=...)) available as ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"runtime {name!r} must be a Runtime subclass, got {cls!r}")
    RUNTIMES[name] = cls


def make_runtime(name: str, model, *, device: str = "cpu", **kw) -> Runtime:
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r} is not known (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[name](model, device=device, **kw)


# ------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------

@dataclass
class GenerationResult:
    """``tokens[b]``: the new tokens of row b (up to and including its EOS); ``texts``: their
    decoded text when a tokenizer was used; ``last_logits``: float32 [B, vocab] of the last call."""

    prompt_ids: list[list[int]]
    tokens: list[list[int]]
    finished: list[bool]
    texts: Optional[list[str]] = None
    last_logits: Optional[torch.Tensor] = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = 0

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (all rows) per second of decode time (prefill excluded)."""
        dec = self.new_tokens - len(self.tokens)  # the first token of each row comes from the prefill
        return dec / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (input_ids int64 [B, L], start_pos int32 [B]) with each row right-aligned."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), int(pad_id), dtype=torch.int64)
    start = torch.zeros(len(prompts), dtype=torch.int32)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.as_tensor(list(p), dtype=torch.int64)
        start[b] = L - len(p)
    return ids, start


def sampling_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """Logits [B, V] with temperature, then top-k, then top-p applied (transformers' order and
    rules: top-p keeps the smallest set of most likely tokens whose probability reaches top_p, and
    at least one); filtered tokens are -inf."""
    x = logits / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = torch.sort(x, descending=False, dim=-1)
        cum = srt.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False
        x = x.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return x


def _choose(logits: torch.Tensor, *, do_sample: bool, temperature: float, top_k: int, top_p: float,
            gen: Optional[torch.Generator]) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    x = sampling_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(x.softmax(-1), 1, generator=gen)[:, 0]


def generate(model, prompts: Optional[Sequence[str]] = None, *, input_ids: Optional[Sequence[Sequence[int]]] = None,
             runtime: Union[str, Runtime] = "torch", device: str = "cpu", max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: Optional[int] = None, eos_token_id: Union[None, int, Sequence[int]] = None,
             pad_token_id: Optional[int] = None, tokenizer=None,
             on_step: Optional[Callable[[int, list[Optional[int]]], None]] = None, **runtime_kw) -> GenerationResult:
    """Generate from ``model`` (an exported .onnx / its folder / an ExportedModel, or with a Runtime
    instance as ``runtime``, whatever that runtime was built from).

    prompts: texts (tokenized with the tokenizer saved beside the model, or ``tokenizer``), or
    input_ids: token lists. Greedy unless ``do_sample``. eos_token_id: the stop token(s) (default:
    the checkpoint's; ``[]`` never stops early). ``on_step(step, tokens)`` is called after each
    step with the new token of every row (None for rows that had stopped before). Raises
    CapacityError when a step would not fit the cache.
    """
    if (prompts is None) == (input_ids is None):
        raise ValueError("give exactly one of prompts / input_ids")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if do_sample:
        # inf would flatten every distribution to uniform without a word: finite values only.
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(runtime, Runtime):
        rt = runtime
        em = model if isinstance(model, ExportedModel) else (ExportedModel.open(model) if model is not None else None)
    else:
        em = model if isinstance(model, ExportedModel) else ExportedModel.open(model)
        rt = make_runtime(runtime, em, device=device, **runtime_kw)
    spec = em.spec if em is not None else getattr(getattr(rt, "model", None), "spec", None)
    if prompts is not None:
        if tokenizer is None:
            tokenizer = load_tokenizer(em.folder if em is not None else None)
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    else:
        rows = [list(map(int, r)) for r in input_ids]
    if not rows:
        raise ValueError("no prompts given")
    V, cap = rt.vocab_size, rt.capacity
    for b, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt row {b} is empty")
        bad = [t for t in r if not 0 <= t < V]
        if bad:
            raise ValueError(f"prompt row {b}: token ids {bad[:5]} are outside the vocabulary [0, {V})")
    L = max(len(r) for r in rows)
    if L > cap:
        b = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise ValueError(f"prompt row {b} has {len(rows[b])} tokens, more than the cache capacity {cap} of the model "
                         "(export with a larger --capacity)")
    if eos_token_id is None:
        eos = set(spec.eos_token_id) if spec is not None else set()
    else:
        eos = {int(eos_token_id)} if isinstance(eos_token_id, int) else set(map(int, eos_token_id))
    if pad_token_id is None:
        # What transformers does without a pad token: pad with an EOS id (any id would do: padded
        # positions are never attended to, and stopped rows' outputs are dropped).
        known = [t for t in sorted(eos) if 0 <= t < V]
        pad_token_id = spec.pad_token_id if spec is not None and spec.pad_token_id is not None else (
            known[0] if known else 0)
    pad = int(pad_token_id)
    if not 0 <= pad < V:
        raise ValueError(f"pad_token_id={pad} is outside the vocabulary [0, {V})")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    B = len(rows)
    ids, start = left_pad(rows, pad)
    seq_lens = torch.zeros(B, dtype=torch.int32)
    res = GenerationResult(prompt_ids=rows, tokens=[[] for _ in rows], finished=[False] * B)
    cache = rt.new_cache(B)
    t0 = time.perf_counter()
    logits = rt.forward(ids, seq_lens, start, cache)
    res.prefill_seconds = time.perf_counter() - t0
    seq_lens += ids.shape[1]
    t1 = time.perf_counter()
    try:
        for step in range(max_new_tokens):
            nxt = _choose(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, gen=gen)
            shown: list[Optional[int]] = []
            for b in range(B):
                if res.finished[b]:
                    shown.append(None)
                    continue
                t = int(nxt[b])
                res.tokens[b].append(t)
                shown.append(t)
                if t in eos:
                    res.finished[b] = True
            res.steps = step + 1
            res.last_logits = logits
            if on_step is not None:
                on_step(step, shown)
            if all(res.finished) or step == max_new_tokens - 1:
                break
            over = [b for b in range(B) if not res.finished[b] and int(seq_lens[b]) + 1 > cap]
            if over:
                detail = "; ".join(f"row {b}: prompt {len(rows[b])} tokens + {L - len(rows[b])} left padding + "
                                   f"{len(res.tokens[b]) - 1} of its {len(res.tokens[b])} generated tokens = "
                                   f"{int(seq_lens[b])} cached" for b in over)
                raise CapacityError(f"KV cache capacity {cap} reached before token {step + 2} ({detail}); nothing "
                                    "was written for this step (export with a larger --capacity or lower "
                                    "--max-new-tokens)", res)
            feed = torch.tensor([[pad if res.finished[b] else int(nxt[b])] for b in range(B)], dtype=torch.int64)
            logits = rt.forward(feed, seq_lens, start, cache)
            seq_lens += 1
    finally:
        res.decode_seconds = time.perf_counter() - t1
        if tokenizer is not None:
            res.texts = [tokenizer.decode(t, skip_special_tokens=True) for t in res.tokens]
    return res


def load_tokenizer(folder):
    """The tokenizer saved beside the exported model (transformers AutoTokenizer, local files only)."""
    if folder is None or not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                          "tokenizer.model", "vocab.json")):
        raise ValueError(f"--prompt needs a tokenizer, and there are no tokenizer files in {str(folder)!r} "
                         "(the export copies them from the checkpoint folder); give --input-ids instead")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer files in {str(folder)!r} could not be loaded: {e}") from None


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def _ids_arg(text: str) -> list[int]:
    if any(not t.strip() for t in text.split(",")) and text.strip():  # "1,,2": a lost id, not a separator
        raise argparse.ArgumentTypeError(f"empty entry in {text!r}")
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids separated by commas or spaces, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate text with a whole decoder exported by `dsattn export --hf-model`: prompts are "
                          "left-padded into one batch, greedy unless --sample; tokens stream as they come.")
    parser.add_argument("model", metavar="MODEL", help="the exported .onnx, or the folder holding it")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for a batch)")
    src.add_argument("--input-ids", action="append", type=_ids_arg, metavar="IDS",
                     help="a prompt as token ids, e.g. '1,15,27' (repeat for a batch; no tokenizer needed)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N", help="default 32")
    parser.add_argument("--runtime", default="torch", help=f"one of {', '.join(RUNTIMES)} (default torch)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--eos-token-id", type=int, action="append", default=None, metavar="ID",
                        help="stop token (repeatable; default: the checkpoint's)")
    parser.add_argument("--engine", metavar="PLAN", help="runtime trt: the plan (default MODEL with .plan)")
    parser.add_argument("--plugins", action="append", default=[], metavar="LIB", help="runtime trt: plugin library")
    parser.add_argument("--no-stream", action="store_true", help="print the completions only at the end")
    parser.set_defaults(_generate_parser=parser)


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._generate_parser
    if args.runtime not in RUNTIMES:
        parser.error(f"argument --runtime: {args.runtime!r} is not one of {', '.join(RUNTIMES)}")
    if args.sample is False and (args.top_k or args.top_p != 1.0 or args.temperature != 1.0 or args.seed is not None):
        parser.error("--temperature/--top-k/--top-p/--seed need --sample")
    if args.runtime != "trt" and (args.engine or args.plugins):
        parser.error("--engine/--plugins are for --runtime trt")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        parser.error(f"argument --seed: {args.seed} must be in [0, 2**63)")
    kw = {"engine": args.engine, "plugins": args.plugins} if args.runtime == "trt" else {}
    tok_cache: dict = {}
    texts: dict[int, str] = {}

    def on_step(step, toks):
        # One row: the text as it grows, on one line. Several rows: one line per step with each
        # row's new piece.
        if args.no_stream:
            return
        tok = tok_cache.get("tok")
        pieces = []
        for b, t in enumerate(toks):
            if t is None:
                pieces.append(None)
                continue
            res_tokens[b].append(t)
            if tok is None:
                pieces.append(str(t))
            else:
                full = tok.decode(res_tokens[b], skip_special_tokens=True)
                pieces.append(full[len(texts.get(b, "")):])
                texts[b] = full
        if len(toks) == 1:
            print(pieces[0] + (" " if tok is None else ""), end="", flush=True)
        else:
            print(f"step {step + 1}: " + " | ".join(f"{b}: {p!r}" for b, p in enumerate(pieces) if p is not None),
                  flush=True)

    em = ExportedModel.open(args.model)
    tokenizer = load_tokenizer(em.folder) if args.prompt else None
    tok_cache["tok"] = tokenizer
    res_tokens: list[list[int]] = [[] for _ in (args.prompt or args.input_ids)]
    try:
        res = generate(em, args.prompt, input_ids=args.input_ids, runtime=args.runtime, device=args.device,
                       max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=args.eos_token_id,
                       tokenizer=tokenizer, on_step=on_step, **kw)
    except CapacityError:
        if not args.no_stream:
            print()  # end the streamed line before the error line
        raise
    if not args.no_stream:
        print()
    for b in range(len(res.tokens)):
        body = res.texts[b] if res.texts is not None else " ".join(map(str, res.tokens[b]))
        print(f"--- completion {b} ({len(res.tokens[b])} tokens{', eos' if res.finished[b] else ''}) ---")
        print(body)
    print(f"prefill {res.prefill_seconds * 1e3:.1f} ms; decode {res.tokens_per_second:.1f} tokens/s "
          f"({res.new_tokens} tokens, batch {len(res.tokens)}, runtime {args.runtime} on {args.device})")
    return 0
