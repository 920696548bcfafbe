#!/usr/bin/env bash
# Builds (on the build machine, nvcc only) the libraries scripts/gpu_prefill_r3.sh times, into
# build/r3 (carry it to the device): the committed softmax_context.cu / softmax_context_prefill.cu /
# headers of REV (default HEAD; isolates the run from uncommitted edits of those files) with
#   before = REV's softmax_context_prefill_sm90.cu, v<O>g<G> = the working softmax_context_prefill_sm90.cu
#   with DSATTN_PF_OVERLAP=O, DSATTN_PF_GRID=G. Static cudart, so no runtime path is needed there.
set -euo pipefail
REV="${1:-HEAD}"
S=build/r3/src; O=build/r3/obj; mkdir -p $S $O
for f in softmax_context.cu softmax_context_prefill.cu attn_common.cuh softmax_context.h dsattn_common.h; do
  git show "$REV:plugins/kernels/$f" > $S/$f
done
git show "$REV:plugins/kernels/softmax_context_prefill_sm90.cu" > $S/before_sm90.cu
cp plugins/kernels/softmax_context_prefill_sm90.cu $S/
NV="nvcc -Xcompiler -fPIC -O3 -lineinfo --expt-relaxed-constexpr -std=c++17 -gencode=arch=compute_90a,code=sm_90a"
$NV -I$S -c $S/softmax_context.cu -o $O/sc.o & $NV -I$S -c $S/softmax_context_prefill.cu -o $O/pf.o &
$NV -I$S -c $S/before_sm90.cu -o $O/before.o & wait
for ov in 0 1; do for g in 0 1; do
  $NV -I$S -DDSATTN_PF_OVERLAP=$ov -DDSATTN_PF_GRID=$g -Xptxas -v -c $S/softmax_context_prefill_sm90.cu \
    -o $O/v${ov}g$g.o 2> build/r3/ptxas_v${ov}g$g.log
done; done
for v in before v0g0 v0g1 v1g0 v1g1; do nvcc -shared -cudart static $O/sc.o $O/pf.o $O/$v.o -o build/r3/lib_$v.so; done
grep -hE "Used|spill" build/r3/ptxas_v*.log | sort | uniq -c
