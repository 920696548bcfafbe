"""The `dsattn` command line: one subcommand per job, each also an importable function.

Each subcommand lives in its own module, which provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int   # process exit code

Modules are imported only when their subcommand runs, so `dsattn --help` works even when an
optional dependency (TensorRT, transformers, a GPU) is missing.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("dsattn.tools.export_cli", "export a dsattn attention module to ONNX with dsattn custom ops"),
    "lower": ("dsattn.tools.lower_cli", "replace dsattn custom ops with standard ONNX ops for ONNX Runtime"),
    "validate": ("dsattn.tools.validate_cli", "run a model on every available runtime and compare with the reference"),
    "build-engine": ("dsattn.engines.cli", "build a TensorRT engine with the dsattn plugins (needs TensorRT)"),
    "bench": ("dsattn.tools.bench", "benchmarks on a CUDA GPU (kernels vs. baselines); writes BENCHMARKS.md"),
}


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsattn",
        description="DeepSpeed-style attention from PyTorch to ONNX, ONNX Runtime and TensorRT.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (keeps `dsattn --help` fast and robust).
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (_, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
