#!/usr/bin/env bash
# The GPU run behind docs/PERFORMANCE.md: the throughput benchmark with every variant, SM use sampled beside it.
# On a GPU machine set up as ../shared/gpu/README.md says (or any machine with this project installed):
#   OUT=/tmp/out bash bench/gpu_check.sh [more bench/throughput.py arguments, e.g. --runs jepa,jepa*4]
# BUDGET: the seconds for all runs.
set -uo pipefail
out=${OUT:-/tmp/throughput}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
nvidia-smi dmon -s u -d 5 -o T > "$out/sm_use.txt" 2>&1 &
dmon=$!
python3 bench/throughput.py --out "$out/throughput_gpu.md" --scratch /tmp/throughput_runs --budget "${BUDGET:-540}" \
  --window "${WINDOW:-20}" --warmup 8 "$@"
kill $dmon
tar czf "$out/worker_logs.tgz" -C /tmp/throughput_runs --exclude runs .
