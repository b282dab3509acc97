"""A real Prometheus (Debian's package) scrapes a real server that runs a task array through a
local allocation queue, and its query API reports the numbers `hq job info`/`hq alloc info` print.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, free_ports, wait_until
from tests.http.conftest import add_local_queue

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="needs Debian's Prometheus: `apt-get install prometheus` (.ci/run does so in CI)",
    ),
]


def alert_rules() -> str:
    """The alert rules `docs/metrics.md` gives (its YAML block that starts with `groups:`)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    [rules] = [b for b in blocks if b.startswith("groups:")]
    return str(rules)


class Prometheus:
    """A Prometheus process scraping one target every second, with its own data dir."""

    def __init__(self, root: Path, target_port: int) -> None:
        root.mkdir()
        self.port = free_ports(1)[0]
        (root / "rules.yml").write_text(alert_rules())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(root / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "hqpy",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        # JSON is YAML: no YAML library needed.
        (root / "prometheus.yml").write_text(json.dumps(config))
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        """The value of a query that gives one series (None if it gives none)."""
        data = self.get("/api/v1/query", query=expr)
        assert data["status"] == "success", data
        result = data["data"]["result"]
        assert len(result) <= 1, f"{expr} gives several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def prometheus(metrics_env: tuple[HqEnv, int], tmp_path: Path) -> Iterator[Prometheus]:
    _, port = metrics_env
    prom = Prometheus(tmp_path / "prometheus", port)
    try:
        wait_until(prom.ready, timeout=60, what="prometheus is ready")
        yield prom
    finally:
        prom.stop()


def test_prometheus_reports_what_hq_prints(
    metrics_env: tuple[HqEnv, int], prometheus: Prometheus
) -> None:
    hq_env, _ = metrics_env
    wait_until(lambda: prometheus.query('up{job="hqpy"}') == 1, what="the server is scraped")
    add_local_queue(hq_env, "--backlog", "1", "--workers-per-alloc", "1")
    # Every 7th task fails, so both outcomes show.
    hq_env.command(
        "submit", "--array", "1-40", "--", "bash", "-c", "sleep 0.1; [ $((HQ_TASK_ID % 7)) != 0 ]"
    )
    hq_env.wait_job(1)

    stats = hq_env.job_info(1)["info"]["task_stats"]
    assert stats["finished"] == 35 and stats["failed"] == 5
    q = 'queue="1",manager="local"'

    def hq_numbers() -> dict[str, float]:
        """What hq prints now, as the queries that should give the same numbers. Asked
        again on each try: an allocation may still be starting when the job ends."""
        stats = hq_env.job_info(1)["info"]["task_stats"]
        allocations = hq_env.command("alloc", "info", "1", json=True)
        workers = hq_env.command("worker", "list", json=True)
        assert allocations, "the queue submitted no allocation"
        status = [a["status"] for a in allocations]
        return {
            'hqpy_tasks{state="finished"}': stats["finished"],
            'hqpy_tasks{state="failed"}': stats["failed"],
            'hqpy_tasks{state="waiting"}': stats["waiting"],
            'hqpy_tasks_finished_total{outcome="finished"}': stats["finished"],
            'hqpy_tasks_finished_total{outcome="failed"}': stats["failed"],
            "hqpy_task_duration_seconds_count": stats["finished"] + stats["failed"],
            'hqpy_jobs{state="failed"}': 1,
            f'hqpy_allocations{{{q},state="queued"}}': status.count("queued"),
            f'hqpy_allocations{{{q},state="running"}}': status.count("running"),
            f"sum(hqpy_allocations{{{q}}})": len(allocations),
            f'hqpy_allocation_submissions_total{{{q},outcome="success"}}': len(allocations),
            f'hqpy_allocation_submissions_total{{{q},outcome="failure"}}': 0,
            f"hqpy_allocation_queue_wait_seconds_count{{{q}}}": sum(
                a["started_at"] is not None for a in allocations
            ),
            'hqpy_workers{state="running"}': len(workers),
            "hqpy_worker_cpus": len(workers),  # one cpu each
            'hqpy_alloc_queues{state="active"}': 1,
            f"hqpy_alloc_queue_self_paused{{{q}}}": 0,
        }

    seen: dict[str, tuple[float | None, float]] = {}

    def all_match() -> bool:
        seen.clear()
        for expr, value in hq_numbers().items():
            seen[expr] = (prometheus.query(expr), value)
        return all(got == want for got, want in seen.values())

    try:
        wait_until(all_match, timeout=60, interval=0.5, what="Prometheus has the same numbers")
    except AssertionError:
        diff = {e: pair for e, pair in seen.items() if pair[0] != pair[1]}
        raise AssertionError(f"(prometheus, hq) differ: {diff}") from None
    wait_ratio = prometheus.query(
        f"hqpy_allocation_queue_wait_seconds_sum{{{q}}} / "
        f"hqpy_allocation_queue_wait_seconds_count{{{q}}}"
    )
    assert wait_ratio is not None and wait_ratio > 0

    # The documented alert rules load and evaluate against these metrics without errors.
    def rules_evaluated() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        # Before its first evaluation a rule's time is `0001-01-01T00:00:00Z`.
        done = rules and all(r.get("lastEvaluation", "0001") > "2000" for r in rules)
        return rules if done else []

    rules = wait_until(rules_evaluated, timeout=30, what="alert rules evaluated")
    assert {r["name"] for r in rules} == {
        "HqpyQueuePausedItself",
        "HqpyAllocationFailed",
        "HqpyAllocationsKeepFailing",
        "HqpyTasksWaitWithoutAllocation",
    }
    for rule in rules:
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule  # nothing is wrong here


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool: `apt-get install prometheus`")
def test_documented_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(alert_rules())
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


ALLOCATION_FAILED_TEST = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Queue 1's allocation fails at minute 2; queue 2's allocations all finish.
      - series: 'hqpy_allocations_ended_total{queue="1",manager="slurm",outcome="failed"}'
        values: '0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'hqpy_allocations_ended_total{queue="2",manager="local",outcome="failed"}'
        values: '0x20'
      - series: 'hqpy_allocations_ended_total{queue="2",manager="local",outcome="finished"}'
        values: '0+1x20'
    alert_rule_test:
      - eval_time: 1m
        alertname: HqpyAllocationFailed
        exp_alerts: []
      - eval_time: 3m
        alertname: HqpyAllocationFailed
        exp_alerts:
          - exp_labels:
              severity: warning
              queue: "1"
              manager: slurm
              outcome: failed
            exp_annotations:
              summary: "An allocation of hqpy queue 1 (slurm) failed"
              description: "DESCRIPTION"
      - eval_time: 15m
        alertname: HqpyAllocationFailed
        exp_alerts: []
"""


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool: `apt-get install prometheus`")
def test_a_failed_allocation_fires_the_documented_alert(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(alert_rules())
    # The description as the rule renders it for queue 1 (folded YAML: one line).
    text = alert_rules().split("alert: HqpyAllocationFailed", 1)[1]
    folded = text.split("description: >-\n", 1)[1].split("\n\n", 1)[0]
    description = " ".join(line.strip() for line in folded.splitlines())
    description = description.replace("{{ $labels.queue }}", "1")
    unit = ALLOCATION_FAILED_TEST.replace("DESCRIPTION", description.replace('"', '\\"'))
    (tmp_path / "test.yml").write_text(unit)
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tmp_path / "test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
