"""`dsattn bench generate`: end-to-end generation speed of a LLaMA-style ~1B decoder on every
runtime that can run it here; writes its table into BENCHMARKS.md (a marked section, with the card).

Model: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocab 32000 (about 1.1B parameters),
random weights, fp16, saved as a transformers checkpoint and exported whole by
``dsattn.export.model_onnx.export_hf_model`` (logits of the last position only). For each prompt
length (512, 2048) and batch (1, 8, 64): time to first token (the prefill call, wall clock from the
host: what a user waits for) and decode tokens/s (batch x steps / wall time of the decode steps,
each step one call for the whole batch, next tokens fed from the host as in ``dsattn generate``).

Runtimes (each in this process, same card; one that cannot run says why in the table):
- ``ort-dsattn``: the exported model on ONNX Runtime CUDA with libdsattn_ort.so, caches in place;
- ``ort-dsattn+graph``: the same with the decode step as a CUDA graph (``enable_cuda_graph``);
- ``ort-lowered``: the lowered model (standard ops) on ONNX Runtime CUDA;
- ``hf-eager`` / ``hf-sdpa``: transformers with eager / SDPA attention and its dynamic cache;
- ``genai``: onnxruntime-genai on a model built by its model builder from the same checkpoint, fp16;
- the weight-streaming floor: (weight bytes + cache bytes read per step) / measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

SPEC = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
            intermediate_size=8192, vocab_size=32000)
BEGIN, END = "<!-- dsattn bench generate: begin -->", "<!-- dsattn bench generate: end -->"
RUNTIMES = ("ort-dsattn", "ort-dsattn+graph", "ort-lowered", "hf-eager", "hf-sdpa", "genai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", nargs="+", type=int, default=[512, 2048], help="prompt lengths")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64], help="batch sizes")
    parser.add_argument("--new-tokens", type=int, default=64, help="decode steps timed (default 64)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--workdir", default="build/bench_generate",
                        help="checkpoint and exported models (reused when present)")


# ------------------------------------------------------------------------------------------------
# model

def make_checkpoint(folder: Path, log: Callable[[str], None]) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    log(f"random LLaMA-style checkpoint -> {folder}")
    cfg = LlamaConfig(**SPEC, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, torch_dtype="float16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    _word_tokenizer(cfg.vocab_size).save_pretrained(folder)
    return folder


def _word_tokenizer(vocab_size: int):
    """A word-level tokenizer over the whole vocabulary: onnxruntime-genai's model builder reads the
    checkpoint's tokenizer, and a random checkpoint has none (nothing may be downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def export(ckpt: Path, out: Path, capacity: int, log) -> Path:
    from dsattn.export.model_onnx import export_hf_model

    model = out / "model.onnx"
    if not model.is_file():
        export_hf_model(ckpt, out, dtype="float16", capacity=capacity, logits="last", log=log)
    return model


# ------------------------------------------------------------------------------------------------
# timing: one (prompt, batch) case on one runtime -> (ttft ms, decode tokens/s)

def _ids(batch: int, length: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, SPEC["vocab_size"], (batch, length), generator=g)


def time_dsattn_runtime(rt, P: int, B: int, N: int) -> tuple[float, float]:
    """A dsattn.tools.generate Runtime: prefill once (warm-up), then timed prefill + N decode steps."""
    import torch

    ids = _ids(B, P, 0)
    zeros = torch.zeros(B, dtype=torch.int32)
    for _ in range(2):  # warm-up (allocations, cuBLASLt plans, graph capture)
        cache = rt.new_cache(B)
        logits = rt.forward(ids, zeros, zeros, cache)
        rt.forward(logits.argmax(-1, keepdim=True), zeros + P, zeros, cache)
        del cache
    cache = rt.new_cache(B)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = rt.forward(ids, zeros, zeros, cache)
    ttft = time.perf_counter() - t0
    tok = logits.argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for i in range(N):
        logits = rt.forward(tok, zeros + P + i, zeros, cache)
        tok = logits.argmax(-1, keepdim=True)
    dt = time.perf_counter() - t0
    return ttft * 1e3, B * N / dt


