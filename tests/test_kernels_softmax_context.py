"""SoftmaxContext CUDA kernels (plugins/kernels/softmax_context*.cu) against the fp32 reference.

Reference: dsattn.export.ops.softmax_context (fp32). Accuracy rule (docs/DESIGN.md): the kernel's max
error is at most 2x the error of PyTorch computing the same op in precision T (`_torch_in_t`
below), with a floor of 1e-3 (fp16) / 8e-3 (bf16) / 1e-4 (fp32). Outputs are poisoned (NaN) before
each run; cache rows outside [seq_lens[b], seq_lens[b] + S) must come back bit-identical.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dsattn.tools.kernels import softmax_context  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-4}


def test_params_struct_mirrors_header():
    """The ctypes mirror lists the header's fields in the header's order (CPU-only check)."""
    text = (REPO / "plugins" / "kernels" / "softmax_context.h").read_text()
    body = text[text.index("typedef struct dsattn_softmax_context_params"):]
    body = body[body.index("{") + 1: body.index("} dsattn_softmax_context_params;")]
    names = re.findall(r"^\s*[\w\s\*]+?\b(\w+);", body, flags=re.M)
    assert names == [f[0] for f in softmax_context.SoftmaxContextParams._fields_]
    import ctypes

    # 8 pointers, 6 int64, 2 floats, 5 int32, the dtype enum, path; padded to 8 bytes
    assert ctypes.sizeof(softmax_context.SoftmaxContextParams) == 8 * 8 + 6 * 8 + 2 * 4 + 5 * 4 + 4 + 4 + 4


# ------------------------------------------------------------------------------------------------
# helpers

def _alibi(H):
    # BLOOM-style geometric slopes (any finite values would do: the kernel reads them from memory).
    return [2.0 ** (-8.0 * (i + 1) / H) for i in range(H)]


def _rotary_t(x, pos, rd, style, theta):
    """Rotary in x's precision (x [S, heads, D]); cos/sin from fp32 angles rounded to T."""
    half = rd // 2
    inv = 1.0 / (theta ** (torch.arange(0, rd, 2, dtype=torch.float32, device=x.device) / rd))
    ang = pos[:, None] * inv[None, :]
    cos = torch.cos(ang)[:, None, :].to(x.dtype)
    sin = torch.sin(ang)[:, None, :].to(x.dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    if style == 0:
        a, b = rot[..., :half], rot[..., half:]
        rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rot, rest], dim=-1)


def _torch_in_t(qkv, pk, pv, lens, starts, *, H, Hkv, D, scale, layout, causal, window, rd, style,
                theta, slopes):
    """The op computed by PyTorch in qkv.dtype (for the error budget of the accuracy rule)."""
    T = qkv.dtype
    B, S, _ = qkv.shape
    if layout == 0:
        q = qkv[..., : H * D].reshape(B, S, H, D)
        k = qkv[..., H * D:(H + Hkv) * D].reshape(B, S, Hkv, D)
        v = qkv[..., (H + Hkv) * D:].reshape(B, S, Hkv, D)
    else:
        x = qkv.reshape(B, S, H, 3, D)
        q, k, v = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    g = H // Hkv
    ctx = torch.empty(B, S, H, D, dtype=T, device=qkv.device)
    newk = torch.empty(B, Hkv, S, D, dtype=T, device=qkv.device)
    for b in range(B):
        L0, L = lens[b], lens[b] + S
        p = torch.arange(L0, L, device=qkv.device)
        qb, kb = q[b], k[b]
        if rd:
            rp = (p - starts[b]).to(torch.float32)
            qb, kb = _rotary_t(qb, rp, rd, style, theta), _rotary_t(kb, rp, rd, style, theta)
        newk[b] = kb.transpose(0, 1)
        keys = torch.cat([pk[b, :, :L0], kb.transpose(0, 1)], 1).repeat_interleave(g, 0)
        vals = torch.cat([pv[b, :, :L0], v[b].transpose(0, 1)], 1).repeat_interleave(g, 0)
        logits = torch.matmul(qb.transpose(0, 1), keys.transpose(1, 2)) * scale  # [H, S, L] in T
        j = torch.arange(L, device=qkv.device)
        if slopes:
            sl = torch.tensor(slopes, dtype=T, device=qkv.device)
            logits = logits + sl[:, None, None] * (j - starts[b]).to(T)[None, None, :]
        valid = (j >= starts[b])[None, :].expand(S, L)
        if causal:
            valid = valid & (j[None, :] <= p[:, None])
        if window:
            valid = valid & (j[None, :] > p[:, None] - window)
        probs = torch.softmax(logits.masked_fill(~valid[None], float("-inf")), dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)
        ctx[b] = torch.matmul(probs, vals).transpose(0, 1)
    return ctx.reshape(B, S, H * D), newk


