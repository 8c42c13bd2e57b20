#!/usr/bin/env bash
# The next GPU run (docs/PERFORMANCE.md, "Next GPU run"): one call of at most 8 minutes that answers, in order,
#   1. do the graph route and the fused one capture and replay correctly (bench/replay_check.py at model S; each
#      check is printed as it is made, so a fused route still compiling at the limit leaves the graph's answers);
#   2. how fast are they against SheepRL's loop, measured in the same call (bench/throughput.py, a trial each; the
#      fused run last, since its compilation is the longest);
#   3. where a route passed 1: 4 trials side by side in one process on the fastest such route.
# The tables and the full worker logs come back in $OUT.
# On a GPU machine set up as ../shared/gpu/README.md says:   OUT=$OUT bash bench/gpu_next.sh
# On the CPU with the tiny model (a check of the script):    TINY=1 OUT=/tmp/out bash bench/gpu_next.sh
# ROUTES: the compiled routes to answer for (default graph,fused); CHECK_S, BENCH_S, SIDE_S: each part's seconds.
set -uo pipefail
out=${OUT:-/tmp/gpu_next}
scratch=/tmp/gpu_next_runs
mkdir -p "$out"
routes=${ROUTES:-graph,fused}
if [ -n "${TINY:-}" ]; then
  size=(--tiny --accelerator cpu)
  timing=(--window 3 --warmup 6)
else
  size=()
  timing=(--window 20 --warmup 10)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  nvidia-smi dmon -s um -d 5 -o T > "$out/gpu_use.txt" 2>&1 &
  dmon=$!
fi

echo "== 1. replays against the plain step"
timeout "${CHECK_S:-150}" python3 bench/replay_check.py "${size[@]}" --routes "$routes" --log-root "$scratch/check" \
  2>&1 | tee "$out/replay_check.txt"
# The routes all of whose checks passed
sound=$(for r in ${routes//,/ }; do
  grep -q "^PASS  $r:" "$out/replay_check.txt" && ! grep -q "^FAIL  $r:" "$out/replay_check.txt" && printf '%s ' "$r"
done)
echo "sound: ${sound:-none}"

echo "== 2. one trial of each route against SheepRL's loop"
runs=sheeprl$(for r in ${routes//,/ }; do printf ',jepa_%s' "$r"; done)
timeout "${BENCH_S:-220}" python3 bench/throughput.py "${size[@]}" "${timing[@]}" --runs "$runs" \
  --out "$out/routes.md" --scratch "$scratch" --budget "$(( ${BENCH_S:-220} - 10 ))"
echo "benchmark exit $?"

if [ -n "$sound" ]; then
  # The sound route with the most gradient steps per second
  fastest=$(python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))
speed = {r: rows.get(f"jepa_{r}_k1", [{}])[0].get("grad_steps_per_s", 0) for r in sys.argv[2:]}
print(max(speed, key=speed.get))' "$out/routes.json" $sound)
  echo "== 3. 4 trials side by side in one process on $fastest"
  timeout "${SIDE_S:-90}" python3 bench/throughput.py "${size[@]}" "${timing[@]}" --runs "jepa_$fastest*1x4" \
    --out "$out/side_by_side.md" --scratch "$scratch" --budget "$(( ${SIDE_S:-90} - 10 ))"
  echo "side by side exit $?"
else
  echo "== 3. skipped: no route replayed correctly"
fi
[ -n "${dmon:-}" ] && kill "$dmon"
tar czf "$out/worker_logs.tgz" -C "$scratch" --exclude runs --exclude check .
