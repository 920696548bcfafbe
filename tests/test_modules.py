"""DeepSpeedSelfAttention / BloomSelfAttention / KVCache / int8 against an independent float64
reference written here (complex-number rotary, explicit masks), plus tensor-parallel shards,
int8 error bounds and DeepSpeed int8 loading."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, KVCache, quantize_int8
from dsattn.export import load_deepspeed_int8


def ref_forward(m, x, key, value, seq_lens, start_pos, *, w_qkv=None, w_o=None):
    """float64 reference of one module call; returns (output, key, value)."""
    c = m.config
    d = torch.float64
    x = x.to(d)
    B, S, hid = x.shape
    H, Hkv, D = c.heads_per_partition, c.kv_heads_per_partition, c.head_size
    if c.pre_layer_norm and c.norm_type == "layernorm":
        xn = F.layer_norm(x, (hid,), m.norm_w.to(d), m.norm_b.to(d), c.epsilon)
    elif c.pre_layer_norm:
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.epsilon) * m.norm_w.to(d)
    else:
        xn = x
    wq = (m.attn_qkvw.to(d) if w_qkv is None else w_qkv.to(d))
    qkv = xn @ wq + (m.attn_qkvb.to(d) if m.attn_qkvb is not None else 0)
    if c.bigscience_bloom:
        t = qkv.view(B, S, H, 3, D)
        q, k, v = t[..., 0, :], t[..., 1, :], t[..., 2, :]
    else:
        q = qkv[..., :H * D].view(B, S, H, D)
        k = qkv[..., H * D:(H + Hkv) * D].view(B, S, Hkv, D)
        v = qkv[..., (H + Hkv) * D:].view(B, S, Hkv, D)
    key, value = key.to(d).clone(), value.to(d).clone()
    out = torch.zeros(B, S, H, D, dtype=d)
    rd = c.rotary
    for b in range(B):
        L0, sp = int(seq_lens[b]), int(start_pos[b])
        pos = torch.arange(L0, L0 + S, dtype=d) - sp
        qb, kb = q[b].clone(), k[b].clone()
        if rd:
            freqs = c.rope_theta ** (-torch.arange(0, rd, 2, dtype=d) / rd)
            rot = torch.polar(torch.ones(S, rd // 2, dtype=d), pos[:, None] * freqs[None])[:, None, :]
            for t in (qb, kb):
                if c.rotate_half:
                    z = torch.complex(t[..., :rd // 2], t[..., rd // 2:rd]) * rot
                    t[..., :rd // 2], t[..., rd // 2:rd] = z.real, z.imag
                else:
                    z = torch.complex(t[..., 0:rd:2], t[..., 1:rd:2]) * rot
                    t[..., 0:rd:2], t[..., 1:rd:2] = z.real, z.imag
        key[b, :, L0:L0 + S] = kb.transpose(0, 1)
        value[b, :, L0:L0 + S] = v[b].transpose(0, 1)
        L = L0 + S
        kk = key[b, :, :L].repeat_interleave(H // Hkv, 0)
        vv = value[b, :, :L].repeat_interleave(H // Hkv, 0)
        logits = torch.einsum("shd,hld->hsl", qb, kk) * c.scale
        j = torch.arange(L)
        i_abs = torch.arange(L0, L)[:, None]
        allowed = (j[None] >= sp)
        if c.triangular_masking:
            allowed = allowed & (j[None] <= i_abs)
        if c.local_attention:
            allowed = allowed & (j[None] > i_abs - c.window_size)
        if m.alibi_slopes:
            logits = logits + torch.tensor(m.alibi_slopes, dtype=d)[:, None, None] * (j - sp).to(d)
        logits = logits.masked_fill(~allowed[None], -math.inf)
        p = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
        out[b] = torch.einsum("hsl,hld->shd", p, vv)
    ctx = out.reshape(B, S, H * D)
    y = ctx @ (m.attn_ow.to(d) if w_o is None else w_o.to(d))
    if m.attn_ob is not None and c.mp_rank == 0:
        y = y + m.attn_ob.to(d)
    return y, key, value


CONFIGS = {
    "bloom": dict(hidden_size=48, heads=6, bigscience_bloom=True, epsilon=1e-5),
    "gqa_rope_half_rms": dict(hidden_size=64, heads=8, num_kv=2, norm_type="rmsnorm", epsilon=1e-6, rotary_dim=4,
                              rotate_half=True, rotate_every_two=False, rope_theta=500.0, qkv_bias=False),
    "every_two_window_mup": dict(hidden_size=64, heads=4, rotary_dim=16, local_attention=True, window_size=3,
                                 use_mup=True, attn_out_bias=False),
    "post_ln_noncausal_invlayer": dict(hidden_size=32, heads=2, pre_layer_norm=False, triangular_masking=False,
                                       scale_attn_by_inverse_layer_idx=True, layer_id=2),
}


def _make(name, **over):
    kw = dict(CONFIGS[name], dtype="float32")
    kw.update(over)
    cfg = AttentionConfig(**kw)
    return (BloomSelfAttention if cfg.bigscience_bloom else DeepSpeedSelfAttention)(cfg).eval()


def _close(a, b, tol=1e-5):
    a, b = a.detach().double(), b.detach().double()
    rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    assert rel < tol, rel


@pytest.mark.parametrize("name", list(CONFIGS))
def test_module_matches_reference_prefill_then_decode(name, seed):
    torch.manual_seed(seed)
    m = _make(name)
    B, P = 3, 5
    cache = m.new_cache(B, capacity=9, start_pos=[0, 2, 1])
    cache.key.normal_()  # poison: stale rows must not matter and must survive
    cache.value.normal_()
    for step, S in enumerate((P, 1, 1, 2)):
        x = torch.randn(B, S, m.config.hidden_size)
        ref = ref_forward(m, x, cache.key, cache.value, cache.seq_lens, cache.start_pos)
        with torch.no_grad():
            out, new = m(x, cache)
        if step == 0 and m.config.triangular_masking:
            for b, sp in enumerate(cache.start_pos.tolist()):  # padded queries: all keys masked -> bias only
                _close(out[b, sp:], ref[0][b, sp:].float())
        else:
            _close(out, ref[0].float())
        _close(new.key, ref[1].float())
        _close(new.value, ref[2].float())
        assert new.seq_lens.tolist() == (cache.seq_lens + S).tolist()
        assert new.start_pos is cache.start_pos
        cache = new


def test_padded_queries_output_only_bias(seed):
    torch.manual_seed(seed)
    m = _make("bloom")
    cache = m.new_cache(2, capacity=6, start_pos=[3, 0])
    with torch.no_grad():
        out, _ = m(torch.randn(2, 4, 48), cache)
    torch.testing.assert_close(out[0, :3], m.attn_ob.expand(3, -1).detach(), rtol=0, atol=0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["bloom", "gqa_rope_half_rms"])
def test_tensor_parallel_shards_sum_to_full(name, seed):
    torch.manual_seed(seed)
    full = _make(name)
    c = full.config
    P = 2
    H, Hkv, D = c.heads, c.kv_heads, c.head_size
    x = torch.randn(2, 4, c.hidden_size)
    with torch.no_grad():
        out_full, cache_full = full(x, full.new_cache(2, 6, start_pos=[1, 0]))
    total = torch.zeros_like(out_full)
    for r in range(P):
        shard = _make(name, mp_size=P, mp_rank=r)
        hp, kvp = H // P, Hkv // P
        with torch.no_grad():
            shard.norm_w.copy_(full.norm_w)
            if shard.norm_b is not None:
                shard.norm_b.copy_(full.norm_b)
            if c.bigscience_bloom:  # interleaved heads: a contiguous column block per rank
                cols = torch.arange(r * hp * 3 * D, (r + 1) * hp * 3 * D)
            else:  # blocked [Q|K|V]: this rank's slice of each block
                cols = torch.cat([torch.arange(r * hp * D, (r + 1) * hp * D),
                                  H * D + torch.arange(r * kvp * D, (r + 1) * kvp * D),
                                  (H + Hkv) * D + torch.arange(r * kvp * D, (r + 1) * kvp * D)])
            shard.attn_qkvw.copy_(full.attn_qkvw[:, cols])
            if shard.attn_qkvb is not None:
                shard.attn_qkvb.copy_(full.attn_qkvb[cols])
            shard.attn_ow.copy_(full.attn_ow[r * hp * D:(r + 1) * hp * D])
            shard.attn_ob.copy_(full.attn_ob)
            out, cache = shard(x, shard.new_cache(2, 6, start_pos=[1, 0]))
        torch.testing.assert_close(cache.key, cache_full.key[:, r * kvp:(r + 1) * kvp])
        total += out
    _close(total, out_full)


def test_half_precision_close_to_fp32(seed):
    torch.manual_seed(seed)
    m32 = _make("gqa_rope_half_rms")
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        ref, _ = m32(x, m32.new_cache(2, 8))
        for dt, tol in ((torch.float16, 1e-2), (torch.bfloat16, 6e-2)):
            m = _make("gqa_rope_half_rms")
            m.load_state_dict(m32.state_dict())
            m.to(dt)
            assert m.activation_dtype == dt
            out, cache = m(x.to(dt), m.new_cache(2, 8))
            assert out.dtype == cache.key.dtype == dt
            _close(out, ref, tol)


# ------------------------------------------------------------------------------------------------
# int8
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [0, 16])
def test_quantize_int8_error_bound(group_size, seed):
    torch.manual_seed(seed)
    m = _make("gqa_rope_half_rms")
    ref = _make("gqa_rope_half_rms")
    ref.load_state_dict(m.state_dict())
    w_qkv, w_o = m.attn_qkvw.detach().clone(), m.attn_ow.detach().clone()
    quantize_int8(m, group_size)
    assert m.quantized and m.attn_qkvw.dtype == torch.int8 and m.attn_qkvw.shape == (w_qkv.shape[1], w_qkv.shape[0])
    assert m.attn_qkvw_scale.dtype == torch.float32
    K = w_qkv.shape[0]
    g = K if group_size == 0 else group_size
    assert m.attn_qkvw_scale.shape == (w_qkv.shape[1], K // g)
    for q, s, w in ((m.attn_qkvw, m.attn_qkvw_scale, w_qkv), (m.attn_ow, m.attn_ow_scale, w_o)):
        gs = w.shape[0] if group_size == 0 else group_size
        deq = q.float() * s.repeat_interleave(gs, 1)
        wt = w.t()
        # symmetric rounding: at most half a step per element, and the group max maps to +-127
        assert bool(((deq - wt).abs() <= s.repeat_interleave(gs, 1) / 2 + 1e-7).all())
        assert int(q.abs().amax()) == 127 and int(q.min()) >= -127
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        out_q, _ = m(x, m.new_cache(2, 6))
        out_f, _ = ref(x, ref.new_cache(2, 6))
    # exact for the dequantized weights, and within int8 rounding of the float module
    exp, _, _ = ref_forward(ref, x, *[t for t in (lambda c: (c.key, c.value, c.seq_lens, c.start_pos))(m.new_cache(2, 6))],
                            w_qkv=(m.attn_qkvw.float() * m.attn_qkvw_scale.repeat_interleave(g, 1)).t(),
                            w_o=(m.attn_ow.float() * m.attn_ow_scale.repeat_interleave(
                                w_o.shape[0] if group_size == 0 else group_size, 1)).t())
    _close(out_q, exp.float())
    _close(out_q, out_f, 3e-2)


def test_quantize_int8_errors():
    m = _make("bloom")
    with pytest.raises(ValueError, match="group_size=5 does not divide K=48"):
        quantize_int8(m, 5)
    with pytest.raises(ValueError, match="group_size must be an int >= 0, got -1"):
        quantize_int8(m, -1)
    quantize_int8(m)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(m)
    m.half()
    assert m.attn_qkvw_scale.dtype == torch.float32 and m.attn_qkvw.dtype == torch.int8
    assert m.activation_dtype == torch.float16


def test_int8_config_dtype_builds_quantized_fp16():
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=2, dtype="int8"))
    assert m.quantized and m.activation_dtype == torch.float16
    out, _ = m(torch.randn(1, 3, 32).half(), m.new_cache(1, 4))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_load_deepspeed_int8_row_groups(seed):
    torch.manual_seed(seed)
    m = _make("bloom")
    ref = _make("bloom")
    ref.load_state_dict(m.state_dict())
    N, hid = 3 * 48, 48
    q_groups = 4
    qkv_q = torch.randint(-127, 128, (N, hid), dtype=torch.int8)
    o_q = torch.randint(-127, 128, (hid, hid), dtype=torch.int8)
    qkv_s = torch.rand(q_groups) * 0.01 + 1e-3
    o_s = torch.rand(q_groups) * 0.01 + 1e-3
    # DeepSpeed's `.scale`: num_groups full scales first, then the per-half scales (ignored)
    ds_qkv_scale = torch.cat([qkv_s, torch.rand(2 * q_groups)]).reshape(q_groups, -1)
    ds_o_scale = torch.cat([o_s, torch.rand(2 * q_groups)]).reshape(q_groups, -1)
    load_deepspeed_int8(m, qkv_q, ds_qkv_scale, o_q, ds_o_scale)
    with torch.no_grad():  # expected: rows of group g scaled by scale[g]
        ref.attn_qkvw.copy_((qkv_q.float() * qkv_s.repeat_interleave(N // q_groups)[:, None]).t())
        ref.attn_ow.copy_((o_q.float() * o_s.repeat_interleave(hid // q_groups)[:, None]).t())
    x = torch.randn(2, 3, hid)
    with torch.no_grad():
        _close(m(x, m.new_cache(2, 4))[0], ref(x, ref.new_cache(2, 4))[0])
    with pytest.raises(ValueError, match="q_groups=5"):
        load_deepspeed_int8(_make("bloom"), qkv_q, qkv_s, o_q, o_s, q_groups=5)
    with pytest.raises(ValueError, match=r"attn_qkvw must be int8 \[out, in\]"):
        load_deepspeed_int8(_make("bloom"), qkv_q.t().contiguous(), qkv_s, o_q, o_s)


# ------------------------------------------------------------------------------------------------
# construction and input errors
# ------------------------------------------------------------------------------------------------

def test_class_and_config_must_agree():
    with pytest.raises(ValueError, match="use BloomSelfAttention"):
        DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=2, bigscience_bloom=True))
    with pytest.raises(ValueError, match="bigscience_bloom=True"):
        BloomSelfAttention(AttentionConfig(hidden_size=32, heads=2))
    with pytest.raises(TypeError, match="AttentionConfig"):
        DeepSpeedSelfAttention({"hidden_size": 32})


def test_bloom_alibi_slopes_match_hf():
    build_alibi_tensor = pytest.importorskip("transformers.models.bloom.modeling_bloom").build_alibi_tensor
    for heads in (1, 6, 8, 12):
        m = BloomSelfAttention(AttentionConfig(hidden_size=heads * 4, heads=heads, bigscience_bloom=True, dtype="fp32"))
        hf = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), heads, torch.float32)[:, 0, 1]
        assert m.alibi_slopes == hf.tolist()


def test_forward_and_cache_errors():
    m = _make("bloom")
    cache = m.new_cache(2, 4)
    with pytest.raises(TypeError, match="dtype torch.float16 != module dtype torch.float32"):
        m(torch.randn(2, 1, 48).half(), cache)
    with pytest.raises(ValueError, match="hidden=48"):
        m(torch.randn(2, 1, 40), cache)
    with pytest.raises(TypeError, match="KVCache"):
        m(torch.randn(2, 1, 48), (cache.key, cache.value))
    with pytest.raises(ValueError, match="overflow"):
        m(torch.randn(2, 5, 48), cache)
    with pytest.raises(ValueError, match="start_pos must have 2 entries"):
        m.new_cache(2, 4, start_pos=[0])
    with pytest.raises(ValueError, match="capacity must be a positive int, got 0"):
        m.new_cache(2, 0)
    with pytest.raises(TypeError, match="seq_lens must be an int32"):
        KVCache(cache.key, cache.value, cache.seq_lens.long(), cache.start_pos)
    c = m.new_cache(3, 7, start_pos=torch.tensor([0, 1, 2]))
    assert c.key.shape == (3, 6, 7, 8) and c.capacity == 7 and c.batch == 3 and c.start_pos.dtype == torch.int32


def test_torch_export_takes_kvcache(seed):
    torch.manual_seed(seed)
    m = _make("gqa_rope_half_rms")
    cache = m.new_cache(2, 6, start_pos=[1, 0])
    x = torch.randn(2, 3, 64)
    ep = torch.export.export(m, (x, cache))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"dsattn.qkv_gemm.default", "dsattn.softmax_context.default"} <= targets
    out, new = ep.module()(x, cache)
    with torch.no_grad():
        exp, exp_cache = m(x, cache)
    torch.testing.assert_close(out, exp)
    assert isinstance(new, KVCache) and new.seq_lens.tolist() == [3, 3]
    torch.testing.assert_close(new.key, exp_cache.key)