def _make(dtype, B, S, H, Hkv, D, lens, Tmax, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D, generator=g, device="cuda").to(dtype)
    pk = torch.randn(B, Hkv, Tmax, D, generator=g, device="cuda").to(dtype)
    pv = torch.randn(B, Hkv, Tmax, D, generator=g, device="cuda").to(dtype)
    return qkv, pk, pv


def _check_case(seed, dtype, *, B, S, H, Hkv, D, lens, Tmax, starts=None, layout=0, causal=1,
                window=0, rd=0, style=0, theta=10000.0, alibi=False, scale=None,
                path=softmax_context.PATH_AUTO):
    from dsattn.export import ops

    torch.backends.cuda.matmul.allow_tf32 = False
    qkv, pk, pv = _make(dtype, B, S, H, Hkv, D, lens, Tmax, seed)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    start_t = torch.tensor(starts, dtype=torch.int32, device="cuda") if starts is not None else None
    st = starts if starts is not None else [0] * B
    slopes = _alibi(H) if alibi else []
    sc = 1.0 / math.sqrt(D) if scale is None else scale
    kw = dict(num_heads=H, num_kv_heads=Hkv, head_size=D, scale=sc, qkv_layout=layout, causal=causal,
              local_window=window, rotary_dim=rd, rotary_style=style, rope_theta=theta)
    ref_ctx, ref_k, ref_v = ops.softmax_context(qkv.float(), pk.float(), pv.float(), seq_lens, start_t,
                                                alibi_slopes=slopes, **kw)
    t_ctx, t_k = _torch_in_t(qkv, pk, pv, lens, st, H=H, Hkv=Hkv, D=D, scale=sc, layout=layout,
                             causal=causal, window=window, rd=rd, style=style, theta=theta, slopes=slopes)
    k0, v0 = pk.clone(), pv.clone()
    out = torch.full((B, S, H * D), float("nan"), dtype=dtype, device="cuda")
    ctx = softmax_context.softmax_context(qkv, pk, pv, seq_lens, start_t, alibi_slopes=slopes or None, out=out,
                                          path=path, **kw)
    torch.cuda.synchronize()
    assert ctx.data_ptr() == out.data_ptr()
    assert not torch.isnan(ctx).any(), "context has NaN (unwritten or masked-row NaN)"
    floor = FLOOR[dtype]
    err_t = (t_ctx.float() - ref_ctx).abs().max().item()
    err = (ctx.float() - ref_ctx).abs().max().item()
    tol = max(2 * err_t, floor)
    assert err <= tol, f"context max error {err:.3g} > tol {tol:.3g} (torch in {dtype}: {err_t:.3g})"
    # Written cache rows: the rotated k / raw v; every other row bit-identical to before.
    written = torch.zeros(B, Tmax, dtype=torch.bool, device="cuda")
    for b in range(B):
        written[b, lens[b]:lens[b] + S] = True
        ref_kb = ref_k[b, :, lens[b]:lens[b] + S]
        kerr = (pk[b, :, lens[b]:lens[b] + S].float() - ref_kb).abs().max().item()
        kerr_t = (t_k[b].float() - ref_kb).abs().max().item()
        assert kerr <= max(2 * kerr_t, floor), f"row {b}: cache key error {kerr:.3g}"
        assert torch.equal(pv[b, :, lens[b]:lens[b] + S], qkv_v(qkv, b, S, H, Hkv, D, layout)), f"row {b}: value rows"
    keep = ~written[:, None, :, None].expand_as(pk)
    assert torch.equal(pk[keep], k0[keep]), "key cache rows outside the written range changed"
    assert torch.equal(pv[keep], v0[keep]), "value cache rows outside the written range changed"


def qkv_v(qkv, b, S, H, Hkv, D, layout):
    """v of row b as [Hkv, S, D] (what the value cache must hold, bit for bit)."""
    if layout == 0:
        return qkv[b, :, (H + Hkv) * D:].reshape(S, Hkv, D).transpose(0, 1)
    return qkv[b].reshape(S, H, 3, D)[:, :, 2].transpose(0, 1)


