#!/usr/bin/env bash
# K-gemm helper's device call: build the kernels library, QKVGemm GPU tests, design measurements,
# compute-sanitizer (memcheck + racecheck) on small cases, then the QKVGemm benchmark rows.
# Logs under $OUT (at most 8 files come back: keep it that way).
#   usage on the device: bash scripts/gpu_kgemm.sh [explore|noexplore]
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
summary=()
step() { # step NAME LOG TIMEOUT CMD...
  local name="$1" log="$2" to="$3"; shift 3
  local t0=$SECONDS
  echo "=== $name: $*" >>"$log"
  if timeout "$to" "$@" >>"$log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$log" | tr '\n' ' ' | cut -c1-300)"); fi
}
info="$out/info.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader | tee "$info"
step install "$out/build.log" 120 python3 -m pip install -q --no-deps --no-build-isolation -e .
python3 -c "import dsattn.tools.kernels.gemm" || summary+=("FAIL  import dsattn after install")
step cmake "$out/build.log" 60 cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSATTN_REQUIRE_CUBLASLT=ON -DDSATTN_BUILD_PLUGINS=OFF
step build "$out/build.log" 240 cmake --build build/plugins -j16 --target dsattn_kernels
if [ ! -f build/plugins/kernels/libdsattn_kernels.so ]; then
  # Others' work in progress may not compile: fall back to this op's file alone (int8 weak).
  mkdir -p build/plugins/kernels
  step build_qkv_only "$out/build.log" 180 nvcc -shared -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr \
    -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iplugins/kernels plugins/kernels/qkv_gemm.cu \
    -lcublasLt -o build/plugins/kernels/libdsattn_kernels.so
fi
{ echo "== exported"; nm -D --defined-only build/plugins/kernels/libdsattn_kernels.so | grep dsattn_; } >>"$info"
obj=$(find build/plugins -name 'qkv_gemm.cu.o' | head -1)
if [ -n "$obj" ]; then
  { echo "== SASS ops of qkv_gemm.cu.o"; cuobjdump -sass "$obj" 2>/dev/null | grep -oE "UTMALDG|HMMA\\.[0-9A-Z.]+|LDSM[.A-Z0-9]*|SYNCS[.A-Z]*|LDL|STL" | sort | uniq -c; } >>"$info"
fi
step pytest_qkv "$out/pytest_qkv.log" 200 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_qkv_gemm.py
if [ "${1:-explore}" = explore ]; then
  step explore "$out/explore.log" 200 python3 scripts/qkv_gemm_explore.py
fi
step memcheck "$out/sanitize.log" 150 compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/qkv_gemm_sanitize.py
step racecheck "$out/sanitize.log" 150 compute-sanitizer --tool racecheck --error-exitcode 7 python3 scripts/qkv_gemm_sanitize.py
step bench "$out/bench.log" 240 python3 -m dsattn.tools.cli bench kernels --out "$out/BENCHMARKS.md"
echo; echo "== pytest =="; tail -6 "$out/pytest_qkv.log"
echo "== explore =="; grep '^|' "$out/explore.log" 2>/dev/null | tail -22
echo "== SASS =="; sed -n '/SASS ops/,$p' "$info" | tr '\n' ' '; echo
echo "== sanitizer =="; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Race reported|hazard|Error: |at 0x|in .*kernel" "$out/sanitize.log" | sort | uniq -c | sort -rn | head -12
echo "== bench =="; grep -E "^  qkv|ceilings|card|NOTE|rows" "$out/bench.log"
echo "== summary =="; printf '%s\n' "${summary[@]}"
