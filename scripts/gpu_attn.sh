#!/usr/bin/env bash
# K-attn helper's device call: build the kernels library, SoftmaxContext GPU tests, compute-sanitizer
# on small cases, then the attention benchmark rows. Logs under $OUT (or ./gpu-out).
#   usage on the device: bash scripts/gpu_attn.sh [explore|plain] [nobench]
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
summary=()
step() { # step NAME TIMEOUT CMD...
  local name="$1" to="$2"; shift 2
  local t0=$SECONDS
  if timeout "$to" "$@" >"$out/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/attn_install.log 2>&1 || summary+=("FAIL  pip install -e .")
python3 -c "import dsattn.tools.kernels.attention" || summary+=("FAIL  import dsattn after install")
cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSATTN_BUILD_PLUGINS=OFF -DDSATTN_PTXAS_VERBOSE=ON > /tmp/attn_cmake.log 2>&1 || summary+=("FAIL  cmake")
step build 150 cmake --build build/plugins -j16 --target dsattn_kernels
if [ ! -f build/plugins/kernels/libdsattn_kernels.so ]; then
  # Others' work in progress may not compile: fall back to this op's files alone.
  mkdir -p build/plugins/kernels
  step build_attn_only 180 nvcc -shared -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 \
    -gencode=arch=compute_90a,code=sm_90a -Iplugins/kernels plugins/kernels/softmax_context.cu \
    plugins/kernels/softmax_context_prefill.cu -o build/plugins/kernels/libdsattn_kernels.so
fi
# SASS facts of the hot kernels: 16-byte loads, no local memory, HMMA in the prefill kernel.
step sass 60 bash scripts/attn_sass.sh
if [ "${1:-}" = explore ]; then (python3 scripts/attn_explore.py build > "$out/explore_build.log" 2>&1 &) ; fi
step pytest_attn 130 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_attention.py
step memcheck 80 compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/attn_sanitize.py
if [ "${1:-}" != explore ]; then
  step racecheck 100 compute-sanitizer --tool racecheck --error-exitcode 7 python3 scripts/attn_sanitize.py
fi
if [ "${1:-bench}" != nobench ] && [ "${2:-}" != nobench ]; then
  step bench 130 python3 -m dsattn.tools.bench_attention
fi
if [ "${1:-}" = explore ]; then
  for i in $(seq 1 40); do [ "$(grep -c '^build ' "$out/explore_build.log" 2>/dev/null)" = 6 ] && break; sleep 3; done
  step explore 150 python3 scripts/attn_explore.py run
fi
echo; echo "== pytest =="; grep -E "passed|failed|Error|assert" "$out/pytest_attn.log" | tail -25
echo "== sass =="; cat "$out/sass.log"
echo "== sanitizer =="; tail -12 "$out/memcheck.log"; tail -3 "$out/racecheck.log" 2>/dev/null
echo "== bench =="; grep -E "^  softmax|^\| soft|device" "$out/bench.log" 2>/dev/null
echo "== explore =="; grep -E "^(default|ldg|ldlu|unroll8|2waves|prefill8w) |build " "$out/explore.log" "$out/explore_build.log" 2>/dev/null | cut -c1-260
echo "== summary =="; printf '%s\n' "${summary[@]}"
