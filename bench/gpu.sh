#!/usr/bin/env bash
# The GPU benchmarks, in one device call (tests/gpu/run.sh runs them after the GPU tests):
#   bash bench/gpu.sh [OUTDIR]
# 1 probe overhead against the seed-000 trap style (bench/gpu_probes.py)
# 2 detection and cost against compute-sanitizer memcheck (bench/sanitizer.py)
# 6 probe cost against batch size and page-table width (bench/gpu_scaling.py)
# 3 on a machine with 2+ GPUs: the NCCL hang, Sentinel against PyTorch's watchdog (tests/gpu/nccl_hang.py),
#   and the cost of the collective marks at TP=2 under CUDA graphs (bench/collective_marks.py). The
#   graph hangs' figures and 5 minutes of healthy replays: python tests/gpu/graph_hang.py OUTDIR
#   (about 7 minutes: a call of its own).
# Each writes JSON and a markdown table to OUTDIR; the tables are printed together last.
# Record them in bench/RESULTS.md on the development machine with `python bench/record_gpu.py OUTDIR`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/sentinel-gpu}}
mkdir -p "$OUTDIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1 || echo "note: carried wheels did not install"
fi
export PYTHONPATH="$PWD:$PWD/hooks:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
status=0
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ]; then
  python3 tests/gpu/nccl_hang.py "$OUTDIR" 2>&1 | tee "$OUTDIR/nccl-hang.log" || status=1
  python3 bench/collective_marks.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/collective-marks.log" || status=1
else
  python3 bench/gpu_probes.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/gpu-bench.log" || status=1
  python3 bench/gpu_scaling.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/gpu-scaling.log" || status=1
  python3 bench/sanitizer.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/sanitizer.log" || status=1
fi
echo
echo "================ GPU benchmark tables ================"
for md in gpu_probes gpu_scaling sanitizer collective_marks; do
  [ -f "$OUTDIR/$md.md" ] && { echo; cat "$OUTDIR/$md.md"; }
done
exit $status