# ------------------------------------------------------------------------------------------------
# correctness grid: lengths 1 / 97 / 1025 / 4099, odd head counts, GQA, ragged rows, left padding

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
CASES = {
    # decode (S * group <= 8: fused split-KV kernel, chunks merged by the last CTA of each row)
    "decode_f16_mha_ragged_rope": dict(dtype=F16, B=4, S=1, H=5, Hkv=5, D=128, lens=[0, 96, 1024, 4098],
                                       Tmax=4101, rd=128, style=0, theta=10000.0),
    "decode_bf16_gqa4_alibi_gptj_leftpad": dict(dtype=BF16, B=4, S=1, H=12, Hkv=3, D=128, lens=[4098, 96, 1024, 0],
                                                 Tmax=4099, starts=[7, 0, 300, 0], rd=64, style=1, alibi=True),
    "decode_f16_s2_gqa4_window_d64": dict(dtype=F16, B=3, S=2, H=8, Hkv=2, D=64, lens=[95, 1023, 4097], Tmax=4100,
                                          window=50, rd=32, style=0, theta=500000.0),
    "decode_bf16_bloom_layout1": dict(dtype=BF16, B=3, S=1, H=7, Hkv=7, D=128, lens=[96, 1024, 4098], Tmax=4099,
                                      starts=[5, 0, 11], layout=1, alibi=True),
    "decode_f16_d256_s3_noncausal": dict(dtype=F16, B=2, S=3, H=3, Hkv=3, D=256, lens=[94, 1022], Tmax=1100,
                                         causal=0, rd=256, alibi=True),
    "decode_f32_gqa2_rope_alibi": dict(dtype=F32, B=2, S=1, H=6, Hkv=3, D=128, lens=[96, 4098], Tmax=4099,
                                       rd=128, alibi=True, starts=[3, 0]),
    "decode_bf16_gqa16_falls_to_prefill": dict(dtype=BF16, B=2, S=1, H=16, Hkv=1, D=128, lens=[1024, 96],
                                               Tmax=1030, rd=128),
    "decode_f16_all_masked_row": dict(dtype=F16, B=2, S=1, H=3, Hkv=3, D=128, lens=[96, 40], Tmax=100,
                                      starts=[97, 0], window=8),
    # decode split counts (each merged in the launch by the last CTA of its (row, kv head)), empty
    # chunks of short rows; split counts as decode_splits derives them for 132 SMs: 16 (B*Hkv 32),
    # 11 (48), 3 (S=2 x GQA 4 rows), 2 (256), and 8 in the CUDA-graph test below
    "decode_bf16_b1_h32_past2048_split16": dict(dtype=BF16, B=1, S=1, H=32, Hkv=32, D=128, lens=[2048], Tmax=2049,
                                                 rd=128),
    "decode_f16_split16_ragged_short_rows": dict(dtype=F16, B=2, S=1, H=16, Hkv=16, D=128, lens=[2047, 97],
                                                 Tmax=2100, rd=128, alibi=True, starts=[0, 5]),
    "decode_bf16_split11_bloom_layout1": dict(dtype=BF16, B=3, S=1, H=16, Hkv=16, D=128, lens=[4000, 1, 2500],
                                              Tmax=4100, starts=[0, 0, 37], layout=1, alibi=True),
    "decode_f16_split3_s2_gqa4_window": dict(dtype=F16, B=11, S=2, H=32, Hkv=8, D=128,
                                             lens=[1000, 0, 17, 500, 999, 64, 65, 300, 1, 777, 128], Tmax=1024,
                                             window=300, rd=128),
    "decode_f16_b8_split2_ragged": dict(dtype=F16, B=8, S=1, H=32, Hkv=32, D=128,
                                        lens=[1500, 3, 700, 1, 1200, 0, 64, 999], Tmax=1600, rd=128),
    "decode_f32_split16_d64": dict(dtype=F32, B=4, S=1, H=8, Hkv=8, D=64, lens=[1090, 0, 333, 64], Tmax=1100,
                                   rd=64, style=1),
    # chunk counts at the boundaries of the in-launch merge (132 SMs): 64 = kMaxSplits, chunks past
    # the row's end empty, four merge batches of 16; 47 chunks of 8 GQA rows (4 dims per thread,
    # two passes over the 8 x 128 outputs, a partial last batch); 25 chunks at D = 256 (2 dims per
    # thread); B=8 x 32 heads, Tmax 2049, ragged rows: 2 chunks, 512 CTAs
    "decode_f16_b1_h1_split64_empty_tail": dict(dtype=F16, B=1, S=1, H=1, Hkv=1, D=128, lens=[5000], Tmax=5001,
                                                 rd=128),
    "decode_bf16_gqa8_split47": dict(dtype=BF16, B=1, S=1, H=8, Hkv=1, D=128, lens=[3000], Tmax=3001, rd=128,
                                     alibi=True),
    "decode_f16_d256_split25": dict(dtype=F16, B=1, S=1, H=2, Hkv=2, D=256, lens=[1500], Tmax=1600, rd=64),
    "decode_bf16_b8_h32_split2_ragged": dict(dtype=BF16, B=8, S=1, H=32, Hkv=32, D=128,
                                            lens=[2048, 2000, 1, 0, 1500, 2047, 700, 1024], Tmax=2049, rd=128,
                                            starts=[0, 0, 0, 0, 3, 0, 0, 1000]),
    # prefill (append kernel + tensor-core flash attention)
    "prefill_f16_ragged_rope": dict(dtype=F16, B=3, S=97, H=5, Hkv=5, D=128, lens=[0, 1000, 4002], Tmax=4099,
                                    rd=128, style=0),
    "prefill_bf16_gqa3_alibi_window_gptj": dict(dtype=BF16, B=2, S=1025, H=9, Hkv=3, D=64, lens=[0, 3074],
                                                Tmax=4099, starts=[0, 17], alibi=True, rd=32, style=1, window=300),
    "prefill_f16_bloom_layout1_noncausal": dict(dtype=F16, B=2, S=97, H=5, Hkv=5, D=128, lens=[0, 3], Tmax=200,
                                                starts=[3, 0], layout=1, causal=0, alibi=True),
    "prefill_f16_leftpad_masked_rows": dict(dtype=F16, B=2, S=97, H=3, Hkv=3, D=128, lens=[0, 0], Tmax=97,
                                            starts=[10, 0], rd=64),
    "prefill_bf16_s9_long_past": dict(dtype=BF16, B=2, S=9, H=4, Hkv=2, D=64, lens=[0, 4090], Tmax=4099, rd=64, scale=0.3),
    # generic CUDA-core path: fp32 prefill, head sizes without a tuned kernel
    "prefill_f32_generic": dict(dtype=F32, B=2, S=97, H=3, Hkv=3, D=64, lens=[0, 1000], Tmax=1100, rd=64,
                                alibi=True, starts=[0, 4]),
    "prefill_f16_d96_generic": dict(dtype=F16, B=2, S=97, H=3, Hkv=1, D=96, lens=[0, 1025], Tmax=1200, rd=96,
                                    style=1),
    "decode_bf16_d96_generic": dict(dtype=BF16, B=2, S=1, H=5, Hkv=5, D=96, lens=[1, 4098], Tmax=4099, alibi=True),
    # D = 128 fp16/bf16 prefill runs the wgmma kernel on Hopper (q rotated in the kernel from the
    # append kernel's cos/sin table): 128-key tiles, partial tiles, diagonal masks, both rotary
    # styles and the element-wise rotate_half path (rotary_dim / 2 not a multiple of 8)
    "prefill_bf16_d128_gqa4_alibi_window_gptj_s1025": dict(dtype=BF16, B=2, S=1025, H=8, Hkv=2, D=128,
                                                           lens=[0, 2000], Tmax=3100, starts=[0, 33], alibi=True,
                                                           rd=128, style=1, window=700),
    "prefill_f16_d128_s4099_rd24": dict(dtype=F16, B=1, S=4099, H=2, Hkv=1, D=128, lens=[0], Tmax=4099, rd=24,
                                        style=0, theta=500000.0),
    "prefill_bf16_d128_norope_ragged_leftpad": dict(dtype=BF16, B=3, S=200, H=3, Hkv=3, D=128, lens=[0, 5, 129],
                                                    Tmax=400, starts=[0, 100, 0]),
    # wgmma kernel's two softmax forms: scale > 0 without ALiBi folds the scale into the exponent
    # (max over raw scores; a large scale makes the row maxima dominate), ALiBi or scale <= 0 keep
    # the biased / general form; many 128-key tiles cycle through all three K/V stages
    "prefill_f16_d128_negative_scale_window": dict(dtype=F16, B=2, S=300, H=4, Hkv=2, D=128, lens=[0, 700],
                                                   Tmax=1000, rd=128, scale=-0.06, window=200),
    "prefill_bf16_d128_scale0p4_noncausal_ragged": dict(dtype=BF16, B=2, S=257, H=2, Hkv=1, D=128, lens=[0, 611],
                                                        Tmax=900, causal=0, rd=64, scale=0.4, starts=[0, 9]),
    # fp16/bf16 D = 128 prefill without ALiBi / window, scale > 0: FlashInfer's kernel on Hopper (q
    # token-major from the append kernel, device-built work list): B = 1 and B = 8, ragged rows, left
    # padding with query rows that see no key, GQA, key ranges ending inside a key tile (128 causal,
    # 192 non-causal), a row whose last key tile would pass Tmax (computed by the mma.sync kernel)
    "prefill_fa3_f16_b1_s2048_causal": dict(dtype=F16, B=1, S=2048, H=4, Hkv=4, D=128, lens=[0], Tmax=2048,
                                            rd=128),
    "prefill_fa3_bf16_b8_ragged_gqa4_leftpad": dict(dtype=BF16, B=8, S=300, H=8, Hkv=2, D=128,
                                                    lens=[0, 5, 129, 1000, 0, 77, 255, 2], Tmax=1400,
                                                    starts=[0, 0, 3, 500, 10, 0, 100, 0], rd=128),
    "prefill_fa3_f16_b8_noncausal_layout1": dict(dtype=F16, B=8, S=257, H=4, Hkv=4, D=128,
                                                 lens=[0, 190, 600, 1, 64, 0, 383, 17], Tmax=900,
                                                 starts=[0, 7, 0, 0, 64, 3, 0, 9], layout=1, causal=0, rd=64,
                                                 style=1),
    "prefill_fa3_bf16_rows_without_keys": dict(dtype=BF16, B=2, S=200, H=4, Hkv=1, D=128, lens=[0, 50], Tmax=300,
                                               starts=[37, 120], rd=64, scale=0.2),
    "prefill_fa3_f16_capacity_row_exact_kernel": dict(dtype=F16, B=3, S=130, H=4, Hkv=2, D=128, lens=[0, 100, 5],
                                                      Tmax=235, rd=128),
}

