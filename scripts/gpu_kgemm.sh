#!/usr/bin/env bash
# K-gemm helper's device call: build the kernels library, QKVGemm GPU tests, design measurements,
# compute-sanitizer on small cases, then the QKVGemm benchmark rows. Logs under $OUT.
#   usage on the device: bash scripts/gpu_kgemm.sh [explore|noexplore]
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
summary=()
step() { # step NAME TIMEOUT CMD...
  local name="$1" to="$2"; shift 2
  local t0=$SECONDS
  if timeout "$to" "$@" >"$out/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader | tee "$out/card.txt"
step install 120 python3 -m pip install -q --no-deps --no-build-isolation -e .
python3 -c "import dsattn.tools.kernels.gemm" || summary+=("FAIL  import dsattn after install")
step cmake 60 cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DDSATTN_REQUIRE_CUBLASLT=ON -DDSATTN_BUILD_PLUGINS=OFF
step build 240 cmake --build build/plugins -j16 --target dsattn_kernels
if [ ! -f build/plugins/kernels/libdsattn_kernels.so ]; then
  # Others' work in progress may not compile: fall back to this op's file alone (int8 weak).
  mkdir -p build/plugins/kernels
  step build_qkv_only 180 nvcc -shared -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 \
    -gencode=arch=compute_90a,code=sm_90a -Iplugins/kernels plugins/kernels/qkv_gemm.cu \
    -lcublasLt -o build/plugins/kernels/libdsattn_kernels.so
fi
nm -D --defined-only build/plugins/kernels/libdsattn_kernels.so | grep dsattn_ > "$out/symbols.txt"
obj=$(find build/plugins -name 'qkv_gemm.cu.o' | head -1)
[ -n "$obj" ] && cuobjdump -sass "$obj" 2>/dev/null | grep -oE "UTMALDG|HMMA\.[0-9A-Z.]+|LDSM[.A-Z0-9]*|SYNCS[.A-Z]*|LDL|STL" | sort | uniq -c > "$out/sass_ops.txt"
step pytest_qkv 200 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_qkv_gemm.py
if [ "${1:-explore}" = explore ]; then
  step explore 200 python3 scripts/qkv_gemm_explore.py
fi
step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/qkv_gemm_sanitize.py
step racecheck 150 compute-sanitizer --tool racecheck --error-exitcode 7 python3 scripts/qkv_gemm_sanitize.py
step bench 200 python3 -m dsattn.tools.cli bench kernels --only qkv --out "$out/BENCHMARKS_qkv.md"
echo; echo "== pytest =="; tail -15 "$out/pytest_qkv.log"
echo "== explore =="; grep '^|' "$out/explore.log" 2>/dev/null | tail -20
echo "== sass =="; cat "$out/sass_ops.txt" 2>/dev/null | tr '\n' ' '; echo
echo "== sanitizer =="; tail -3 "$out/memcheck.log"; tail -3 "$out/racecheck.log"
echo "== bench =="; grep -E "^  qkv|ceilings|card" "$out/bench.log"
echo "== summary =="; printf '%s\n' "${summary[@]}"
