"""`dsattn validate MODEL [--providers cpu,cuda] [--plugins LIB ...] [--engine PLAN] [--atol ...]
[--rtol ...] [--save-inputs F | --load-inputs F] [--seed N]`: run the model on the reference,
ONNX Runtime (lowered) and TensorRT, compare with the fp32 reference and print a table
(``dsattn.tools.validate``). Exit 0 when everything passes, 1 on a failure, 2 on bad usage."""
from __future__ import annotations

import argparse
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="ONNX model with dsattn custom ops")
    parser.add_argument("--providers", default="cpu",
                        help="comma-separated ONNX Runtime providers: cpu, cuda or full names (default: cpu)")
    parser.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="LIB",
                        help="TensorRT plugin libraries to load (repeatable)")
    parser.add_argument("--engine", metavar="PLAN", default=None, help="TensorRT engine to run as well")
    parser.add_argument("--atol", nargs="+", default=None, metavar="[NAME:]VALUE",
                        help="absolute tolerance for all outputs and/or per output (default: DESIGN.md rule)")
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
        report = validate(
            args.model, providers=[p for p in args.providers.split(",") if p], plugins=args.plugins,
            engine=args.engine, atol=parse_tolerances(args.atol, "--atol"),
            rtol=parse_tolerances(args.rtol, "--rtol"), batch=args.batch, seq=args.seq,
            capacity=args.capacity, cases=[c for c in args.cases.split(",") if c],
            save_inputs=args.save_inputs, load_inputs=args.load_inputs, seed=args.seed)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"dsattn validate: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    return 0 if report.passed else 1
