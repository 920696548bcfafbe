"""``dsattn build-engine``: build a TensorRT plan from a dsattn ONNX model with the plugin library.

    dsattn build-engine model.onnx --plugins build/plugins/libdsattn_plugins.so -o model.plan
    dsattn build-engine model.onnx --plugins LIB --print-trtexec          # no TensorRT needed
    dsattn build-engine model.onnx --plugins LIB --batch 1:4:8 --seq 1:1:512 --capacity 1024
    dsattn build-engine model.onnx --plugins LIB --min-shapes x:1x1x64 --opt-shapes ... --max-shapes ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsattn.engines.profiles import DEFAULT_RANGES, parse_range, parse_shape_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model exported by `dsattn export` (dsattn custom nodes)")
    parser.add_argument("--plugins", action="append", required=True, metavar="LIB",
                        help="plugin library (libdsattn_plugins.so); repeatable")
    parser.add_argument("-o", "--output", metavar="PLAN", help="engine file to write (default: MODEL with .plan)")
    parser.add_argument("--print-trtexec", action="store_true",
                        help="print the equivalent trtexec command and exit (works without TensorRT)")
    for role in ("batch", "seq", "capacity"):
        lo, opt, hi = DEFAULT_RANGES[role]
        parser.add_argument(f"--{role}", metavar="MIN:OPT:MAX",
                            help=f"range of the {role} dims of the model inputs (default {lo}:{opt}:{hi}; N = static)")
    for which in ("min", "opt", "max"):
        parser.add_argument(f"--{which}-shapes", metavar="NAME:DxD,...",
                            help=f"explicit {which} shapes per input, trtexec syntax (all three together)")
    parser.add_argument("--timing-cache", metavar="FILE", help="timing cache file (read if present, then updated)")
    parser.add_argument("--no-progress", action="store_true", help="no build progress bar")
    # --verbose (the global option of `dsattn`) also turns on TensorRT's verbose log here.


def _profiles(args) -> dict | None:
    given = [getattr(args, f"{w}_shapes") for w in ("min", "opt", "max")]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("--min-shapes, --opt-shapes and --max-shapes must be given together")
    mins, opts, maxs = (parse_shape_list(g, f"--{w}-shapes") for g, w in zip(given, ("min", "opt", "max")))
    if not (set(mins) == set(opts) == set(maxs)):
        raise ValueError(f"--min/--opt/--max-shapes name different inputs: {sorted(mins)} / {sorted(opts)} / "
                         f"{sorted(maxs)}")
    return {n: (mins[n], opts[n], maxs[n]) for n in mins}


def _one_line(e: BaseException) -> str:
    # TensorRT's parser reports one error per line: keep them all, on one line.
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())


def run(args: argparse.Namespace) -> int:
    from dsattn.engines.build import build_engine, trtexec_command

    try:
        ranges = {r: (parse_range(getattr(args, r), f"--{r}") if getattr(args, r) else None)
                  for r in ("batch", "seq", "capacity")}
        profiles = _profiles(args)
        if not args.model.strip() or args.output == "":
            raise ValueError("MODEL and -o/--output must not be empty")
        out = Path(args.output) if args.output else Path(args.model).with_suffix(".plan")
        if args.print_trtexec:
            line = trtexec_command(args.model, args.plugins, out, profiles, timing_cache=args.timing_cache, **ranges)
            # The line is meant for another machine, so a library missing here is not an error.
            for lib in args.plugins:
                if not Path(lib).is_file():
                    print(f"dsattn build-engine: note: plugin library {lib!r} does not exist on this machine",
                          file=sys.stderr)
            print(line)
            return 0
        path = build_engine(args.model, args.plugins, out, profiles=profiles, timing_cache=args.timing_cache,
                            progress=not args.no_progress, verbose=getattr(args, "verbose", False), **ranges)
    except (ValueError, TypeError, FileNotFoundError) as e:  # a bad option or input file
        print(f"dsattn build-engine: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError, OSError) as e:  # no TensorRT, a failed build or write
        print(f"dsattn build-engine: error: {_one_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
