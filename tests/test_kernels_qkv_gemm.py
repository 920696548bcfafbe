"""QKVGemm CUDA kernels (libdsattn_kernels.so through tools/kernels/qkv_gemm.py) against the fp32
reference dsattn.export.ops.qkv_gemm, with the accuracy rule of docs/DESIGN.md.

Accuracy rule: max |ours - ref| <= max(2 * max |torch_T - ref|, floor), where torch_T is PyTorch
computing the same unfused sequence in precision T (LayerNorm/RMSNorm in T, matmul in T, + bias in
T) and floor is 1e-3 (fp16) / 8e-3 (bf16). float32 T is checked against a float64 reference with
floor 1e-5 (outputs are O(1) by construction). Outputs are NaN-poisoned first; NaN never passes.
"""
from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(scope="module")
def lib():
    from dsattn.tools.kernels import _lib

    return _lib.load()  # FileNotFoundError with the build command when it was not built


def _gen(seed):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    return g


def _make(M, K, N, dtype, norm_type, with_bias, seed, lead=None):
    """Fresh random inputs; W scaled so outputs are O(1); x with a nonzero mean per row (the
    LayerNorm centring matters)."""
    g = _gen(seed)
    shape = (lead or (1, M)) + (K,)
    x = (torch.randn(shape, generator=g, device="cuda") * 2.0
         + torch.randn(shape[:-1] + (1,), generator=g, device="cuda") * 3.0).to(dtype)
    w = (torch.randn(K, N, generator=g, device="cuda") / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g, device="cuda").to(dtype) if with_bias else None
    gamma = (1.0 + 0.5 * torch.randn(K, generator=g, device="cuda")).to(dtype) if norm_type else None
    beta = (0.5 * torch.randn(K, generator=g, device="cuda")).to(dtype) if norm_type == 1 else None
    return x, w, b, gamma, beta


def _ref32(x, w, b, gamma, beta, norm_type, eps, dtype64=False):
    """fp32 (or fp64 for float32 T) reference through dsattn.export.ops (OPS.md formula)."""
    from dsattn.export import ops

    rt = torch.float64 if dtype64 else torch.float32
    lead = x.shape[:-1]
    if x.dim() != 3:  # ops takes [B, S, hidden]
        q, n = _ref32(x.reshape(1, -1, x.shape[-1]), w, b, gamma, beta, norm_type, eps, dtype64)
        return q.reshape(*lead, -1), n.reshape(x.shape)

    def up(t):
        return None if t is None else t.to(rt)

    if dtype64:  # ops' eager body computes in fp32; the fp64 check uses the same formula inline
        xf = x.to(rt)
        if norm_type == 1:
            mu = xf.mean(-1, keepdim=True)
            var = ((xf - mu) ** 2).mean(-1, keepdim=True)
            xf = (xf - mu) / torch.sqrt(var + eps) * gamma.to(rt) + beta.to(rt)
        elif norm_type == 2:
            xf = xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + eps) * gamma.to(rt)
        q = xf @ w.to(rt)
        if b is not None:
            q = q + b.to(rt)
        return q, xf
    q, n = ops.qkv_gemm(up(x), up(w), up(b), up(gamma), up(beta), norm_type=norm_type, epsilon=eps,
                        emit_normed=1)
    return q, n


def _torch_T(x, w, b, gamma, beta, norm_type, eps):
    """PyTorch computing the unfused sequence in precision T (the accuracy rule's yardstick)."""
    if norm_type == 1:
        n = torch.nn.functional.layer_norm(x, (x.shape[-1],), gamma, beta, eps)
    elif norm_type == 2:
        n = torch.nn.functional.rms_norm(x, (x.shape[-1],), gamma, eps)
    else:
        n = x
    q = n @ w
    if b is not None:
        q = q + b
    return q, n


def _check(name, ours, ref, torch_t, dtype):
    assert not torch.isnan(ours).any(), f"{name}: NaN in the output (unwritten or overflow)"
    err = (ours.double() - ref.double()).abs().max().item()
    base = (torch_t.double() - ref.double()).abs().max().item()
    tol = max(2 * base, FLOOR[dtype])
    assert err <= tol, f"{name}: max error {err:.3g} > tol {tol:.3g} (torch in {dtype}: {base:.3g})"


