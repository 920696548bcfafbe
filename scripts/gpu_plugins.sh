#!/usr/bin/env bash
# Plugin helper's device call: TensorRT headers -> build kernels + plugin library + host harness,
# ctest (harness selftest), the GPU harness test (tests/test_plugins_harness.py), then the harness
# on every generated case under compute-sanitizer (memcheck; racecheck and initcheck on a subset). Logs under $OUT.
#   carry: .device/trt-include.tgz .device/unpack.sh      usage on the device: bash scripts/gpu_plugins.sh
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
summary=()
step() { # step NAME TIMEOUT CMD...
  local name="$1" to="$2"; shift 2
  local t0=$SECONDS
  if timeout "$to" "$@" >"$out/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
step unpack 60 bash .device/unpack.sh
trt=/opt/dsattn/trt/include
[ -f "$trt/NvInfer.h" ] || summary+=("FAIL  no TensorRT headers in $trt (carry .device/trt-include.tgz)")
step install 120 python3 -m pip install -q --no-deps --no-build-isolation -e .
python3 -c "import dsattn.export.ops" || summary+=("FAIL  import dsattn after install")
step cmake 60 cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSATTN_REQUIRE_CUBLASLT=ON -DTensorRT_INCLUDE_DIR="$trt"
step build 300 cmake --build build/plugins -j16 --target dsattn_plugins dsattn_plugin_harness
nm -D --defined-only build/plugins/libdsattn_plugins.so > "$out/exports.txt" 2>&1
step ctest 60 ctest --test-dir build/plugins --output-on-failure
rm -rf /tmp/plugcases
step pytest 240 python3 -m pytest -q -s -rs -p no:cacheprovider --basetemp=/tmp/plugcases tests/test_plugins_harness.py
cases=$(find /tmp/plugcases -name manifest.txt -printf '%h\n' 2>/dev/null | sort)
echo "$cases" > "$out/cases.txt"
if [ -n "$cases" ]; then
  step memcheck 240 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 7 \
    build/plugins/dsattn_plugin_harness build/plugins/libdsattn_plugins.so $cases
  small=$(echo "$cases" | grep -E 'attn_(bloom|decode_fp32|overflow|prefill_mha)|qkv_bfloat16_B1S1|int8_float16_2x3|ds_int8_ln_fp16/' | tr '\n' ' ')
  step racecheck 200 compute-sanitizer --tool racecheck --error-exitcode 7 \
    build/plugins/dsattn_plugin_harness build/plugins/libdsattn_plugins.so $small
  # initcheck: the workspace is handed over uninitialized (as TensorRT's); no read may precede a write.
  step initcheck 200 compute-sanitizer --tool initcheck --error-exitcode 7 \
    build/plugins/dsattn_plugin_harness build/plugins/libdsattn_plugins.so $small
fi
echo "== exports =="; cat "$out/exports.txt"
echo "== ctest =="; tail -4 "$out/ctest.log"
echo "== pytest =="; grep -E "PASS|FAIL|max \|err\||passed|failed|error" "$out/pytest.log" | tail -60
echo "== sanitizer =="; grep -E "ERROR SUMMARY|LEAK SUMMARY|harness:" "$out/memcheck.log" "$out/racecheck.log" "$out/initcheck.log" 2>/dev/null
echo "== summary =="; printf '%s\n' "${summary[@]}"
