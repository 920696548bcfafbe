"""`dsattn lower MODEL [-o OUT]`: replace the dsattn custom ops by standard ONNX ops
(``dsattn.tools.lower_for_ort``) so that ONNX Runtime runs the model without a custom-op library."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import onnx

from .lower import lower_for_ort


def default_output(model: str) -> str:
    root, ext = os.path.splitext(model)
    return f"{root}.ort{ext or '.onnx'}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="ONNX model with dsattn custom ops")
    parser.add_argument("-o", "--output", metavar="OUT", default=None,
                        help="where to write the lowered model (default: MODEL with .ort.onnx)")
    parser.add_argument("--no-check", action="store_true", help="skip onnx.checker (full_check) on the result")


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.model):
        print(f"dsattn lower: MODEL {args.model!r} does not exist", file=sys.stderr)
        return 2
    out_path = args.output or default_output(args.model)
    if os.path.abspath(out_path) == os.path.abspath(args.model):
        print(f"dsattn lower: refusing to overwrite the input model {args.model!r}; choose another -o", file=sys.stderr)
        return 2
    model = onnx.load(args.model)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lowered = lower_for_ort(model)
    except ValueError as exc:
        print(f"dsattn lower: {exc}", file=sys.stderr)
        return 1
    for w in caught:
        print(f"dsattn lower: warning: {w.message}", file=sys.stderr)
    # Large models: keep weights in an external file next to the output (protobuf's 2 GB limit).
    large = lowered.ByteSize() > 1_800_000_000
    onnx.save(lowered, out_path, save_as_external_data=large,
              location=os.path.basename(out_path) + ".data" if large else None)
    if not args.no_check:
        onnx.checker.check_model(out_path, full_check=True)
    n_before = sum(1 for n in model.graph.node if n.domain == "dsattn")
    print(f"dsattn lower: {n_before} dsattn node(s) lowered; wrote {out_path} "
          f"(IR {lowered.ir_version}, opset {[(o.domain or 'ai.onnx', o.version) for o in lowered.opset_import]})")
    return 0
