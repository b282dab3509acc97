#!/usr/bin/env bash
# Set up .venv with the dev extras and run the whole test suite, then the linters: ruff (with
# unused-noqa detection, RUF100), the formatter's check, and mypy over hqpy (strict for tests
# and the bench scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check hqpy tests scripts
.venv/bin/ruff format --check hqpy tests scripts
.venv/bin/mypy hqpy
.venv/bin/mypy --strict tests
.venv/bin/mypy --strict scripts/bench.py scripts/bench_metrics.py
