"""Int8MatMul CUDA kernels (libdsattn_kernels.so through tools/kernels/int8_matmul.py) against the fp32
reference dsattn.export.ops.int8_matmul, with the accuracy rule of docs/DESIGN.md.

Accuracy rule: max |ours - ref| <= max(2 * max |torch_T - ref|, floor), where ref is the fp32
reference on the same inputs, torch_T is PyTorch computing the same in precision T (weight
dequantized in fp32 and rounded to T, x @ w^T in T, + bias in T) and floor is 1e-3 (fp16) /
8e-3 (bf16). float32 T: fp64 reference, torch fp32 (no TF32) error, floor 1e-5. Weights cover the
whole int8 range (-128 included), scales are random per group, outputs are O(1). Outputs are
NaN-poisoned first; NaN never passes. Every kernel path is checked on its own (forced), plus the
automatic choice. On an H100 (compute capability 9.0) PATH_TILED is CUTLASS's mixed-input GEMM for
N % 8 == 0 (the library must be built with its sm_90a sources: scripts/gpu_all.sh requires them).
"""
from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def lib():
    from dsattn.tools.kernels import _lib

    return _lib.load()  # FileNotFoundError with the build command when it was not built


def _make(lead, K, N, group, dtype, with_bias, seed):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    groups = 1 if group == 0 else K // group
    x = torch.randn(*lead, K, generator=g, device="cuda").to(dtype)
    q = torch.randint(-128, 128, (N, K), generator=g, device="cuda", dtype=torch.int8)
    # |q| ~ 74 rms; scale so each output is O(1), varying per (row, group) by up to 4x.
    scale = (0.25 + torch.rand(N, groups, generator=g, device="cuda")) * (1.6 / (74.0 * K ** 0.5))
    b = torch.randn(N, generator=g, device="cuda").to(dtype) if with_bias else None
    return x, q, scale.float().contiguous(), b


def _dequant(q, scale, group):
    K = q.shape[1]
    gs = K if group == 0 else group
    return q.double() * scale.double().repeat_interleave(gs, dim=1)


def _check(out, x, q, scale, b, group):
    from dsattn.export import ops

    dtype = x.dtype
    assert out.dtype == dtype and out.shape == (*x.shape[:-1], q.shape[0])
    assert not torch.isnan(out).any(), "NaN in the output (unwritten elements keep the NaN poison)"
    if dtype == torch.float32:
        w64 = _dequant(q, scale, group)
        ref = x.double() @ w64.t() + (b.double() if b is not None else 0)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            torch_t = x @ w64.float().t() + (b if b is not None else 0)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        ref = ref.float()
    else:
        ref = ops.int8_matmul(x.float(), q, scale, b.float() if b is not None else None, group_size=group)
        w_t = _dequant(q, scale, group).float().to(dtype)
        torch_t = (x @ w_t.t() + (b if b is not None else 0)).to(dtype)
    err = (out.float() - ref.float()).abs().max().item()
    err_torch = (torch_t.float() - ref.float()).abs().max().item()
    tol = max(2 * err_torch, FLOOR[dtype])
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} (torch {dtype} error {err_torch:.3g})"


def _run(lib, x, q, scale, b, group, path):
    from dsattn.tools.kernels import int8_matmul

    out = torch.full((*x.shape[:-1], q.shape[0]), float("nan"), dtype=x.dtype, device="cuda")
    int8_matmul.int8_matmul(x, q, scale, b, group_size=group, lib=lib, out=out, path=path)
    torch.cuda.synchronize()
    return out


def _paths(dtype, group):
    from dsattn.tools.kernels import int8_matmul

    if dtype == torch.float32:
        return [int8_matmul.PATH_AUTO]
    paths = [int8_matmul.PATH_AUTO, int8_matmul.PATH_SKINNY]
    if group == 0 or group % 64 == 0:
        # the tiled path as chosen on this device, and its mma.sync kernel (the sm_80 path) forced
        paths += [int8_matmul.PATH_TILED, int8_matmul.PATH_TILED_MMA]
    return paths


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 3, 7, 16, 33, 97, 1025])
@pytest.mark.parametrize("group", [0, 64, 128])
def test_int8_matmul_paths(lib, seed, dtype, M, group):
    # K 1152 = 9 * 128 (not a multiple of the 128-wide tile's chunk count), N 999: odd, partial tiles.
    K, N = 1152, 999
    for i, path in enumerate(_paths(dtype, group)):
        x, q, scale, b = _make((M,), K, N, group, dtype, with_bias=(i % 2 == 0), seed=seed + i)
        _check(_run(lib, x, q, scale, b, group, path), x, q, scale, b, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [16, 32, 48, 80])
