"""Small prefill cases through dsattn_softmax_context vs the fp32 reference, printing where errors
sit (rows / columns of the context) to localize layout bugs of the prefill kernels. Usage:
python3 scripts/prefill_diag.py [lib path] [--force-mma]"""
import sys

import torch

from dsattn.export import ops
from dsattn.tools.kernels import attention

FORCE = "--force-mma" in sys.argv
args = [a for a in sys.argv[1:] if a != "--force-mma"]
lib = args[0] if args else None
attention.debug_force_prefill_mma(FORCE, lib=lib)


def run(dtype, B, S, H, Hkv, D, lens, Tmax, **kw):
    torch.manual_seed(0)
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D, device="cuda").to(dtype)
    pk = torch.randn(B, Hkv, Tmax, D, device="cuda").to(dtype)
    pv = torch.randn(B, Hkv, Tmax, D, device="cuda").to(dtype)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    ref, _, _ = ops.softmax_context(qkv.float(), pk.float(), pv.float(), sl, None, num_heads=H,
                                    num_kv_heads=Hkv, head_size=D, **kw)
    ctx = attention.softmax_context(qkv, pk, pv, sl, num_heads=H, num_kv_heads=Hkv, head_size=D, lib=lib, **kw)
    d = (ctx.float() - ref).abs().reshape(B, S, H, D)
    err = d.max().item()
    bad = (d > 0.02)
    rows = bad.any(-1).any(-1).any(0).nonzero().flatten().tolist()
    cols = bad.any(0).any(0).any(0).nonzero().flatten().tolist()
    tag = "FORCE_MMA" if FORCE else "default"
    print(f"[{tag}] {dtype} B={B} S={S} H={H}/{Hkv} D={D} lens={lens} {kw}: max err {err:.3e}; "
          f"bad rows {rows[:12]}{'...' if len(rows) > 12 else ''} ({len(rows)}); bad cols {cols[:16]} ({len(cols)})",
          flush=True)


for dt in (torch.float16, torch.bfloat16):
    run(dt, 1, 128, 1, 1, 128, [0], 128, causal=0)
    run(dt, 1, 128, 1, 1, 128, [0], 128)
    run(dt, 1, 300, 2, 1, 128, [0], 300, rotary_dim=128)
    run(dt, 1, 64, 1, 1, 128, [200], 300, rotary_dim=128, rotary_style=1)
