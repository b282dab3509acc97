"""Issue 12's load mode, shrunk to run in CI: many simulated workers (real handshake, sealed
frames, heartbeats) against a real server, checked for what must hold at any size: every task
ran, every worker stayed, and the tasks spread evenly. Its timings are the benchmark's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 200
TASKS = 100_000


def test_many_workers_run_a_big_array_evenly_and_all_stay() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--only",
            "load",
            "--load-workers",
            str(WORKERS),
            "--load-tasks",
            str(TASKS),
            "--json-only",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [load] = [
        doc
        for doc in (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))
        if doc.get("bench") == "load"
    ]
    assert load["tasks"] == TASKS
    assert load["workers"] == WORKERS
    assert load["workers_alive_at_end"] == WORKERS
    mean = TASKS / WORKERS
    assert mean * 0.5 <= load["min_tasks"] <= load["max_tasks"] <= mean * 1.5, load
