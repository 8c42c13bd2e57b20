#!/usr/bin/env bash
# A small real search: the seed's dry run (4 tiny DreamerV3-JEPA trials on DMC walker pixels; about 3-4 minutes on
# a 2-core CPU). Output in ./test_runs (or the folder given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl
.venv/bin/python search_phase1.py --env dmc --full-steps 20000 --fidelity-frac 0.1 --n-trials 4 \
  --eval-every 2000 --eval-episodes 3 --output-dir "${1:-./test_runs}" --dry-run
