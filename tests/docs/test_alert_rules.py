"""The alert rules of `docs/metrics.md`, unit-tested with `promtool test rules`: allocations
that fail at start (hq #13.1, counted in `hqpy_allocations_ended_total{outcome="failed"}`)
fire `HqpyAllocationsKeepFailing`, and fewer failures do not."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Prometheus) on PATH")

FAILED = 'hqpy_allocations_ended_total{queue="1",manager="SLURM",outcome="failed"}'
SUBMIT_FAILED = 'hqpy_allocation_submissions_total{queue="1",manager="SLURM",outcome="failure"}'

DESCRIPTION = (
    "At least 3 allocations failed (or could not be submitted) in 30 minutes. Look at "
    "`hq alloc events 1` and `hq alloc log <allocation> stderr`."
)

TESTS = f"""
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{FAILED}'
        values: '0 1 2 3 3 3 3'
      - series: '{SUBMIT_FAILED}'
        values: '0x6'
    alert_rule_test:
      - eval_time: 1m
        alertname: HqpyAllocationsKeepFailing
        exp_alerts: []
      - eval_time: 6m
        alertname: HqpyAllocationsKeepFailing
        exp_alerts:
          - exp_labels:
              severity: warning
              queue: "1"
              manager: SLURM
              outcome: failed
            exp_annotations:
              summary: "Allocations of hqpy queue 1 keep failing"
              description: {json.dumps(DESCRIPTION)}
"""


def alert_rules() -> str:
    """The `groups:` YAML block of the doc, as a user would copy it."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
    rules: list[str] = [b for b in blocks if b.startswith("groups:")]
    assert len(rules) == 1, "docs/metrics.md has one alert rules block"
    return rules[0]


def test_failed_allocations_fire_the_alert(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    (tmp_path / "rules.yml").write_text(alert_rules())
    (tmp_path / "tests.yml").write_text(TESTS)
    result = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
