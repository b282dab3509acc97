"""Workers that die or freeze: `kill -9` of a worker, of a whole local allocation (its process
group), and a worker frozen with SIGSTOP past its heartbeat timeout, then resumed. Their tasks
re-run elsewhere with a new instance id and one crash counted; nothing completes twice."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from hqpy.common.states import TaskState
from tests.e2e.harness import HqEnv, wait_until
from tests.faults.common import (
    FAST_TIMERS,
    allocation_script_groups,
    append_line,
    assert_exactly_once,
    assert_no_allocation_left,
    task_views,
)

pytestmark = pytest.mark.e2e

FIRST_RUN_HANGS = '[ "$HQ_INSTANCE_ID" = 0 ] && sleep 300; '
"""The first instance of each task never ends by itself: only a re-run completes."""


def tasks(hq_env: HqEnv) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = hq_env.command("task", "list", "1", json=True)["1"]
    return rows


def two_running(hq_env: HqEnv) -> None:
    hq_env.wait_task_states(
        lambda s: sorted(v.upper() for v in s.values()) == ["RUNNING", "RUNNING"],
        what="both tasks running",
    )


def assert_rerun_once(hq_env: HqEnv, done_instances: dict[str, str]) -> None:
    assert set(done_instances.values()) == {"1"}, done_instances
    views = task_views(hq_env)
    assert sorted((t.instance_id, t.crash_count) for t in views) == [(1, 1), (1, 1)]


def test_kill9_of_a_worker_reruns_its_tasks_elsewhere(hq_env: HqEnv) -> None:
    done = hq_env.path("done.txt")
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    hq_env.command(
        "submit", "--array", "1-2", "--", "bash", "-c", append_line(done, FIRST_RUN_HANGS)
    )
    two_running(hq_env)
    hq_env.kill_worker(1)
    hq_env.start_worker(cpus="2")
    hq_env.wait_job()
    assert_rerun_once(hq_env, assert_exactly_once(hq_env, done, range(1, 3)))


def test_kill9_of_a_whole_local_allocation(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    done = hq_env.path("done.txt")
    hq_env.start_server()
    hq_env.run(
        "alloc", "add", "local", "--no-dry-run", "--time-limit", "10m",
        "--max-worker-count", "1", "--", "--cpus", "2",
    )  # fmt: skip
    hq_env.command(
        "submit", "--array", "1-2", "--", "bash", "-c", append_line(done, FIRST_RUN_HANGS)
    )
    two_running(hq_env)
    groups = allocation_script_groups(hq_env)
    assert len(groups) == 1, groups
    [group] = groups
    os.killpg(group, signal.SIGKILL)
    # The allocator backs off after a failed allocation: the re-runs go to a worker of ours.
    hq_env.start_worker(cpus="2", wait=False)
    hq_env.wait_job()
    assert_rerun_once(hq_env, assert_exactly_once(hq_env, done, range(1, 3)))
    assert hq_env.stop_server() == 0
    assert_no_allocation_left(hq_env)


def test_worker_frozen_past_its_heartbeat_is_refused_when_it_comes_back(hq_env: HqEnv) -> None:
    done = hq_env.path("done.txt")
    server = hq_env.start_server()
    frozen = hq_env.start_worker("--heartbeat", "1s", "--server-lost-grace", "1m", cpus="2")
    hq_env.command(
        "submit", "--array", "1-2", "--", "bash", "-c", append_line(done, FIRST_RUN_HANGS)
    )
    two_running(hq_env)
    frozen.signal_group(signal.SIGSTOP)  # the worker and its tasks
    try:
        wait_until(
            lambda: "missed its heartbeats" in server.stderr(), what="the server drops the worker"
        )
        hq_env.start_worker(cpus="2")
        hq_env.wait_job()
    finally:
        frozen.signal_group(signal.SIGCONT)
    # Back, it presents its (first-instance) tasks: they belong to someone else now.
    wait_until(lambda: "are not its any more" in server.stderr(), what="the late worker is refused")
    assert frozen.is_running()
    assert_rerun_once(hq_env, assert_exactly_once(hq_env, done, range(1, 3)))
    workers = {w["id"]: w["state"] for w in hq_env.command("worker", "list", "--all", json=True)}
    assert workers[2] == "RUNNING"


def test_a_task_killed_just_before_its_worker_runs_again(hq_env: HqEnv) -> None:
    """The batch system ends an allocation by killing all its processes: a task's death can be
    seen by its worker just before the worker's own. The task is run again, not failed."""
    hq_env.start_server()
    hq_env.start_worker(cpus="1")
    # The first instance kills itself, and its worker 50 ms later.
    script = (
        'if [ "$HQ_INSTANCE_ID" = 0 ]; then (sleep 0.05; kill -9 $PPID) & kill -9 $$; fi; '
        'echo "ran $HQ_INSTANCE_ID"'
    )
    hq_env.command("submit", "--", "bash", "-c", script)
    wait_until(
        lambda: (
            tasks(hq_env)[0]["state"].upper() == "WAITING"
            and hq_env.command("worker", "list", json=True) == []
        ),
        what="the worker is gone and its task waits again",
    )
    hq_env.start_worker(cpus="1")
    hq_env.wait_job()
    [view] = task_views(hq_env)
    assert (view.state, view.instance_id, view.crash_count) == (TaskState.FINISHED, 1, 1)
    assert hq_env.command("job", "cat", "1", "stdout") == "ran 1\n"
