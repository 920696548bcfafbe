#!/usr/bin/env bash
# The whole GPU verification in one device call (H100): build kernels + plugins + harness, ctest,
# every `gpu` pytest (kernels, plugin harness, ONNX Runtime CUDA), compute-sanitizer memcheck on small
# cases of every kernel path (scripts/sanitize_*.py) and of the plugin harness, then
# `dsattn bench kernels` (BENCHMARKS.md).
#   carry: .device/unpack.sh .device/trt-include.tgz .device/ort-include .device/flashinfer-data.tgz .whl
#          [.device/deepspeed] [.device/ort/...]
# Usage: bash scripts/gpu_all.sh [native] [ort] [bench]
# $OUT gets: summary.txt, pytest_<part>.log, BENCHMARKS.md, logs.tgz (all logs).
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
logs=/tmp/dsattn-logs; rm -rf "$logs"; mkdir -p "$logs"
summary=()
step() { # step NAME TIMEOUT CMD...: run, log to $logs/NAME.log, record the result
  local name="$1" to="$2"; shift 2
  local t0=$SECONDS
  if timeout "$to" "$@" >"$logs/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$logs/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
# KEEP_BUILD=1: the build tree lives in /opt/dsattn/build (kept while the machine stays warm; the
# repository's ignored folders are not), so the next call of a chain rebuilds incrementally.
if [ "${KEEP_BUILD:-0}" = 1 ]; then mkdir -p /opt/dsattn/build && rm -rf build && ln -s /opt/dsattn/build build; fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$logs/card.txt"
if [ -f .device/unpack.sh ]; then bash .device/unpack.sh >"$logs/unpack.log" 2>&1; eval "$(bash .device/unpack.sh | tail -1)"; fi
export PYTHONPATH="${PYTHONPATH:-}"
# pure-Python wheels the device image lacks (polygraphy), carried in .whl/
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
# DeepSpeed's own inference ops for the bench's DeepSpeed section (scripts/install_deepspeed.sh).
if [ -d .device/deepspeed ]; then
  bash scripts/install_deepspeed.sh >"$logs/deepspeed_install.log" 2>&1 && eval "$(bash scripts/install_deepspeed.sh --env)"
fi
step install 120 python3 -m pip install -q --no-deps --no-build-isolation -e .
trt="${TENSORRT_INCLUDE_DIR:-/opt/dsattn/trt/include}"
# ONNX Runtime's C API headers (never committed) travel in .device/ort-include for libdsattn_ort.so.
ort_inc="${ONNXRUNTIME_INCLUDE_DIR:-$PWD/.device/ort-include}"
# FlashInfer / CUTLASS / CCCL headers of the sm_90a library paths (the machine has no network):
# .device/flashinfer-data.tgz, made by `tar -C .deps/flashinfer-python-0.7.4 -czf .device/flashinfer-data.tgz flashinfer/data`
# after a local configure filled the cache.
fi_root=/opt/dsattn/flashinfer
if [ -f .device/flashinfer-data.tgz ]; then mkdir -p "$fi_root" && tar -xzf .device/flashinfer-data.tgz -C "$fi_root"; fi
# sm_90a only: the card is an H100, and one architecture halves the build inside the call.
step cmake 60 cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSATTN_REQUIRE_CUBLASLT=ON \
  -DDSATTN_REQUIRE_SM90_LIBS=ON -DDSATTN_FLASHINFER_DATA="$fi_root/flashinfer/data" -DTensorRT_INCLUDE_DIR="$trt" -DONNXRUNTIME_INCLUDE_DIR="$ort_inc"
step build 240 cmake --build build/plugins -j16
# Parts (arguments; default all but kernels): kernels = the kernel tests and sanitizers only; native = ctest, the gpu tests that need no onnxruntime-gpu and the
# kernel sanitizers; ort = the gpu tests on ONNX Runtime CUDA (lowered and libdsattn_ort.so) and the
# README's main job on CUDA; bench = the kernel benchmarks. The onnxruntime-gpu wheel travels in parts
# over several calls, so a lease can run `native` while it is still arriving.
parts="${*:-native ort bench}"
has() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
gpu_pytest() { # gpu_pytest NAME TIMEOUT FILES...
  local name="$1" to="$2"; shift 2
  step "$name" "$to" python3 -m pytest -m gpu -q -rs -p no:cacheprovider --basetemp=/tmp/plugcases "$@"
  cp "$logs/$name.log" "$out/$name.log"
}
cs="compute-sanitizer --tool memcheck --error-exitcode 7"
if has kernels; then  # the kernel tests and sanitizers alone (a quicker call while kernels change)
  gpu_pytest pytest_kernels 400 tests/test_kernels_softmax_context.py tests/test_kernels_qkv_gemm.py \
    tests/test_kernels_int8_matmul.py tests/test_nan_contract_gpu.py
  step memcheck_softmax_context 120 $cs python3 scripts/sanitize_softmax_context.py
  step memcheck_qkv_gemm 90 $cs python3 scripts/sanitize_qkv_gemm.py
  step memcheck_int8_matmul 120 $cs python3 scripts/sanitize_int8_matmul.py
fi
if has native; then
  step ctest 60 ctest --test-dir build/plugins --output-on-failure
  rm -rf /tmp/plugcases
  gpu_pytest pytest_native 400 tests/test_kernels_softmax_context.py tests/test_kernels_qkv_gemm.py \
    tests/test_kernels_int8_matmul.py tests/test_nan_contract_gpu.py tests/test_plugins_harness.py \
    tests/test_engines.py tests/test_whole_model_gpu.py
  step memcheck_softmax_context 90 $cs python3 scripts/sanitize_softmax_context.py
  step memcheck_qkv_gemm 90 $cs python3 scripts/sanitize_qkv_gemm.py
  step memcheck_int8_matmul 90 $cs python3 scripts/sanitize_int8_matmul.py
  small=$(find /tmp/plugcases -name manifest.txt -printf '%h\n' 2>/dev/null | sort \
    | grep -E 'attn_(bloom|decode_fp32|overflow)|qkv_bfloat16_B1S1|int8_float16_2x3' | tr '\n' ' ')
  [ -n "$small" ] && step memcheck_plugins 120 $cs --leak-check full \
    build/plugins/dsattn_plugin_harness build/plugins/libdsattn_plugins.so $small
fi
if has ort; then
  gpu_pytest pytest_ort 420 tests/test_ort_gpu.py tests/test_ort_dsattn_gpu.py tests/test_nan_contract.py \
    tests/test_whole_model_gpu.py
  step memcheck_ort_dsattn 120 $cs python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_ort_dsattn_gpu.py \
    -k "(test_softmax_context and float16 and (decode_ragged_gqa or prefill_leftpad)) or (test_in_place_under_io_binding and float16)"
  step export_cuda 120 python3 -m dsattn.tools.cli export --providers cpu,cuda --out /tmp/export-main
fi
if has bench; then
  # BENCH_ARGS (e.g. "--only softmax_context --quick") narrows the run.
  step bench 500 python3 -m dsattn.tools.cli bench kernels --out "$out/BENCHMARKS.md" ${BENCH_ARGS:-}
  tail -60 "$logs/bench.log"
fi
echo; echo "== summary =="; printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
for f in "$logs"/pytest_*.log; do [ -f "$f" ] && tail -1 "$f" | sed "s|^|$(basename "$f" .log): |"; done | tee -a "$out/summary.txt"
grep -h "ERROR SUMMARY" "$logs"/memcheck_*.log 2>/dev/null | tee -a "$out/summary.txt"
tar -C "$logs" -czf "$out/logs.tgz" .
