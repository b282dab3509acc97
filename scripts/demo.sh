#!/usr/bin/env bash
# The main job, end to end on this machine: a server started from a TOML configuration
# (scripts/demo.toml: a local allocation queue that starts workers on demand, and a concurrency
# pool of size 1), a 1,000-task array watched with a progress bar, three tasks serialised by the
# pool, the queue's allocations and events, a summary of the results, and a clean stop.
# Everything lives in a temporary dir.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
hq=$PWD/.venv/bin/hq
config=$PWD/scripts/demo.toml
work=$(mktemp -d "${TMPDIR:-/tmp}/hqpy-demo.XXXXXX")
export HQ_SERVER_DIR=$work/server
cleanup() {
    "$hq" server stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
cd "$work"

echo "== hq server start --config scripts/demo.toml (server dir: $HQ_SERVER_DIR)"
cat "$config"
"$hq" server start --config "$config" >server.log 2>&1 &
"$hq" server wait --timeout 10s || { cat server.log; exit 1; }
"$hq" server info

echo "== the queue (allocations are local process groups running hq workers) and the pool"
"$hq" alloc list
"$hq" pool list

echo "== hq submit --array 1-1000 --progress"
cat >sim.sh <<'SIM'
#!/bin/bash
# A tiny "simulation": square the task id.
echo $(( HQ_TASK_ID * HQ_TASK_ID ))
SIM
chmod +x sim.sh
"$hq" submit --name demo --array 1-1000 --progress -- ./sim.sh

echo "== hq submit --pool licence: three steps that must not overlap"
"$hq" submit --name licensed --array 1-3 --pool licence -- \
    bash -c 'echo "$(date +%s.%N) task $HQ_TASK_ID starts"; sleep 0.2; echo "$(date +%s.%N) task $HQ_TASK_ID ends"'
"$hq" job wait last
echo "their starts and ends in time order (each start follows the previous end):"
sort -n job-2/*.stdout

echo "== allocations and their events"
"$hq" alloc info 1
"$hq" alloc events 1

echo "== results"
"$hq" job info last
"$hq" job summary
sum=$(cat job-1/*.stdout | awk '{ s += $1 } END { print s }')
echo "sum of squares of 1..1000 computed by 1000 tasks: $sum (expected 333833500)"

echo "== hq server stop"
"$hq" server stop
wait
echo "done; logs and outputs are in $work"
