"""Multi-node tasks end to end: an allocation's workers form the group a `--nodes N` task runs
on; the task sees `HQ_NUM_NODES`, `HQ_HOST_FILE` and `HQ_NODE_FILE`. Local backend, and Slurm
and PBS through their emulators (which run the script's `srun` / `pbsdsh` like the real tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv
from tests.e2e.test_autoalloc import Batches, add_queue, batches, job_stats, wait_all_ended

__all__ = ["batches"]

pytestmark = pytest.mark.e2e

TASK = (
    'echo "$HQ_NUM_NODES" > nodes.txt; cat "$HQ_HOST_FILE" > hosts.txt;'
    ' cat "$HQ_NODE_FILE" > short.txt'
)


@pytest.mark.parametrize("manager", ["local", "slurm", "pbs"])
def test_two_node_task_runs_through_an_allocation_of_two_workers(
    batches: Batches, hq_env: HqEnv, manager: str, tmp_path: Path
) -> None:
    batches.setup(hq_env, manager)
    hq_env.start_server()
    add_queue(
        hq_env,
        manager,
        "--time-limit",
        "10m",
        "--workers-per-alloc",
        "2",
        "--idle-timeout",
        "2s",
        "--cpus",
        "1",
    )
    work = tmp_path / "task"
    work.mkdir()
    hq_env.command("submit", "--nodes", "2", "--cwd", str(work), "--", "bash", "-c", TASK)
    assert job_stats(hq_env, 1)["finished"] == 1
    assert (work / "nodes.txt").read_text() == "2\n"
    hosts = (work / "hosts.txt").read_text().splitlines()
    assert len(hosts) == 2
    short = (work / "short.txt").read_text().splitlines()
    assert short == [h.split(".")[0] for h in hosts]

    [task] = hq_env.command("task", "info", "1", "0", json=True)
    assert [n["host"] for n in task["nodes"]] == hosts
    workers = {w["id"]: w for w in hq_env.command("worker", "list", "--all", json=True)}
    ids = [n["worker"] for n in task["nodes"]]
    assert len(set(ids)) == 2
    groups = {workers[i]["configuration"]["group"] for i in ids}
    allocations = {workers[i]["allocation"]["id"] for i in ids}
    assert len(groups) == 1 and len(allocations) == 1
    table = hq_env.command("task", "info", "1", "0")
    assert f"(worker {ids[1]})" in table
    wait_all_ended(hq_env)
