"""DeepSpeed-Inference's own CUDA ops as a baseline of `dsattn bench kernels` (run after the op sections).

When ``deepspeed`` is importable, its transformer-inference op builder (``InferenceBuilder``, the
extension behind DeepSpeed's softmax_context, qkv_gemm and int8 ops) is JIT-built with this
machine's nvcc for this GPU's architecture, in a child process so that the whole compiler log can
be kept and a build that hangs can be stopped; the built extension is then loaded here and its ops
run on the same shapes as our rows, in this process:

  * softmax_context decode, past 2048, B = 1 / 8 (rotate_half rotary, KV append into its
    workspace cache, cuBLAS scores, softmax, cuBLAS context);
  * softmax_context prefill, S = 2048 causal, B = 1 / 8 (the same, whole op);
  * qkv_gemm: LayerNorm + GEMM + bias, K 4096, N 12288, M = 1 / 4 / 16 / 64 / 2048;
  * int8: DeepSpeed's int8 weight path (``vector_matmul_fp16`` with ``q_int8``: dequantize the
    whole weight into a temporary fp16 copy, then cuBLAS), M = 1 / 16 / 2048, per output channel.
    DeepSpeed runs int8 weights with fp16 activations only (its op wrappers bind int8 to the fp16
    ops), so these rows are fp16. Group 128 along K has no DeepSpeed row: its dequantize kernel
    gives one scale to each group of whole rows (the group count must divide N), so scales that
    change along K cannot be expressed (INT8_GROUP_REASON).

Each row compares both sides by per-kernel device time from the CUDA profiler (the sum over every
kernel the call launches), so neither side's host work counts. When deepspeed is missing, the build
fails or a call raises, the row says why (the first compiler error line of the build log, or the
exception) and the benchmark goes on; the emulated DeepSpeed baseline of the int8_matmul section
(dequantize + cuBLAS in PyTorch) stays either way.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from . import bench_harness as h

H, D = 32, 128
HIDDEN = H * D
PAST = 2048
PREFILL_S = 2048
QKV_K, QKV_N = 4096, 12288
QKV_M = (1, 4, 16, 64, 2048)
INT8_M = (1, 16, 2048)
INT8_GROUP_REASON = ("not expressible: DeepSpeed's quantized_gemm takes one scale per group of whole "
                     "output rows (launch_dequantize: groups must divide N), not groups of 128 along K")
# A cold build of the ten transformer-inference sources takes minutes with 16 compile jobs; the
# limit only stops a hung compiler, so it sits near the device's per-command limit.
BUILD_TIMEOUT_S = 540
BUILD_SNIPPET = ("from deepspeed.ops.op_builder import InferenceBuilder\n"
                 "InferenceBuilder().load(verbose=True)\n")
NAME = "DeepSpeed"

# Compiler / linker diagnostics, in the forms nvcc, gcc, ld and ninja print them.
_COMPILER_ERROR = re.compile(r"(\berror\b\s*:|\bfatal error\b|undefined reference|undefined symbol|"
                             r"\berror\b\s+[A-Z]+\d+\s*:)")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)\b")


def first_error_line(log: str) -> str:
    """The line that says why a JIT build failed: the first compiler or linker error of the log;
    else ninja's first FAILED step; else the last exception line (the Python side of the failure);
    else the last non-empty line."""
    lines = [ln.strip() for ln in log.splitlines()]
    for ln in lines:
        if _COMPILER_ERROR.search(ln):
            return ln[:400]
    for ln in lines:
        if ln.startswith("FAILED:"):
            return ln[:400]
    for ln in reversed(lines):
        if _EXCEPTION.match(ln):
            return ln[:400]
    rest = [ln for ln in lines if ln]
    return rest[-1][:400] if rest else "(empty build log)"


def extensions_dir() -> Path:
    """Where torch.utils.cpp_extension keeps the build (TORCH_EXTENSIONS_DIR when set): a second
    run on the same machine loads the finished build instead of compiling again."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dsattn" / "deepspeed_extensions"