class _GraphDecode:
    """ort-dsattn with the decode step captured as a CUDA graph: per batch size, a session with
    enable_cuda_graph runs the S=1 steps on fixed buffers (ids, seq_lens, caches, logits) updated in
    place; the prefill runs on the plain session over the same cache buffers. A captured graph keeps
    the addresses it was captured with, so each batch size keeps one cache for all its runs."""

    name = "ort-dsattn+graph"

    def __init__(self, model_path: str, plain):
        self.model_path, self.plain = model_path, plain
        self.capacity, self.vocab_size = plain.capacity, plain.vocab_size
        self.per_batch: dict = {}

    def _setup(self, B: int):
        import torch

        from dsattn.tools.ort_runtime import make_session

        if B in self.per_batch:
            return self.per_batch[B]
        sess = make_session(self.model_path, cuda_graph=True)
        cache = self.plain.new_cache(B)
        d = torch.device("cuda")
        bufs = {"input_ids": torch.zeros(B, 1, dtype=torch.int64, device=d),
                "seq_lens": torch.zeros(B, dtype=torch.int32, device=d),
                "start_pos": torch.zeros(B, dtype=torch.int32, device=d),
                "logits": torch.empty(B, 1, self.vocab_size, dtype=self.plain.model.dtype, device=d)}
        b = sess.io_binding()
        for n in ("input_ids", "seq_lens", "start_pos"):
            self.plain._bind(b, n, bufs[n], False)
        for i, (k, v) in enumerate(cache):
            self.plain._bind(b, f"past_key.{i}", k, False)
            self.plain._bind(b, f"past_value.{i}", v, False)
            self.plain._bind(b, f"present_key.{i}", k, True)
            self.plain._bind(b, f"present_value.{i}", v, True)
        self.plain._bind(b, "logits", bufs["logits"], True)
        self.per_batch = {B: (sess, cache, b, bufs)}  # one batch size at a time: the caches are large
        return self.per_batch[B]

    def new_cache(self, B):
        return self._setup(B)[1]

    def forward(self, input_ids, seq_lens, start_pos, cache):
        import torch

        B, S = input_ids.shape
        if S != 1:
            return self.plain.forward(input_ids, seq_lens, start_pos, cache)
        sess, _, b, bufs = self._setup(B)
        bufs["input_ids"].copy_(input_ids)
        bufs["seq_lens"].copy_(seq_lens)
        bufs["start_pos"].copy_(start_pos)
        torch.cuda.synchronize()
        sess.run_with_iobinding(b)
        return bufs["logits"][:, -1].float().cpu()


def time_hf(ckpt: Path, attn: str, P: int, B: int, N: int) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float16, attn_implementation=attn).cuda().eval()
    ids = _ids(B, P, 0).cuda()
    try:
        with torch.no_grad():
            for _ in range(2):
                out = model(ids, use_cache=True)
                model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
                del out
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            ttft = time.perf_counter() - t0
            past = out.past_key_values
            t0 = time.perf_counter()
            for _ in range(N):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
                tok.cpu()  # the host sees every token, as in the other runtimes
            dt = time.perf_counter() - t0
    finally:
        del model
        torch.cuda.empty_cache()
    return ttft * 1e3, B * N / dt


