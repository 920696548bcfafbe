#!/usr/bin/env bash
# Int8MatMul on the H100 in one device call: build the kernels library, the int8 GPU tests,
# compute-sanitizer memcheck on small cases of every path, SASS summary, benchmark.
# Logs go to $OUT/logs (packed into $OUT/int8_logs.tgz). Prints a short summary last.
#   DSATTN_INT8_STANDALONE=1: build only int8_matmul.cu into the default library path with nvcc
#     (when other kernels do not build yet); otherwise the CMake target dsattn_kernels.
#   DSATTN_INT8_VARIANTS="9": also build -DDSATTN_INT8_TILED_CFG=N variants of the tiled path
#     (9 = the mma.sync kernel on sm_90 too; earlier tile experiments in README), run the
#     int8 tests on each and time them against cuBLAS at M 256 / 2048.
#   DSATTN_SKIP_BENCH=1, DSATTN_BENCH_ARGS="--quick".
set -uo pipefail
out="${OUT:-gpu-out}"; logs="$out/logs"; mkdir -p "$logs"
summary=()
step() { local name="$1"; shift; local t0=$SECONDS
  if "$@" >"$logs/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$logs/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi; }
export PATH="/usr/local/cuda/bin:/usr/local/cuda-13.0/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$logs/card.txt"
step install python3 -m pip install -q --no-deps --no-build-isolation -e .
lib=build/plugins/kernels/libdsattn_kernels.so
nvcc_lib() { # nvcc_lib OUT.so [extra flags]: int8_matmul.cu alone as a shared library
  local o="$1"; shift; mkdir -p "$(dirname "$o")" && nvcc -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr \
    -gencode=arch=compute_90a,code=sm_90a -Xptxas=-v -shared -Xcompiler -fPIC -cudart shared "$@" \
    -Iplugins/kernels plugins/kernels/int8_matmul.cu -o "$o"; }
build_cmake() { cmake -S plugins -B build/plugins -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  && cmake --build build/plugins -j16 --target dsattn_kernels; }
for v in ${DSATTN_INT8_VARIANTS:-}; do  # variant builds run in the background meanwhile
  (nvcc_lib build/int8_v$v/libdsattn_kernels.so -DDSATTN_INT8_TILED_CFG=$v >"$logs/build_v$v.log" 2>&1) &
done
if [ "${DSATTN_INT8_STANDALONE:-0}" = 1 ]; then step build nvcc_lib "$lib"
else step build build_cmake; [ -f "$lib" ] || step build_standalone nvcc_lib "$lib"; fi
wait
sass_summary() { cuobjdump -sass "$lib" > /tmp/int8_all.sass && python3 - /tmp/int8_all.sass <<'PY'
import re, sys, collections
fn, counts = None, collections.defaultdict(collections.Counter)
for line in open(sys.argv[1]):
    m = re.search(r"Function : (\S+)", line)
    if m: fn = m.group(1); continue
    if fn and "int8" in fn:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)(\.[A-Z0-9_.]+)?", line)
        if m and m.group(1) in ("HMMA", "HGMMA", "LDG", "LDGSTS", "LDS", "STS", "STL", "LDL", "PRMT", "STG", "HADD2",
                                "FADD", "LOP3", "BAR", "WARPGROUP"):
            counts[fn][m.group(1) + (m.group(2) or "")] += 1
for fn, c in counts.items():
    print(fn[:110]); print("   ", dict(sorted(c.items())))
PY
}
step sass sass_summary
step pytest python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_int8.py
# The same tests on every variant (copied over the default library path, restored afterwards).
if [ -n "${DSATTN_INT8_VARIANTS:-}" ]; then
  cp "$lib" /tmp/int8_default.so
  for v in $DSATTN_INT8_VARIANTS; do
    cp build/int8_v$v/libdsattn_kernels.so "$lib" && step pytest_v$v python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_int8.py
  done
  cp /tmp/int8_default.so "$lib"
fi
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/int8_sanitize.py
if [ -n "${DSATTN_INT8_VARIANTS:-}" ]; then
  cat > /tmp/int8_variants.py <<'PY'
import sys, torch
from dsattn.tools import bench_int8 as b
from dsattn.tools.kernels import int8, _lib
libs = {"default": None, **{f"cfg{v}": f"build/int8_v{v}/libdsattn_kernels.so" for v in sys.argv[1:]}}
for dt in (torch.float16, torch.bfloat16):
    for M, group in ((256, 0), (512, 0), (2048, 0), (2048, 128)):
        sets = b._sets(M, 4096, 12288, group, dt, 3)
        res = {}
        for name, path in libs.items():
            l = _lib.load(path)
            try:
                res[name] = b._time_us([lambda s=s: int8.int8_matmul(s["x"], s["q"], s["scale"], None, group_size=group,
                                         lib=l, out=s["y"], path=int8.PATH_TILED) for s in sets], inner=2, reps=5)
            except Exception as e:
                res[name] = float("nan"); print(name, "failed", e)
        cub = b._time_us([lambda s=s: torch.matmul(s["x"], s["w"].t(), out=s["y"]) for s in sets], inner=2, reps=5)
        print(str(dt)[6:], f"M={M} g={group}", "cuBLAS %.1f" % cub, " ".join(f"{k} {v:.1f}" for k, v in res.items()), flush=True)
        del sets; torch.cuda.empty_cache()
PY
  step variants python3 /tmp/int8_variants.py $DSATTN_INT8_VARIANTS
fi
if [ "${DSATTN_SKIP_BENCH:-0}" != 1 ]; then
  step bench python3 -m dsattn.tools.bench_int8 ${DSATTN_BENCH_ARGS:-} --json "$logs/bench_int8.json"
fi
tar -czf "$out/int8_logs.tgz" -C "$out" logs && rm -rf "$logs"
tar -xzf "$out/int8_logs.tgz" -C /tmp && tl=/tmp/logs
echo; echo "== summary =="; printf '%s\n' "${summary[@]}"
for f in "$tl"/pytest*.log; do echo "$(basename "$f"): $(grep -E "passed|failed|error" "$f" | tail -1)"; done
grep -E "ERROR SUMMARY|worst" "$tl/sanitizer.log" | tail -2
grep -E "^float|^bfloat|failed" "$tl/variants.log" 2>/dev/null
grep -E "^\| int8|^card" "$tl/bench.log" 2>/dev/null | cut -c1-170
