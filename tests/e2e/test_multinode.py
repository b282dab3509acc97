"""Multi-node tasks end to end: an allocation's workers form the group a `--nodes N` task runs
on; the task sees `HQ_NUM_NODES`, `HQ_HOST_FILE` and `HQ_NODE_FILE`. Local backend, and Slurm
and PBS through their emulators (which run the script's `srun` / `pbsdsh` like the real tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, wait_until
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
    # The deadline reaches the scheduler: allocation workers have the queue's time limit.
    assert {workers[i]["configuration"]["time_limit"] for i in ids} == {600.0}
    table = hq_env.command("task", "info", "1", "0")
    assert f"(worker {ids[1]})" in table
    wait_all_ended(hq_env)


@pytest.mark.parametrize("manager", ["local", "slurm"])
def test_drained_allocation_hands_its_running_task_to_another_without_a_crash(
    batches: Batches, hq_env: HqEnv, manager: str, tmp_path: Path
) -> None:
    batches.setup(hq_env, manager)
    hq_env.start_server()
    add_queue(hq_env, manager, "--time-limit", "10m", "--idle-timeout", "2s", "--cpus", "1")
    started = tmp_path / "started"
    script = (
        f'echo "$HQ_INSTANCE_ID" >> {started}; if [ "$HQ_INSTANCE_ID" = 0 ]; then sleep 300; fi'
    )
    # With a crash limit of 1, one counted crash would fail the task.
    hq_env.command("submit", "--crash-limit", "1", "--", "bash", "-c", script)
    wait_until(lambda: started.exists(), timeout=30, what="the task starts")
    [worker] = hq_env.command("worker", "list", json=True)
    allocation_id = worker["allocation"]["id"]
    result = hq_env.run("alloc", "drain", allocation_id)
    assert f"Allocation {allocation_id} is draining" in result.stderr
    assert job_stats(hq_env, 1)["finished"] == 1
    assert started.read_text().split() == ["0", "1"]
    [task] = hq_env.command("task", "info", "1", "0", json=True)
    assert task["instances"] == [{"instance_id": 0, "ended": "allocation drained"}]
    assert "allocation drained" in hq_env.command("task", "info", "1", "0")
    wait_all_ended(hq_env)
    events = [
        e["event"]
        for e in hq_env.command("alloc", "events", "1", json=True)
        if e["allocation_id"] == allocation_id
    ]
    assert events == [
        "allocation-queued",
        "allocation-started",
        "allocation-draining",
        "allocation-finished",
        "allocation-drained",
    ]


@pytest.mark.parametrize("manager", ["local", "slurm", "pbs"])
def test_split_allocation_starts_its_parts_and_runs_the_wide_task_in_the_mpi_part(
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
    # Task tags come with issue 10; where `hq submit --tag` exists, the tasks carry the tags
    # the parts' workers filter on.
    tagged = "--tag" in hq_env.run("submit", "--help").stdout
    leader = ["--tag", "role=leader"] if tagged else []
    worker = ["--tag", "role=worker"] if tagged else []
    work = tmp_path / "task"
    work.mkdir()
    hq_env.command("submit", "--nodes", "2", *leader, "--cwd", str(work), "--", "bash", "-c", TASK)
    hq_env.command("submit", "--array", "1-4", *worker, "--", "true")
    assert job_stats(hq_env, 1)["finished"] == 1
    assert job_stats(hq_env, 2)["finished"] == 4
    assert len((work / "hosts.txt").read_text().splitlines()) == 2
    [task] = hq_env.command("task", "info", "1", "0", json=True)
    workers = {w["id"]: w for w in hq_env.command("worker", "list", "--all", json=True)}
    [allocation_id] = {workers[n["worker"]]["allocation"]["id"] for n in task["nodes"]}
    mine = [w for w in workers.values() if w["allocation"]["id"] == allocation_id]
    assert len(mine) == 3
    by_group: dict[str, list[dict[str, Any]]] = {}
    for w in mine:
        by_group.setdefault(w["configuration"]["group"], []).append(w)
    mpi = by_group.pop(f"{allocation_id}/0")
    assert sorted(n["worker"] for n in task["nodes"]) == sorted(w["id"] for w in mpi)
    assert all(w["configuration"]["filter_tags"] == ["role=leader"] for w in mpi)
    [[serial]] = by_group.values()
    assert serial["configuration"]["group"].startswith(f"{allocation_id}/1/")
    assert serial["configuration"]["filter_tags"] == ["role=worker"]

    allocations = hq_env.command("alloc", "info", "1", json=True)
    assert allocations
    for allocation in allocations:
        assert allocation["parts"] == [
            {"kind": "mpi", "nodes": 2, "first_node": 0, "filter_tags": ["role=leader"]},
            {"kind": "serial", "nodes": 1, "first_node": 2, "filter_tags": ["role=worker"]},
        ]
    table = hq_env.command("alloc", "info", "1")
    assert "Each allocation is split into: mpi 2 nodes [role=leader]; serial 1 node" in table
    wait_all_ended(hq_env)


def test_split_counts_that_do_not_add_up_are_refused(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run(
        "alloc",
        "add",
        "local",
        "--time-limit",
        "10m",
        "--workers-per-alloc",
        "4",
        "--split",
        "mpi:2",
        "--split",
        "serial:1",
        expect_fail=True,
    )
    assert result.returncode == 2
    assert (
        "Invalid --split: the split node counts add up to 3, but --workers-per-alloc is 4"
        in result.stderr
    )
    result = hq_env.run(
        "alloc", "add", "local", "--time-limit", "10m", "--split", "gpu:1", expect_fail=True
    )
    assert "unknown kind `gpu`; use mpi or serial" in result.stderr
    assert result.returncode == 2


def test_drain_of_an_unknown_allocation_is_one_clear_error_in_every_mode(hq_env: HqEnv) -> None:
    hq_env.start_server()
    said = hq_env.command("alloc", "drain", "nope", expect_fail=True)
    assert "Allocation nope not found" in said
    assert hq_env.command("alloc", "drain", "nope", json=True, expect_fail=True) == {
        "error": "Allocation nope not found"
    }
    said = hq_env.command("alloc", "drain", "nope", "--grace", "5m", mode="quiet", expect_fail=True)
    assert "Allocation nope not found" in said
    result = hq_env.run("alloc", "drain", "x", "--grace", "soon", expect_fail=True)
    assert result.returncode == 2 and "--grace" in result.stderr
