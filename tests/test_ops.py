"""dsattn reference ops (export/ops.py) against formulas written independently here.

The references below are plain float64 numpy loops over rows, heads, tokens and keys, written from
OPS.md without looking at the vectorized implementation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsattn.export import ops


# ------------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------------

def ref_norm_row(x, norm_type, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    if norm_type == 0:
        return x.copy()
    n = x.shape[0]
    if norm_type == 1:
        mean = sum(x) / n
        var = sum((xi - mean) ** 2 for xi in x) / n
        return np.array([(x[i] - mean) / math.sqrt(var + eps) * gamma[i] + beta[i] for i in range(n)])
    ms = sum(xi * xi for xi in x) / n
    return np.array([x[i] / math.sqrt(ms + eps) * gamma[i] for i in range(n)])


def ref_dequant(q, scale, group_size):
    n, k = q.shape
    g = k if group_size == 0 else group_size
    w = np.zeros((n, k))
    for r in range(n):
        for c in range(k):
            w[r, c] = float(scale[r, c // g]) * float(q[r, c])
    return w  # [N, K]


def ref_qkv_gemm(x, w_in_major, bias, gamma, beta, norm_type, eps):
    B, S, hidden = x.shape
    N = w_in_major.shape[1]
    out = np.zeros((B, S, N))
    normed = np.zeros((B, S, hidden))
    for b in range(B):
        for s in range(S):
            y = ref_norm_row(x[b, s], norm_type, gamma, beta, eps)
            normed[b, s] = y
            for n in range(N):
                acc = sum(y[k] * float(w_in_major[k, n]) for k in range(hidden))
                out[b, s, n] = acc + (float(bias[n]) if bias is not None else 0.0)
    return out, normed


def ref_rotate(vec, pos, rotary_dim, style, theta):
    v = np.array(vec, np.float64)
    out = v.copy()
    half = rotary_dim // 2
    for i in range(half):
        ang = pos * theta ** (-2.0 * i / rotary_dim)
        c, s = math.cos(ang), math.sin(ang)
        a, b = (i, i + half) if style == 0 else (2 * i, 2 * i + 1)
        out[a] = v[a] * c - v[b] * s
        out[b] = v[b] * c + v[a] * s
    return out


def ref_softmax_context(qkv, past_k, past_v, seq_lens, start_pos, *, H, Hkv, D, scale=None,
                        layout=0, causal=1, window=0, rotary_dim=0, style=0, theta=10000.0,
                        slopes=()):
    B, S, _ = qkv.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    start_pos = np.zeros(B, np.int64) if start_pos is None else start_pos
    pk = np.array(past_k, np.float64)
    pv = np.array(past_v, np.float64)
    ctx = np.zeros((B, S, H * D))

    def split(b, i):
        row = np.array(qkv[b, i], np.float64)
        if layout == 0:
            q = [row[h * D:(h + 1) * D] for h in range(H)]
            k = [row[(H + h) * D:(H + h + 1) * D] for h in range(Hkv)]
            v = [row[(H + Hkv + h) * D:(H + Hkv + h + 1) * D] for h in range(Hkv)]
        else:
            q = [row[(3 * h) * D:(3 * h + 1) * D] for h in range(H)]
            k = [row[(3 * h + 1) * D:(3 * h + 2) * D] for h in range(H)]
            v = [row[(3 * h + 2) * D:(3 * h + 3) * D] for h in range(H)]
        return q, k, v

    for b in range(B):
        L0, sp = int(seq_lens[b]), int(start_pos[b])
        qs = []
        for i in range(S):
            p = L0 + i
            q, k, v = split(b, i)
            if rotary_dim:
                q = [ref_rotate(x, p - sp, rotary_dim, style, theta) for x in q]
                k = [ref_rotate(x, p - sp, rotary_dim, style, theta) for x in k]
            qs.append(q)
            for g in range(Hkv):
                pk[b, g, p] = k[g]
                pv[b, g, p] = v[g]
        for i in range(S):
            p = L0 + i
            for h in range(H):
                g = h // (H // Hkv)
                logits = {}
                for j in range(L0 + S):
                    if j < sp or (causal and j > p) or (window and j <= p - window):
                        continue
                    lg = scale * float(np.dot(qs[i][h], pk[b, g, j]))
                    if slopes:
                        lg += slopes[h] * (j - sp)
                    logits[j] = lg
                if not logits:
                    continue  # all keys masked: zeros
                m = max(logits.values())
                z = sum(math.exp(lg - m) for lg in logits.values())
                for j, lg in logits.items():
                    ctx[b, i, h * D:(h + 1) * D] += math.exp(lg - m) / z * pv[b, g, j]
    return ctx, pk, pv


# ------------------------------------------------------------------------------------------------
# QKVGemm
# ------------------------------------------------------------------------------------------------

def _symquant(w_out_major, group_size, rng):
    n, k = w_out_major.shape
    g = k if group_size == 0 else group_size
    wg = w_out_major.reshape(n, k // g, g)
    scale = (np.abs(wg).max(-1) / 127.0).astype(np.float32)
    q = np.clip(np.round(wg / scale[..., None]), -127, 127).astype(np.int8).reshape(n, k)
    return q, scale


@pytest.mark.parametrize("norm_type", [0, 1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
def test_qkv_gemm_float(seed, norm_type, with_bias):
    rng = np.random.default_rng(seed)
    B, S, hidden, N = 2, 3, 24, 40
    x = rng.standard_normal((B, S, hidden)).astype(np.float32) * 2 + 0.5
    w = rng.standard_normal((hidden, N)).astype(np.float32) / 5
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    gamma = rng.standard_normal(hidden).astype(np.float32) if norm_type else None
    beta = rng.standard_normal(hidden).astype(np.float32) if norm_type == 1 else None
    eps = float(rng.uniform(1e-6, 1e-3))
    exp, exp_normed = ref_qkv_gemm(x, w, bias, gamma, beta, norm_type, eps)
    qkv, normed = ops.run_node("QKVGemm", [x, w, bias, gamma, beta],
                               dict(norm_type=norm_type, epsilon=eps, emit_normed=1))
    np.testing.assert_allclose(qkv, exp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normed, exp_normed, rtol=1e-5, atol=1e-5)
    (only,) = ops.run_node("QKVGemm", [x, w, bias, gamma, beta], dict(norm_type=norm_type, epsilon=eps))
    np.testing.assert_array_equal(only, qkv)
    # torch wrapper: same numbers
    t = lambda a: None if a is None else torch.from_numpy(a)
    out = ops.qkv_gemm(t(x), t(w), t(bias), t(gamma), t(beta), norm_type=norm_type, epsilon=eps)
    np.testing.assert_array_equal(out.numpy(), qkv)


@pytest.mark.parametrize("group_size", [0, 8])
def test_qkv_gemm_int8(seed, group_size):
    rng = np.random.default_rng(seed)
    B, S, hidden, N = 2, 5, 32, 24
    x = rng.standard_normal((B, S, hidden)).astype(np.float32)
    w = rng.standard_normal((N, hidden)).astype(np.float32)
    q, scale = _symquant(w, group_size, rng)
    gamma = rng.standard_normal(hidden).astype(np.float32)
    beta = rng.standard_normal(hidden).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    exp, _ = ref_qkv_gemm(x, ref_dequant(q, scale, group_size).T, bias, gamma, beta, 1, 1e-5)
    (qkv,) = ops.run_node("QKVGemm", [x, q, bias, gamma, beta, scale], dict(quantized=1, group_size=group_size))
    np.testing.assert_allclose(qkv, exp, rtol=1e-5, atol=1e-5)


def test_qkv_gemm_half_types(seed):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32) / 4
    g = rng.standard_normal(16).astype(np.float32)
    exp, _ = ref_qkv_gemm(x, w, None, g, None, 2, 1e-5)
    for dt, tol in ((np.float16, 2e-2), (ml_dtypes.bfloat16, 1e-1)):
        args = [a.astype(dt) for a in (x, w)] + [None, g.astype(dt)]
        (out,) = ops.run_node("QKVGemm", args, dict(norm_type=2))
        assert out.dtype == np.dtype(dt)
        np.testing.assert_allclose(out.astype(np.float32), exp, rtol=tol, atol=tol)


def test_qkv_gemm_errors():
    x = np.ones((1, 2, 8), np.float32)
    w = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match="norm_type"):
        ops.run_node("QKVGemm", [x, w], dict(norm_type=3))
    with pytest.raises(ValueError, match="gamma"):
        ops.run_node("QKVGemm", [x, w], dict(norm_type=1))
    with pytest.raises(ValueError, match="weight"):
        ops.run_node("QKVGemm", [x, np.ones((7, 4), np.float32)], dict(norm_type=0))
    with pytest.raises(TypeError, match="weight"):
        ops.run_node("QKVGemm", [x, w.astype(np.float16)], dict(norm_type=0))
    with pytest.raises(ValueError, match="group_size=3"):
        ops.run_node("QKVGemm", [x, np.ones((4, 8), np.int8), None, None, None, np.ones((4, 2), np.float32)],
                     dict(norm_type=0, quantized=1, group_size=3))
    with pytest.raises(ValueError, match="unknown attribute 'foo'"):
        ops.run_node("QKVGemm", [x, w], dict(norm_type=0, foo=1))


# ------------------------------------------------------------------------------------------------
# SoftmaxContext
# ------------------------------------------------------------------------------------------------

def _case(rng, B, S, H, Hkv, D, Tmax, lens, starts=None):
    qkv = rng.standard_normal((B, S, (H + 2 * Hkv) * D)).astype(np.float32)
    pk = rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32)  # poison: old rows random
    pv = rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32)
    sl = np.array(lens, np.int32)
    sp = None if starts is None else np.array(starts, np.int32)
    return qkv, pk, pv, sl, sp


def _attrs(H, Hkv, D, **kw):
    a = dict(num_heads=H, num_kv_heads=Hkv, head_size=D)
    a.update(kw)
    return a


def _compare(rng, B, S, H, Hkv, D, Tmax, lens, starts=None, **kw):
    qkv, pk, pv, sl, sp = _case(rng, B, S, H, Hkv, D, Tmax, lens, starts)
    names = dict(scale="scale", qkv_layout="layout", causal="causal", local_window="window",
                 rotary_dim="rotary_dim", rotary_style="style", rope_theta="theta", alibi_slopes="slopes")
    ref_kw = {names[k]: v for k, v in kw.items()}
    exp = ref_softmax_context(qkv, pk, pv, sl, sp, H=H, Hkv=Hkv, D=D, **ref_kw)
    pk0, pv0 = pk.copy(), pv.copy()
    got = ops.run_node("SoftmaxContext", [qkv, pk, pv, sl, sp], _attrs(H, Hkv, D, **kw))
    for g, e, name in zip(got, exp, ("context", "present_key", "present_value")):
        assert g.dtype == np.float32
        assert not np.isnan(g).any(), name
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5, err_msg=name)
    # inputs untouched; cache rows outside [seq_lens, seq_lens + S) bit-identical
    np.testing.assert_array_equal(pk, pk0)
    np.testing.assert_array_equal(pv, pv0)
    for b in range(B):
        outside = np.ones(Tmax, bool)
        outside[lens[b]:lens[b] + S] = False
        np.testing.assert_array_equal(got[1][b][:, outside], pk0[b][:, outside])
        np.testing.assert_array_equal(got[2][b][:, outside], pv0[b][:, outside])
    return got, (qkv, pk, pv, sl, sp)


def test_softmax_context_prefill(seed):
    _compare(np.random.default_rng(seed), B=2, S=5, H=4, Hkv=4, D=8, Tmax=9, lens=[0, 0])


def test_softmax_context_decode_ragged(seed):
    _compare(np.random.default_rng(seed), B=3, S=1, H=4, Hkv=4, D=8, Tmax=11, lens=[3, 0, 10], starts=[1, 0, 4])


def test_softmax_context_ragged_multi_token(seed):
    _compare(np.random.default_rng(seed), B=3, S=3, H=2, Hkv=2, D=4, Tmax=12, lens=[0, 4, 9], starts=[2, 4, 1])


def test_softmax_context_non_causal_and_window(seed):
    rng = np.random.default_rng(seed)
    _compare(rng, B=2, S=4, H=2, Hkv=2, D=8, Tmax=10, lens=[0, 3], causal=0)
    _compare(rng, B=2, S=4, H=2, Hkv=2, D=8, Tmax=12, lens=[0, 6], starts=[1, 0], local_window=3)


@pytest.mark.parametrize("style", [0, 1])
@pytest.mark.parametrize("rotary_dim", [8, 4])  # full and partial rotary (D = 8)
def test_softmax_context_rotary(seed, style, rotary_dim):
    _compare(np.random.default_rng(seed), B=2, S=3, H=2, Hkv=2, D=8, Tmax=9, lens=[0, 5], starts=[1, 2],
             rotary_dim=rotary_dim, rotary_style=style, rope_theta=float(np.random.default_rng(seed).uniform(100, 20000)))


def test_softmax_context_alibi_interleaved(seed):
    rng = np.random.default_rng(seed)
    slopes = [float(s) for s in rng.uniform(0.01, 0.5, 3)]
    _compare(rng, B=2, S=4, H=3, Hkv=3, D=4, Tmax=10, lens=[0, 5], starts=[2, 1], qkv_layout=1,
             alibi_slopes=slopes, scale=0.37)


def test_softmax_context_gqa(seed):
    _compare(np.random.default_rng(seed), B=2, S=3, H=6, Hkv=2, D=4, Tmax=8, lens=[0, 2],
             rotary_dim=4, rotary_style=0)
    _compare(np.random.default_rng(seed + 1), B=1, S=2, H=4, Hkv=1, D=4, Tmax=5, lens=[1])


def test_softmax_context_all_masked_row_is_zero(seed):
    # Left padding of 3 in a prefill: queries 0..2 see only padding keys -> zeros, never NaN.
    got, _ = _compare(np.random.default_rng(seed), B=2, S=5, H=2, Hkv=2, D=4, Tmax=6, lens=[0, 0], starts=[3, 0])
    ctx = got[0]
    assert np.all(ctx[0, :3] == 0)
    assert np.all(np.abs(ctx[0, 3:]) > 0)


def test_softmax_context_prefill_then_decode_equals_full(seed):
    rng = np.random.default_rng(seed)
    B, S, H, D, Tmax = 2, 6, 2, 8, 8
    kw = dict(rotary_dim=8, rotary_style=0)
    qkv, pk, pv, sl, sp = _case(rng, B, S, H, H, D, Tmax, [0, 0], [0, 2])
    full = ops.run_node("SoftmaxContext", [qkv, pk, pv, sl, sp], _attrs(H, H, D, **kw))
    k, v = pk, pv
    pre = 3
    ctx0, k, v = ops.run_node("SoftmaxContext", [qkv[:, :pre], k, v, sl, sp], _attrs(H, H, D, **kw))
    ctxs = [ctx0]
    for i in range(pre, S):
        c, k, v = ops.run_node("SoftmaxContext", [qkv[:, i:i + 1], k, v, np.full(B, i, np.int32), sp],
                               _attrs(H, H, D, **kw))
        ctxs.append(c)
    np.testing.assert_allclose(np.concatenate(ctxs, 1), full[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k, full[1], rtol=1e-6, atol=1e-6)


def test_softmax_context_ragged_equals_rows_alone(seed):
    rng = np.random.default_rng(seed)
    qkv, pk, pv, sl, sp = _case(rng, 3, 2, 4, 2, 4, 9, [0, 3, 7], [0, 1, 2])
    a = _attrs(4, 2, 4, rotary_dim=2, rotary_style=1)
    batch = ops.run_node("SoftmaxContext", [qkv, pk, pv, sl, sp], a)
    for b in range(3):
        alone = ops.run_node("SoftmaxContext", [qkv[b:b + 1], pk[b:b + 1], pv[b:b + 1], sl[b:b + 1], sp[b:b + 1]], a)
        for x, y in zip(batch, alone):
            np.testing.assert_allclose(x[b:b + 1], y, rtol=1e-6, atol=1e-7)


def test_softmax_context_overflow_raises_and_writes_nothing(seed):
    rng = np.random.default_rng(seed)
    qkv, pk, pv, sl, sp = _case(rng, 3, 3, 2, 2, 4, 8, [0, 6, 2])
    with pytest.raises(ValueError, match=r"b=1.*seq_lens\[1\]=6.*S=3.*Tmax=8"):
        ops.run_node("SoftmaxContext", [qkv, pk, pv, sl], _attrs(2, 2, 4))
    tk, tv = torch.from_numpy(pk.copy()), torch.from_numpy(pv.copy())
    with pytest.raises(ValueError, match="overflow"):
        ops.softmax_context(torch.from_numpy(qkv), tk, tv, torch.from_numpy(sl), num_heads=2, head_size=4, inplace=True)
    np.testing.assert_array_equal(tk.numpy(), pk)
    np.testing.assert_array_equal(tv.numpy(), pv)


def test_softmax_context_inplace(seed):
    rng = np.random.default_rng(seed)
    qkv, pk, pv, sl, sp = _case(rng, 2, 2, 2, 2, 4, 6, [1, 3])
    exp = ops.run_node("SoftmaxContext", [qkv, pk, pv, sl], _attrs(2, 2, 4))
    tk, tv = torch.from_numpy(pk.copy()), torch.from_numpy(pv.copy())
    ctx, k, v = ops.softmax_context(torch.from_numpy(qkv), tk, tv, torch.from_numpy(sl), num_heads=2, head_size=4, inplace=True)
    assert k is tk and v is tv
    np.testing.assert_array_equal(tk.numpy(), exp[1])
    np.testing.assert_array_equal(ctx.numpy(), exp[0])


def test_softmax_context_half_types(seed):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    qkv, pk, pv, sl, sp = _case(rng, 2, 3, 2, 2, 8, 7, [0, 2], [1, 0])
    exp = ref_softmax_context(qkv, pk, pv, sl, sp, H=2, Hkv=2, D=8, rotary_dim=8)
    for dt, tol in ((np.float16, 1e-2), (ml_dtypes.bfloat16, 8e-2)):
        got = ops.run_node("SoftmaxContext", [x.astype(dt) for x in (qkv, pk, pv)] + [sl, sp],
                           _attrs(2, 2, 8, rotary_dim=8))
        for g, e in zip(got, exp):
            assert g.dtype == np.dtype(dt)
            np.testing.assert_allclose(g.astype(np.float32), e, rtol=tol, atol=tol)


def test_softmax_context_errors():
    rng = np.random.default_rng(0)
    qkv, pk, pv, sl, sp = _case(rng, 2, 2, 4, 2, 4, 6, [0, 1])
    run = lambda a, **over: ops.run_node("SoftmaxContext", over.get("inputs", [qkv, pk, pv, sl]), a)
    with pytest.raises(ValueError, match="num_kv_heads"):
        run(_attrs(4, 3, 4))
    with pytest.raises(ValueError, match="qkv_layout=1 requires"):
        run(_attrs(4, 2, 4, qkv_layout=1))
    with pytest.raises(ValueError, match="rotary_dim"):
        run(_attrs(4, 2, 4, rotary_dim=3))
    with pytest.raises(ValueError, match="alibi_slopes"):
        run(_attrs(4, 2, 4, alibi_slopes=[0.1]))
    with pytest.raises(ValueError, match=r"start_pos\[1\]=9"):
        run(_attrs(4, 2, 4), inputs=[qkv, pk, pv, sl, np.array([0, 9], np.int32)])
    with pytest.raises(TypeError, match="seq_lens must be int32"):
        run(_attrs(4, 2, 4), inputs=[qkv, pk, pv, sl.astype(np.int64)])
    with pytest.raises(ValueError, match="head_size"):
        ops.run_node("SoftmaxContext", [qkv, pk, pv, sl], dict(num_heads=4))
    with pytest.raises(ValueError, match="required input 3 'seq_lens'"):
        ops.run_node("SoftmaxContext", [qkv, pk, pv], _attrs(4, 2, 4))


# ------------------------------------------------------------------------------------------------
# Int8MatMul
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [0, 4, 16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_matmul(seed, group_size, with_bias):
    rng = np.random.default_rng(seed)
    K, N = 32, 12
    x = rng.standard_normal((2, 3, 2, K)).astype(np.float32)  # leading dims
    q = rng.integers(-127, 128, (N, K)).astype(np.int8)
    g = K if group_size == 0 else group_size
    scale = rng.uniform(1e-3, 2e-2, (N, K // g)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    w = ref_dequant(q, scale, group_size)
    exp = np.zeros((2, 3, 2, N))
    for idx in np.ndindex(2, 3, 2):
        for n in range(N):
            exp[idx + (n,)] = sum(float(x[idx + (k,)]) * w[n, k] for k in range(K)) + (float(bias[n]) if with_bias else 0)
    (got,) = ops.run_node("Int8MatMul", [x, q, scale, bias], dict(group_size=group_size))
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)
    t = ops.int8_matmul(torch.from_numpy(x), torch.from_numpy(q), torch.from_numpy(scale),
                        None if bias is None else torch.from_numpy(bias), group_size=group_size)
    np.testing.assert_array_equal(t.numpy(), got)


def test_int8_matmul_errors():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight_scale must have shape"):
        ops.run_node("Int8MatMul", [x, np.ones((4, 8), np.int8), np.ones((4, 2), np.float32)], {})
    with pytest.raises(TypeError, match="int8"):
        ops.run_node("Int8MatMul", [x, np.ones((4, 8), np.float32), np.ones((4, 1), np.float32)], {})
    with pytest.raises(ValueError, match="K=6"):
        ops.run_node("Int8MatMul", [np.ones((2, 6), np.float32), np.ones((4, 8), np.int8), np.ones((4, 1), np.float32)], {})


# ------------------------------------------------------------------------------------------------
# ONNX reference evaluator
# ------------------------------------------------------------------------------------------------

def test_reference_evaluator_runs_dsattn_nodes(seed):
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    B, S, hidden, H, D, Tmax = 2, 3, 8, 2, 4, 6
    x = rng.standard_normal((B, S, hidden)).astype(np.float32)
    w = rng.standard_normal((hidden, 3 * H * D)).astype(np.float32)
    g = rng.standard_normal(hidden).astype(np.float32)
    pk = rng.standard_normal((B, H, Tmax, D)).astype(np.float32)
    sl = np.array([0, 2], np.int32)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(g, "g")]
    common = dict(domain="dsattn", plugin_version="1", plugin_namespace="dsattn")
    nodes = [helper.make_node("QKVGemm", ["x", "w", "", "g"], ["qkv"], norm_type=2, **common),
             helper.make_node("SoftmaxContext", ["qkv", "pk", "pv", "sl", ""], ["ctx", "k", "v"],
                              num_heads=H, head_size=D, rotary_dim=4, **common)]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, None), vi("pk", TensorProto.FLOAT, None),
                                           vi("pv", TensorProto.FLOAT, None), vi("sl", TensorProto.INT32, None)],
                              [vi(n, TensorProto.FLOAT, None) for n in ("ctx", "k", "v")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("dsattn", 1)])
    got = ops.reference_evaluator(model).run(None, dict(x=x, pk=pk, pv=pk, sl=sl))
    qkv, _ = ref_qkv_gemm(x, w, None, g, None, 2, 1e-5)
    exp = ref_softmax_context(qkv.astype(np.float32), pk, pk, sl, None, H=H, Hkv=H, D=D, rotary_dim=4)
    for a, e in zip(got, exp):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


def test_custom_ops_registered_with_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        qkv = torch.empty(2, 3, 24)
        pk = torch.empty(2, 2, 7, 4)
        sl = torch.empty(2, dtype=torch.int32)
        ctx, k, v = torch.ops.dsattn.softmax_context(qkv, pk, pk, sl, None, 2, 2, 4, 0.5, 0, 1, 0, 0, 0, 1e4, [])
        assert ctx.shape == (2, 3, 8) and k.shape == pk.shape
        out = torch.ops.dsattn.int8_matmul(torch.empty(5, 16), torch.empty(3, 16, dtype=torch.int8),
                                           torch.empty(3, 1), None, 0)
        assert out.shape == (5, 3)
        (q,) = torch.ops.dsattn.qkv_gemm(torch.empty(2, 3, 16), torch.empty(16, 9), None, None, None, None, 0, 1e-5, 0, 0, 0)
        assert q.shape == (2, 3, 9)