def _run_case(lib, M, K, N, dtype, norm_type, with_bias, emit_normed, seed, eps=1e-5, lead=None):
    from dsattn.tools.kernels import qkv_gemm

    x, w, b, gamma, beta = _make(M, K, N, dtype, norm_type, with_bias, seed, lead)
    out = torch.full(x.shape[:-1] + (N,), float("nan"), device="cuda", dtype=dtype)
    nout = torch.full_like(x, float("nan")) if emit_normed else None
    res = qkv_gemm.qkv_gemm(x, w, b, gamma, beta, norm_type=norm_type, epsilon=eps,
                        emit_normed=emit_normed, lib=lib, out=out, normed_out=nout)
    torch.cuda.synchronize()
    q = res[0] if emit_normed else res
    assert q.data_ptr() == out.data_ptr()
    ref_q, ref_n = _ref32(x, w, b, gamma, beta, norm_type, eps, dtype64=(dtype == torch.float32))
    tq, tn = _torch_T(x, w, b, gamma, beta, norm_type, eps)
    tag = f"M={M} K={K} N={N} {dtype} norm={norm_type} bias={with_bias}"
    _check(f"qkv [{tag}]", q, ref_q, tq, dtype)
    if emit_normed:
        _check(f"normed [{tag}]", res[1], ref_n, tn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_type", [0, 1, 2])
@pytest.mark.parametrize("M,K,N", [(1, 4096, 12288), (3, 4096, 12288), (97, 4096, 12288),
                                   (1025, 4096, 12288), (64, 4096, 12288), (5, 1000, 2328),
                                   (97, 1000, 2328), (3, 1001, 291), (33, 1001, 291)])
def test_qkv_gemm_sizes(lib, seed, dtype, norm_type, M, K, N):
    _run_case(lib, M, K, N, dtype, norm_type, True, 0, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_type", [0, 1, 2])
@pytest.mark.parametrize("M", [1, 7, 97])
def test_qkv_gemm_no_bias_emit_normed(lib, seed, dtype, norm_type, M):
    _run_case(lib, M, 1024, 3 * 97 * 8, dtype, norm_type, False, 1, seed)
    _run_case(lib, M, 1024, 3 * 97 * 8, dtype, norm_type, True, 1, seed + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("M", [1, 16, 64])
def test_small_m_bench_shape_emit_normed(lib, seed, dtype, M):
    """The benchmark shape at small M (cuBLASLt's GEMV-like kernels) with normed emitted."""
    _run_case(lib, M, 4096, 12288, dtype, 1, True, 1, seed)


def test_leading_dims_and_epsilon(lib, seed):
    _run_case(lib, 0, 4096, 2048, torch.float16, 1, True, 1, seed, eps=1e-2, lead=(3, 5))
    _run_case(lib, 0, 4096, 2048, torch.bfloat16, 2, True, 0, seed + 1, eps=0.0, lead=(2, 1, 7))


@pytest.mark.parametrize("M", [1, 16])
def test_auto_choice_is_stable(lib, seed, M):
    """A fresh context gives the same result on its first and later calls (bit for bit: the path
    and algorithm are chosen deterministically), within the accuracy rule."""
    from dsattn.tools.kernels import qkv_gemm

    ctx = qkv_gemm.QKVGemmContext(lib)
    x, w, b, gamma, beta = _make(M, 4096, 12288, torch.float16, 1, True, seed)
    first = qkv_gemm.qkv_gemm(x, w, b, gamma, beta, ctx=ctx, lib=lib)
    again = qkv_gemm.qkv_gemm(x, w, b, gamma, beta, ctx=ctx, lib=lib)
    torch.cuda.synchronize()
    assert torch.equal(first, again)
    ref_q, _ = _ref32(x, w, b, gamma, beta, 1, 1e-5)
    tq, _ = _torch_T(x, w, b, gamma, beta, 1, 1e-5)
    _check("auto", again, ref_q, tq, torch.float16)


def test_m_zero_is_noop(lib):
    from dsattn.tools.kernels import qkv_gemm

    x = torch.empty(0, 4096, device="cuda", dtype=torch.float16)
    w = torch.randn(4096, 64, device="cuda", dtype=torch.float16)
    out = qkv_gemm.qkv_gemm(x, w, norm_type=0, lib=lib)
    assert out.shape == (0, 64)


def test_unaligned_pointers_fall_back(lib, seed):
    """Element-aligned but not 16-byte-aligned tensors (views at odd offsets) still compute right."""
    from dsattn.tools.kernels import qkv_gemm

    M, K, N = 5, 4096, 2048
    x, w, b, gamma, beta = _make(M, K, N, torch.float16, 1, True, seed)
    xb = torch.empty(M * K + 1, device="cuda", dtype=torch.float16)
    xo = xb[1:].view(1, M, K)
    xo.copy_(x)
    out = torch.full((1, M, N), float("nan"), device="cuda", dtype=torch.float16)
    qkv_gemm.qkv_gemm(xo, w, b, gamma, beta, norm_type=1, lib=lib, out=out)
    torch.cuda.synchronize()
    ref_q, _ = _ref32(x, w, b, gamma, beta, 1, 1e-5)
    tq, _ = _torch_T(x, w, b, gamma, beta, 1, 1e-5)
    _check("unaligned x", out, ref_q, tq, torch.float16)


@pytest.mark.parametrize("M", [1, 16, 2048])
def test_cuda_graph_capture(lib, seed, M):
    """Captured in a CUDA graph (the plugin / benchmark case), replays equal the eager result."""
    from dsattn.tools.kernels import qkv_gemm

    x, w, b, gamma, beta = _make(M, 4096, 12288, torch.bfloat16, 1, True, seed)
    eager = qkv_gemm.qkv_gemm(x, w, b, gamma, beta, lib=lib)
    out = torch.full_like(eager, float("nan"))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        qkv_gemm.qkv_gemm(x, w, b, gamma, beta, lib=lib, out=out)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qkv_gemm.qkv_gemm(x, w, b, gamma, beta, lib=lib, out=out)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


def test_quantized(lib, seed):
    from dsattn.export import ops
    from dsattn.tools.kernels import qkv_gemm

    M, K, N, dt = 5, 4096, 2048, torch.float16
    g = _gen(seed)
    x, _, b, gamma, beta = _make(M, K, N, dt, 1, True, seed)
    wq = torch.randint(-127, 128, (N, K), generator=g, device="cuda", dtype=torch.int8)
    scale = (torch.rand(N, K // 128, generator=g, device="cuda") + 0.5) / (127 * K ** 0.5)
    out = torch.full((1, M, N), float("nan"), device="cuda", dtype=dt)
    qkv_gemm.qkv_gemm(x, wq, b, gamma, beta, scale, quantized=1, group_size=128, lib=lib, out=out)
    torch.cuda.synchronize()
    up = lambda t: t.float()  # noqa: E731
    ref = ops.qkv_gemm(up(x), wq, up(b), up(gamma), up(beta), scale, quantized=1, group_size=128)
    wdq = (wq.float() * scale.repeat_interleave(128, dim=1)).t().to(dt)
    tq, _ = _torch_T(x, wdq, b, gamma, beta, 1, 1e-5)
    _check("quantized", out, ref, tq, dt)


# ------------------------------------------------------------------------------------------------
# Validation: the binding raises ValueError/TypeError; the C entry point returns
# cudaErrorInvalidValue (1) and writes nothing.

def test_binding_rejects_bad_arguments(lib):
    from dsattn.tools.kernels import qkv_gemm

    x = torch.randn(2, 3, 64, device="cuda", dtype=torch.float16)
    w = torch.randn(64, 32, device="cuda", dtype=torch.float16)
    g = torch.ones(64, device="cuda", dtype=torch.float16)
    b = torch.zeros(64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="hidden=64"):
        qkv_gemm.qkv_gemm(x, torch.randn(65, 32, device="cuda", dtype=torch.float16), None, g, b, lib=lib)
    with pytest.raises(TypeError, match="weight"):
        qkv_gemm.qkv_gemm(x, w.float(), None, g, b, lib=lib)
    with pytest.raises(ValueError, match="gamma is required"):
        qkv_gemm.qkv_gemm(x, w, None, None, b, lib=lib)
    with pytest.raises(ValueError, match="beta is required"):
        qkv_gemm.qkv_gemm(x, w, None, g, None, lib=lib)
    with pytest.raises(ValueError, match="beta must be absent"):
        qkv_gemm.qkv_gemm(x, w, None, g, b, norm_type=2, lib=lib)
    with pytest.raises(ValueError, match="norm_type"):
        qkv_gemm.qkv_gemm(x, w, None, g, b, norm_type=3, lib=lib)
    with pytest.raises(ValueError, match="epsilon"):
        qkv_gemm.qkv_gemm(x, w, None, g, b, epsilon=float("nan"), lib=lib)
    with pytest.raises(ValueError, match="bias must have shape"):
        qkv_gemm.qkv_gemm(x, w, torch.zeros(31, device="cuda", dtype=torch.float16), g, b, lib=lib)
    with pytest.raises(ValueError, match="contiguous"):
        qkv_gemm.qkv_gemm(x, torch.randn(32, 64, device="cuda", dtype=torch.float16).t(), None, g, b, lib=lib)
    with pytest.raises(ValueError, match="group_size"):
        qkv_gemm.qkv_gemm(x, w, None, g, b, group_size=16, lib=lib)


def _valid_params(t):
    from dsattn.tools.kernels import qkv_gemm

    x, w, bias, g, b, out, normed = t
    return qkv_gemm.QKVGemmParams(
        input=x.data_ptr(), weight=w.data_ptr(), bias=bias.data_ptr(), gamma=g.data_ptr(),
        beta=b.data_ptr(), weight_scale=None, qkv=out.data_ptr(), normed=normed.data_ptr(),
        M=x.shape[0], N=w.shape[1], K=x.shape[1], group_size=0, norm_type=1, quantized=0,
        emit_normed=1, epsilon=1e-5, dtype=1)


@pytest.mark.parametrize("field,value", [
    ("M", -1), ("N", 0), ("K", 0), ("weight", None), ("input", None), ("qkv", None),
    ("gamma", None), ("beta", None), ("normed", None), ("dtype", 7), ("norm_type", 3),
    ("norm_type", -1), ("quantized", 2), ("emit_normed", 2), ("epsilon", float("nan")),
    ("epsilon", -1.0), ("group_size", 16), ("input", "odd"), ("weight", "odd"),
    ("quantized_no_scale", None), ("workspace", "small"), ("workspace", None), ("ctx", None),
])
def test_c_entry_rejects_bad_params(lib, field, value):
    from dsattn.tools.kernels import _lib, qkv_gemm

    M, K, N = 97, 256, 64  # cuBLASLt path: needs workspace
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    t = (x, torch.randn(K, N, device="cuda", dtype=torch.float16),
         torch.randn(N, device="cuda", dtype=torch.float16), torch.ones(K, device="cuda", dtype=torch.float16),
         torch.zeros(K, device="cuda", dtype=torch.float16),
         torch.full((M, N), float("nan"), device="cuda", dtype=torch.float16),
         torch.full((M, K), float("nan"), device="cuda", dtype=torch.float16))
    p = _valid_params(t)
    nbytes = qkv_gemm.workspace_size(p, lib=lib)
    assert nbytes > 0
    ws = torch.empty(nbytes, device="cuda", dtype=torch.uint8)
    ws_ptr, ws_bytes = ws.data_ptr(), nbytes
    ctx = qkv_gemm.default_context(lib)
    if field == "workspace":
        ws_ptr, ws_bytes = (ws.data_ptr(), nbytes - 1) if value == "small" else (0, nbytes)
    elif field == "ctx":
        ctx = type("C", (), {"handle": ctypes.c_void_p(0)})()
    elif field == "quantized_no_scale":
        p.quantized = 1
        p.weight_scale = None
    elif value == "odd":
        setattr(p, field, getattr(p, field) + 1)  # 2-byte type at an odd address
    else:
        setattr(p, field, value)
    # A valid call succeeds with the same buffers (so the rejection is about `field`).
    ok = _valid_params(t)
    rc = qkv_gemm.raw_call(p, ws_ptr, ws_bytes, ctx=ctx, lib=lib)
    torch.cuda.synchronize()
    assert rc == _lib.CUDA_ERROR_INVALID_VALUE, f"{field}={value!r}: got {rc}"
    assert torch.isnan(t[5]).all() and torch.isnan(t[6]).all(), "rejected call wrote output"
    assert qkv_gemm.raw_call(ok, ws.data_ptr(), nbytes, lib=lib) == 0
    torch.cuda.synchronize()
    assert not torch.isnan(t[5]).any()
