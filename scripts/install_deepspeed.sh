#!/usr/bin/env bash
# Install DeepSpeed (a pure-Python wheel: no op compiled at install) and the pure-Python packages it
# imports into a target folder on a machine without network access, for the DeepSpeed baseline of
# `dsattn bench kernels` (tools/bench_deepspeed.py, which JIT-builds DeepSpeed's inference ops).
#
#   bash scripts/install_deepspeed.sh [WHEEL_DIR [TARGET]]
#   eval "$(bash scripts/install_deepspeed.sh --env [TARGET])"
#
# WHEEL_DIR (default .device/deepspeed) holds the wheels, staged on a machine with network access:
#   pip download deepspeed --no-deps --no-binary :all:   -> DS_BUILD_OPS=0 pip wheel --no-deps .
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \
#     hjson py-cpuinfo msgpack pydantic pydantic-core annotated-types typing-inspection \
#     typing-extensions ninja einops nvidia-ml-py psutil packaging tqdm
# TARGET (default /opt/dsattn/deepspeed). The last line printed is the export that puts TARGET on
# PYTHONPATH and its bin/ (the ninja executable the JIT build needs) on PATH; --env prints only it.
set -euo pipefail
if [[ "${1:-}" == "--env" ]]; then
    target="${2:-/opt/dsattn/deepspeed}"
    echo "export PYTHONPATH=$target\${PYTHONPATH:+:\$PYTHONPATH} PATH=$target/bin:\$PATH"
    exit 0
fi
wheels="${1:-.device/deepspeed}"
target="${2:-/opt/dsattn/deepspeed}"
shopt -s nullglob
files=("$wheels"/*.whl)
if (( ${#files[@]} == 0 )); then
    echo "install_deepspeed.sh: no wheels in $wheels (stage them first; see the header of this script)" >&2
    exit 2
fi
ds=("$wheels"/deepspeed-*.whl)
if (( ${#ds[@]} == 0 )); then
    echo "install_deepspeed.sh: no deepspeed-*.whl in $wheels" >&2
    exit 2
fi
mkdir -p "$target"
# --no-index --no-deps: only the staged wheels, nothing fetched; torch and numpy are the machine's.
python3 -m pip install -q --no-index --no-deps --upgrade --target "$target" "${files[@]}"
echo "export PYTHONPATH=$target\${PYTHONPATH:+:\$PYTHONPATH} PATH=$target/bin:\$PATH"
