"""`dsattn export`: the command line of the main job (``dsattn.tools.pipeline``)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .cli import nonneg_int, positive_int

__all__ = ["add_arguments", "run", "main"]


def _existing_file(s: str) -> str:
    if not os.path.isfile(s):
        raise argparse.ArgumentTypeError(f"no such file: {s!r}")
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dsattn.export.convert import HF_FAMILIES

    parser.description = (
        "Export a dsattn attention layer to ONNX with dsattn custom ops, run onnx.checker, compare the "
        "PyTorch module with the exported graph at a prefill and a decode shape, then validate the lowered "
        "model on ONNX Runtime. Without --config/--hf-config: a built-in small BLOOM-like layer (hidden 256, "
        "8 heads, alibi, float16).")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", type=_existing_file,
                     help="JSON object of AttentionConfig fields (e.g. {\"hidden_size\": 512, \"heads\": 8})")
    src.add_argument("--hf-config", metavar="FILE", type=_existing_file,
                     help=f"Hugging Face config.json (model_type {', '.join(HF_FAMILIES)}): "
                          "a random-weight layer 0 of that family, converted with from_hf")
    src.add_argument("--hf-model", metavar="DIR",
                     help="a local save_pretrained checkpoint folder (never downloaded): export the whole decoder "
                          "with its real weights to OUT/model.onnx (--out; graph I/O input_ids, seq_lens, start_pos, "
                          "past_key.{i}/past_value.{i} -> logits, present_key.{i}/present_value.{i}), copy its "
                          "tokenizer files beside it and check the lowered model on ONNX Runtime")
    parser.add_argument("--layer", type=nonneg_int, default=None, metavar="N",
                        help="with --hf-model: export only layer N's attention (the single-layer job, real weights)")
    parser.add_argument("--logits", choices=["all", "last"], default="all",
                        help="with --hf-model: logits of every position [B,S,V] (default) or of the last one "
                             "[B,1,V] (all that generation needs)")
    parser.add_argument("--int8-lm-head", action="store_true",
                        help="with --hf-model --int8: quantize the LM head too")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="activation/weight dtype (default: the config's; built-in: float16)")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only quantization (quantize_int8)")
    parser.add_argument("--group-size", type=nonneg_int, default=0, metavar="N",
                        help="int8 K-group size (0 = per output channel; needs --int8)")
    parser.add_argument("--batch", type=positive_int, default=2, help="batch size of the checks (default 2)")
    parser.add_argument("--seq", type=positive_int, default=8, help="prompt length of the prefill check (default 8)")
    parser.add_argument("--capacity", type=positive_int, default=None,
                        help="KV-cache capacity Tmax (default 32; with --hf-model: the config's max positions, "
                             "at most 4096)")
    parser.add_argument("--out", default="build", metavar="DIR", help="output folder (default ./build)")
    parser.add_argument("--seed", type=nonneg_int, default=None, help="random seed (default: fresh, printed)")
    parser.add_argument("--providers", default=None, metavar="LIST",
                        help="ONNX Runtime providers that validate the lowered model at the end (default cpu; "
                             "e.g. cpu,cuda)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the ONNX Runtime validation of the lowered model")
    parser.set_defaults(_export_parser=parser)


def _fail(msg: str) -> int:
    print(f"dsattn export: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


def _prefixed(msg: str, args: argparse.Namespace) -> str:
    """Names the option an error of the job is about: messages that start with a size name it as
    the option, errors of a config file name the file (they name the field themselves)."""
    for name in ("capacity", "batch", "seq", "seed", "group_size"):
        if msg.startswith(f"{name}=") or msg.startswith(f"{name} "):
            return f"--{name.replace('_', '-')} " + msg[len(name) + 1:]
    if msg.startswith("--"):
        return msg
    if args.config:
        return f"--config {args.config!r}: {msg}"
    if args.hf_config:
        return f"--hf-config {args.hf_config!r}: {msg}"
    if args.hf_model:
        return f"--hf-model {args.hf_model!r}: {msg}"
    return msg


def run(args: argparse.Namespace) -> int:
    from .pipeline import export_main
    from .validate import resolve_provider
    from .validate_cli import parse_list

    for flag, v in (("--batch", args.batch), ("--seq", args.seq), ("--capacity", args.capacity),
                    ("--group-size", args.group_size), ("--layer", args.layer)):
        if v is not None and v > 2**31 - 1:  # sizes and positions are int32 in the graph
            return _fail(f"{flag} {v} does not fit int32")
    if args.group_size and not args.int8:
        return _fail(f"--group-size {args.group_size} needs --int8")
    if args.hf_model is None:
        for flag, given in (("--layer", args.layer is not None), ("--logits", args.logits != "all"),
                            ("--int8-lm-head", args.int8_lm_head)):
            if given:
                return _fail(f"{flag} needs --hf-model")
    if args.int8_lm_head and not args.int8:
        return _fail("--int8-lm-head needs --int8")
    if args.layer is not None and (args.logits != "all" or args.int8_lm_head):
        return _fail("--layer: --logits and --int8-lm-head are for the whole model")
    if args.seed is not None and args.seed >= 2**63:
        return _fail(f"--seed {args.seed}: must be < 2**63")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _fail(f"--out {args.out!r} is a file, expected a folder")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        return _fail(f"--out {args.out!r}: cannot create the folder ({e.strerror})")
    if args.no_validate and args.providers is not None:
        return _fail(f"--providers {args.providers!r} with --no-validate: the providers would not run; give one")
    providers: tuple[str, ...] = ()
    if not args.no_validate:
        # Checked before minutes of export: a provider this ONNX Runtime lacks is an error now.
        try:
            providers = tuple(parse_list("cpu" if args.providers is None else args.providers, "--providers"))
            for p in providers:
                resolve_provider(p)
        except ValueError as e:
            msg = str(e)
            return _fail(msg if msg.startswith("--providers") else f"--providers {args.providers or 'cpu'!r}: {msg}")
    if args.hf_model is not None and args.layer is None:
        return _run_whole(args, providers)
    if args.capacity is None:
        args.capacity = 32
    if args.seq < 2:
        return _fail(f"--seq {args.seq}: must be >= 2 (the prefill check)")
    if args.capacity < args.seq + 1:
        return _fail(f"--capacity {args.capacity}: must be >= --seq + 1 = {args.seq + 1}")
    try:
        res = export_main(config=args.config, hf_config=args.hf_config, dtype=args.dtype, int8=args.int8,
                          group_size=args.group_size, batch=args.batch, seq=args.seq, capacity=args.capacity,
                          out=args.out, seed=args.seed, ort_providers=providers, hf_model=args.hf_model,
                          layer=args.layer)
    except (ValueError, TypeError, NotImplementedError) as e:
        return _fail(_prefixed(" ".join(str(e).split()), args))
    return 0 if res.passed else 1


def _run_whole(args: argparse.Namespace, providers: tuple[str, ...]) -> int:
    from dsattn.export.model import CheckpointError

    from .model_pipeline import export_model_main

    if args.capacity is not None and args.capacity < 2:
        return _fail(f"--capacity {args.capacity}: must be >= 2")
    try:
        res = export_model_main(args.hf_model, out=args.out, dtype=args.dtype, int8=args.int8,
                                group_size=args.group_size, int8_lm_head=args.int8_lm_head, capacity=args.capacity,
                                logits=args.logits, providers=providers, seed=args.seed)
    except (CheckpointError, NotImplementedError) as e:
        msg = " ".join(str(e).split())
        return _fail(msg if msg.startswith("--") else f"--hf-model: {msg}")
    return 0 if res.passed else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dsattn export")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
