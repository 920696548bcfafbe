"""Prefill rows (S=2048 causal, H=32, D=128, B=1/8) of tools/bench_attention.py for several
libraries / modes in one process, so before/after numbers share the run. Usage:
python3 scripts/prefill_bench.py LABEL=LIB[:force_mma] ..."""
import os
import sys

import torch

from dsattn.tools import bench
from dsattn.tools import bench_attention as ba
from dsattn.tools.kernels import attention

print(f"device: {torch.cuda.get_device_name()}", flush=True)
ceil = bench.measure_ceilings(True)
for spec in sys.argv[1:]:
    label, lib = spec.split("=", 1)
    force = lib.endswith(":force_mma")
    lib = lib.removesuffix(":force_mma")
    attention.debug_force_prefill_mma(force, lib=lib)
    for dt, dname in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        print(f"== {label} ({lib}{' force_mma' if force else ''}) {dname}", flush=True)
        ba.prefill_rows(lib, dt, dname, ceil, False)
