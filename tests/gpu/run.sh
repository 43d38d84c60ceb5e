#!/usr/bin/env bash
# The GPU suite and the GPU benchmarks, in one device call. From the repo root:
#   bash tests/gpu/run.sh
# Results go to $OUT (default /tmp/sentinel-gpu): results.tgz with everything (test log, benchmark
# JSON and markdown, captured cuda-gdb transcripts), plus the logs as plain files, written to $OUT as
# they grow (a call cut short by its time limit still brings back what ran). Arguments go to pytest
# (e.g. -k graph_hangs); SKIP_BENCH=1 leaves the benchmarks and the fault captures out.
# Needs torch with CUDA and Triton; cuda-gdb for the fault tests. Missing pure-Python wheels
# (watchdog, py-spy) are installed from .whl/ when present.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sentinel-gpu}
WORK=$(mktemp -d /tmp/sentinel-gpu-work.XXXXXX)
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1 || echo "note: carried wheels did not install"
fi
export PYTHONPATH="$PWD:$PWD/hooks:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  command -v cuda-gdb && cuda-gdb --version | head -1; } 2>&1 | tee "$WORK/device.txt"
status=0
python3 -m pytest -q -s -p no:cacheprovider --confcutdir=tests/gpu tests/gpu "$@" 2>&1 \
  | tee "$WORK/gpu-tests.log" "$OUT/gpu-tests.log" || status=1
if [ -z "${SKIP_BENCH:-}" ]; then
  python3 tests/gpu/capture_faults.py "$WORK/transcripts" 2>&1 | tee "$WORK/capture.log" "$OUT/capture.log" || status=1
  bash bench/gpu.sh "$WORK" 2>&1 | tee "$OUT/bench.log" || status=1
fi
tar czf "$OUT/results.tgz" -C "$WORK" .
exit $status
