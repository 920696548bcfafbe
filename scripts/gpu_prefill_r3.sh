#!/usr/bin/env bash
# Prefill round 3 device call: libraries prebuilt on the build machine by scripts/prefill_r3_build.sh
# (static cudart; carried in build/r3: HEAD softmax_context.cu / softmax_context_prefill.cu + one softmax_context_prefill_sm90
# variant each: before = round-2 kernel, v<OVERLAP>g<GRID> = DSATTN_PF_OVERLAP / DSATTN_PF_GRID),
# rebuilt here only if they do not load. Then SASS counts, same-run timing of every variant with
# cuDNN / flash SDPA (scripts/prefill_r3_bench.py), the full attention test file + memcheck on v1g1,
# the prefill + graph tests on v1g0 (the committed default: DSATTN_PF_GRID=0 was chosen from this run). Logs under $OUT/logs, written as each step ends.
set -uo pipefail
final="${OUT:-gpu-out}"; out="$final/logs"; mkdir -p "$out"
T0=$SECONDS
step() { # step NAME TIMEOUT CMD...
  local name="$1" to="$2"; shift 2
  local left=$((285 - (SECONDS - T0)))
  if [ "$left" -lt 15 ]; then echo "SKIP  $name (time)"; return; fi
  [ "$to" -gt "$left" ] && to=$left
  local t0=$SECONDS
  if timeout "$to" "$@" >"$out/$name.log" 2>&1; then echo "PASS  $name ($((SECONDS-t0)) s)"
  else echo "FAIL  $name ($((SECONDS-t0)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ' | cut -c1-300)"; fi
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || echo "FAIL pip install"
V="before v0g0 v0g1 v1g0 v1g1"
if ! python3 -c "import ctypes,sys; [ctypes.CDLL(f'build/r3/lib_{v}.so') for v in sys.argv[1:]]" $V > "$out/load.log" 2>&1; then
  echo "prebuilt libraries do not load ($(tail -1 "$out/load.log")): building here"
  NV="nvcc -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 -gencode=arch=compute_90a,code=sm_90a"
  S=build/r3/src; O=build/r3/obj; mkdir -p $O
  $NV -I$S -c $S/softmax_context.cu -o $O/sc.o & $NV -I$S -c $S/softmax_context_prefill.cu -o $O/pf.o &
  $NV -I$S -c $S/before_sm90.cu -o $O/before.o &
  for ov in 0 1; do for g in 0 1; do $NV -I$S -DDSATTN_PF_OVERLAP=$ov -DDSATTN_PF_GRID=$g -c $S/softmax_context_prefill_sm90.cu -o $O/v${ov}g$g.o & done; done
  wait
  for v in $V; do nvcc -shared $O/sc.o $O/pf.o $O/$v.o -o build/r3/lib_$v.so -lcudart; done
fi
mkdir -p build/plugins/kernels && cp build/r3/lib_v1g1.so build/plugins/kernels/libdsattn_kernels.so
sass() {
  for v in before v0g0 v1g1; do
    cuobjdump -sass build/r3/lib_$v.so > /tmp/pf_$v.txt || return 1
    awk '/Function : /{f=index($0,"prefill_kernel_sm90I6__half")>0} f' /tmp/pf_$v.txt > /tmp/pf_k.txt
    c() { grep -cE "$1" /tmp/pf_k.txt; }
    echo "$v fp16 (all instantiations): HGMMA $(c HGMMA) I2F $(c 'I2F') MUFU.EX2 $(c 'MUFU.EX2') FMNMX $(c FMNMX) F2FP $(c F2FP) LDL/STL $(c 'LDL|STL') WARPGROUP.ARRIVE $(c 'WARPGROUP.ARRIVE') DEPBAR $(c 'WARPGROUP.DEPBAR') lines $(wc -l < /tmp/pf_k.txt)"
  done
}
export -f sass
step sass 30 bash -c sass; cat "$out/sass.log"
step bench 110 python3 scripts/prefill_r3_bench.py $(for v in $V; do printf '%s=build/r3/lib_%s.so ' $v $v; done)
grep -E "^(fp16|bf16|device)" "$out/bench.log"
step pytest_attn 100 python3 -m pytest -q -rs -p no:cacheprovider tests/test_kernels_attention.py
grep -E "passed|failed|Error|assert" "$out/pytest_attn.log" | tail -12
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 7 python3 scripts/attn_sanitize.py
tail -3 "$out/memcheck.log"
cp build/r3/lib_v1g0.so build/plugins/kernels/libdsattn_kernels.so
step pytest_v1g0_prefill 45 python3 -m pytest -q -p no:cacheprovider -k "prefill or graph" tests/test_kernels_attention.py
grep -E "passed|failed" "$out/pytest_v1g0_prefill.log" | tail -3
echo "total $((SECONDS - T0)) s"
