"""The SoftmaxContext CUDA kernels under the numeric contract (OPS.md "Non-finite values"), fp16 and
bf16, on every path: single-token decode (split-KV, the chunks merged in the launch by the last CTA
of each row), multi-row decode (GQA x tokens), FlashInfer's prefill (Hopper), our Hopper wgmma
prefill, the mma.sync prefill (forced) and the generic kernel.

- NaN / inf in every cache row that no new token of the row sees (left padding, windowed out,
  past seq_lens + S): the context is bit-identical to the run with zeros there.
- NaN in one element of the value of a key that some tokens of the call see and others mask
  (causal diagonal, window edge): NaN exactly there for the tokens that see it (every head of the KV
  group), every other element bit-identical to the run with 0 in its place.
- NaN in q: that (token, head) row is NaN in full, never zeros; a row with no visible key is zeros.
The expected NaN positions are derived from the masks here and must also be the fp32 reference's.

FlashInfer's kernel (cases marked fa3) multiplies masked keys' values by a zero probability, so a batch
row whose loaded masked keys hold NaN / inf (the causal diagonal of this call's tokens, the rows past
the row's end in its last key tile) is computed by the mma.sync kernel instead: there the poisoned
run's other elements match the clean run within the accuracy floor (another kernel, other rounding),
not bit for bit.
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from dsattn.tools.kernels import softmax_context as kern  # noqa: E402

F16, BF16 = torch.float16, torch.bfloat16
AUTO, MMA = kern.PATH_AUTO, kern.PATH_PREFILL_MMA

# name: sizes, masks and the path. Split counts as decode_splits derives them for 132 SMs:
# B * Hkv = 64 -> 8 chunks, 16 -> 33 chunks, 256 at Tmax 2049 -> 2 chunks.
CASES = {
    "decode_split8_window_leftpad": dict(B=2, S=1, H=32, Hkv=32, D=128, lens=[2000, 1500], Tmax=2100,
                                          starts=[37, 0], window=300, rd=128),
    "decode_split33_window": dict(B=1, S=1, H=16, Hkv=16, D=128, lens=[2090], Tmax=2100, starts=[100],
                                  window=500, alibi=True),
    "decode_b8_split2_window_leftpad": dict(B=8, S=1, H=32, Hkv=32, D=128,
                                        lens=[2048, 2000, 1900, 1000, 2047, 1500, 100, 1700], Tmax=2049,
                                        starts=[0, 37, 0, 5, 0, 100, 0, 9], window=1200, rd=128),
    "decode_gqa4_s1_d64": dict(B=2, S=1, H=8, Hkv=2, D=64, lens=[700, 64], Tmax=800, starts=[5, 60], window=40),
    "decode_gqa4_s2_window": dict(B=3, S=2, H=8, Hkv=2, D=128, lens=[95, 1023, 600], Tmax=1100,
                                  starts=[3, 0, 200], window=50, rd=64),
    "decode_s3_d256_alibi": dict(B=2, S=3, H=2, Hkv=2, D=256, lens=[90, 400], Tmax=420, starts=[0, 30],
                                 window=20, alibi=True),
    "prefill_d128_window_leftpad": dict(B=2, S=300, H=4, Hkv=2, D=128, lens=[0, 700], Tmax=1100,
                                        starts=[13, 40], window=100, rd=128),
    "prefill_d128_window_leftpad_mma": dict(B=2, S=300, H=4, Hkv=2, D=128, lens=[0, 700], Tmax=1100,
                                            starts=[13, 40], window=100, rd=128, path=MMA),
    "prefill_d128_causal_alibi": dict(B=1, S=257, H=2, Hkv=1, D=128, lens=[130], Tmax=400, starts=[7],
                                      alibi=True),
    "prefill_d128_fa3_causal_leftpad": dict(B=2, S=300, H=4, Hkv=2, D=128, lens=[0, 700], Tmax=1100,
                                            starts=[13, 40], rd=128, fa3=True),
    "prefill_d128_fa3_noncausal": dict(B=2, S=150, H=2, Hkv=2, D=128, lens=[0, 333], Tmax=600, starts=[0, 20],
                                       causal=0, fa3=True),
    "prefill_d64_window": dict(B=2, S=200, H=3, Hkv=3, D=64, lens=[0, 333], Tmax=600, starts=[0, 20], window=64),
    "prefill_d96_generic": dict(B=2, S=97, H=3, Hkv=1, D=96, lens=[0, 300], Tmax=420, starts=[2, 9], window=30),
}


def _visible(c):
    """[B, S, Tmax] bool: key j visible from new token i of row b (OPS.md masks)."""
    B, S, T = c["B"], c["S"], c["Tmax"]
    j = torch.arange(T)
    vis = torch.zeros(B, S, T, dtype=torch.bool)
    for b in range(B):
        p = c["lens"][b] + torch.arange(S)[:, None]
        v = (j >= c["starts"][b]) & (j < c["lens"][b] + S)
        if c.get("causal", 1):
            v = v & (j <= p)
        if c.get("window", 0):
            v = v & (j > p - c["window"])
        vis[b] = v
    return vis


def _inputs(c, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, S, H, Hkv, D, T = c["B"], c["S"], c["H"], c["Hkv"], c["D"], c["Tmax"]
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D, generator=g, device="cuda").to(dtype)
    pk = torch.randn(B, Hkv, T, D, generator=g, device="cuda").to(dtype)
    pv = torch.randn(B, Hkv, T, D, generator=g, device="cuda").to(dtype)
    return qkv, pk, pv


def _kw(c):
    H = c["H"]
    return dict(num_heads=H, num_kv_heads=c["Hkv"], head_size=c["D"], causal=c.get("causal", 1),
                local_window=c.get("window", 0), rotary_dim=c.get("rd", 0),
                alibi_slopes=[2.0 ** (-8.0 * (i + 1) / H) for i in range(H)] if c.get("alibi") else None)


def _run(c, qkv, pk, pv):
    """The kernel's context (caches copied: every run starts from the same cache)."""
    lens = torch.tensor(c["lens"], dtype=torch.int32, device="cuda")
    starts = torch.tensor(c["starts"], dtype=torch.int32, device="cuda")
    out = torch.full((c["B"], c["S"], c["H"] * c["D"]), 7.0, dtype=qkv.dtype, device="cuda")
    kern.softmax_context(qkv, pk.clone(), pv.clone(), lens, starts, out=out, path=c.get("path", AUTO), **_kw(c))
    torch.cuda.synchronize()
    return out