# The mma.sync prefill stays the fallback (sm_80, builds without sm_90a): on Hopper it runs only
# when forced, so these D = 128 cases also go through it there.
MMA_FALLBACK_CASES = ["prefill_f16_ragged_rope", "prefill_bf16_d128_gqa4_alibi_window_gptj_s1025",
                      "prefill_f16_leftpad_masked_rows"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_softmax_context_matches_reference(name, seed):
    case = dict(CASES[name])
    _check_case(seed, case.pop("dtype"), **case)


@pytest.mark.gpu
@pytest.mark.parametrize("name", MMA_FALLBACK_CASES)
def test_prefill_mma_fallback_matches_reference(name, seed):
    case = dict(CASES[name])
    # the mma.sync kernel, even where wgmma applies
    _check_case(seed, case.pop("dtype"), path=softmax_context.PATH_PREFILL_MMA, **case)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("causal", [1, 0])
def test_prefill_takes_the_flashinfer_kernel_on_hopper(dtype, causal, seed):
    """On compute capability 9.0 a 16-bit D = 128 prefill without ALiBi / window runs FlashInfer's
    kernel (plus the mma.sync kernel, whose CTAs leave at once when no row is flagged); with ALiBi it
    runs our own Hopper kernel instead. The GPU scripts build with the FlashInfer headers required."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("FlashInfer's sm_90a kernel needs compute capability 9.0")
    from torch.profiler import ProfilerActivity, profile

    B, S, H, D, Tmax = 2, 300, 4, 128, 400
    qkv, pk, pv = _make(dtype, B, S, H, H, D, None, Tmax, seed)
    lens = torch.tensor([0, 50], dtype=torch.int32, device="cuda")

    def kernels(**kw):
        softmax_context.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, causal=causal, **kw)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            softmax_context.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, causal=causal, **kw)
            torch.cuda.synchronize()
        return [e.name for e in prof.events() if e.device_type.name == "CUDA"]

    names = kernels()
    assert any("PrefillWithKVCacheKernel" in n for n in names), names
    assert any("fa3_worklist_kernel" in n for n in names), names
    names = kernels(alibi_slopes=_alibi(H))
    assert not any("PrefillWithKVCacheKernel" in n for n in names), names


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("S", [1, 97])
def test_overflow_raises_and_writes_nothing(dtype, S, seed):
    B, H, D, Tmax = 3, 4, 128, 300
    qkv, pk, pv = _make(dtype, B, S, H, H, D, None, Tmax, seed)
    k0, v0 = pk.clone(), pv.clone()
    bad_sets = [
        ([10, Tmax - S + 1, 0], None, 1),      # seq_lens[1] + S > Tmax
        ([10, 0, -1], None, 2),                # negative seq_lens
        ([10, 0, 5], [0, S + 1, 0], 1),        # start_pos beyond seq_lens + S
    ]
    for lens, starts, bad in bad_sets:
        out = torch.full((B, S, H * D), 7.0, dtype=dtype, device="cuda")
        seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        st = torch.tensor(starts, dtype=torch.int32, device="cuda") if starts else None
        with pytest.raises(ValueError, match=rf"row b={bad}\b"):
            softmax_context.softmax_context(qkv, pk, pv, seq_lens, st, num_heads=H, head_size=D, rotary_dim=64, out=out)
        assert torch.equal(pk, k0) and torch.equal(pv, v0), "a rejected call wrote the cache"
        assert bool((out == 7.0).all()), "a rejected call wrote the context"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_prefill_then_decode_equals_one_prefill(dtype, seed):
    """Prefill of P tokens then single-token decode steps == one prefill of the whole sequence."""
    from dsattn.export import ops

    B, H, Hkv, D, P, steps, Tmax = 2, 6, 2, 128, 60, 4, 80
    kw = dict(num_heads=H, num_kv_heads=Hkv, head_size=D, rotary_dim=128, alibi_slopes=_alibi(H))
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, P + steps, (H + 2 * Hkv) * D, generator=g, device="cuda").to(dtype)
    starts = torch.tensor([0, 5], dtype=torch.int32, device="cuda")
    init = torch.randn(B, Hkv, Tmax, D, generator=g, device="cuda").to(dtype)
    pk1, pv1 = init.clone(), init.clone()
    outs = [softmax_context.softmax_context(qkv[:, :P].contiguous(), pk1, pv1,
                                      torch.zeros(B, dtype=torch.int32, device="cuda"), starts, **kw)]
    for t in range(steps):
        lens = torch.full((B,), P + t, dtype=torch.int32, device="cuda")
        outs.append(softmax_context.softmax_context(qkv[:, P + t:P + t + 1].contiguous(), pk1, pv1, lens, starts, **kw))
    stepwise = torch.cat(outs, 1)
    pk2, pv2 = init.clone(), init.clone()
    whole = softmax_context.softmax_context(qkv, pk2, pv2, torch.zeros(B, dtype=torch.int32, device="cuda"), starts, **kw)
    ref, ref_k, _ = ops.softmax_context(qkv.float(), init.float(), init.float(),
                                        torch.zeros(B, dtype=torch.int32, device="cuda"), starts, **kw)
    err = (stepwise.float() - ref).abs().max().item()
    err_whole = (whole.float() - ref).abs().max().item()
    assert err <= max(2 * err_whole, FLOOR[dtype]), f"stepwise error {err:.3g} vs one-prefill error {err_whole:.3g}"
    # The decode kernel and the append kernel rotate k with the same fp32 formula: identical caches.
    assert torch.equal(pk1, pk2) and torch.equal(pv1, pv2)


@pytest.mark.gpu
def test_bad_arguments_raise():
    dev = "cuda"
    qkv = torch.randn(1, 1, 3 * 4 * 64, device=dev, dtype=F16)
    pk = torch.zeros(1, 4, 16, 64, device=dev, dtype=F16)
    lens = torch.zeros(1, dtype=torch.int32, device=dev)
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens, num_heads=4, num_kv_heads=3, head_size=64)
    with pytest.raises(ValueError, match="head_size=60"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens, num_heads=4, head_size=60)
    with pytest.raises(TypeError, match="seq_lens"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens.long(), num_heads=4, head_size=64)
    with pytest.raises(ValueError, match="rotary_dim=3"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens, num_heads=4, head_size=64, rotary_dim=3)
    strided = torch.zeros(1, 4, 16, 128, device=dev, dtype=F16)[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        softmax_context.softmax_context(qkv, strided, pk.clone(), lens, num_heads=4, head_size=64)
    # A forced path the call cannot take is rejected, not ignored.
    with pytest.raises(ValueError, match="path=1 .*decode path"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens, num_heads=4, head_size=64,
                                        path=softmax_context.PATH_PREFILL_MMA)
    with pytest.raises(ValueError, match="path=1 .*head_size 64 or 128"):
        softmax_context.softmax_context(torch.randn(1, 9, 3 * 4 * 32, device=dev, dtype=F16),
                                        torch.zeros(1, 4, 16, 32, device=dev, dtype=F16),
                                        torch.zeros(1, 4, 16, 32, device=dev, dtype=F16), lens, num_heads=4,
                                        head_size=32, path=softmax_context.PATH_PREFILL_MMA)
    with pytest.raises(ValueError, match="path=2"):
        softmax_context.softmax_context(qkv, pk, pk.clone(), lens, num_heads=4, head_size=64, path=2)


@pytest.mark.gpu
@pytest.mark.parametrize("S,B,dt", [(1, 2, F16), (97, 2, F16), (200, 8, BF16)])
def test_cuda_graph_capture_and_replay(S, B, dt, seed):
    """The whole op (the programmatic-dependent decode launch; for prefill on Hopper the work list
    built on the device and FlashInfer's kernel) captures into a CUDA graph; replays with new inputs
    and new seq_lens give the eager result."""
    from dsattn.export import ops

    H, D, Tmax = 32, 128, 2300
    qkv, pk, pv = _make(dt, B, S, H, H, D, None, Tmax, seed)
    lens = torch.tensor([2047, 1000, 0, 5, 129, 700, 1999, 64][:B], dtype=torch.int32, device="cuda")
    kw = dict(num_heads=H, head_size=D, rotary_dim=D)
    out = torch.full((B, S, H * D), float("nan"), dtype=dt, device="cuda")
    status = torch.empty(1, dtype=torch.int32, device="cuda")
    ws = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")
    k0, v0 = pk.clone(), pv.clone()
    softmax_context.softmax_context(qkv, pk, pv, lens, out=out, status=status, workspace=ws, **kw)  # warm-up
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            softmax_context.softmax_context(qkv, pk, pv, lens, out=out, status=status, workspace=ws, check=False, **kw)
    torch.cuda.current_stream().wait_stream(s)
    qkv.copy_(torch.randn_like(qkv, dtype=torch.float32).to(dt))
    lens.copy_(lens.flip(0))  # the device-side work list follows new lengths without a new capture
    pk.copy_(k0)
    pv.copy_(v0)
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert int(status.item()) == 0
    ref, _, _ = ops.softmax_context(qkv.float(), k0.float(), v0.float(), lens, **kw)
    err = (out.float() - ref).abs().max().item()
    assert not torch.isnan(out).any() and err <= 2e-2, f"graph replay error {err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv,S,D", [(32, 32, 1, 128), (32, 8, 2, 128), (8, 8, 1, 64), (16, 16, 1, 256)])
def test_decode_workspace_covers_smaller_batches(H, Hkv, S, D):
    """The TensorRT plugin sizes the workspace at the profile's largest batch and runs smaller
    batches with it: the decode workspace must be an upper bound over every batch' <= batch (the
    split count, so the partials, depends on the batch, and not monotonically)."""
    NB = 40
    qkv = torch.empty(NB, S, (H + 2 * Hkv) * D, device="cuda", dtype=F16)
    pk = torch.empty(NB, Hkv, 4100, D, device="cuda", dtype=F16)
    pv = torch.empty_like(pk)  # distinct caches: params the op would reject get workspace size 0
    lens = torch.zeros(NB, dtype=torch.int32, device="cuda")
    out = torch.empty(NB, S, H * D, device="cuda", dtype=F16)
    st = torch.empty(1, dtype=torch.int32, device="cuda")

    def params(B):  # views of the first B rows: only the sizes matter here
        return softmax_context._params(qkv[:B], pk[:B], pv[:B], lens[:B], None, out[:B], st, None, num_heads=H,
                                 num_kv_heads=Hkv, head_size=D, scale=1.0 / math.sqrt(D), rope_theta=10000.0,
                                 qkv_layout=0, causal=1, local_window=0, rotary_dim=0, rotary_style=0,
                                 path=softmax_context.PATH_AUTO)
    sizes = [softmax_context.workspace_size(params(B)) for B in range(1, NB + 1)]
    assert max(sizes) > 0, f"no decode split needs partials here: {sizes}"
    for B in range(1, NB + 1):
        assert sizes[B - 1] >= max(sizes[:B]), f"B={B}: {sizes[B - 1]} < max over smaller batches {max(sizes[:B])}"


# ------------------------------------------------------------------------------------------------
# The decode split merges in the same launch: the last CTA of each (row, kv head) to finish merges
# the chunks, counted on an arrival word in the workspace. The workspace is scratch (a TensorRT
# engine shares it with other layers), so nothing may depend on what it holds on entry.

# What a workspace may hold between calls: garbage, zeros, all ones, and arrival words in every
# state the protocol must read as "nobody arrived" (decode_arrive in softmax_context.cu): clean,
# tagged with a count >= the split count, tagged one below the tag (the first add carries into a
# clean word), and the word one launch leaves while its last CTA resets it.
_TAG = 0x7FA5C3D1E29B << 16
WS_FILLS = {"random": None, "zeros": 0, "ones": -1, "tag_clean": _TAG, "tag_count_ffff": _TAG | 0xFFFF,
            "below_tag": _TAG - 1, "tag_count_64": _TAG | 64}

# (name, B, S, H, Hkv, D, Tmax): split counts for 132 SMs in the comments
WS_SHAPES = [
    ("b1_h32_split16", 1, 1, 32, 32, 128, 2049),
    ("b8_h32_split2", 8, 1, 32, 32, 128, 2049),    # 2 chunks, 512 CTAs
    ("b3_h16_split11", 3, 1, 16, 16, 128, 1500),
    ("gqa4_s2_split15", 4, 2, 16, 4, 64, 900),  # 8 query rows per CTA
]


def _ws_case(shape, dtype, seed):
    name, B, S, H, Hkv, D, Tmax = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D, generator=g, device="cuda").to(dtype)
    pk = torch.randn(B, Hkv, Tmax, D, generator=g, device="cuda").to(dtype)
    pv = torch.randn(B, Hkv, Tmax, D, generator=g, device="cuda").to(dtype)
    lens = torch.randint(0, Tmax - S + 1, (B,), generator=g, device="cuda", dtype=torch.int32)
    lens[0] = Tmax - S
    kw = dict(num_heads=H, num_kv_heads=Hkv, head_size=D, rotary_dim=D)
    return qkv, pk, pv, lens, kw


def _ws_run(case, ws, out=None, stream=None):
    qkv, pk, pv, lens, kw = case
    k, v = pk.clone(), pv.clone()
    B, S = qkv.shape[:2]
    out = torch.full((B, S, kw["num_heads"] * kw["head_size"]), float("nan"), dtype=qkv.dtype,
                     device="cuda") if out is None else out
    status = torch.empty(1, dtype=torch.int32, device="cuda")
    softmax_context.softmax_context(qkv, k, v, lens, out=out, status=status, workspace=ws, check=False, **kw)
    return out, k, v, status


def _fill(ws, how, gen):
    """Fill the workspace with WS_FILLS value ``how`` (None: random bytes)."""
    if how is None:
        ws.copy_(torch.randint(0, 256, ws.shape, generator=gen, device="cuda", dtype=torch.int32).to(torch.uint8))
    else:
        ws.view(torch.int64).fill_(how)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_decode_merge_does_not_depend_on_workspace_contents(dtype, seed):
    """Every call gives the bits of a call on a fresh workspace, whatever the workspace held on entry
    (WS_FILLS), after calls of other shapes on the same workspace (their partials and arrival words
    overlap this call's at other offsets), and repeated back to back without a refill."""
    cases = [_ws_case(sh, dtype, seed + i) for i, sh in enumerate(WS_SHAPES)]
    ws = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    base = []
    for c in cases:
        ws.zero_()
        out, k, v, st = _ws_run(c, ws)
        torch.cuda.synchronize()
        assert int(st.item()) == 0 and not torch.isnan(out).any()
        base.append((out, k, v))
    for how in WS_FILLS.values():
        for i, c in enumerate(cases):
            _fill(ws, how, gen)
            out, k, v, _ = _ws_run(c, ws)
            torch.cuda.synchronize()
            assert torch.equal(out, base[i][0]), f"{WS_SHAPES[i][0]}, workspace filled with {how}"
            assert torch.equal(k, base[i][1]) and torch.equal(v, base[i][2])
    # shapes interleaved on one workspace, no refill: each sees the others' leftovers
    _fill(ws, None, gen)
    for rnd in range(3):
        for i in ([0, 1, 2, 3] if rnd % 2 == 0 else [3, 1, 0, 0, 2]):
            out, _, _, _ = _ws_run(cases[i], ws)
            torch.cuda.synchronize()
            assert torch.equal(out, base[i][0]), f"{WS_SHAPES[i][0]} after other calls on the same workspace"


@pytest.mark.gpu
def test_decode_merge_on_two_streams(seed):
    """Calls on two streams at once, each with its own workspace (the header's concurrency rule),
    give the bits of serial calls."""
    a = _ws_case(WS_SHAPES[0], F16, seed)
    b = _ws_case(WS_SHAPES[1], F16, seed + 1)
    wa = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")
    wb = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")
    ref_a = _ws_run(a, wa)[0].clone()
    ref_b = _ws_run(b, wb)[0].clone()
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    s1.wait_stream(torch.cuda.current_stream())
    s2.wait_stream(torch.cuda.current_stream())
    outs = []
    for _ in range(8):
        with torch.cuda.stream(s1):
            oa = _ws_run(a, wa)[0]
            oa2 = _ws_run(a, wa)[0]
        with torch.cuda.stream(s2):
            ob = _ws_run(b, wb)[0]
        outs.append((oa, oa2, ob))
    torch.cuda.synchronize()
    for oa, oa2, ob in outs:
        assert torch.equal(oa, ref_a) and torch.equal(oa2, ref_a) and torch.equal(ob, ref_b)


@pytest.mark.gpu
def test_decode_merge_in_graph_replays_with_a_shared_scratch(seed):
    """Two decode calls of different shapes share one workspace inside a CUDA graph, with another
    kernel scribbling over it between them (as other layers do with a TensorRT workspace); replays,
    with the workspace refilled or left as the last replay left it, give the eager bits."""
    a = _ws_case(WS_SHAPES[0], F16, seed)
    b = _ws_case(WS_SHAPES[1], F16, seed + 1)
    ws = torch.empty(1 << 24, dtype=torch.uint8, device="cuda")
    ref_a = _ws_run(a, ws)[0].clone()
    ref_b = _ws_run(b, ws)[0].clone()
    oa = torch.empty_like(ref_a)
    ob = torch.empty_like(ref_b)
    junk = torch.randint(0, 256, ws.shape, dtype=torch.int32, device="cuda").to(torch.uint8)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        _ws_run(a, ws, oa)  # warm-up outside the capture
        with torch.cuda.graph(g, stream=s):
            _ws_run(a, ws, oa)
            ws.copy_(junk)
            _ws_run(b, ws, ob)
            _ws_run(a, ws, oa)  # right after b: b's arrival words, a's offsets
    torch.cuda.current_stream().wait_stream(s)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for rep in range(6):
        oa.fill_(float("nan"))
        ob.fill_(float("nan"))
        if rep % 2:
            _fill(ws, list(WS_FILLS.values())[rep % len(WS_FILLS)], gen)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(oa, ref_a) and torch.equal(ob, ref_b), f"replay {rep}"


@pytest.mark.gpu
@pytest.mark.parametrize("B,Hkv", [(1, 32), (2, 32), (3, 32), (4, 32), (5, 32), (8, 32), (12, 32), (16, 32),
                                   (17, 32), (32, 32), (33, 32), (64, 32), (32, 8)])
def test_decode_batches_past_2048(B, Hkv, seed):
    """The bench shape (32 heads x 128, past up to 2048) at batches from 1 to 64 (16 chunks at B = 1
    down to no split from B = 17; GQA 4 at B = 32), ragged rows."""
    lens = torch.randint(0, 2049, (B,), generator=torch.Generator().manual_seed(seed)).tolist()
    lens[0] = 2048
    _check_case(seed, F16 if B % 2 else BF16, B=B, S=1, H=32, Hkv=Hkv, D=128, lens=lens, Tmax=2049, rd=128)