def build_genai(ckpt: Path, out: Path, log) -> Path:
    if (out / "genai_config.json").is_file():
        return out
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out), "-p", "fp16",
           "-e", "cuda", "-c", str(out / "cache")]
    log("genai model builder: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"model builder failed (exit {r.returncode}): {(r.stderr or r.stdout)[-600:]}")
    return out


def time_genai(model_dir: Path, P: int, B: int, N: int) -> tuple[float, float]:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    ids = _ids(B, P, 0).numpy().astype(np.int32)

    def one():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=P + N + 1, batch_size=B, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.get_next_tokens()
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(N):
            gen.generate_next_token()
            gen.get_next_tokens()
        return ttft, time.perf_counter() - t0

    one()  # warm-up
    ttft, dt = one()
    return ttft * 1e3, B * N / dt


def copy_bandwidth() -> float:
    """Device copy bandwidth, bytes read + written per second (the harness's ceiling)."""
    from .bench_harness import measure_ceilings

    return measure_ceilings(quick=True)["copy_bw"]


def floor_tok_s(P: int, B: int, N: int, bw: float, n_params: int) -> float:
    """B tokens per step over (weights + the cache read at the mean context) / bandwidth. Reads
    only, against a read+write bandwidth: a streaming read is about as fast as a copy here."""
    D = SPEC["hidden_size"] // SPEC["num_attention_heads"]
    ctx = P + N / 2
    cache = B * SPEC["num_hidden_layers"] * 2 * SPEC["num_key_value_heads"] * ctx * D * 2
    return B / ((2 * n_params + cache) / bw)


# ------------------------------------------------------------------------------------------------
# report

def markdown(results: dict, floors: dict, env: dict, notes: list[str], cases) -> str:
    lines = [BEGIN, "", "## dsattn bench generate", "",
             f"Card: **{env['card']}**; {env['date']}; onnxruntime {env['ort']}, torch {env['torch']}. "
             f"LLaMA-style decoder, {env['params'] / 1e9:.2f}B parameters (hidden 2048, 16 layers, 32 heads, 8 KV "
             "heads, MLP 8192, vocab 32000), random weights, fp16. Written by `dsattn bench generate` "
             "(tools/bench_generate.py). TTFT = prefill call, wall clock; decode = batch x steps / wall time "
             f"({env['new_tokens']} steps). Floor = weight + cache bytes per step / measured copy bandwidth "
             f"({env['bw'] / 1e12:.2f} TB/s).", "",
             "| prompt | batch | runtime | TTFT | decode tok/s | vs genai | vs hf-sdpa | % of floor | card |",
             "|---|---|---|---|---|---|---|---|---|"]
    for P, B in cases:
        base = results.get((P, B), {})
        genai = base.get("genai")
        sdpa = base.get("hf-sdpa")
        for name, r in base.items():
            if isinstance(r, str):
                lines.append(f"| {P} | {B} | {name} | - | not run: {r} | | | | {env['card']} |")
                continue
            ttft, tps = r
            vg = f"{tps / genai[1]:.2f}x" if isinstance(genai, tuple) else "-"
            vs = f"{tps / sdpa[1]:.2f}x" if isinstance(sdpa, tuple) else "-"
            pct = f"{100 * tps / floors[(P, B)]:.0f}%"
            lines.append(f"| {P} | {B} | {name} | {ttft:.1f} ms | {tps:.0f} | {vg} | {vs} | {pct} | {env['card']} |")
        lines.append(f"| {P} | {B} | floor | - | {floors[(P, B)]:.0f} | | | 100% | {env['card']} |")
    lines += ["", "Targets (decode tok/s): ort-dsattn >= 1.2x genai and >= 1.5x hf-sdpa at batch 1 and 8, "
              ">= 1.0x genai at batch 64, >= 80% of the floor at batch 1."]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    from dsattn.fileio import write_text_atomic

    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + "\n" + section
    write_text_atomic(path, text)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("dsattn bench generate: no CUDA device visible", file=sys.stderr)
        return 2
    for flag, vals in (("--prompts", args.prompts), ("--batches", args.batches), ("--new-tokens", [args.new_tokens])):
        if any(v <= 0 for v in vals):
            print(f"dsattn bench generate: error: {flag} must be positive, got {vals}", file=sys.stderr)
            return 2
    import onnxruntime as ort

    def log(s):
        print(s, flush=True)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "ckpt", log)
    capacity = max(args.prompts) + args.new_tokens + 8
    notes: list[str] = []
    env = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "ort": ort.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "new_tokens": args.new_tokens}
    from transformers import AutoConfig, LlamaForCausalLM

    with torch.device("meta"):
        env["params"] = sum(p.numel() for p in LlamaForCausalLM(AutoConfig.from_pretrained(ckpt)).parameters())
    env["bw"] = copy_bandwidth()
    cases = [(P, B) for P in args.prompts for B in args.batches]
    floors = {(P, B): floor_tok_s(P, B, args.new_tokens, env["bw"], env["params"]) for P, B in cases}
    results: dict = {c: {} for c in cases}

    def measure(name: str, fn, *, shared_error: Optional[str] = None):
        for P, B in cases:
            if shared_error is not None:
                results[(P, B)][name] = shared_error
                continue
            try:
                results[(P, B)][name] = fn(P, B)
                log(f"{name} P={P} B={B}: TTFT {results[(P, B)][name][0]:.1f} ms, "
                    f"{results[(P, B)][name][1]:.0f} tok/s")
            except Exception as e:  # noqa: BLE001 - one failing case is a table entry, not the end
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                results[(P, B)][name] = "out of memory" if "out of memory" in str(e).lower() else msg
                log(f"{name} P={P} B={B}: {msg}")
            torch.cuda.empty_cache()

    model_path = None
    try:
        model_path = export(ckpt, work / "dsattn", capacity, log)
    except Exception as e:  # noqa: BLE001
        notes.append(f"whole-model export failed: {type(e).__name__}: {e}")
        traceback.print_exc()
    from dsattn.tools.generate import ExportedModel, OrtDsattnRuntime, OrtRuntime

    want = set(args.runtimes)
    if model_path is not None and want & {"ort-dsattn", "ort-dsattn+graph"}:
        try:
            plain = OrtDsattnRuntime(ExportedModel.open(model_path), device="cuda")
        except Exception as e:  # noqa: BLE001
            plain, err = None, f"{type(e).__name__}: {e}"
        if "ort-dsattn" in want:
            measure("ort-dsattn", lambda P, B: time_dsattn_runtime(plain, P, B, args.new_tokens),
                    shared_error=None if plain else err)
        if "ort-dsattn+graph" in want:
            graph = _GraphDecode(str(model_path), plain) if plain else None
            gerr = None if graph else err
            measure("ort-dsattn+graph", lambda P, B: time_dsattn_runtime(graph, P, B, args.new_tokens),
                    shared_error=gerr)
            del graph
        del plain
    if model_path is not None and "ort-lowered" in want:
        try:
            lowered = OrtRuntime(ExportedModel.open(model_path), device="cuda")
            lerr = None
        except Exception as e:  # noqa: BLE001
            lowered, lerr = None, f"{type(e).__name__}: {e}"
        measure("ort-lowered", lambda P, B: time_dsattn_runtime(lowered, P, B, args.new_tokens), shared_error=lerr)
        del lowered
    for name, attn in (("hf-eager", "eager"), ("hf-sdpa", "sdpa")):
        if name in want:
            measure(name, lambda P, B, attn=attn: time_hf(ckpt, attn, P, B, args.new_tokens))
    if "genai" in want:
        gerr = None
        try:
            import onnxruntime_genai  # noqa: F401

            gdir = build_genai(ckpt, work / "genai", log)
        except Exception as e:  # noqa: BLE001
            gerr = f"{type(e).__name__}: {str(e)[:300]}"
        measure("genai", lambda P, B: time_genai(gdir, P, B, args.new_tokens), shared_error=gerr)
    notes.append("transformers static cache + torch.compile: not run (not part of this script)")
    section = markdown(results, floors, env, notes, cases)
    write_section(Path(args.out), section)
    print(section)
    print(f"wrote {args.out}")
    return 0
