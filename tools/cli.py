"""The `dsattn` command line: one subcommand per job, each also an importable function.

Each subcommand lives in its own module, which provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int   # process exit code

Modules are imported only when their subcommand runs, so `dsattn --help` works even when an
optional dependency (TensorRT, transformers, a GPU) is missing.

Errors: every failure ends in one line on stderr, ``dsattn COMMAND: error: ...``, naming the
argument or file, and exit status 2 for bad usage (a bad option value or input file: ValueError,
TypeError, a missing file) or 1 for a runtime failure (a write that failed, a runtime that
failed, anything else). ``--verbose`` (before or after COMMAND) adds the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# name -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("dsattn.tools.export_cli", "export a dsattn attention module to ONNX with dsattn custom ops"),
    "generate": ("dsattn.tools.generate", "generate text with a whole decoder exported with --hf-model"),
    "lower": ("dsattn.tools.lower_cli", "replace dsattn custom ops with standard ONNX ops for ONNX Runtime"),
    "validate": ("dsattn.tools.validate_cli", "run a model on every available runtime and compare with the reference"),
    "build-engine": ("dsattn.engines.cli", "build a TensorRT engine with the dsattn plugins (needs TensorRT)"),
    "bench": ("dsattn.tools.bench", "benchmarks on a CUDA GPU (kernels vs. baselines); writes BENCHMARKS.md"),
}


# argparse types shared by the subcommands (each error names the value; argparse adds the option).
def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsattn",
        description="DeepSpeed-style attention from PyTorch to ONNX, ONNX Runtime and TensorRT.",
    )
    parser.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (keeps `dsattn --help` fast and robust).
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (_, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Also after COMMAND; SUPPRESS keeps a subcommand without it from resetting the global one.
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of an error (and more log where the command has one)")
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


#: Exceptions that mean a bad argument or input file (exit 2); anything else is a runtime failure.
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (multi-line messages, e.g. a parser's error list, are
    joined with "; ")."""
    msg = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in msg:
        msg = f"{exc.filename!r}: {exc.strerror or msg}"
    if not isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, NotImplementedError, ImportError)):
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__  # an unexpected kind: say which
    return msg or type(exc).__name__


def exit_code(exc: BaseException) -> int:
    return 2 if isinstance(exc, USAGE_ERRORS) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print(f"dsattn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, no traceback unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"dsattn {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
