#!/usr/bin/env bash
# Prefill round 2 device call (K-attn prefill helper): builds this op's files alone with nvcc into
# build/plugins/kernels/libdsattn_kernels.so (plus an optional "before" library), SASS facts, the SoftmaxContext GPU
# tests (default dispatch, then the prefill cases with the mma.sync fallback forced), a layout
# diagnostic, compute-sanitizer memcheck, the prefill benchmark rows (before / mma.sync / wgmma), and
# racecheck last. Logs under $OUT (or ./gpu-out).   usage: bash scripts/gpu_prefill.sh
set -uo pipefail
final="${OUT:-gpu-out}"; out="$final/logs"; mkdir -p "$out"
# "before" sources (optional): scripts/prefill_before_src/ holding softmax_context.cu,
# softmax_context_prefill.cu, attn_common.cuh, softmax_context.h, dsattn_common.h of an older commit
# (`git show REV:plugins/kernels/F`; the device copy has no .git), built as a second library for
# same-run "before" rows. scripts/prefill_new_src/softmax_context.cu, when present, replaces the
# working file (isolates a run from a parallel helper's uncommitted edits of that file).
summary=()
step() { # step NAME TIMEOUT CMD...
  local name="$1" to="$2"; shift 2
  local t0=$SECONDS
  if timeout "$to" "$@" >"$out/$name.log" 2>&1; then summary+=("PASS  $name ($((SECONDS-t0)) s)")
  else summary+=("FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"); fi
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || summary+=("FAIL  pip install -e .")
NV="nvcc -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v"
mkdir -p build/plugins/kernels build/prefill_old/src build/prefill_old/obj build/prefill_new
rm -f build/prefill_new/*.o build/prefill_old/obj/*.o
cp scripts/prefill_before_src/* build/prefill_old/src/ 2>/dev/null || echo "no before sources"
mkdir -p build/prefill_new/src
cp plugins/kernels/*.cu plugins/kernels/*.cuh plugins/kernels/*.h build/prefill_new/src/
[ -f scripts/prefill_new_src/softmax_context.cu ] && cp scripts/prefill_new_src/softmax_context.cu build/prefill_new/src/
build() {
  local pids=() rc=0
  for f in softmax_context softmax_context_prefill softmax_context_prefill_sm90; do
    $NV -Ibuild/prefill_new/src -c build/prefill_new/src/$f.cu -o build/prefill_new/$f.o > "$out/ptxas_$f.log" 2>&1 & pids+=($!)
  done
  [ -f build/prefill_old/src/softmax_context.cu ] && for f in softmax_context softmax_context_prefill; do
    $NV -Ibuild/prefill_old/src -c build/prefill_old/src/$f.cu -o build/prefill_old/obj/$f.o > "$out/ptxas_old_$f.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p || rc=1; done
  nvcc -shared build/prefill_new/*.o -o build/plugins/kernels/libdsattn_kernels.so -lcudart || rc=1
  if [ -f build/prefill_old/src/softmax_context.cu ]; then
    nvcc -shared build/prefill_old/obj/*.o -o build/prefill_old/libdsattn_kernels_old.so -lcudart || rc=1
  fi
  return $rc
}
export -f build; export NV out
step build 200 bash -c build
grep -hE "spill|Used" "$out"/ptxas_softmax_context_prefill_sm90.log | head -4 > "$out/ptxas_sm90_summary.txt"
sass() {
  cuobjdump -sass build/plugins/kernels/libdsattn_kernels.so > /tmp/pf_sass.txt || return 1
  for k in 'prefill_kernel_sm90I6__half' 'prefill_kernel_sm90I13__nv_bfloat16' 'prefill_kernelI6__halfLi128E' 'append_kernelI6__halfE'; do
    awk -v k="$k" '/Function : /{f=index($0,k)>0} f' /tmp/pf_sass.txt > /tmp/pf_k.txt
    c() { grep -cE "$1" /tmp/pf_k.txt; }
    echo "$k: HGMMA $(c 'HGMMA') HMMA $(c 'HMMA') LDGSTS $(c 'LDGSTS') LDG.128 $(c 'LDG[^ ]*128') LDL/STL $(c 'LDL|STL') MUFU.EX2 $(c 'MUFU.EX2') WARPGROUP $(c 'WARPGROUP')"
  done
}
export -f sass
step sass 60 bash -c sass
step diag 60 python3 scripts/prefill_diag.py
step pytest_attn 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_attention.py
step pytest_forced_mma 90 python3 -m pytest -q -rs -p no:cacheprovider -k "mma_fallback" tests/test_kernels_attention.py
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/attn_sanitize.py
before=(); [ -f build/prefill_old/libdsattn_kernels_old.so ] && before=(before=build/prefill_old/libdsattn_kernels_old.so)
step bench 150 python3 scripts/prefill_bench.py "${before[@]}" \
  mma=build/plugins/kernels/libdsattn_kernels.so:force_mma wgmma=build/plugins/kernels/libdsattn_kernels.so
step racecheck 100 compute-sanitizer --tool racecheck --error-exitcode 7 python3 scripts/attn_sanitize.py
echo; echo "== ptxas sm90 =="; cat "$out/ptxas_sm90_summary.txt"
echo "== sass =="; cat "$out/sass.log"
echo "== diag =="; grep -E "max err|Error|error" "$out/diag.log" | cut -c1-300
echo "== pytest =="; grep -E "passed|failed|Error|assert" "$out/pytest_attn.log" | tail -15
echo "== pytest forced mma =="; grep -E "passed|failed|Error|assert" "$out/pytest_forced_mma.log" | tail -8
echo "== sanitizer =="; tail -4 "$out/memcheck.log"; tail -3 "$out/racecheck.log" 2>/dev/null
echo "== bench =="; grep -E "^==|^  softmax|device" "$out/bench.log" 2>/dev/null | cut -c1-420
echo "== summary =="; printf '%s\n' "${summary[@]}"
tar czf "$final/logs.tgz" -C "$final" logs && rm -rf "$out"
