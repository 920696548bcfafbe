#!/usr/bin/env bash
# Builds and runs the Int8MatMul tuning harness (README.md here) on a Hopper GPU, from the
# repository root or anywhere:
#   tools/tuning/int8_gemm_tune.sh [int8_gemm_tune options, e.g. --m 64,256 --n 4096 --dtype f16]
# Environment:
#   DSATTN_FLASHINFER_DATA  flashinfer/data folder holding cutlass/ and cccl/
#                           (default /opt/dsattn/flashinfer/flashinfer/data)
#   NVCC (default nvcc)  JOBS (parallel compiles, default nproc)  BUILD (default build/int8_tune)
#   CANDIDATES  ids of int8_gemm_candidates.h to build (default all); the others show as "-"
#   CUDA_LIBS_ROOT  extra prefix with include/cublas_v2.h and lib/libcublas.so (a toolkit without cuBLAS)
#   BUILD_ONLY=1 builds without running; OUT, when set, receives int8_gemm_tune.md / .csv and the build log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=${DSATTN_FLASHINFER_DATA:-/opt/dsattn/flashinfer/flashinfer/data}
nvcc=${NVCC:-nvcc}
jobs=${JOBS:-$(nproc)}
build=${BUILD:-$root/build/int8_tune}
ids=${CANDIDATES:-$(sed -n 's/^ *X(\([0-9][0-9]*\),.*/\1/p' "$here/int8_gemm_candidates.h")}
for d in "$data/cutlass/include" "$data/cccl/libcudacxx/include"; do
  [ -d "$d" ] || { echo "DSATTN_FLASHINFER_DATA: no $d" >&2; exit 2; }
done
mkdir -p "$build"
arch=(-gencode arch=compute_90a,code=sm_90a)
# -DNDEBUG as the library's Release build: a device assert left in the mainloop is a function call,
# which makes ptxas serialise the wgmma pipeline (warning C7510).
common=(-std=c++17 -O3 -DNDEBUG -lineinfo --expt-relaxed-constexpr "${arch[@]}")
extra=()
if [ -n "${CUDA_LIBS_ROOT:-}" ]; then extra=(-I"$CUDA_LIBS_ROOT/include" -L"$CUDA_LIBS_ROOT/lib"); fi
# Same include order and flags as plugins/kernels/CMakeLists.txt's sm_90a sources.
cutlass_flags=("${common[@]}" --expt-extended-lambda -diag-suppress=20012,3357
  -I"$data/cccl/cub" -I"$data/cccl/libcudacxx/include" -I"$data/cccl/thrust"
  -I"$root/plugins/kernels/sm90" -I"$here" -I"$data/cutlass/include" -I"$data/cutlass/tools/util/include")
deps=("$here/int8_gemm_config.cu" "$here/int8_gemm_candidates.h" "$here/int8_gemm_tune.h"
      "$root/plugins/kernels/sm90/int8_gemm_sm90.cuh" "$root/plugins/kernels/sm90/int8_gemm_sm90.h")
stale() {  # stale OBJ: OBJ missing or older than a dependency
  local o=$1 f
  [ -f "$o" ] || return 0
  for f in "${deps[@]}"; do [ "$f" -nt "$o" ] && return 0; done
  return 1
}
jobs_list=()
for id in $ids; do for b in 0 1; do for g in 0 1; do
  o="$build/cand_${id}_${b}_${g}.o"
  stale "$o" && jobs_list+=("$id $b $g $o")
done; done; done
# One compiler per candidate unit; the flags are word-split (paths without spaces).
export NVCC_BIN=$nvcc CUTLASS_FLAGS="${cutlass_flags[*]}" CONFIG_SRC="$here/int8_gemm_config.cu"
compile_one() {  # compile_one ID BF16 GROUPED OBJ
  echo "  candidate $1 bf16=$2 grouped=$3"
  # shellcheck disable=SC2086
  "$NVCC_BIN" $CUTLASS_FLAGS -c "$CONFIG_SRC" -DTUNE_ID="$1" -DTUNE_BF16="$2" -DTUNE_GROUPED="$3" -o "$4" ||
    { echo "FAILED: candidate $1 bf16=$2 grouped=$3"; return 255; }
}
export -f compile_one
t0=$(date +%s)
echo "int8_gemm_tune: compiling ${#jobs_list[@]} candidate units + 2 with $jobs jobs" >&2
{
  printf '%s\n' "${jobs_list[@]}" | xargs -r -P "$jobs" -L 1 bash -c 'compile_one "$@"' _ &
  pid=$!
  "$nvcc" "${common[@]}" "${extra[@]}" -I"$root/plugins/kernels" -I"$root/plugins/kernels/sm90" -I"$here" \
    -c "$here/int8_gemm_tune.cu" -o "$build/int8_gemm_tune.o"
  "$nvcc" "${common[@]}" -DDSATTN_HAVE_SM90_LIBS=0 -I"$root/plugins/kernels" \
    -c "$root/plugins/kernels/int8_matmul.cu" -o "$build/int8_matmul.o"
  wait $pid
} 2>&1 | tee "$build/build.log" >&2
objs=()
for id in $ids; do for b in 0 1; do for g in 0 1; do objs+=("$build/cand_${id}_${b}_${g}.o"); done; done; done
"$nvcc" "${arch[@]}" "${extra[@]}" -o "$build/int8_gemm_tune" "$build/int8_gemm_tune.o" "$build/int8_matmul.o" \
  "${objs[@]}" -lcublas
echo "int8_gemm_tune: built in $(( $(date +%s) - t0 )) s" | tee -a "$build/build.log" >&2
[ -n "${OUT:-}" ] && cp "$build/build.log" "$OUT/int8_gemm_tune_build.log"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
if [ -n "${OUT:-}" ]; then
  "$build/int8_gemm_tune" --csv "$OUT/int8_gemm_tune.csv" "$@" | tee "$OUT/int8_gemm_tune.md"
else
  "$build/int8_gemm_tune" "$@"
fi