def build_env(arch: str, ext_dir: Path) -> dict:
    """Environment of the JIT build: the GPU's architecture only (DeepSpeed's default list has no
    entry for CUDA 13), the extension folder, one compile job per core, and the CUDA accelerator
    named (DeepSpeed picks its op builders by accelerator; no guessing in a child process)."""
    env = dict(os.environ)
    env.update(TORCH_CUDA_ARCH_LIST=arch, TORCH_EXTENSIONS_DIR=str(ext_dir), MAX_JOBS=str(os.cpu_count() or 4),
               DS_ACCELERATOR="cuda")
    return env


class Loaded:
    """The built extension (``module``) or why there is none (``reason``), plus what was built."""

    def __init__(self, module=None, reason=None, version=None, log_path=None, seconds=None):
        self.module, self.reason, self.version = module, reason, version
        self.log_path, self.seconds = log_path, seconds


def load(timeout_s: int = BUILD_TIMEOUT_S) -> Loaded:
    """Import deepspeed, JIT-build its InferenceBuilder in a child process, load it here."""
    import time

    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda")  # this benchmark runs on CUDA only
    try:
        import deepspeed
    except Exception as e:  # noqa: BLE001 - any import failure is the row's reason
        return Loaded(reason=f"deepspeed not importable: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    version = getattr(deepspeed, "__version__", "?")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}.{minor}"
    ext_dir = extensions_dir()
    ext_dir.mkdir(parents=True, exist_ok=True)
    log_path = ext_dir / "build.log"
    env = build_env(arch, ext_dir)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", BUILD_SNIPPET], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        log, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        log_path.write_text(out)
        return Loaded(reason=f"JIT build of InferenceBuilder (deepspeed {version}, TORCH_CUDA_ARCH_LIST={arch}) "
                             f"did not finish in {timeout_s} s", version=version, log_path=log_path)
    seconds = time.monotonic() - t0
    log_path.write_text(log)
    print(f"  deepspeed {version} InferenceBuilder JIT build: rc {rc}, {seconds:.0f} s, log {log_path}", flush=True)
    if rc != 0:
        return Loaded(reason=f"JIT build of InferenceBuilder failed (deepspeed {version}, nvcc of CUDA "
                             f"{torch.version.cuda}, torch {torch.__version__}, TORCH_CUDA_ARCH_LIST={arch}): "
                             f"{first_error_line(log)}", version=version, log_path=log_path, seconds=seconds)
    saved = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR", "MAX_JOBS")}
    try:  # the same flags as the child's build, so the loader finds it up to date
        os.environ.update({k: env[k] for k in saved})
        from deepspeed.ops.op_builder import InferenceBuilder

        module = InferenceBuilder().load(verbose=False)
    except Exception as e:  # noqa: BLE001
        return Loaded(reason=f"loading the built InferenceBuilder failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}", version=version, log_path=log_path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Loaded(module=module, version=version, log_path=log_path, seconds=seconds)


def _op(module, name: str, dname: str):
    """The binding ``<name>_<dtype>`` (bf16 ones exist only when the build enabled BF16_AVAILABLE)."""
    fn = getattr(module, f"{name}_{dname}", None)
    if fn is None:
        raise RuntimeError(f"the built extension has no {name}_{dname}")
    return fn


def _allocate(module, dname, batch, layers, max_tokens):
    """DeepSpeed's one workspace (activations, attention scores, the KV cache of ``layers``
    layers); every softmax_context / qkv_gemm call works inside it."""
    import torch

    torch.cuda.empty_cache()  # the workspace is cudaMalloc'ed beside PyTorch's cache
    _op(module, "allocate_workspace", dname)(HIDDEN, H, max_tokens, batch, layers, 1, False, 0,
                                            max_tokens, max_tokens)


def _row(case, ours_k, ds_k, note=""):
    ours = h.kernels_us(ours_k) if ours_k else None
    ds = h.kernels_us(ds_k) if ds_k else None
    top = sorted((ds_k or {}).items(), key=lambda kv: -kv[1])[:4]  # where DeepSpeed's time goes
    split = ", ".join(f"{h.short_kernel_name(k)} {v:.1f}" for k, v in top)
    return {"case": case, "ours_us": ours, "baselines": {f"{NAME} (built here)": ds},
            "note": "profiler kernel time, both sides" + (f"; {note}" if note else "")
                    + (f"; {NAME} kernels (us): {split}" if split else "")}


def _failed(case, e):
    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
    print(f"    ({case}: {NAME} failed: {msg})", flush=True)
    return {"case": case, "ours_us": None, "baselines": {f"{NAME} (built here)": None},
            "note": f"{NAME} call failed: {msg}"}


_EMPTY = {}


def _softmax_args(qkv, layer_id, num_layers):
    """ds_softmax_context's arguments (pt_binding.cpp): no mask and no alibi (1-element tensors),
    rotate_half rotary over the whole head, causal, scale 1/sqrt(D) (it squares norm_factor),
    RoPE theta 10000."""
    import torch

    if qkv.dtype not in _EMPTY:  # made once: no allocation inside the profiled calls
        _EMPTY[qkv.dtype] = torch.empty(1, device="cuda", dtype=qkv.dtype)
    empty = _EMPTY[qkv.dtype]
    return (qkv, empty, D, True, False, H, -1, D ** -0.25, True, False, 1, True, layer_id, num_layers,
            empty, 10000.0, qkv.shape[1] > 1, None, None)


def softmax_context_rows(module, lib, dt, dname, quick):
    import torch

    from .kernels import softmax_context

    fn = _op(module, "softmax_context", dname)
    iters = 3 if quick else 10
    rows = []
    for B in (1, 8):  # decode, past 2048
        case = f"{NAME} softmax_context decode B={B} past={PAST} H={H} D={D} rope {dname}"
        try:
            nset = h.rotation_count(2 * B * H * (PAST + 1) * D * 2)
            # ours: the same rotated caches as the decode rows of the softmax_context section
            sets = []
            for _ in range(nset):
                sets.append((torch.randn(B, 1, 3 * HIDDEN, device="cuda", dtype=dt),
                             torch.randn(B, H, PAST + 1, D, device="cuda", dtype=dt),
                             torch.randn(B, H, PAST + 1, D, device="cuda", dtype=dt),
                             torch.full((B,), PAST, dtype=torch.int32, device="cuda"),
                             torch.empty(B, 1, HIDDEN, device="cuda", dtype=dt),
                             torch.empty(1, dtype=torch.int32, device="cuda"),
                             torch.empty(1 << 24, dtype=torch.uint8, device="cuda")))

            def ours():
                for qkv, pk, pv, lens, out, st, ws in sets:
                    softmax_context.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, rotary_dim=D,
                                                    lib=lib, out=out, status=st, workspace=ws, check=False)

            ours_k = h.kernel_profile_us(ours, calls=nset, iters=iters)
            del sets
            # DeepSpeed: one cache layer per rotated set. A prompt of 2048 tokens per layer sets its
            # token counter to 2048; the last layer's call advances it to 2049, so each decode call
            # appends at 2048 and attends over 2049 keys, as ours. Decode calls then pass one layer
            # more than exist, so the counter stays put between timed calls.
            _allocate(module, dname, B, nset, PAST + 1)
            prompt = torch.randn(B, PAST, 3 * HIDDEN, device="cuda", dtype=dt)
            for layer in range(nset):
                fn(*_softmax_args(prompt, layer, nset))
            del prompt
            steps = [torch.randn(B, 1, 3 * HIDDEN, device="cuda", dtype=dt) for _ in range(nset)]

            def ds():
                for layer, q in enumerate(steps):
                    fn(*_softmax_args(q, layer, nset + 1))

            ds_k = h.kernel_profile_us(ds, calls=nset, iters=iters)
            rows.append(_row(case, ours_k, ds_k, "ours and DeepSpeed both append the new token"))
            del steps
        except Exception as e:  # noqa: BLE001 - the row records it
            rows.append(_failed(case, e))
        torch.cuda.empty_cache()
    for B in (1, 8):  # prefill
        case = f"{NAME} softmax_context prefill whole op B={B} S={PREFILL_S} causal H={H} D={D} rope {dname}"
        try:
            qkv = torch.randn(B, PREFILL_S, 3 * HIDDEN, device="cuda", dtype=dt)
            pk = torch.empty(B, H, PREFILL_S, D, device="cuda", dtype=dt)
            pv = torch.empty_like(pk)
            lens = torch.zeros(B, dtype=torch.int32, device="cuda")
            out = torch.empty(B, PREFILL_S, HIDDEN, device="cuda", dtype=dt)
            st = torch.empty(1, dtype=torch.int32, device="cuda")
            ws = torch.empty(B * H * PREFILL_S * D * 2, dtype=torch.uint8, device="cuda")
            ours_k = h.kernel_profile_us(
                lambda: softmax_context.softmax_context(qkv, pk, pv, lens, num_heads=H, head_size=D, rotary_dim=D,
                                                        lib=lib, out=out, status=st, workspace=ws, check=False),
                iters=iters)
            del pk, pv, out, ws
            _allocate(module, dname, B, 1, PREFILL_S)
            ds_k = h.kernel_profile_us(lambda: fn(*_softmax_args(qkv, 0, 2)), iters=iters)
            flops = 2.0 * B * H * PREFILL_S * PREFILL_S * D
            tf = ", ".join(f"{n} {flops / (h.kernels_us(k) * 1e-6) / 1e12:.0f} TF/s"
                           for n, k in (("ours", ours_k), (NAME, ds_k)) if k)
            rows.append(_row(case, ours_k, ds_k, f"rotary + cache write + attention on both sides; {tf}"))
            del qkv
        except Exception as e:  # noqa: BLE001
            rows.append(_failed(case, e))
        torch.cuda.empty_cache()
    return rows


def qkv_gemm_rows(module, lib, dt, dname, quick):
    import torch

    from .kernels import qkv_gemm

    fn = _op(module, "qkv_gemm", dname)
    iters = 3 if quick else 10
    rows = []
    ctx = qkv_gemm.QKVGemmContext(lib)
    _allocate(module, dname, 1, 1, max(QKV_M))
    try:
        for M in QKV_M:
            case = f"{NAME} qkv_gemm LN+GEMM+bias M={M} K={QKV_K} N={QKV_N} {dname}"
            try:
                nset = h.rotation_count(QKV_K * QKV_N * 2)
                sets = [dict(x=torch.randn(1, M, QKV_K, device="cuda", dtype=dt),
                             w=(torch.randn(QKV_K, QKV_N, device="cuda") / QKV_K ** 0.5).to(dt),
                             b=torch.randn(QKV_N, device="cuda", dtype=dt),
                             g=(1 + 0.1 * torch.randn(QKV_K, device="cuda")).to(dt),
                             be=(0.1 * torch.randn(QKV_K, device="cuda")).to(dt),
                             o=torch.empty(M, QKV_N, device="cuda", dtype=dt)) for _ in range(nset)]
                qs = torch.empty(1, device="cuda", dtype=dt)

                def ours():
                    for s in sets:
                        qkv_gemm.qkv_gemm(s["x"].view(M, QKV_K), s["w"], s["b"], s["g"], s["be"], norm_type=1,
                                          ctx=ctx, lib=lib, out=s["o"])

                def ds():
                    # transposed_mode False: W is [K, N], as ours; q_int8 False.
                    for s in sets:
                        fn(s["x"], s["w"], qs, s["b"], s["g"], s["be"], 1e-5, True, False, False)

                rows.append(_row(case, h.kernel_profile_us(ours, calls=nset, iters=iters),
                                 h.kernel_profile_us(ds, calls=nset, iters=iters)))
                del sets
            except Exception as e:  # noqa: BLE001
                rows.append(_failed(case, e))
            torch.cuda.empty_cache()
    finally:
        ctx.close()
    return rows


def int8_rows(module, lib, quick):
    """fp16 only: DeepSpeed's int8 weights always run with fp16 activations."""
    import torch

    from .kernels import int8_matmul

    fn = _op(module, "vector_matmul", "fp16")
    iters = 3 if quick else 10
    rows = []
    K, N = QKV_K, QKV_N
    _allocate(module, "fp16", 1, 1, max(INT8_M))
    for M in INT8_M:
        case = f"{NAME} int8 (dequantize + cuBLAS) M={M} K={K} N={N} group=0 fp16"
        try:
            nset = h.rotation_count(N * K, minimum=3)
            sets = []
            for _ in range(nset):
                q = torch.randint(-128, 128, (N, K), device="cuda", dtype=torch.int8)
                scale = (0.5 + torch.rand(N, 1, device="cuda")) / (74.0 * K ** 0.5)
                sets.append(dict(q=q, scale=scale, x=torch.randn(1, M, K, device="cuda").half(),
                                 y=torch.empty(M, N, device="cuda", dtype=torch.float16)))

            def ours():
                for s in sets:
                    int8_matmul.int8_matmul(s["x"].view(M, K), s["q"], s["scale"], None, group_size=0,
                                            lib=lib, out=s["y"])

            def ds():
                # (input, weight [N, K] int8, async_op, q_scale float32 [N], q_int8, transposed_mode)
                for s in sets:
                    fn(s["x"], s["q"], False, s["scale"].view(-1), True, False)

            rows.append(_row(case, h.kernel_profile_us(ours, calls=nset, iters=iters),
                             h.kernel_profile_us(ds, calls=nset, iters=iters),
                             "DeepSpeed dequantizes the whole weight into a temporary fp16 copy per call"))
            del sets
        except Exception as e:  # noqa: BLE001
            rows.append(_failed(case, e))
        torch.cuda.empty_cache()
    rows.append({"case": f"{NAME} int8 M={','.join(map(str, INT8_M))} K={K} N={N} group=128 fp16", "ours_us": None,
                 "baselines": {}, "note": INT8_GROUP_REASON})
    return rows


def rows(lib, *, dtypes, quick: bool, ceilings: dict) -> list[dict]:
    """DeepSpeed rows, or one row saying why there are none (not installed, build or load failed)."""
    del ceilings  # rows of two measured sides, no floor
    loaded = load()
    if loaded.module is None:
        print(f"  {NAME}: {loaded.reason}", flush=True)
        return [{"case": f"{NAME} transformer_inference ops (softmax_context, qkv_gemm, int8)", "ours_us": None,
                 "baselines": {}, "note": f"not run: {loaded.reason}"}]
    out = []
    try:
        for dt in dtypes:
            dname = h.dtype_name(dt)
            for part in (softmax_context_rows, qkv_gemm_rows):
                try:
                    out += part(loaded.module, lib, dt, dname, quick)
                except Exception as e:  # noqa: BLE001 - e.g. no bf16 binding in this build
                    out.append(_failed(f"{NAME} {part.__name__.removesuffix('_rows')} {dname}", e))
        if any(h.dtype_name(dt) == "fp16" for dt in dtypes):
            out += int8_rows(loaded.module, lib, quick)
    finally:
        release = getattr(loaded.module, "release_workspace", None)
        if release is not None:
            release()
    for r in out:
        print(f"  {r['case']}: ours {r['ours_us']} us | {r['baselines']} | {r['note']}", flush=True)
    return out
