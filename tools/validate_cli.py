"""`dsattn validate MODEL [--providers cpu,cuda] [--plugins LIB ...] [--engine PLAN] [--atol ...]
[--rtol ...] [--save-inputs F | --load-inputs F] [--seed N]`: run the model on the reference,
ONNX Runtime (lowered) and TensorRT, compare with the fp32 reference and print a table
(``dsattn.tools.validate``). Exit 0 when everything passes, 1 on a failure, 2 on bad usage."""
from __future__ import annotations

import argparse
import re
import sys

from .validate import CASES, validate


def parse_tolerances(values, flag: str):
    """Polygraphy style: ``VALUE`` for every output and/or ``NAME:VALUE`` per output."""
    if not values:
        return None
    tol: dict[str, float] = {}
    for item in values:
        name, sep, val = item.rpartition(":")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"{flag}: cannot read {item!r}; use VALUE or OUTPUT_NAME:VALUE") from None
        if not (v >= 0 and v != float("inf")):
            raise ValueError(f"{flag}: tolerance must be finite and >= 0, got {item!r}")
        tol[name if sep else ""] = v
    return tol


def parse_list(text: str, flag: str, *, allow_empty: bool = False) -> list[str]:
    """Comma-separated names; an empty entry (``cpu,,cuda``, ``,,``) is an error, not skipped, and
    an empty list only where ``allow_empty``."""
    if text.strip() == "":
        if allow_empty:
            return []
        raise ValueError(f"{flag}: empty; give a comma-separated list")
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise ValueError(f"{flag} {text!r}: empty entry in the comma-separated list")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="ONNX model with dsattn custom ops")
    parser.add_argument("--providers", default="cpu",
                        help="comma-separated ONNX Runtime providers: cpu, cuda or full names (the lowered model), "
                             "cuda-dsattn (the model itself with libdsattn_ort.so) (default: cpu)")
    parser.add_argument("--ort-library", metavar="LIB", default=None,
                        help="libdsattn_ort.so for --providers cuda-dsattn (default: $DSATTN_ORT_LIB, else "
                             "build/plugins/libdsattn_ort.so)")
    parser.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="LIB",
                        help="TensorRT plugin libraries to load (repeatable)")
    parser.add_argument("--engine", metavar="PLAN", default=None, help="TensorRT engine to run as well")
    parser.add_argument("--atol", nargs="+", default=None, metavar="[NAME:]VALUE",
                        help="absolute tolerance for all outputs and/or per output (default: docs/DESIGN.md rule)")
    parser.add_argument("--rtol", nargs="+", default=None, metavar="[NAME:]VALUE",
                        help="relative tolerance for all outputs and/or per output")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the model's, else 3)")
    parser.add_argument("--seq", type=int, default=None, help="prefill tokens (default: the model's, else 7)")
    parser.add_argument("--capacity", type=int, default=None,
                        help="KV-cache capacity Tmax (default: the model's, else seq + 16)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases from {CASES}")
    io = parser.add_mutually_exclusive_group()
    io.add_argument("--save-inputs", metavar="F", default=None, help="write the inputs (Polygraphy JSON)")
    io.add_argument("--load-inputs", metavar="F", default=None, help="use these inputs (Polygraphy JSON)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh, printed)")


def run(args: argparse.Namespace) -> int:
    try:
        # --providers "" is allowed when TensorRT runs (--engine/--plugins); validate() refuses a run
        # with no runtime at all.
        providers = parse_list(args.providers, "--providers", allow_empty=True)
        cases = parse_list(args.cases, "--cases")
        for flag, v in (("--batch", args.batch), ("--seq", args.seq), ("--capacity", args.capacity)):
            if v is not None and v <= 0:
                raise ValueError(f"{flag} {v}: must be a positive integer")
        if args.seed is not None and not 0 <= args.seed < 2**63:
            raise ValueError(f"--seed {args.seed}: must be in [0, 2**63)")
        report = validate(
            args.model, providers=providers, plugins=args.plugins,
            engine=args.engine, atol=parse_tolerances(args.atol, "--atol"),
            rtol=parse_tolerances(args.rtol, "--rtol"), batch=args.batch, seq=args.seq,
            capacity=args.capacity, cases=cases,
            save_inputs=args.save_inputs, load_inputs=args.load_inputs, seed=args.seed,
            ort_library=args.ort_library)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"dsattn validate: error: {_flagged(exc)}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.passed else 1


# validate()'s keyword names -> the CLI's options, so an error names what the user typed.
_FLAGS = {"providers": "--providers", "cases": "--cases", "atol": "--atol", "rtol": "--rtol", "seed": "--seed",
          "save_inputs": "--save-inputs", "load_inputs": "--load-inputs", "model": "MODEL", "batch": "--batch",
          "seq": "--seq", "capacity": "--capacity", "engine": "--engine", "plugins": "--plugins"}


def _flagged(exc: BaseException) -> str:
    """validate()'s message with its leading keyword (``cases: ...``, ``seed=-1 ...``) spelled as
    the command-line option, on one line."""
    msg = " ".join(str(exc).splitlines())
    m = re.match(r"(\w+)([ :=\[])", msg)
    if m and m.group(1) in _FLAGS:
        return _FLAGS[m.group(1)] + (" " if m.group(2) == "=" else m.group(2)) + msg[m.end():]
    return msg
