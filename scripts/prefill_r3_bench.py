"""Round-3 prefill timing: S=2048 causal, H=32, D=128, rope, B=1/8, fp16/bf16. Device times from the
CUDA profiler for every library given (attention kernel and append kernel) and for cuDNN / flash SDPA
(all kernels of one call) in the same process, each timed in two passes (forward, then reverse order)
so drift shows.   usage: python3 scripts/prefill_r3_bench.py LABEL=LIB ..."""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from dsattn.tools.kernels import attention

S, H, D = 2048, 32, 128


def dev_us(fn, iters=10, match=None):
    """Average device time per call (us) of the kernels whose name contains ``match`` (all if None)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    tot = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        keys = [None] if match is None else [m for m in match if m in ev.name]
        for k in keys:
            tot[k] = tot.get(k, 0.0) + t
    return {k: v / iters for k, v in tot.items()}


libs = [a.split("=", 1) for a in sys.argv[1:]]
print(f"device: {torch.cuda.get_device_name()}", flush=True)
for dt, dname in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
    for B in (1, 8):
        flops = 2.0 * B * H * S * S * D  # causal: 4 B H S^2 D / 2, as round 2 and tools/bench_attention.py
        tf = lambda us: flops / (us * 1e-6) / 1e12  # noqa: E731
        qkv = torch.randn(B, S, 3 * H * D, device="cuda", dtype=dt)
        pk = torch.randn(B, H, S, D, device="cuda", dtype=dt)
        pv = torch.randn(B, H, S, D, device="cuda", dtype=dt)
        lens = torch.zeros(B, dtype=torch.int32, device="cuda")
        out = torch.empty(B, S, H * D, device="cuda", dtype=dt)
        status = torch.empty(1, dtype=torch.int32, device="cuda")
        ws = torch.empty(B * H * S * D * 2, dtype=torch.uint8, device="cuda")
        q = qkv[..., :H * D].reshape(B, S, H, D).transpose(1, 2).contiguous()
        k = qkv[..., H * D:2 * H * D].reshape(B, S, H, D).transpose(1, 2).contiguous()
        v = qkv[..., 2 * H * D:].reshape(B, S, H, D).transpose(1, 2).contiguous()
        res = {}
        order = [("cuDNN", None)] + libs + [("flash", None)]
        for p, seq in enumerate((order, order[::-1])):
            for label, lib in seq:
                if lib is None:
                    be = SDPBackend.CUDNN_ATTENTION if label == "cuDNN" else SDPBackend.FLASH_ATTENTION

                    def f(be=be):
                        with sdpa_kernel([be]):
                            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    try:
                        t = dev_us(f)[None]
                    except Exception as e:  # noqa: BLE001
                        print(f"  {label} failed: {type(e).__name__}: {str(e)[:120]}")
                        continue
                    res.setdefault(label, []).append((t, None))
                else:
                    def f(lib=lib):
                        attention.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, rotary_dim=D, lib=lib,
                                                  out=out, status=status, workspace=ws, check=False)
                    t = dev_us(f, match=["prefill_kernel", "append_kernel"])
                    res.setdefault(label, []).append((t.get("prefill_kernel", float("nan")), t.get("append_kernel")))
        cud = min(x[0] for x in res.get("cuDNN", [(float("nan"), None)]))
        for label, _ in order:
            if label not in res:
                continue
            ts = [x[0] for x in res[label]]
            ap = [x[1] for x in res[label] if x[1] is not None]
            extra = f" append {'/'.join(f'{x:.1f}' for x in ap)} us" if ap else ""
            print(f"{dname} B={B} {label:10s} attn {' / '.join(f'{x:.1f}' for x in ts)} us = "
                  f"{tf(min(ts)):.0f} TF/s ({cud / min(ts):.2f}x cuDNN){extra}", flush=True)
        del qkv, pk, pv, out, ws, q, k, v
        torch.cuda.empty_cache()
