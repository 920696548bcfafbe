"""`dsattn lower MODEL [-o OUT]`: replace the dsattn custom ops by standard ONNX ops
(``dsattn.tools.lower_for_ort``) so that ONNX Runtime runs the model without a custom-op library."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import onnx

from dsattn.fileio import check_output_path, external_data_files, load_onnx, same_file, save_onnx_atomic

from .lower import lower_for_ort


def default_output(model: str) -> str:
    root, ext = os.path.splitext(model)
    return f"{root}.ort{ext or '.onnx'}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="ONNX model with dsattn custom ops")
    parser.add_argument("-o", "--output", metavar="OUT", default=None,
                        help="where to write the lowered model (default: MODEL with .ort.onnx)")
    parser.add_argument("--no-check", action="store_true", help="skip onnx.checker (full_check) on the result")


def _refuse_overwrite(model_path: str, out_path: str) -> None:
    """The output (and its external data file) must not be the input or one of its external data
    files, however it is reached: same path, symbolic link or hard link."""
    inputs = [model_path] + external_data_files(load_onnx(model_path, "MODEL", load_external_data=False),
                                                 os.path.dirname(model_path))
    for out in (out_path, out_path + ".data"):
        for f in inputs:
            if same_file(out, f) or os.path.abspath(out) == os.path.abspath(f):
                raise ValueError(f"-o/--output {out_path!r} would overwrite {f!r}, which the input model "
                                 f"{model_path!r} is read from; choose another -o")


def run(args: argparse.Namespace) -> int:
    out_path = args.output or default_output(args.model)
    model = load_onnx(args.model, "MODEL")
    check_output_path(out_path, "-o/--output")
    _refuse_overwrite(args.model, out_path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lowered = lower_for_ort(model)
    except ValueError as exc:
        print(f"dsattn lower: error: MODEL {args.model!r}: {exc}", file=sys.stderr)
        return 2  # the model's dsattn nodes are invalid: a bad input, as in validate and build-engine
    for w in caught:
        print(f"dsattn lower: warning: {w.message}", file=sys.stderr)
    n_before = sum(1 for n in model.graph.node if n.domain == "dsattn")
    # Staged next to OUT, checked, then renamed: a failed write or an invalid result leaves the
    # previous OUT (and OUT.data) untouched; weights of large models go to a fresh OUT.data.
    check = None if args.no_check else (lambda p: onnx.checker.check_model(str(p), full_check=True))
    try:
        save_onnx_atomic(lowered, out_path, check=check)
    except onnx.checker.ValidationError as exc:
        msg = str(exc).strip().splitlines()[0]
        print(f"dsattn lower: error: the lowered model fails onnx.checker ({msg}); {out_path!r} not written",
              file=sys.stderr)
        return 1
    print(f"dsattn lower: {n_before} dsattn node(s) lowered; wrote {out_path} "
          f"(IR {lowered.ir_version}, opset {[(o.domain or 'ai.onnx', o.version) for o in lowered.opset_import]})")
    return 0
