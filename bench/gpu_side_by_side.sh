#!/usr/bin/env bash
# Trials side by side on one GPU (issue 13), one call: the arrangement benchmark (K processes against P processes of
# M trials in threads), then the user's search at its real size (DMC walker-walk pixels, model S) with 8 trials side
# by side in one process, Hyperband on, every artifact written.
# On a GPU machine set up as ../shared/gpu/README.md says:   OUT=/tmp/out bash bench/gpu_side_by_side.sh
# On the CPU, the same steps with the tiny model (a check of the script):   TINY=1 OUT=/tmp/out bash bench/gpu_side_by_side.sh
# BUDGET: seconds for the benchmark; SEARCH_S: seconds for the search; ROUTE: the compiled route (graph, steps, off).
set -uo pipefail
out=${OUT:-/tmp/side_by_side}
mkdir -p "$out"
route=${ROUTE:-graph}
variant=jepa_${route/off/}
variant=${variant%_}
if [ -n "${TINY:-}" ]; then
  bench=(--tiny --window 3 --warmup 3 --runs "sheeprl,jepa,jepa*2,jepa*1x2")
  search=(--full-steps 2560 --fidelity-frac 0.2 --n-trials 2 --eval-every 128 --eval-episodes 1 --dry-run
          --trials-per-device 2 --trials-per-process 2 --compile off)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  nvidia-smi dmon -s um -d 5 -o T > "$out/gpu_use.txt" 2>&1 &
  dmon=$!
  bench=(--window "${WINDOW:-15}" --warmup 8
         --runs "sheeprl,$variant,$variant*4,$variant*1x4,$variant*1x8,$variant*2x4,$variant*1x16")
  search=(--full-steps 20000 --fidelity-frac 0.1 --n-trials 8 --eval-every 500 --eval-episodes 3
          --trials-per-device 8 --trials-per-process 8 --compile "$route")
fi
timeout "${BUDGET:-330}" python3 bench/throughput.py --out "$out/arrangements.md" --scratch /tmp/side_by_side_runs \
  --budget "$(( ${BUDGET:-330} - 10 ))" "${bench[@]}"
echo "benchmark exit $?"
timeout "${SEARCH_S:-240}" python3 search_phase1.py --env dmc --output-dir "$out/search" --pruner hyperband "${search[@]}"
echo "search exit $?"
python3 search_phase1.py --env dmc --output-dir "$out/search" --report-only > /dev/null
[ -n "${dmon:-}" ] && kill "$dmon"
tar czf "$out/search_files.tgz" -C "$out/search" --exclude '*/run' .
rm -rf "$out/search"
