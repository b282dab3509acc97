"""Issue 11 on a real Slurm: a 2-node task through a 2-worker allocation, a split allocation,
and a drain whose running task finishes in another allocation.

Needs `scripts/slurm-local.sh start` (see test_slurm_real.py); the multi-node tests need fake
nodes (`SLURM_LOCAL_NODES=3` for all of them) and skip, saying so, when `sinfo` shows fewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, wait_until
from tests.e2e.test_multinode import TASK
from tests.e2e.test_slurm_real import (
    WAIT,
    SlurmJobs,
    add_queue,
    pytestmark,
    setup_server,
    slurm,
    slurm_jobs,
    wait_job_finished,
    workers_all,
)

__all__ = ["pytestmark", "slurm_jobs"]


def need_nodes(count: int) -> None:
    nodes = set(slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split())
    if len(nodes) < count:
        pytest.skip(
            f"needs {count} Slurm nodes, sinfo shows {len(nodes)} "
            f"(SLURM_LOCAL_NODES={count} scripts/slurm-local.sh start)"
        )


def test_two_node_task_runs_through_a_real_two_node_allocation(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, tmp_path: Path
) -> None:
    need_nodes(2)
    setup_server(hq_env)
    add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--workers-per-alloc",
        "2",
        "--max-worker-count",
        "2",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
    )
    work = tmp_path / "task"
    work.mkdir()
    hq_env.command("submit", "--nodes", "2", "--cwd", str(work), "--", "bash", "-c", TASK)
    wait_job_finished(hq_env, 1, 1)
    assert (work / "nodes.txt").read_text() == "2\n"
    assert len((work / "hosts.txt").read_text().splitlines()) == 2
    [task] = hq_env.command("task", "info", "1", "0", json=True)
    workers = {w["id"]: w for w in workers_all(hq_env)}
    [allocation_id] = {workers[n["worker"]]["allocation"]["id"] for n in task["nodes"]}
    assert {workers[n["worker"]]["configuration"]["group"] for n in task["nodes"]} == {
        allocation_id
    }


def test_split_allocation_on_real_slurm(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, tmp_path: Path
) -> None:
    need_nodes(3)
    setup_server(hq_env)
    add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--workers-per-alloc",
        "3",
        "--max-worker-count",
        "3",
        "--split",
        "mpi:2:role=leader",
        "--split",
        "serial:1:role=worker",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
    )
    tagged = "--tag" in hq_env.run("submit", "--help").stdout
    work = tmp_path / "task"
    work.mkdir()
    leader = ["--tag", "role=leader"] if tagged else []
    hq_env.command("submit", "--nodes", "2", *leader, "--cwd", str(work), "--", "bash", "-c", TASK)
    wait_job_finished(hq_env, 1, 1)
    [task] = hq_env.command("task", "info", "1", "0", json=True)
    workers = {w["id"]: w for w in workers_all(hq_env)}
    groups = {workers[n["worker"]]["configuration"]["group"] for n in task["nodes"]}
    [allocation_id] = {workers[n["worker"]]["allocation"]["id"] for n in task["nodes"]}
    assert groups == {f"{allocation_id}/0"}
    serial = [
        w for w in workers.values() if w["configuration"]["group"].startswith(f"{allocation_id}/1/")
    ]
    assert [w["configuration"]["filter_tags"] for w in serial] == [["role=worker"]]


def test_drained_allocation_hands_its_task_to_another_on_real_slurm(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, tmp_path: Path
) -> None:
    setup_server(hq_env)
    add_queue(hq_env, "--time-limit", "5m", "--idle-timeout", "3s", "--cpus", "1")
    started = tmp_path / "started"
    script = (
        f'echo "$HQ_INSTANCE_ID" >> {started}; if [ "$HQ_INSTANCE_ID" = 0 ]; then sleep 300; fi'
    )
    hq_env.command("submit", "--crash-limit", "1", "--", "bash", "-c", script)
    wait_until(lambda: started.exists(), timeout=WAIT, interval=0.5, what="the task starts")
    [worker] = hq_env.command("worker", "list", json=True)
    allocation_id = worker["allocation"]["id"]
    hq_env.run("alloc", "drain", allocation_id)
    wait_job_finished(hq_env, 1, 1)
    assert started.read_text().split() == ["0", "1"]
    [task] = hq_env.command("task", "info", "1", "0", json=True)
    assert task["instances"] == [{"instance_id": 0, "ended": "allocation drained"}]
    events: list[dict[str, Any]] = hq_env.command("alloc", "events", "1", json=True)
    mine = [e["event"] for e in events if e["allocation_id"] == allocation_id]
    assert "allocation-draining" in mine and "allocation-drained" in mine