@pytest.mark.parametrize("M", [1, 12, 70])
def test_small_groups(lib, seed, dtype, group, M):
    # Groups that are not multiples of 64 use masked mma passes of the skinny kernel (any M);
    # K 1040 = 65 * 16 has a partial last 64-chunk.
    from dsattn.tools.kernels import int8_matmul

    K, N = (1040 if 1040 % group == 0 else 960), 517
    x, q, scale, b = _make((M,), K, N, group, dtype, True, seed)
    _check(_run(lib, x, q, scale, b, group, int8_matmul.PATH_AUTO), x, q, scale, b, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 16, 64, 300, 2048])
def test_bench_shape(lib, seed, dtype, M):
    # The benchmark shape (K 4096, N 12288) on every path, per channel and group 128.
    K, N = 4096, 12288
    for group in (0, 128):
        for path in _paths(dtype, group):
            x, q, scale, b = _make((M,), K, N, group, dtype, True, seed + path)
            _check(_run(lib, x, q, scale, b, group, path), x, q, scale, b, group)


def _is_sm90():
    return torch.cuda.get_device_capability() == (9, 0)


def _cutlass_k(group):
    # K not a multiple of the 128-wide tiles: a partial last 64-k tile per channel (1040 = 16.25 x 64),
    # an odd number of 64-k tiles with group 64 (1088 = 17 x 64), 11 groups of 128 (1408).
    return {0: 1040, 64: 1088, 128: 1408}[group]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [0, 64, 128])
@pytest.mark.parametrize("M", [1, 17, 33, 160, 257, 1001, 2048])
def test_cutlass_path(lib, seed, dtype, group, M):
    # The tiled path on sm_90 (CUTLASS) with N % 8 == 0 but not a multiple of the 128 tile (1000),
    # partial token tiles (odd M), forced and automatic, with and without bias. Row 5 has all-zero
    # scales (the normalised group scales must give 0, not NaN); with groups, row 7 has a 300x spread
    # between its first group and the others (rel ~1/300 in T).
    from dsattn.tools.kernels import int8_matmul

    K, N = _cutlass_k(group), 1000
    for i, path in enumerate([int8_matmul.PATH_TILED, int8_matmul.PATH_AUTO]):
        x, q, scale, b = _make((M,), K, N, group, dtype, with_bias=(i + M) % 2 == 0, seed=seed + i)
        scale[5] = 0
        if group:
            scale[7, 1:] /= 300.0
        out = _run(lib, x, q, scale, b, group, path)
        _check(out, x, q, scale, b, group)
        want = b[5].float() if b is not None else torch.zeros((), device="cuda")
        torch.testing.assert_close(out[:, 5].float(), want.expand(M), rtol=0, atol=0)
    if group and _is_sm90():
        # The build has the CUTLASS path (it alone needs a workspace at N 1000 for group calls).
        p = int8_matmul.Int8MatMulParams(M=M, N=N, K=K, group_size=group, dtype=1 if dtype == torch.float16 else 2)
        assert int8_matmul.workspace_size(p, lib=lib) >= 4 * N + 2 * N * (K // group), \
            "libdsattn_kernels.so was built without the sm_90a CUTLASS sources"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [0, 128])
def test_cutlass_m2048_model_shapes(lib, seed, dtype, group):
    # The benchmark's M 2048 cases: N 4096 (output projection) and 12288 (QKV), K 4096, with bias.
    from dsattn.tools.kernels import int8_matmul

    for N in (4096, 12288):
        x, q, scale, b = _make((2048,), 4096, N, group, dtype, True, seed + N)
        _check(_run(lib, x, q, scale, b, group, int8_matmul.PATH_AUTO), x, q, scale, b, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [0, 128])
