"""`dsattn export`: the command line of the main job (``dsattn.tools.pipeline``)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["add_arguments", "run", "main"]


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
    parser.add_argument("--layer", type=_nonneg_int, default=None, metavar="N",
                        help="with --hf-model: export only layer N's attention (the single-layer job, real weights)")
    parser.add_argument("--logits", choices=["all", "last"], default="all",
                        help="with --hf-model: logits of every position [B,S,V] (default) or of the last one "
                             "[B,1,V] (all that generation needs)")
    parser.add_argument("--int8-lm-head", action="store_true",
                        help="with --hf-model --int8: quantize the LM head too")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="activation/weight dtype (default: the config's; built-in: float16)")
    parser.add_argument("--int8", action="store_true", help="int8 weight-only quantization (quantize_int8)")
    parser.add_argument("--group-size", type=_nonneg_int, default=0, metavar="N",
                        help="int8 K-group size (0 = per output channel; needs --int8)")
    parser.add_argument("--batch", type=_positive_int, default=2, help="batch size of the checks (default 2)")
    parser.add_argument("--seq", type=_positive_int, default=8, help="prompt length of the prefill check (default 8)")
    parser.add_argument("--capacity", type=_positive_int, default=None,
                        help="KV-cache capacity Tmax (default 32; with --hf-model: the config's max positions, "
                             "at most 4096)")
    parser.add_argument("--out", default="build", metavar="DIR", help="output folder (default ./build)")
    parser.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: fresh, printed)")
    parser.add_argument("--providers", default="cpu", metavar="LIST",
                        help="ONNX Runtime providers that validate the lowered model at the end (default cpu; "
                             "e.g. cpu,cuda)")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the ONNX Runtime validation of the lowered model")
    parser.set_defaults(_export_parser=parser)


def run(args: argparse.Namespace) -> int:
    from .pipeline import export_main

    parser: argparse.ArgumentParser = args._export_parser
    if args.group_size and not args.int8:
        parser.error(f"argument --group-size: {args.group_size} needs --int8")
    if args.hf_model is None:
        for flag, given in (("--layer", args.layer is not None), ("--logits", args.logits != "all"),
                            ("--int8-lm-head", args.int8_lm_head)):
            if given:
                parser.error(f"argument {flag}: needs --hf-model")
    if args.int8_lm_head and not args.int8:
        parser.error("argument --int8-lm-head: needs --int8")
    if args.hf_model is not None and args.layer is None:
        return _run_whole(args, parser)
    if args.layer is not None and (args.logits != "all" or args.int8_lm_head):
        parser.error("argument --layer: --logits and --int8-lm-head are for the whole model")
    if args.capacity is None:
        args.capacity = 32
    if args.seq < 2:
        parser.error(f"argument --seq: {args.seq} must be >= 2 (the prefill check)")
    if args.capacity < args.seq + 1:
        parser.error(f"argument --capacity: {args.capacity} must be >= --seq + 1 = {args.seq + 1}")
    try:
        res = export_main(config=args.config, hf_config=args.hf_config, dtype=args.dtype, int8=args.int8,
                          group_size=args.group_size, batch=args.batch, seq=args.seq, capacity=args.capacity,
                          out=args.out, seed=args.seed,
                          ort_providers=() if args.no_validate else tuple(p for p in args.providers.split(",") if p),
                          hf_model=args.hf_model, layer=args.layer)
    except (ValueError, TypeError, NotImplementedError) as e:
        opt = ("--config" if args.config else "--hf-config" if args.hf_config else "--hf-model" if args.hf_model
               else "--int8/--group-size")
        msg = str(e)
        parser.error(msg if msg.startswith("--") else f"{opt}: {msg}")
    return 0 if res.passed else 1


def _run_whole(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dsattn.export.model import CheckpointError

    from .model_pipeline import export_model_main

    if args.capacity is not None and args.capacity < 2:
        parser.error(f"argument --capacity: {args.capacity} must be >= 2")
    providers = () if args.no_validate else tuple(p for p in args.providers.split(",") if p)
    try:
        res = export_model_main(args.hf_model, out=args.out, dtype=args.dtype, int8=args.int8,
                                group_size=args.group_size, int8_lm_head=args.int8_lm_head, capacity=args.capacity,
                                logits=args.logits, providers=providers, seed=args.seed)
    except (CheckpointError, NotImplementedError) as e:
        parser.error(f"--hf-model: {e}")
    return 0 if res.passed else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="dsattn export")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