def _reference_nan(c, qkv, pk, pv):
    """NaN positions of the fp32 reference op on the same data."""
    from dsattn.export import ops

    kw = _kw(c)
    kw["alibi_slopes"] = kw["alibi_slopes"] or ()
    lens = torch.tensor(c["lens"], dtype=torch.int32, device="cuda")
    starts = torch.tensor(c["starts"], dtype=torch.int32, device="cuda")
    ctx, _, _ = ops.softmax_context(qkv.float(), pk.float(), pv.float(), lens, starts, **kw)
    return torch.isnan(ctx)


def _same_bits(a, b):
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def _same_as_clean(c, got, clean):
    """Bit-identical, or for the FlashInfer cases within twice the accuracy floor (module docstring)."""
    if not c.get("fa3"):
        return _same_bits(got, clean)
    tol = 2e-3 if got.dtype == F16 else 1.6e-2
    return bool(((got.float() - clean.float()).abs() <= tol).all())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("poison", ["nan", "inf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_masked_cache_rows_never_reach_the_context(name, poison, dtype, seed):
    c = CASES[name]
    qkv, pk, pv = _inputs(c, dtype, seed)
    seen = _visible(c).any(1).cuda()  # [B, Tmax]: seen by some new token of the row
    written = torch.zeros_like(seen)
    for b, L in enumerate(c["lens"]):
        written[b, L:L + c["S"]] = True
    never = (~seen & ~written)[:, None, :, None].expand_as(pk)
    assert never.any()
    pk0, pv0 = pk.masked_fill(never, 0.0), pv.masked_fill(never, 0.0)
    pk1 = pk.masked_fill(never, float("nan"))
    pv1 = pv.masked_fill(never, float("nan") if poison == "nan" else float("inf"))
    clean = _run(c, qkv, pk0, pv0)
    got = _run(c, qkv, pk1, pv1)
    assert not torch.isnan(clean).any() and bool((clean != 7.0).any())
    assert torch.isfinite(got).all(), "a masked cache row reached the context"
    assert _same_as_clean(c, got, clean), "masked cache rows changed the context"


def _partial_keys(c):
    vis = _visible(c)
    return [(b, j) for b in range(c["B"]) for j in range(c["Tmax"])
            if vis[b, :, j].any() and not vis[b, :, j].all()]


# keys seen by some tokens of a call only: multi-token calls with a causal or window mask
PARTIAL = [n for n in sorted(CASES)
           if CASES[n]["S"] > 1 and (CASES[n].get("causal", 1) or CASES[n].get("window", 0))]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("name", PARTIAL)
def test_value_of_a_partially_masked_key(name, dtype, seed):
    c = CASES[name]
    H, Hkv, D, G = c["H"], c["Hkv"], c["D"], c["H"] // c["Hkv"]
    qkv, pk, pv = _inputs(c, dtype, seed)
    keys = _partial_keys(c)
    assert keys
    vis = _visible(c)
    gen = torch.Generator().manual_seed(seed)
    picks = [keys[i] for i in torch.randint(len(keys), (3,), generator=gen).tolist()]
    picks += [max(keys, key=lambda bj: bj[1] - c["lens"][bj[0]])]  # a new token (causal) where there is one
    expect = torch.zeros(c["B"], c["S"], H, D, dtype=torch.bool)
    qkv0, pv0 = qkv.clone(), pv.clone()
    qkv1, pv1 = qkv.clone(), pv.clone()
    for b, j in picks:
        hk, d = int(torch.randint(Hkv, (1,), generator=gen)), int(torch.randint(D, (1,), generator=gen))
        L0 = c["lens"][b]
        if j >= L0:  # this call's token: its value comes from qkv (blocked layout)
            col = (H + Hkv + hk) * D + d
            qkv0[b, j - L0, col], qkv1[b, j - L0, col] = 0.0, float("nan")
        else:
            pv0[b, hk, j, d], pv1[b, hk, j, d] = 0.0, float("nan")
        for h in range(hk * G, hk * G + G):
            expect[b, vis[b, :, j], h, d] = True
    expect = expect.reshape(c["B"], c["S"], H * D).cuda()
    clean = _run(c, qkv0, pk, pv0)
    got = _run(c, qkv1, pk, pv1)
    assert torch.equal(torch.isnan(got), expect), "NaN positions (masked keys must not add any)"
    assert torch.equal(_reference_nan(c, qkv1, pk, pv1), expect), "the reference's NaN positions"
    assert _same_as_clean(c, torch.where(expect, clean, got), clean), "elements the NaN does not reach changed"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_q_gives_nan_rows_and_rows_without_keys_stay_zero(name, dtype, seed):
    c = dict(CASES[name])
    H, Hkv, D = c["H"], c["Hkv"], c["D"]
    B, S = c["B"], c["S"]
    qkv, pk, pv = _inputs(c, dtype, seed)
    # row 0 gets no visible key at all (start_pos = seq_lens + S); NaN in its q changes nothing
    c["starts"] = [c["lens"][0] + S] + list(c["starts"][1:])
    qkv1 = qkv.clone()
    qkv1[0, :, : H * D] = float("nan")
    pk1 = pk.clone()
    pk1[0] = float("nan")
    expect = torch.zeros(B, S, H, D, dtype=torch.bool)
    if B > 1:  # row 1: NaN in q of its last token, last head
        qkv1[1, S - 1, (H - 1) * D + D // 2] = float("nan")
        expect[1, S - 1, H - 1] = True
    expect = expect.reshape(B, S, H * D).cuda()
    clean = _run(c, qkv, pk, pv)
    got = _run(c, qkv1, pk1, pv)
    assert torch.equal(torch.isnan(got), expect), "NaN in q: that row in full, nothing else"
    assert torch.equal(_reference_nan(c, qkv1, pk1, pv), expect), "the reference's NaN positions"
    assert bool((got[0] == 0).all()), "a row without visible keys is zeros"
    assert _same_bits(torch.where(expect, clean, got)[1:], clean[1:])
