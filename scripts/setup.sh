#!/usr/bin/env bash
# Create .venv (if needed) and install hqpy into it, with the extras given as arguments (dev, bench).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras=$(IFS=,; echo "$*")
spec="."
[ -n "$extras" ] && spec=".[$extras]"
log=.venv/setup.log
if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip \
    && .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: installing hqpy into .venv failed (log above, also in $log)" >&2
    exit 1
fi