@pytest.mark.parametrize("M", [8, 300])
def test_cuda_graph_capture(lib, seed, dtype, group, M):
    # Captured once (skinny at M 8, tiled / CUTLASS at M 300), replayed on new inputs written into
    # the captured buffers: no host sync, no allocation, no per-call host state in the kernels.
    from dsattn.tools.kernels import int8_matmul

    K, N = 1024, 512
    x, q, scale, b = _make((M,), K, N, group, dtype, True, seed)
    out = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    int8_matmul.int8_matmul(x, q, scale, b, group_size=group, lib=lib, out=out)  # warm-up outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        int8_matmul.int8_matmul(x, q, scale, b, group_size=group, lib=lib, out=out)
    for i in range(2):
        x2, q2, scale2, b2 = _make((M,), K, N, group, dtype, True, seed + 100 + i)
        x.copy_(x2)
        q.copy_(q2)
        scale.copy_(scale2)
        b.copy_(b2)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        _check(out, x, q, scale, b, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("M,N,K", [(1, 256, 4096), (5, 128, 8192), (40, 96, 2048), (16, 4096, 16384)])
def test_split_k(lib, seed, dtype, M, N, K):
    # Few output rows: the skinny path splits K across blocks through the workspace.
    from dsattn.tools.kernels import int8_matmul

    for group in (0, 128):
        x, q, scale, b = _make((M,), K, N, group, dtype, group == 0, seed)
        _check(_run(lib, x, q, scale, b, group, int8_matmul.PATH_SKINNY), x, q, scale, b, group)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_leading_dims_and_bias(lib, seed, dtype):
    for lead in [(2, 3), (3, 1, 33), (1, 257)]:
        for with_bias in (False, True):
            x, q, scale, b = _make(lead, 512, 384, 64, dtype, with_bias, seed)
            _check(_run(lib, x, q, scale, b, 64, 0), x, q, scale, b, 64)


@pytest.mark.parametrize("M", [1, 3, 97, 1025])
@pytest.mark.parametrize("group", [0, 16, 128])
def test_fp32(lib, seed, M, group):
    x, q, scale, b = _make((M,), 1152, 77, group, torch.float32, M % 2 == 1, seed)
    _check(_run(lib, x, q, scale, b, group, 0), x, q, scale, b, group)


def test_empty_m(lib):
    from dsattn.tools.kernels import int8_matmul

    x = torch.empty(0, 64, dtype=torch.float16, device="cuda")
    q = torch.ones(32, 64, dtype=torch.int8, device="cuda")
    s = torch.ones(32, 1, device="cuda")
    out = int8_matmul.int8_matmul(x, q, s, lib=lib)
    assert out.shape == (0, 32)
    for path in (int8_matmul.PATH_AUTO, int8_matmul.PATH_TILED):  # a shape the CUTLASS path takes
        x = torch.empty(3, 0, 256, dtype=torch.bfloat16, device="cuda")
        q = torch.ones(64, 256, dtype=torch.int8, device="cuda")
        out = int8_matmul.int8_matmul(x, q, torch.ones(64, 4, device="cuda"), group_size=64, lib=lib, path=path)
        assert out.shape == (3, 0, 64)


def test_python_validation(lib):
    from dsattn.tools.kernels import int8_matmul

    x = torch.randn(4, 96, device="cuda", dtype=torch.float16)
    q = torch.zeros(32, 96, dtype=torch.int8, device="cuda").random_(-128, 127)
    s = torch.rand(32, 1, device="cuda")
    with pytest.raises(ValueError, match="group_size=40"):
        int8_matmul.int8_matmul(x, q, torch.rand(32, 2, device="cuda"), group_size=40, lib=lib)
    with pytest.raises(ValueError, match="group_size=24"):  # divides 96, not a multiple of 16
        int8_matmul.int8_matmul(x, q, torch.rand(32, 4, device="cuda"), group_size=24, lib=lib)
    with pytest.raises(ValueError, match="K=88"):
        int8_matmul.int8_matmul(torch.randn(4, 88, device="cuda", dtype=torch.float16),
                         torch.zeros(32, 88, dtype=torch.int8, device="cuda"), s, lib=lib)
    with pytest.raises(ValueError, match="weight_scale must have shape"):
        int8_matmul.int8_matmul(x, q, torch.rand(32, 2, device="cuda"), lib=lib)
    with pytest.raises(TypeError, match="weight must be torch.int8"):
        int8_matmul.int8_matmul(x, q.half(), s, lib=lib)
    with pytest.raises(TypeError, match="bias must be torch.float16"):
        int8_matmul.int8_matmul(x, q, s, torch.zeros(32, device="cuda"), lib=lib)
    with pytest.raises(ValueError, match="x has K=96"):
        int8_matmul.int8_matmul(x, q[:, :64].contiguous(), s, lib=lib)
    with pytest.raises(ValueError, match="contiguous"):
        int8_matmul.int8_matmul(torch.randn(96, 4, device="cuda", dtype=torch.float16).t(), q, s, lib=lib)
    with pytest.raises(ValueError, match="16-byte aligned"):
        int8_matmul.int8_matmul(torch.randn(4 * 96 + 1, device="cuda", dtype=torch.float16)[1:].view(4, 96), q, s,
                         lib=lib)
    from dsattn.tools.kernels._lib import KernelError

    with pytest.raises(KernelError, match="path=2"):  # the tiled path takes groups multiple of 64 only
        int8_matmul.int8_matmul(x, q, torch.rand(32, 3, device="cuda"), group_size=32, lib=lib, path=int8_matmul.PATH_TILED)


def test_c_validation(lib):
    """The C entry point rejects bad params with cudaErrorInvalidValue (1) and launches nothing."""
    from dsattn.tools.kernels import int8_matmul

    x = torch.randn(8, 256, device="cuda", dtype=torch.float16)
    q = torch.zeros(64, 256, dtype=torch.int8, device="cuda").random_(-128, 127)
    s = torch.rand(64, 4, device="cuda")
    out = torch.full((8, 64), float("nan"), device="cuda", dtype=torch.float16)

    def params(**kw):
        d = dict(input=x.data_ptr(), weight=q.data_ptr(), weight_scale=s.data_ptr(), bias=None,
                 output=out.data_ptr(), M=8, N=64, K=256, group_size=64, dtype=1)
        d.update(kw)
        return int8_matmul.Int8MatMulParams(**d)

    ok = params()
    ws = int8_matmul.workspace_size(ok, lib=lib)
    buf = torch.empty(max(ws, 1), dtype=torch.uint8, device="cuda")
    assert int8_matmul.raw_call(ok, buf.data_ptr(), ws, lib=lib) == 0
    torch.cuda.synchronize()
    assert not torch.isnan(out).any()
    if ws > 0:  # the CUTLASS path's group scales (N % 8 == 0, group % 64 == 0): required on every path
        for path in (int8_matmul.PATH_AUTO, int8_matmul.PATH_SKINNY, int8_matmul.PATH_TILED):
            assert int8_matmul.raw_call(params(path=path), buf.data_ptr(), ws - 1, lib=lib) == 1
            assert int8_matmul.raw_call(params(path=path), 0, 0, lib=lib) == 1
        # any alignment of the workspace pointer is accepted
        buf3 = torch.empty(ws + 1, dtype=torch.uint8, device="cuda")
        out.fill_(float("nan"))
        assert int8_matmul.raw_call(params(path=int8_matmul.PATH_TILED), buf3.data_ptr() + 1, ws, lib=lib) == 0
        torch.cuda.synchronize()
        assert not torch.isnan(out).any()
    bad = [
        params(K=250), params(K=0), params(N=0), params(M=-1), params(group_size=-64), params(group_size=48),
        params(group_size=40), params(dtype=7), params(input=None), params(weight=None),
        params(weight_scale=None), params(output=None), params(input=x.data_ptr() + 2),
        params(weight=q.data_ptr() + 8), params(output=out.data_ptr() + 2), params(weight_scale=s.data_ptr() + 1),
        params(N=1 << 40),
    ]
    for p in bad:
        assert int8_matmul.raw_call(p, buf.data_ptr(), ws, lib=lib) == 1, (p.M, p.N, p.K, p.group_size, p.dtype)
    # Path / dtype mismatches and bad path numbers.
    assert int8_matmul.raw_call(params(path=int8_matmul.PATH_FP32), buf.data_ptr(), ws, lib=lib) == 1
    for tiled in (int8_matmul.PATH_TILED, int8_matmul.PATH_TILED_MMA):
        assert int8_matmul.raw_call(params(group_size=32, path=tiled), buf.data_ptr(), ws, lib=lib) == 1
    assert int8_matmul.raw_call(params(path=9), buf.data_ptr(), ws, lib=lib) == 1
    assert int8_matmul.raw_call(params(path=-1), buf.data_ptr(), ws, lib=lib) == 1
    # A call that needs a workspace fails without one (N 64, K 4096: split-K).
    x2 = torch.randn(2, 4096, device="cuda", dtype=torch.float16)
    q2 = torch.zeros(64, 4096, dtype=torch.int8, device="cuda").random_(-128, 127)
    s2 = torch.rand(64, 1, device="cuda")
    small = params(input=x2.data_ptr(), weight=q2.data_ptr(), weight_scale=s2.data_ptr(), M=2, K=4096,
                   group_size=0)
    need = int8_matmul.workspace_size(small, lib=lib)
    assert need > 0
    buf2 = torch.empty(need, dtype=torch.uint8, device="cuda")
    assert int8_matmul.raw_call(small, 0, 0, lib=lib) == 1
    assert int8_matmul.raw_call(small, buf2.data_ptr(), need - 1, lib=lib) == 1
    assert int8_matmul.raw_call(small, buf2.data_ptr(), need, lib=lib) == 0
    # M == 0 is a successful no-op, even without pointers.
    assert int8_matmul.raw_call(params(M=0, input=None, output=None), 0, 0, lib=lib) == 0
    torch.cuda.synchronize()


def test_workspace_bound_is_monotone(lib):
    """workspace_size(M) bounds the need of every M' <= M (the plugin sizes it for its max M)."""
    from dsattn.tools.kernels import int8_matmul

    for N, K, group in [(64, 256, 0), (4096, 4096, 0), (300, 8192, 0), (4096, 4096, 128), (64, 256, 64)]:
        prev = 0
        for M in range(1, 200):
            p = int8_matmul.Int8MatMulParams(M=M, N=N, K=K, group_size=group, dtype=1)
            w = int8_matmul.workspace_size(p, lib=lib)
            assert w >= prev, (N, K, M, w, prev)
            prev = w
