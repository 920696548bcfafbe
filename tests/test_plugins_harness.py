"""TensorRT plugins driven through the host harness on the GPU (no TensorRT needed).

plugins/tests/harness.cpp plays TensorRT: creator fields -> clone -> output types/shapes ->
supportsFormatCombination -> configurePlugin -> getWorkspaceSize -> attachToContext ->
onShapeChange -> enqueue -> getFieldsToSerialize -> createPlugin(kRUNTIME) -> same bits. This test
writes each case (inputs, attributes, float32 reference outputs and tolerances) to a directory and
runs the harness on it.

Reference: ``dsattn.export.ops.run_node`` on the inputs upcast to float32 (the fp32 oracle).
Tolerance (docs/DESIGN.md): max error <= max(2 * error of PyTorch computing the same in T, floor), floor
1e-3 fp16 / 8e-3 bf16 / 1e-4 fp32; PyTorch-in-T is the plain unfused sequence below. NaN never
passes; the harness poisons every output with NaN first. Fresh random data every run (seed printed).

Needs the plugin library and harness built with TensorRT headers (scripts/gpu_all.sh builds them):
build/plugins/libdsattn_plugins.so and build/plugins/dsattn_plugin_harness.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "plugins"
FLOOR = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-4}
NP_T = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
TORCH_T = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@pytest.fixture(scope="module")
def harness():
    exe, lib = BUILD / "dsattn_plugin_harness", BUILD / "libdsattn_plugins.so"
    if not exe.exists() or not lib.exists():
        pytest.fail(f"{exe} / {lib} not built: cmake -S plugins -B build/plugins -G Ninja -DTensorRT_INCLUDE_DIR=... && cmake --build build/plugins")
    return exe, lib


def _dtype_name(a: np.ndarray) -> str:
    if a.dtype == ml_dtypes.bfloat16:
        return "bfloat16"
    return {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32", np.dtype(np.int8): "int8",
            np.dtype(np.int32): "int32"}[a.dtype]


def _f32(a):
    """Float T arrays upcast to float32 (exact); int arrays unchanged; None stays None."""
    if a is None or a.dtype in (np.int8, np.int32):
        return a
    return a.astype(np.float32)


def _t(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().numpy()


def write_case(path: Path, op: str, inputs: list, attrs: dict, outputs: list, *, alias=(), maxdims=None,
               status=None) -> Path:
    """outputs: (dtype_name, reference float32 array or shape tuple with 'nan', atol)."""
    path.mkdir(parents=True)
    lines = [f"op {op}"]
    for k, v in attrs.items():
        if isinstance(v, str):
            lines.append(f"attr_s {k} {v}")
        elif isinstance(v, (list, tuple)):
            lines.append(f"attr_fs {k} {len(v)} " + " ".join(f"{float(np.float32(x)):.9g}" for x in v))
        elif isinstance(v, float):
            lines.append(f"attr_f {k} {float(np.float32(v)):.9g}")
        else:
            lines.append(f"attr_i {k} {int(v)}")
    # Trailing absent inputs are omitted (as the ONNX parser does); middle ones are `absent`.
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    for i, a in enumerate(inputs):
        if a is None:
            lines.append(f"absent {i}")
            continue
        (path / f"in{i}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
        lines.append(f"input {i} {_dtype_name(a)} {a.ndim} {' '.join(map(str, a.shape))} in{i}.bin")
    for i, dims in (maxdims or {}).items():
        lines.append(f"maxdims {i} {len(dims)} {' '.join(map(str, dims))}")
    for o, (tname, ref, atol) in enumerate(outputs):
        if isinstance(ref, tuple):  # (shape, "nan")
            shape, _ = ref
            lines.append(f"output {o} {tname} {len(shape)} {' '.join(map(str, shape))} nan 0")
            continue
        (path / f"ref{o}.bin").write_bytes(np.ascontiguousarray(ref, dtype=np.float32).tobytes())
        lines.append(f"output {o} {tname} {ref.ndim} {' '.join(map(str, ref.shape))} ref{o}.bin {atol:.6g}")
    for o, i in alias:
        lines.append(f"alias {o} {i}")
    if status is not None:
        lines.append(f"status {int(status)}")
    (path / "manifest.txt").write_text("\n".join(lines) + "\n")
    return path


def run_harness(harness, case_dirs):
    exe, lib = harness
    r = subprocess.run([str(exe), str(lib), *map(str, case_dirs)], capture_output=True, text=True, timeout=300)
    print(r.stdout[-20000:], r.stderr[-5000:])
    assert r.returncode == 0, f"harness failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert r.stdout.count("PASS ") == len(case_dirs)


def _tol(err_torch_t: float, tname: str) -> float:
    return max(2.0 * err_torch_t, FLOOR[tname])


# ------------------------------------------------------------------------------------------------
# Int8MatMul
# ------------------------------------------------------------------------------------------------

def _int8_expect(inputs, attrs, tname):
    """[(tname, fp32 reference, atol)] for Int8MatMul on these inputs."""
    from dsattn.export.ops import run_node

    x, w, scale, b = (list(inputs) + [None] * 4)[:4]
    K = x.shape[-1]
    g = attrs.get("group_size", 0) or K
    (ref,) = run_node("Int8MatMul", [_f32(x), w, scale, _f32(b)], attrs)
    # PyTorch in T: weight dequantized in fp32 and rounded to T, x @ w^T in T, + bias in T.
    tt = TORCH_T[tname]
    wd = (torch.from_numpy(scale).repeat_interleave(g, dim=1) * torch.from_numpy(w).float()).to(tt)
    yt = torch.from_numpy(_f32(x)).to(tt) @ wd.t()
    if b is not None:
        yt = yt + torch.from_numpy(_f32(b)).to(tt)
    return [(tname, ref, _tol(float(np.abs(_t(yt) - ref).max()), tname))]


def _int8_case(tmp, rng, tname, lead, K, N, group, bias):
    T = NP_T[tname]
    x = rng.standard_normal((*lead, K)).astype(np.float32).astype(T)
    w = rng.integers(-127, 128, size=(N, K), dtype=np.int8)
    g = group or K
    scale = (rng.uniform(0.5, 1.5, size=(N, K // g)) / (127 * math.sqrt(K))).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32).astype(T) if bias else None
    attrs = {"group_size": group, "plugin_version": "1", "plugin_namespace": "dsattn"}
    inputs = [x, w, scale, b]
    name = f"int8_{tname}_{'x'.join(map(str, lead))}_K{K}_N{N}_g{group}_b{int(bias)}"
    return write_case(tmp / name, "Int8MatMul", inputs, attrs, _int8_expect(inputs, attrs, tname))


def test_int8_matmul_plugin(harness, tmp_path, seed):
    rng = np.random.default_rng(seed)
    cases = [
        _int8_case(tmp_path, rng, "float16", (2, 3), 256, 96, 0, True),
        _int8_case(tmp_path, rng, "bfloat16", (5,), 256, 96, 64, False),
        _int8_case(tmp_path, rng, "float32", (1, 1), 128, 48, 32, True),
        _int8_case(tmp_path, rng, "float16", (200,), 256, 80, 128, True),   # large-M path
        _int8_case(tmp_path, rng, "bfloat16", (1, 7, 3), 512, 64, 0, True),  # rank 4 input
    ]
    run_harness(harness, cases)


# ------------------------------------------------------------------------------------------------
# QKVGemm
# ------------------------------------------------------------------------------------------------

def _qkv_expect(inputs, attrs, tname):
    """[(tname, fp32 reference, atol)] per output of QKVGemm on these inputs."""
    from dsattn.export.ops import run_node

    x, w, b, gamma, beta, scale = (list(inputs) + [None] * 6)[:6]
    tt = TORCH_T[tname]
    K = x.shape[-1]
    norm, quant = attrs.get("norm_type", 1), attrs.get("quantized", 0)
    eps = attrs.get("epsilon", 1e-5)
    if quant:
        g = attrs.get("group_size", 0) or K
        wd = torch.from_numpy(scale).repeat_interleave(g, dim=1) * torch.from_numpy(w).float()  # [N, K]
        w_t = wd.t().to(tt)
    else:
        w_t = torch.from_numpy(_f32(w)).to(tt)
    refs = run_node("QKVGemm", [_f32(a) for a in inputs], attrs)
    # PyTorch in T: the norm in fp32 rounded to T (what torch's fused layer_norm returns), matmul in
    # T, + bias in T.
    xf = torch.from_numpy(_f32(x))
    if norm == 1:
        xn = torch.nn.functional.layer_norm(xf, (K,), torch.from_numpy(_f32(gamma)), torch.from_numpy(_f32(beta)), eps)
    elif norm == 2:
        xn = xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps) * torch.from_numpy(_f32(gamma))
    else:
        xn = xf
    yt = xn.to(tt) @ w_t
    if b is not None:
        yt = yt + torch.from_numpy(_f32(b)).to(tt)
    outs = [(tname, refs[0], _tol(float(np.abs(_t(yt) - refs[0]).max()), tname))]
    if attrs.get("emit_normed", 0):
        outs.append((tname, refs[1], _tol(float(np.abs(_t(xn.to(tt)) - refs[1]).max()), tname)))
    return outs


def _qkv_case(tmp, rng, tname, B, S, K, N, *, norm, quant, group=0, emit=0, bias=True, maxdims=None):
    T = NP_T[tname]
    x = (rng.standard_normal((B, S, K)) * 2 + 0.5).astype(np.float32).astype(T)
    gamma = rng.uniform(0.5, 1.5, K).astype(np.float32).astype(T) if norm else None
    beta = (rng.standard_normal(K) * 0.1).astype(np.float32).astype(T) if norm == 1 else None
    b = rng.standard_normal(N).astype(np.float32).astype(T) if bias else None
    if quant:
        w = rng.integers(-127, 128, size=(N, K), dtype=np.int8)
        scale = (rng.uniform(0.5, 1.5, size=(N, K // (group or K))) / (127 * math.sqrt(K))).astype(np.float32)
    else:
        w = (rng.standard_normal((K, N)) / math.sqrt(K)).astype(np.float32).astype(T)
        scale = None
    attrs = {"norm_type": norm, "epsilon": 1e-5, "quantized": quant, "group_size": group, "emit_normed": emit}
    inputs = [x, w, b, gamma, beta, scale]
    name = f"qkv_{tname}_B{B}S{S}K{K}N{N}_n{norm}_q{quant}g{group}_e{emit}_b{int(bias)}"
    return write_case(tmp / name, "QKVGemm", inputs, attrs, _qkv_expect(inputs, attrs, tname), maxdims=maxdims)


def test_qkv_gemm_plugin(harness, tmp_path, seed):
    rng = np.random.default_rng(seed)
    cases = [
        _qkv_case(tmp_path, rng, "float16", 2, 5, 128, 384, norm=1, quant=0, emit=1),
        _qkv_case(tmp_path, rng, "bfloat16", 1, 1, 128, 384, norm=2, quant=0, bias=False),  # bias absent mid-list
        _qkv_case(tmp_path, rng, "float32", 1, 97, 64, 192, norm=0, quant=0),
        _qkv_case(tmp_path, rng, "float16", 1, 3, 128, 384, norm=1, quant=1, group=64, emit=1),
        _qkv_case(tmp_path, rng, "bfloat16", 2, 1, 256, 96, norm=0, quant=1, bias=False),  # 3 middle absents
        _qkv_case(tmp_path, rng, "float16", 2, 100, 128, 384, norm=1, quant=0),  # M=200: cuBLASLt path
        # decode shape run with a prefill-sized profile: the workspace covers every M up to the max
        _qkv_case(tmp_path, rng, "float16", 1, 1, 128, 384, norm=2, quant=0, maxdims={0: (4, 512, 128)}),
    ]
    run_harness(harness, cases)


# ------------------------------------------------------------------------------------------------
# SoftmaxContext
# ------------------------------------------------------------------------------------------------

def _rotary_t(x, pos, rd, style, theta):
    """Rotary in x.dtype (angles in fp32, as any PyTorch implementation computes them)."""
    T = x.dtype
    half = rd // 2
    inv = theta ** (-torch.arange(0, half, dtype=torch.float32) * 2 / rd)
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cos(ang).to(T)[:, None, :], torch.sin(ang).to(T)[:, None, :]
    rot, rest = x[..., :rd], x[..., rd:]
    if style == 0:
        a, b = rot[..., :half], rot[..., half:]
        rot = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rot = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rot, rest], dim=-1)


def _softmax_context_torch_t(qkv, pk, pv, lens, starts, a):
    """Unfused PyTorch in T: q.k^T in T, softmax (PyTorch upcasts internally), probs @ v in T."""
    H, Hkv, D = a["num_heads"], a["num_kv_heads"], a["head_size"]
    B, S, _ = qkv.shape
    if a["qkv_layout"] == 0:
        q = qkv[..., : H * D].reshape(B, S, H, D)
        k = qkv[..., H * D:(H + Hkv) * D].reshape(B, S, Hkv, D)
        v = qkv[..., (H + Hkv) * D:].reshape(B, S, Hkv, D)
    else:
        x = qkv.reshape(B, S, H, 3, D)
        q, k, v = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    T = qkv.dtype
    ctx = torch.zeros(B, S, H, D, dtype=T)
    for b in range(B):
        L0, L = int(lens[b]), int(lens[b]) + S
        p = torch.arange(L0, L)
        qb, kb = q[b], k[b]
        if a["rotary_dim"]:
            rp = (p - int(starts[b])).float()
            qb = _rotary_t(qb, rp, a["rotary_dim"], a["rotary_style"], a["rope_theta"])
            kb = _rotary_t(kb, rp, a["rotary_dim"], a["rotary_style"], a["rope_theta"])
        keys = torch.cat([pk[b, :, :L0], kb.transpose(0, 1)], 1).repeat_interleave(H // Hkv, 0)
        vals = torch.cat([pv[b, :, :L0], v[b].transpose(0, 1)], 1).repeat_interleave(H // Hkv, 0)
        logits = torch.matmul(qb.transpose(0, 1), keys.transpose(1, 2)) * a["scale"]
        j = torch.arange(L)
        if a["alibi_slopes"]:
            sl = torch.tensor(a["alibi_slopes"], dtype=T)
            logits = logits + sl[:, None, None] * (j - int(starts[b])).to(T)[None, None, :]
        valid = (j >= int(starts[b]))[None, :].expand(S, L)
        if a["causal"]:
            valid = valid & (j[None, :] <= p[:, None])
        if a["local_window"]:
            valid = valid & (j[None, :] > p[:, None] - a["local_window"])
        probs = torch.softmax(logits.masked_fill(~valid[None], float("-inf")), dim=-1).nan_to_num(0.0)
        ctx[b] = torch.matmul(probs, vals).transpose(0, 1)
    return ctx.reshape(B, S, H * D)


_ATTN_DEFAULTS = {"qkv_layout": 0, "causal": 1, "local_window": 0, "rotary_dim": 0, "rotary_style": 0,
                  "rope_theta": 10000.0, "alibi_slopes": []}


def _attn_expect(inputs, attrs, tname):
    """[(tname, fp32 reference, atol)] for context, present_key, present_value on these inputs."""
    from dsattn.export.ops import run_node

    qkv, pk, pv, seq, sp = (list(inputs) + [None] * 5)[:5]
    a = dict(_ATTN_DEFAULTS, **{k: v for k, v in attrs.items() if not k.startswith("plugin_")})
    a.setdefault("num_kv_heads", a["num_heads"])
    a.setdefault("scale", 1.0 / math.sqrt(a["head_size"]))
    a["alibi_slopes"] = [float(v) for v in a["alibi_slopes"]]
    ctx, prk, prv = run_node("SoftmaxContext", [_f32(x) for x in inputs], attrs)
    _, prk_t, prv_t = run_node("SoftmaxContext", inputs, attrs)  # new cache rows rounded to T
    tt = TORCH_T[tname]
    st = sp if sp is not None else np.zeros(qkv.shape[0], np.int32)
    ctx_torch = _softmax_context_torch_t(torch.from_numpy(_f32(qkv)).to(tt), torch.from_numpy(_f32(pk)).to(tt),
                                         torch.from_numpy(_f32(pv)).to(tt), seq, st, a)
    return [(tname, ctx, _tol(float(np.abs(_t(ctx_torch) - ctx).max()), tname)),
            (tname, prk, _tol(float(np.abs(_f32(prk_t) - prk).max()), tname)),
            (tname, prv, _tol(float(np.abs(_f32(prv_t) - prv).max()), tname))]


def _never_seen(lens, starts, S, Tmax, causal, window):
    """[B, Tmax] bool: cache rows that no new token of the row sees and the call does not write."""
    out = np.zeros((len(lens), Tmax), bool)
    for b, L0 in enumerate(lens):
        s0 = 0 if starts is None else starts[b]
        for j in range(Tmax):
            seen = any(s0 <= j < L0 + S and (not causal or j <= L0 + i) and (not window or j > L0 + i - window)
                       for i in range(S))
            out[b, j] = not seen and not L0 <= j < L0 + S
    return out


def _attn_case(tmp, rng, tname, *, B, S, H, Hkv, D, Tmax, lens, starts=None, layout=0, causal=1, window=0,
               rd=0, style=0, alibi=False, maxdims=None, overflow=False, poison=False, name=""):
    from dsattn.export.ops import run_node

    T = NP_T[tname]
    qkv = rng.standard_normal((B, S, (H + 2 * Hkv) * D)).astype(np.float32).astype(T)
    pk = rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32).astype(T)
    pv = rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32).astype(T)
    seq = np.asarray(lens, dtype=np.int32)
    sp = None if starts is None else np.asarray(starts, dtype=np.int32)
    slopes = [2.0 ** (-8.0 * (h + 1) / H) for h in range(H)] if alibi else []
    attrs = {"num_heads": H, "num_kv_heads": Hkv, "head_size": D, "scale": 1.0 / math.sqrt(D),
             "qkv_layout": layout, "causal": causal, "local_window": window, "rotary_dim": rd,
             "rotary_style": style, "rope_theta": 10000.0, "alibi_slopes": slopes,
             "plugin_version": "1", "plugin_namespace": "dsattn"}
    inputs = [qkv, pk, pv, seq, sp]
    alias = [(1, 1), (2, 2)]
    if overflow:
        with pytest.raises(ValueError, match="overflow"):
            run_node("SoftmaxContext", [_f32(a) for a in inputs], attrs)
        # Nothing written: the caches keep their contents, the plugin NaN-poisons context.
        outs = [(tname, ((B, S, H * D), "nan"), 0.0), (tname, _f32(pk), 0.0), (tname, _f32(pv), 0.0)]
        return write_case(tmp / name, "SoftmaxContext", inputs, attrs, outs, alias=alias, status=1)
    if poison:
        # OPS.md: masked keys are excluded. NaN in every cache row no new token sees: the context is
        # the one of the clean cache (zeros there); present_* pass the NaN rows through.
        never = _never_seen(lens, starts, S, Tmax, causal, window)[:, None, :, None].repeat(Hkv, 1).repeat(D, 3)
        assert never.any()
        pk[never] = pv[never] = 0
        expect = _attn_expect(inputs, attrs, tname)
        pk[never] = pv[never] = np.nan
        ctx, prk, prv = run_node("SoftmaxContext", [_f32(x) for x in inputs], attrs)
        assert np.array_equal(ctx, expect[0][1]), "the reference does not exclude the masked rows exactly"
        expect = [expect[0], (tname, prk, expect[1][2]), (tname, prv, expect[2][2])]
        return write_case(tmp / name, "SoftmaxContext", inputs, attrs, expect, alias=alias, maxdims=maxdims, status=0)
    return write_case(tmp / name, "SoftmaxContext", inputs, attrs, _attn_expect(inputs, attrs, tname), alias=alias,
                      maxdims=maxdims, status=0)


def test_softmax_context_plugin(harness, tmp_path, seed):
    rng = np.random.default_rng(seed)
    c = lambda name, t, **kw: _attn_case(tmp_path, rng, t, name=f"attn_{name}_{t}", **kw)  # noqa: E731
    cases = [
        c("prefill_mha_rope", "float16", B=2, S=17, H=4, Hkv=4, D=64, Tmax=64, lens=[0, 0], rd=32, style=0),
        c("decode_gqa_ragged", "bfloat16", B=3, S=1, H=8, Hkv=2, D=128, Tmax=97, lens=[5, 60, 0],
          starts=[0, 3, 0], rd=64, style=1, maxdims={0: (3, 16, 1536)}),
        c("bloom_alibi_leftpad", "float16", B=2, S=5, H=4, Hkv=4, D=64, Tmax=32, lens=[3, 10], starts=[0, 2],
          layout=1, alibi=True),
        c("window_noncausal", "float32", B=1, S=33, H=2, Hkv=2, D=64, Tmax=80, lens=[7], window=8, causal=0),
        c("prefill_d128", "bfloat16", B=1, S=97, H=2, Hkv=1, D=128, Tmax=128, lens=[0], rd=128),
        c("decode_fp32", "float32", B=2, S=1, H=4, Hkv=4, D=64, Tmax=40, lens=[39, 1], starts=[0, 1]),
        c("overflow", "float16", B=2, S=4, H=4, Hkv=4, D=64, Tmax=16, lens=[3, 14], overflow=True),
        # NaN in every masked cache row (left padding, windowed out, past seq_lens + S)
        c("prefill_masked_rows_nan", "float16", B=2, S=9, H=4, Hkv=2, D=64, Tmax=40, lens=[20, 0], starts=[3, 2],
          window=6, rd=32, poison=True),
        c("decode_masked_rows_nan", "bfloat16", B=2, S=1, H=8, Hkv=2, D=128, Tmax=64, lens=[50, 10], starts=[5, 0],
          window=16, poison=True),
    ]
    run_harness(harness, cases)


def test_harness_selftest(harness):
    exe, lib = harness
    r = subprocess.run([str(exe), "--selftest", str(lib)], capture_output=True, text=True, timeout=120)
    print(r.stdout[-5000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 failures" in r.stdout


# ------------------------------------------------------------------------------------------------
# Nodes of exported models: the exporter's real attributes, weights and shapes through the plugins
# ------------------------------------------------------------------------------------------------

def _attr_value(a):
    from onnx import AttributeProto

    if a.type == AttributeProto.INT:
        return int(a.i)
    if a.type == AttributeProto.FLOAT:
        return float(a.f)
    if a.type == AttributeProto.FLOATS:
        return [float(v) for v in a.floats]
    if a.type == AttributeProto.STRING:
        return a.s.decode()
    raise AssertionError(f"attribute {a.name} has unsupported type {a.type}")


def exported_node_cases(tmp, model, feeds, tname):
    """One case per dsattn node, evaluated node by node in T with run_node (each node's inputs are
    what the previous dsattn node produced in T, as in an engine)."""
    from onnx import numpy_helper

    from dsattn.export.ops import run_node

    values = {k: v for k, v in feeds.items()}
    values.update({i.name: numpy_helper.to_array(i) for i in model.graph.initializer})
    expect = {"QKVGemm": _qkv_expect, "SoftmaxContext": _attn_expect, "Int8MatMul": _int8_expect}
    dirs = []
    for k, node in enumerate(model.graph.node):
        if node.domain != "dsattn":
            continue
        missing = [n for n in node.input if n and n not in values]
        assert not missing, f"{node.op_type} input(s) {missing} come from non-dsattn nodes; extend this test"
        inputs = [values[n] if n else None for n in node.input]
        # The parser passes only the creator's fields: plugin_version / plugin_namespace are consumed.
        attrs = {a.name: _attr_value(a) for a in node.attribute if not a.name.startswith("plugin_")}
        outs = run_node(node.op_type, inputs, attrs)
        for name, v in zip(node.output, outs):
            values[name] = v
        alias = [(1, 1), (2, 2)] if node.op_type == "SoftmaxContext" else []
        dirs.append(write_case(tmp / f"{k}_{node.op_type}", node.op_type, inputs, attrs,
                               expect[node.op_type](inputs, attrs, tname), alias=alias,
                               status=0 if node.op_type == "SoftmaxContext" else None))
    return dirs


def test_exported_model_nodes(harness, tmp_path, seed):
    import onnx

    from dsattn.export import AttentionConfig, BloomSelfAttention, DeepSpeedSelfAttention, export_onnx, quantize_int8

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    models = {
        "bloom_fp16": (BloomSelfAttention(AttentionConfig(hidden_size=256, heads=4, dtype="fp16",
                                                          bigscience_bloom=True)), "float16", [1, 0]),
        "ds_int8_ln_fp16": (quantize_int8(DeepSpeedSelfAttention(AttentionConfig(hidden_size=256, heads=4,
                                                                                 dtype="fp16")), group_size=64),
                            "float16", None),
        "ds_gqa_rope_bf16": (DeepSpeedSelfAttention(AttentionConfig(
            hidden_size=256, heads=4, num_kv=2, dtype="bf16", norm_type="rmsnorm", rotary_dim=32,
            rotate_half=False, rotate_every_two=True)), "bfloat16", [0, 2]),
    }
    B, S, Tmax = 2, 5, 48
    dirs = []
    for name, (m, tname, starts) in models.items():
        model = onnx.load(export_onnx(m.eval(), tmp_path / f"{name}.onnx", batch=B, seq=S, capacity=Tmax))
        T = NP_T[tname]
        Hkv = model.graph.input[1].type.tensor_type.shape.dim[1].dim_value
        D = model.graph.input[1].type.tensor_type.shape.dim[3].dim_value
        feeds = {
            "hidden_states": rng.standard_normal((B, S, 256)).astype(np.float32).astype(T),
            "past_key": rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32).astype(T),
            "past_value": rng.standard_normal((B, Hkv, Tmax, D)).astype(np.float32).astype(T),
            "seq_lens": np.array([7, 0], np.int32),
            "start_pos": np.array(starts or [0, 0], np.int32),
        }
        (tmp_path / name).mkdir()
        dirs += exported_node_cases(tmp_path / name, model, feeds, tname)
    run_harness(harness, dirs)
