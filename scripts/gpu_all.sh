#!/usr/bin/env bash
# The whole GPU verification in one device call (H100): build kernels + plugins + harness, run the
# harness (ctest), every `gpu` pytest (kernels, plugins, ONNX Runtime CUDA), compute-sanitizer on a
# subset, then the benchmarks. Logs go to $OUT (or ./gpu-out). Prints a short summary last.
#   carry: .device/unpack.sh .device/headers.tgz .device/trt-include.tgz [.device/ort/...]
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
summary=()
step() { # step NAME CMD...: run, log to $out/NAME.log, record the result
  local name="$1"; shift
  local t0=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/card.txt"
if [ -f .device/unpack.sh ]; then bash .device/unpack.sh >"$out/unpack.log" 2>&1; eval "$(bash .device/unpack.sh | tail -1)"; fi
export PYTHONPATH="${PYTHONPATH:-}"
# pure-Python wheels the device image lacks (polygraphy), carried in .whl/
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
step install python3 -m pip install -q --no-deps --no-build-isolation -e .
trt="${TENSORRT_INCLUDE_DIR:-/opt/dsattn/trt/include}"
step cmake cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DTensorRT_INCLUDE_DIR="$trt"
step build cmake --build build/plugins -j16
step ctest ctest --test-dir build/plugins --output-on-failure
step pytest_gpu python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests
if [ "${DSATTN_SKIP_BENCH:-0}" != 1 ]; then
  step bench python3 -m dsattn.tools.cli bench kernels --out "$out/BENCHMARKS.md"
fi
echo; echo "== summary =="; printf '%s\n' "${summary[@]}"
tail -5 "$out/pytest_gpu.log" 2>/dev/null
