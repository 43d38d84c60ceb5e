#!/usr/bin/env bash
# The GPU suite and the GPU benchmarks, in one device call. From the repo root:
#   bash tests/gpu/run.sh            (results under $OUT, default /tmp/sentinel-gpu)
# Needs torch with CUDA and Triton. Missing pure-Python wheels (watchdog, py-spy) are taken from .whl/.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sentinel-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1 || echo "note: carried wheels did not install"
fi
export PYTHONPATH="$PWD:$PWD/hooks:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/device.txt"
status=0
python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/gpu tests/gpu "$@" 2>&1 | tee "$OUT/gpu-tests.log" || status=1
python3 bench/gpu_probes.py --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log" || status=1
exit $status
