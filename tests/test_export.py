"""export_onnx: graph structure (nodes, attributes, I/O), onnx.checker, and the ONNX reference
evaluator (our ops as Python implementations) against the PyTorch module, at prefill and decode
shapes different from the traced example (dynamic batch and seq)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, export_onnx, quantize_int8
from dsattn.export import ops
from dsattn.export.onnx_export import INPUT_NAMES, OUTPUT_NAMES, _post_process

CAP = 12


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _run_both(module, model, B, S, L, seed):
    """Module vs reference evaluator on random inputs with a random (poisoned) cache."""
    g = torch.Generator().manual_seed(seed)
    T = module.activation_dtype
    x = torch.randn(B, S, module.config.hidden_size, generator=g).to(T)
    cache = module.new_cache(B, CAP, start_pos=[b % 3 for b in range(B)])
    cache.key.copy_(torch.randn(cache.key.shape, generator=g))
    cache.value.copy_(torch.randn(cache.value.shape, generator=g))
    cache.seq_lens.fill_(L)
    feeds = dict(hidden_states=x.numpy(), past_key=cache.key.numpy().copy(), past_value=cache.value.numpy().copy(),
                 seq_lens=cache.seq_lens.numpy().copy(), start_pos=cache.start_pos.numpy().copy())
    with torch.no_grad():
        out, new = module(x, cache)
    got = ops.reference_evaluator(model).run(None, feeds)
    exp = (out, new.key, new.value)
    for name, a, e in zip(OUTPUT_NAMES, got, exp):
        assert a.dtype == e.numpy().dtype, name
        assert not np.isnan(a.astype(np.float32)).any()
        tol = 1e-5 if T == torch.float32 else 2e-3
        np.testing.assert_allclose(a.astype(np.float32), e.float().numpy(), rtol=tol, atol=tol, err_msg=name)


def _check_io(model, T, hidden, Hkv, D):
    g = model.graph
    assert [i.name for i in g.input] == list(INPUT_NAMES)
    assert [o.name for o in g.output] == list(OUTPUT_NAMES)
    types = {v.name: v.type.tensor_type for v in list(g.input) + list(g.output)}
    for n in ("hidden_states", "past_key", "past_value", "output", "present_key", "present_value"):
        assert types[n].elem_type == T, n
    for n in ("seq_lens", "start_pos"):
        assert types[n].elem_type == TensorProto.INT32
    dims = lambda n: [d.dim_param or d.dim_value for d in types[n].shape.dim]
    b, s, h = dims("hidden_states")
    assert isinstance(b, str) and isinstance(s, str) and b != s and h == hidden  # dynamic B, S
    assert dims("past_key") == [b, Hkv, CAP, D] and dims("output") == [b, s, hidden]
    assert dims("seq_lens") == [b]
    assert model.ir_version <= 13
    assert {(o.domain, o.version) for o in model.opset_import} >= {("dsattn", 1)}


def test_export_deepspeed_gqa_rotary_fp32(tmp_path, seed):
    torch.manual_seed(seed)
    cfg = AttentionConfig(hidden_size=64, heads=4, num_kv=2, dtype="fp32", norm_type="rmsnorm", epsilon=1e-6,
                          rotary_dim=8, rotate_half=True, rotate_every_two=False, rope_theta=5000.0,
                          local_attention=True, window_size=5, use_mup=True)
    m = DeepSpeedSelfAttention(cfg).eval()
    path = export_onnx(m, tmp_path / "ds.onnx", batch=2, seq=4, capacity=CAP)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    _check_io(model, TensorProto.FLOAT, 64, 2, 16)
    assert [n.op_type for n in model.graph.node] == ["QKVGemm", "SoftmaxContext", "MatMul", "Add"]
    q, sc = model.graph.node[:2]
    assert q.domain == sc.domain == "dsattn" and len(q.output) == 1 and len(sc.output) == 3
    assert list(q.input) == ["hidden_states", q.input[1], q.input[2], q.input[3]]  # no beta, no scale
    assert _attrs(q) == dict(norm_type=2, epsilon=pytest.approx(1e-6), quantized=0, group_size=0, emit_normed=0,
                             plugin_version=b"1", plugin_namespace=b"dsattn")
    assert _attrs(sc) == dict(num_heads=4, num_kv_heads=2, head_size=16, scale=pytest.approx(1 / 16), qkv_layout=0,
                              causal=1, local_window=5, rotary_dim=8, rotary_style=0, rope_theta=5000.0,
                              plugin_version=b"1", plugin_namespace=b"dsattn")
    assert list(sc.input) == [q.output[0], "past_key", "past_value", "seq_lens", "start_pos"]
    assert {i.name for i in model.graph.initializer} == {"m.norm_w", "m.attn_qkvw", "m.attn_qkvb", "m.attn_ow", "m.attn_ob"}
    _run_both(m, model, B=3, S=5, L=0, seed=seed)       # prefill
    _run_both(m, model, B=1, S=1, L=7, seed=seed + 1)   # decode
    _run_both(m, model, B=4, S=2, L=3, seed=seed + 2)   # chunked continuation


def test_export_bloom_fp16(tmp_path, seed):
    torch.manual_seed(seed)
    m = BloomSelfAttention(AttentionConfig(hidden_size=48, heads=6, dtype="fp16", bigscience_bloom=True,
                                           epsilon=1e-5)).eval()
    model = onnx.load(export_onnx(m, tmp_path / "bloom.onnx", batch=1, seq=1, capacity=CAP))
    _check_io(model, TensorProto.FLOAT16, 48, 6, 8)
    sc = [n for n in model.graph.node if n.op_type == "SoftmaxContext"][0]
    a = _attrs(sc)
    assert a["qkv_layout"] == 1 and a["rotary_dim"] == 0
    np.testing.assert_allclose(a["alibi_slopes"], m.alibi_slopes, rtol=1e-7)
    for init in model.graph.initializer:
        assert init.data_type == TensorProto.FLOAT16, init.name
    _run_both(m, model, B=2, S=6, L=0, seed=seed)
    _run_both(m, model, B=3, S=1, L=9, seed=seed + 1)


@pytest.mark.parametrize("group_size", [0, 16])
def test_export_int8(tmp_path, seed, group_size):
    torch.manual_seed(seed)
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=64, heads=4, dtype="fp16", rotary_dim=16)).eval()
    quantize_int8(m, group_size)
    model = onnx.load(export_onnx(m, tmp_path / "q.onnx", batch=2, seq=3, capacity=CAP))
    assert [n.op_type for n in model.graph.node] == ["QKVGemm", "SoftmaxContext", "Int8MatMul"]
    q, _, mm = model.graph.node
    assert _attrs(q)["quantized"] == 1 and _attrs(q)["group_size"] == group_size
    assert _attrs(mm) == dict(group_size=group_size, plugin_version=b"1", plugin_namespace=b"dsattn")
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[q.input[1]].data_type == TensorProto.INT8 and inits[q.input[5]].data_type == TensorProto.FLOAT
    assert inits[mm.input[1]].data_type == TensorProto.INT8 and inits[mm.input[2]].data_type == TensorProto.FLOAT
    others = [i for n, i in inits.items() if n not in (q.input[1], q.input[5], mm.input[1], mm.input[2])]
    assert others and all(i.data_type == TensorProto.FLOAT16 for i in others)
    _run_both(m, model, B=2, S=4, L=0, seed=seed)
    _run_both(m, model, B=2, S=1, L=5, seed=seed + 1)


def test_export_static_shapes(tmp_path):
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=2, dtype="fp32")).eval()
    model = onnx.load(export_onnx(m, tmp_path / "s.onnx", batch=1, seq=1, capacity=CAP, dynamic=False))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 32]
    _run_both(m, model, B=1, S=1, L=4, seed=0)


def test_export_bad_arguments(tmp_path):
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=2, dtype="fp32"))
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        export_onnx(m, tmp_path / "a.onnx", batch=0, seq=2, capacity=4)
    with pytest.raises(ValueError, match="seq=9 exceeds capacity=4"):
        export_onnx(m, tmp_path / "a.onnx", batch=2, seq=9, capacity=4)
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(m, tmp_path / "a.txt", batch=2, seq=2, capacity=4)
    with pytest.raises(TypeError, match="Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx", batch=2, seq=2, capacity=4)


def test_post_process_rejects_stray_float32():
    # An fp16 graph with an fp32 constant (what TensorRT's strong typing would reject).
    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    add = helper.make_node("Add", ["x", "c16"], ["y"])
    cast = helper.make_node("Cast", ["c"], ["c16"], to=TensorProto.FLOAT16)
    g = helper.make_graph([c, cast, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1])])
    with pytest.raises(RuntimeError, match="Constant c"):
        _post_process(helper.make_model(g), TensorProto.FLOAT16)


def test_external_data_path(tmp_path, monkeypatch, seed):
    # Models past 2 GB store weights as external data; lower the threshold to exercise that path.
    from dsattn import fileio

    monkeypatch.setattr(fileio, "EXTERNAL_DATA_THRESHOLD", 0)
    torch.manual_seed(seed)
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=64, heads=4, dtype="fp32")).eval()
    path = export_onnx(m, tmp_path / "ext.onnx", batch=2, seq=2, capacity=CAP)
    size = (tmp_path / "ext.onnx.data").stat().st_size
    assert size >= m.attn_qkvw.numel() * 4
    export_onnx(m, tmp_path / "ext.onnx", batch=2, seq=2, capacity=CAP)  # a rerun rewrites, never appends
    assert (tmp_path / "ext.onnx.data").stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]  # no staging left
    model = onnx.load(path)  # loads the external data back
    _run_both(m, model, B=2, S=3, L=0, seed=seed)


def test_package_exports():
    import dsattn.export as e

    ns = {}
    exec("from dsattn.export import *", ns)
    for name in ("AttentionConfig", "DeepSpeedSelfAttention", "BloomSelfAttention", "KVCache", "from_hf",
                 "quantize_int8", "export_onnx"):
        assert name in ns and getattr(e, name) is ns[name]
