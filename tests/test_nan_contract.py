"""The numeric contract of SoftmaxContext (OPS.md "Non-finite values") on the reference op, the ONNX
reference evaluator on the custom-op graph and the lowered graph on ONNX Runtime CPU (and CUDA, as
`gpu` tests: the same lowered graph on the CUDA execution provider; needs onnxruntime-gpu). Masked keys (before start_pos, past seq_lens + S, causally or window-masked, also when
only some rows of the call mask them) are excluded: NaN / inf in their cache rows never reaches the
context. NaN in attended data (q, a visible key, an element of a visible value) propagates to
exactly the outputs it feeds; a row with no visible key is zeros whatever q holds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto as TP

from dsattn.export import ops
from dsattn.tools.validate import make_session, run_session

from ort_cases import (GEMM_CASES, MATMUL_CASES, SCCase, as_t, assert_matches_reference, check_lowered, gemm_model,
                       matmul_model, reference, sc_model, x_feed)

ELEMS = {"float32": TP.FLOAT, "float16": TP.FLOAT16}
PROVIDERS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _case(**attrs) -> SCCase:
    # 2 rows; row 0 continues a cache of 6 tokens with left padding 2, row 1 is a fresh prompt.
    return SCCase("nan", H=4, Hkv=2, D=8, Tmax=14, S=5, seq_lens=[6, 0], start_pos=[2, 1], attrs=attrs)


def _feeds(c: SCCase, rng) -> dict[str, np.ndarray]:
    H, Hkv, D = c.H, c.Hkv, c.D
    return {"qkv": rng.standard_normal((c.B, c.S, (H + 2 * Hkv) * D)).astype(np.float32),
            "past_key": rng.standard_normal((c.B, Hkv, c.Tmax, D)).astype(np.float32),
            "past_value": rng.standard_normal((c.B, Hkv, c.Tmax, D)).astype(np.float32),
            "seq_lens": np.asarray(c.seq_lens, np.int32), "start_pos": np.asarray(c.start_pos, np.int32)}


def _visible(c: SCCase) -> np.ndarray:
    """[B, S, Tmax]: key j visible from new token i of row b (OPS.md masks)."""
    causal, window = c.attrs.get("causal", 1), c.attrs.get("local_window", 0)
    vis = np.zeros((c.B, c.S, c.Tmax), bool)
    for b, (L0, s0) in enumerate(zip(c.seq_lens, c.start_pos)):
        for i in range(c.S):
            p = L0 + i
            for j in range(c.Tmax):
                vis[b, i, j] = (s0 <= j < L0 + c.S and (not causal or j <= p)
                                and (not window or j > p - window))
    return vis


def _masked_rows(c: SCCase) -> list[tuple[int, int]]:
    """(b, j) cache rows that no new token of row b sees (and that this call does not write)."""
    vis = _visible(c)
    return [(b, j) for b in range(c.B) for j in range(c.Tmax)
            if not vis[b, :, j].any() and not c.seq_lens[b] <= j < c.seq_lens[b] + c.S]


def _skip_without_ep(provider: str) -> None:
    if provider == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider; install onnxruntime-gpu")


def _run_all(c: SCCase, feeds: dict[str, np.ndarray], elem: int, provider: str) -> dict[str, np.ndarray]:
    """context from the reference op (torch), the ONNX reference evaluator and the lowered graph on
    ONNX Runtime ``provider``; the first two must agree bit for bit (one implementation, two entry
    points)."""
    _skip_without_ep(provider)
    f = {k: (as_t(v, elem) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    model = sc_model(elem, c)
    t = {k: torch.from_numpy(np.asarray(v, np.float32) if v.dtype.kind == "f" else v) for k, v in f.items()}
    T = torch.float32 if elem == TP.FLOAT else torch.float16
    ctx, _, _ = ops.softmax_context(t["qkv"].to(T), t["past_key"].to(T), t["past_value"].to(T), t["seq_lens"],
                                    t["start_pos"], num_heads=c.H, num_kv_heads=c.Hkv, head_size=c.D, **c.attrs)
    ev = reference(model, f)["context"]
    op = ctx.float().numpy()
    assert np.array_equal(op, ev.astype(np.float32), equal_nan=True), "reference op != reference evaluator"
    ort = run_session(make_session(check_lowered(model), provider), f)["context"].astype(np.float32)
    return {"reference": op, f"ort_{provider}": ort}


def _close(got: np.ndarray, want: np.ndarray, elem: int, what: str) -> None:
    tol = 1e-5 if elem == TP.FLOAT else 2e-3
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions differ"
    assert np.array_equal(np.isfinite(got), np.isfinite(want)), f"{what}: non-finite positions differ"
    fin = np.isfinite(want)
    err = float(np.abs(got[fin] - want[fin]).max(initial=0.0))
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:g} on the finite values"


WINDOWED = {"causal": dict(), "window": dict(local_window=3), "noncausal_window": dict(causal=0, local_window=4),
            "alibi_rotary": dict(alibi_slopes=[0.5, -0.25, 0.125, 1.0], rotary_dim=4)}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(ELEMS))
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", list(WINDOWED))
def test_masked_cache_rows_never_reach_the_context(name, poison, dtype, provider, seed):
    """NaN / inf in every cache row that no token of the row sees (left padding, windowed out,
    past seq_lens + S): the context is finite and the same as with zeros there."""
    c, elem = _case(**WINDOWED[name]), ELEMS[dtype]
    rng = np.random.default_rng(seed)
    clean = _feeds(c, rng)
    poisoned = {k: v.copy() for k, v in clean.items()}
    rows = _masked_rows(c)
    assert {b for b, _ in rows} == {0, 1} and any(j < c.start_pos[b] for b, j in rows)
    for b, j in rows:
        clean["past_key"][b, :, j] = clean["past_value"][b, :, j] = 0.0
        poisoned["past_key"][b, :, j] = poisoned["past_value"][b, :, j] = poison
    want = _run_all(c, clean, elem, provider)
    got = _run_all(c, poisoned, elem, provider)
    for impl in got:
        assert np.isfinite(got[impl]).all(), f"{impl}: a masked cache row reached the context"
        _close(got[impl], want["reference"], elem, impl)
    # exclusion is exact: the reference gives the same bits with or without the poison
    assert np.array_equal(got["reference"], want["reference"])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(ELEMS))
@pytest.mark.parametrize("name", list(WINDOWED))
def test_partially_masked_value_reaches_only_the_rows_that_see_it(name, dtype, provider, seed):
    """NaN in element d of the value of a key that some tokens of the call see and others mask
    (causal: a new token; window: an old key at the window's edge): NaN exactly in element d of
    the rows that see it, in every head of its KV group; every other output unchanged."""
    c, elem = _case(**WINDOWED[name]), ELEMS[dtype]
    rng = np.random.default_rng(seed)
    clean = _feeds(c, rng)
    vis = _visible(c)
    H, Hkv, D, G = c.H, c.Hkv, c.D, c.H // c.Hkv
    cases = []
    for b in range(c.B):  # keys seen by some but not all of the row's tokens
        for j in range(c.Tmax):
            if vis[b, :, j].any() and not vis[b, :, j].all():
                cases.append((b, j))
    assert cases, "the case has no partially masked key"
    b, j = cases[rng.integers(len(cases))]
    hk, d = int(rng.integers(Hkv)), int(rng.integers(D))
    poisoned = {k: v.copy() for k, v in clean.items()}
    L0 = c.seq_lens[b]
    if j >= L0:  # a new token of this call: its value comes from qkv (blocked layout)
        clean["qkv"][b, j - L0, (H + Hkv + hk) * D + d] = 0.0
        poisoned["qkv"][b, j - L0, (H + Hkv + hk) * D + d] = np.nan
    else:
        clean["past_value"][b, hk, j, d] = 0.0
        poisoned["past_value"][b, hk, j, d] = np.nan
    want = _run_all(c, clean, elem, provider)
    got = _run_all(c, poisoned, elem, provider)
    expect_nan = np.zeros((c.B, c.S, H, D), bool)
    for h in range(hk * G, hk * G + G):
        expect_nan[b, vis[b, :, j], h, d] = True
    expect_nan = expect_nan.reshape(c.B, c.S, H * D)
    for impl, out in got.items():
        assert np.array_equal(np.isnan(out), expect_nan), f"{impl}: NaN positions"
        _close(np.where(expect_nan, 0.0, out), np.where(expect_nan, 0.0, want["reference"]), elem, impl)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(ELEMS))
def test_nan_in_q_or_a_visible_key_gives_nan_rows(dtype, provider, seed):
    """NaN in q of (token i, head h): that context row is NaN in full, never zeros. NaN in the key of
    a visible cache row: NaN rows for every token (and head of the KV group) that sees it."""
    c, elem = _case(local_window=4), ELEMS[dtype]
    rng = np.random.default_rng(seed)
    feeds = _feeds(c, rng)
    H, Hkv, D, G = c.H, c.Hkv, c.D, c.H // c.Hkv
    vis = _visible(c)
    feeds["qkv"][1, 3, 2 * D + 5] = np.nan  # q of row 1, token 3, head 2
    j = 3  # row 0: an old key seen by the first tokens only (window 4 from position 6)
    feeds["past_key"][0, 1, j, 0] = np.nan
    expect = np.zeros((c.B, c.S, H, D), bool)
    expect[1, 3, 2] = True
    for h in range(G, 2 * G):
        expect[0, vis[0, :, j], h] = True
    assert expect[0].any() and not expect[0].all()
    got = _run_all(c, feeds, elem, provider)
    for impl, out in got.items():
        assert np.array_equal(np.isnan(out), expect.reshape(c.B, c.S, H * D)), f"{impl}: NaN positions"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(ELEMS))
def test_inf_in_a_visible_value_is_not_finite_there(dtype, provider, seed):
    c, elem = _case(), ELEMS[dtype]
    rng = np.random.default_rng(seed)
    feeds = _feeds(c, rng)
    feeds["past_value"][0, 0, 4, 6] = np.inf  # row 0 (start 2, 6 cached): key 4 is seen by all tokens
    got = _run_all(c, feeds, elem, provider)
    for impl, out in got.items():
        bad = ~np.isfinite(out.reshape(c.B, c.S, c.H, c.D))
        expect = np.zeros_like(bad)
        expect[0, :, : c.H // c.Hkv, 6] = True
        assert np.array_equal(bad, expect), f"{impl}: non-finite positions"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(ELEMS))
def test_row_without_visible_key_is_zeros_even_with_nan_q(dtype, provider, seed):
    """start_pos = seq_lens + S: no key at all; NaN in q and in the cache cannot propagate."""
    c = SCCase("empty", H=2, Hkv=2, D=8, Tmax=8, S=2, seq_lens=[3, 1], start_pos=[5, 0])
    elem = ELEMS[dtype]
    feeds = _feeds(c, np.random.default_rng(seed))
    feeds["qkv"][0] = np.nan  # q, k and v of row 0's new tokens
    feeds["past_key"][0] = feeds["past_value"][0] = np.nan
    got = _run_all(c, feeds, elem, provider)
    for impl, out in got.items():
        assert np.array_equal(out[0], np.zeros_like(out[0])), f"{impl}: the row without keys is not zeros"
        assert np.isfinite(out[1]).all(), f"{impl}: row 1 is affected"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", GEMM_CASES + MATMUL_CASES, ids=lambda c: c.name)
def test_nan_input_of_the_gemms_propagates_alike(case, provider, seed):
    """QKVGemm / Int8MatMul: plain fp32 arithmetic, so NaN in one input element reaches the outputs
    it feeds (a normed row entirely); ONNX Runtime gives NaN at the reference's positions."""
    rng = np.random.default_rng(seed)
    _skip_without_ep(provider)
    if hasattr(case, "norm_type"):
        model, shape = gemm_model(TP.FLOAT, case, rng), (2, 3, case.hidden)
    else:
        model, shape = matmul_model(TP.FLOAT, case, rng), (*case.lead, case.K)
    feeds = x_feed(TP.FLOAT, shape, rng)
    feeds["x"].reshape(-1)[int(rng.integers(feeds["x"].size))] = np.nan
    ref = reference(model, feeds)
    assert all(np.isnan(v).any() for v in ref.values()), "the NaN did not reach every output"
    assert_matches_reference(model, feeds, provider)  # same NaN positions, finite values by the rule
