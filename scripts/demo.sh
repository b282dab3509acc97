#!/usr/bin/env bash
# The main job, end to end on this machine: a server, a local allocation queue that starts workers
# on demand, a 1,000-task array watched with a progress bar, the queue's allocations and events, a
# summary of the results, and a clean stop. Everything lives in a temporary dir.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
hq=$PWD/.venv/bin/hq
work=$(mktemp -d "${TMPDIR:-/tmp}/hqpy-demo.XXXXXX")
export HQ_SERVER_DIR=$work/server
cleanup() {
    "$hq" server stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
cd "$work"

echo "== hq server start (server dir: $HQ_SERVER_DIR)"
"$hq" server start >server.log 2>&1 &
"$hq" server wait --timeout 10s
"$hq" server info

echo "== hq alloc add local (allocations are local process groups running hq workers)"
"$hq" alloc add local --time-limit 10m --backlog 1 --workers-per-alloc 2 --idle-timeout 5s
"$hq" alloc list

echo "== hq submit --array 1-1000 --progress"
cat >sim.sh <<'SIM'
#!/bin/bash
# A tiny "simulation": square the task id.
echo $(( HQ_TASK_ID * HQ_TASK_ID ))
SIM
chmod +x sim.sh
"$hq" submit --name demo --array 1-1000 --progress -- ./sim.sh

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
