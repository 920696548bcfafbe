"""Small SoftmaxContext calls covering every kernel (decode with the in-launch split merge at 2..64
chunks, a workspace holding garbage; decode without split; append + FlashInfer prefill (work list
kernel, FlashInfer kernel, the mma.sync kernel for flagged rows: none, and one row at the cache's
capacity), our Hopper and mma.sync prefill, generic fp32 / odd-head-size path, the rejected-row
path), for `compute-sanitizer --tool memcheck|racecheck|synccheck python3
scripts/sanitize_softmax_context.py`. Checks results loosely (the pytest suite applies the accuracy
rule); exits nonzero on any failure."""
import sys

import torch

from dsattn.export import ops
from dsattn.tools.kernels import softmax_context

MMA = softmax_context.PATH_PREFILL_MMA


def case(dtype, B, S, H, Hkv, D, lens, Tmax, path=softmax_context.PATH_AUTO, garbage_ws=False, **kw):
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D, device="cuda").to(dtype)
    pk = torch.randn(B, Hkv, Tmax, D, device="cuda").to(dtype)
    pv = torch.randn(B, Hkv, Tmax, D, device="cuda").to(dtype)
    sl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    ref, _, _ = ops.softmax_context(qkv.float(), pk.float(), pv.float(), sl, None, num_heads=H,
                                    num_kv_heads=Hkv, head_size=D, **kw)
    ws = None
    if garbage_ws:  # the merge's arrival words must not depend on what the workspace holds
        ws = torch.randint(0, 256, (1 << 22,), dtype=torch.int32, device="cuda").to(torch.uint8)
    ctx = softmax_context.softmax_context(qkv, pk, pv, sl, num_heads=H, num_kv_heads=Hkv, head_size=D,
                                          path=path, workspace=ws, **kw)
    err = (ctx.float() - ref).abs().max().item()
    ok = err < 0.05
    print(f"{dtype} B={B} S={S} H={H}/{Hkv} D={D} lens={lens} path={path}: err {err:.2e} {'ok' if ok else 'FAIL'}")
    return ok


ok = True
ok &= case(torch.float16, 2, 1, 4, 2, 128, [5, 300], 310, rotary_dim=128, alibi_slopes=[0.1, 0.2, 0.3, 0.4])
ok &= case(torch.float16, 1, 1, 2, 2, 128, [2000], 2100, rotary_dim=128)  # 33 splits
ok &= case(torch.bfloat16, 2, 1, 16, 16, 128, [1000, 37], 1100, rotary_dim=128, garbage_ws=True)  # 16 splits
ok &= case(torch.float16, 8, 1, 32, 32, 128, [700] * 8, 710, rotary_dim=128)  # 2 splits
ok &= case(torch.float16, 8, 1, 32, 32, 128, [2048, 3, 700, 0, 1999, 2047, 64, 1000], 2049, rotary_dim=128,
           garbage_ws=True)  # 2 splits, ragged rows
ok &= case(torch.float16, 1, 1, 1, 1, 128, [5000], 5001, rotary_dim=128)  # 64 splits, the last one empty
ok &= case(torch.bfloat16, 1, 1, 8, 1, 128, [3000], 3001, rotary_dim=128, garbage_ws=True)  # GQA 8: 47 splits
ok &= case(torch.bfloat16, 64, 1, 4, 4, 64, list(range(64)), 70, rotary_dim=32, rotary_style=1)
ok &= case(torch.bfloat16, 2, 2, 8, 2, 256, [0, 77], 80, local_window=20)
# FlashInfer prefill (sm_90a, CC 9.0): causal GQA with a partial last key tile; non-causal (192-key
# tiles); a row whose last key tile would reach past Tmax (computed by the mma.sync kernel)
ok &= case(torch.float16, 2, 150, 4, 2, 128, [0, 40], 300, rotary_dim=128)
ok &= case(torch.bfloat16, 2, 130, 2, 2, 128, [7, 0], 200, causal=0, rotary_dim=64)
ok &= case(torch.float16, 2, 130, 2, 1, 128, [100, 5], 235, rotary_dim=128)
ok &= case(torch.float16, 2, 70, 3, 3, 128, [0, 30], 100, rotary_dim=64, alibi_slopes=[0.1, 0.2, 0.3])
ok &= case(torch.float16, 2, 70, 3, 3, 128, [0, 30], 100, path=MMA, rotary_dim=64, alibi_slopes=[0.1, 0.2, 0.3])
ok &= case(torch.bfloat16, 1, 65, 4, 1, 64, [3], 70, causal=0)
ok &= case(torch.bfloat16, 2, 150, 4, 2, 128, [0, 40], 200, rotary_dim=128, rotary_style=1, local_window=60,
           alibi_slopes=[0.1, 0.2, 0.3, 0.4])
ok &= case(torch.bfloat16, 2, 150, 4, 2, 128, [0, 40], 200, path=MMA, rotary_dim=128, local_window=60)
ok &= case(torch.float32, 2, 9, 3, 3, 64, [0, 20], 40, rotary_dim=64)
ok &= case(torch.float16, 2, 1, 3, 3, 96, [0, 20], 40)
try:
    case(torch.float16, 2, 3, 2, 2, 64, [0, 39], 40)
    print("overflow not reported: FAIL")
    ok = False
except ValueError as e:
    print(f"overflow reported: {str(e)[:80]}")
torch.cuda.synchronize()
sys.exit(0 if ok else 1)
