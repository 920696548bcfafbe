"""AttentionConfig: validation (errors name the field and value), derived values, scale folding."""
from __future__ import annotations

import math

import pytest
import torch

from dsattn.export import AttentionConfig


def test_defaults_follow_deepspeed():
    c = AttentionConfig(hidden_size=64, heads=4)
    assert c.dtype == torch.float16 and c.epsilon == 1e-12 and c.num_kv == -1 and c.kv_heads == 4
    assert c.rotate_every_two and not c.rotate_half and c.rotary_dim == -1 and c.rotary == 0
    assert c.triangular_masking and c.pre_layer_norm and c.norm_type == "layernorm" and c.norm_type_id == 1
    assert c.head_size == 16 and c.qkv_size_per_partition == 3 * 64 and c.max_out_tokens == 1024


@pytest.mark.parametrize("kw, field, value", [
    (dict(hidden_size=0), "hidden_size", "0"),
    (dict(hidden_size=60, heads=8), "hidden_size", "60"),
    (dict(heads=0), "heads", "0"),
    (dict(num_kv=3), "num_kv", "3"),
    (dict(num_kv=0), "num_kv", "0"),
    (dict(mp_size=3), "mp_size", "3"),
    (dict(mp_size=2, mp_rank=2), "mp_rank", "2"),
    (dict(norm_type="batchnorm"), "norm_type", "batchnorm"),
    (dict(epsilon=-1.0), "epsilon", "-1.0"),
    (dict(epsilon=float("nan")), "epsilon", "nan"),
    (dict(rotary_dim=7), "rotary_dim", "7"),
    (dict(rotary_dim=18), "rotary_dim", "18"),
    (dict(rotary_dim=-2), "rotary_dim", "-2"),
    (dict(rotary_dim=8, rotate_half=True, rotate_every_two=True), "rotate_half", "True"),
    (dict(rotary_dim=8, rotate_half=False, rotate_every_two=False), "rotate_half", "False"),
    (dict(rope_theta=0.0), "rope_theta", "0.0"),
    (dict(local_attention=True, window_size=0), "window_size", "0"),
    (dict(max_out_tokens=0), "max_out_tokens", "0"),
    (dict(layer_id=-1), "layer_id", "-1"),
    (dict(bigscience_bloom=True, num_kv=2), "num_kv", "2"),
    (dict(bigscience_bloom=True, rotary_dim=8), "rotary_dim", "8"),
    (dict(dtype="float64"), "dtype", "float64"),
])
def test_invalid_values_name_field_and_value(kw, field, value):
    base = dict(hidden_size=64, heads=4)
    base.update(kw)
    with pytest.raises(ValueError) as e:
        AttentionConfig(**base)
    assert field in str(e.value) and value in str(e.value), str(e.value)


@pytest.mark.parametrize("kw, field", [(dict(heads=4.0), "heads"), (dict(use_mup=1), "use_mup"),
                                       (dict(hidden_size=True), "hidden_size")])
def test_wrong_types(kw, field):
    base = dict(hidden_size=64, heads=4)
    base.update(kw)
    with pytest.raises(TypeError, match=field):
        AttentionConfig(**base)


@pytest.mark.parametrize("name, dt", [("fp16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32),
                                      ("int8", torch.int8), (torch.bfloat16, torch.bfloat16)])
def test_dtype_parsing(name, dt):
    c = AttentionConfig(hidden_size=64, heads=4, dtype=name)
    assert c.dtype == dt
    assert c.compute_dtype == (torch.float16 if dt == torch.int8 else dt)


def test_scale_folding():
    D = 16
    mk = lambda **kw: AttentionConfig(hidden_size=64, heads=4, **kw).scale
    assert math.isclose(mk(), 1 / math.sqrt(D), rel_tol=1e-12)
    assert math.isclose(mk(use_mup=True), 1 / D, rel_tol=1e-12)
    assert math.isclose(mk(scale_attn_by_inverse_layer_idx=True, layer_id=3), 1 / (math.sqrt(D) * 4), rel_tol=1e-12)
    assert mk(scale_attention=False) == 1.0
    # BLOOM's softmax always scales by 1/norm_factor^2 (scale_attention is not consulted there)
    assert math.isclose(mk(bigscience_bloom=True, scale_attention=False), 1 / math.sqrt(D), rel_tol=1e-12)


def test_partitions_and_gqa():
    c = AttentionConfig(hidden_size=128, heads=8, num_kv=4, mp_size=2, mp_rank=1)
    assert (c.heads_per_partition, c.kv_heads_per_partition, c.head_size) == (4, 2, 16)
    assert c.qkv_size_per_partition == (4 + 2 * 2) * 16


def test_dict_roundtrip_and_unknown_field():
    c = AttentionConfig(hidden_size=64, heads=4, num_kv=2, dtype="bf16", rotary_dim=8, rotate_half=True,
                        rotate_every_two=False, norm_type="RMSNorm")
    d = c.to_dict()
    assert d["dtype"] == "bfloat16" and d["norm_type"] == "rmsnorm"
    assert AttentionConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="heeds"):
        AttentionConfig.from_dict({"hidden_size": 64, "heeds": 4})


def test_ints_are_not_coerced_and_fit_int32():
    """Floats are rejected, not truncated; ints past int32 (what the graph and TensorRT carry) are
    rejected with a message naming the field; numpy ints are fine."""
    import numpy as np

    from dsattn.export import DeepSpeedSelfAttention
    from dsattn.export.config import check_int, int32_tensor

    with pytest.raises(TypeError, match=r"AttentionConfig.heads must be an int, got 4.0 \(float\)"):
        AttentionConfig(hidden_size=32, heads=4.0)
    with pytest.raises(ValueError, match=r"AttentionConfig.max_out_tokens=4294967296 does not fit int32"):
        AttentionConfig(hidden_size=32, heads=4, max_out_tokens=2**32)
    assert type(AttentionConfig(hidden_size=32, heads=np.int32(4)).heads) is int
    m = DeepSpeedSelfAttention(AttentionConfig(hidden_size=32, heads=4, dtype="float32"))
    for bad, err in (([1.5, 0], TypeError), (torch.tensor([1.0, 0.0]), TypeError), ([True, 0], TypeError),
                     ([2**31, 0], ValueError)):
        with pytest.raises(err, match="start_pos"):
            m.new_cache(2, 8, start_pos=bad)
    assert m.new_cache(2, 8, start_pos=np.array([3, 1])).start_pos.tolist() == [3, 1]
    assert check_int("x", np.int64(5), 0, 9) == 5
    with pytest.raises(ValueError, match=r"x=10 must be in \[0, 9\]"):
        check_int("x", 10, 0, 9)
    assert int32_tensor("v", [[1, 2]]).shape == (1, 2)
