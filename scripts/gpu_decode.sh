#!/usr/bin/env bash
# Decode device call (rounds 2-3): build the decode variants of scripts/decode_explore.py (each a small
# attention-only libdsattn_kernels.so: softmax_context.cu variant + the committed prefill), install
# the default one at the library's default path, then in parallel (correctness only): the full
# tests/test_kernels_attention.py, compute-sanitizer memcheck + racecheck (scripts/attn_sanitize.py)
# on the default, memcheck on $ALT (a candidate default) and the decode test cases per variant; then, alone on the GPU, decode B=1/8/64 timings per variant
# against the same-run cuDNN / flash SDPA. Logs under $OUT.
#   usage on the device: bash scripts/gpu_decode.sh [SRC] [TOTAL_S]   (SRC: softmax_context.cu to build
#   variants from; TOTAL_S: seconds the whole script may take, 290 by default)
# Keep the output short: the device tool returns about 8 files and the last 12,000 characters.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
logs=/tmp/decode_logs; rm -rf "$logs"; mkdir -p "$logs"  # archived into $out at the end
SRC="${1:-plugins/kernels/softmax_context.cu}"
DEFAULT=default
ALT=waves4
TOTAL="${2:-290}"
CT=$(( (TOTAL - 60) / 2 )); [ $CT -lt 60 ] && CT=60  # correctness phase, the rest for timings
t0=$SECONDS
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$logs/install.log" 2>&1 || echo "FAIL pip install"
NV="nvcc -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iplugins/kernels"
mkdir -p build/dec build/plugins/kernels
# the prefill kernels as committed (scripts/decode_r3_src/prefill_sm90.cu, untracked, when another
# engineer's working copy of the Hopper prefill may be mid-edit)
P90=plugins/kernels/softmax_context_prefill_sm90.cu
[ -f scripts/decode_r3_src/prefill_sm90.cu ] && P90=scripts/decode_r3_src/prefill_sm90.cu
$NV -c plugins/kernels/softmax_context_prefill.cu -o build/dec/prefill.o > "$logs/build_prefill.log" 2>&1 &
$NV -c "$P90" -o build/dec/prefill_sm90.o > "$logs/build_prefill_sm90.log" 2>&1 &
for v in $(python3 scripts/decode_explore.py names); do
  read -r src flags < <(python3 scripts/decode_explore.py flags "$v")
  [ "$src" = SRC ] && src="$SRC"
  mkdir -p "build/dec/$v"
  ( $NV -Xptxas -v -c $flags "$src" -o "build/dec/$v/sc.o" > "$logs/build_$v.log" 2>&1 ) &
done
wait
for v in $(python3 scripts/decode_explore.py names); do
  nvcc -shared "build/dec/$v/sc.o" build/dec/prefill.o build/dec/prefill_sm90.o -o "build/dec/$v/libdsattn_kernels.so" >> "$logs/build_$v.log" 2>&1 \
    || echo "FAIL build $v: $(tail -3 "$logs/build_$v.log")"
done
cp "build/dec/$DEFAULT/libdsattn_kernels.so" build/plugins/kernels/libdsattn_kernels.so
echo "built in $((SECONDS - t0)) s"
cuobjdump -sass "build/dec/$DEFAULT/libdsattn_kernels.so" > /tmp/dec.sass 2>/dev/null
echo "sass $DEFAULT: cluster barriers (UCGABAR) $(grep -c UCGABAR /tmp/dec.sass), local memory (LDL/STL) $(grep -cE 'LDL|STL' /tmp/dec.sass)"
grep -A1 "decode_kernel.*Dv128_Li1\|decode_kernelI6__halfLi128ELi1E" "$logs/build_$DEFAULT.log" | grep -E "Used" | head -2
# correctness in parallel (no timings here)
timeout $CT python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_attention.py > "$logs/pytest.log" 2>&1 &
p1=$!
timeout $CT compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/attn_sanitize.py > "$logs/memcheck.log" 2>&1 &
p2=$!
timeout $CT compute-sanitizer --tool racecheck --error-exitcode 7 python3 scripts/attn_sanitize.py > "$logs/racecheck.log" 2>&1 &
p3=$!
timeout $CT python3 scripts/decode_explore.py check > "$logs/check.log" 2>&1 &
p4=$!
timeout $CT compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/decode_explore.py sanitize $ALT > "$logs/memcheck_$ALT.log" 2>&1 &
p5=$!
wait $p1; r1=$?; wait $p2; r2=$?; wait $p3; r3=$?; wait $p4; r4=$?; wait $p5; r5=$?
echo "correctness done at $((SECONDS - t0)) s: pytest rc=$r1 memcheck rc=$r2 racecheck rc=$r3 variant-check rc=$r4 memcheck-$ALT rc=$r5"
if python3 scripts/decode_explore.py names | grep -qw probe; then
  timeout 60 python3 scripts/decode_explore.py probe > "$logs/probe.log" 2>&1; echo "probe rc=$? at $((SECONDS - t0)) s"
fi
bt=$((TOTAL - 8 - (SECONDS - t0))); [ $bt -lt 30 ] && bt=30
timeout "$bt" python3 scripts/decode_explore.py bench > "$logs/bench.log" 2>&1
echo "bench rc=$? at $((SECONDS - t0)) s"
# Everything in one archive (the device tool returns a limited number of files); the short
# summary (correctness last, so the reply's tail keeps it) on stdout.
tar czf "$out/logs.tgz" -C "$logs" . && cp "$logs"/{pytest,check,bench}.log "$out/" 2>/dev/null
[ -f "$logs/probe.log" ] && { echo "== probe"; grep -E "^B=|->" "$logs/probe.log" | head -45; }
# per-variant lines as they were printed (a bench cut short by its timeout keeps what it measured)
echo "== bench"; grep -E "^   [a-z0-9]+ +(fp16|bf16) " "$logs/bench.log" | sed -E 's/^   //; s/% of floor, /% fl, /; s/; kernels \(profiler, eager\)/; prof/' | cut -c1-140
echo "== variant check"; grep -E "^check|FAIL" "$logs/check.log" | head -20
echo "== sanitizer"; tail -2 "$logs/memcheck.log"; tail -2 "$logs/racecheck.log"; tail -2 "$logs/memcheck_$ALT.log"
echo "== pytest"; tail -3 "$logs/pytest.log"; grep -E "^FAILED" "$logs/pytest.log" | head -10
