"""`kill -9` of the server, restarted from its journal (same journal, same server dir): workers
that kept their tasks reconnect and the server adopts them; nothing is lost or run twice."""

from __future__ import annotations

import signal

import pytest

from hqpy.autoalloc.backends.local import _group_alive as group_alive
from tests.e2e.harness import HqEnv, read_lines, wait_until
from tests.faults.common import (
    FAST_TIMERS,
    allocation_script_groups,
    append_line,
    assert_exactly_once,
    assert_no_allocation_left,
    task_views,
)

pytestmark = pytest.mark.e2e


def test_worker_with_grace_keeps_its_tasks_across_a_server_kill(hq_env: HqEnv) -> None:
    journal = hq_env.root / "journal.hqj"
    done = hq_env.path("done.txt")
    gate = hq_env.path("gate")
    server = hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    worker = hq_env.start_worker("--server-lost-grace", "1m", cpus="3")
    wait_gate = f"while [ ! -e {gate} ]; do sleep 0.05; done; "
    hq_env.command("submit", "--array", "1-6", "--", "bash", "-c", append_line(done, wait_gate))
    running = hq_env.wait_task_states(
        lambda s: sum(v.upper() == "RUNNING" for v in s.values()) == 3, what="3 tasks running"
    )
    server.signal(signal.SIGKILL)
    server.wait_exit()

    hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    wait_until(lambda: "registered again" in worker.stderr(), what="the worker registers again")
    assert [w["id"] for w in hq_env.command("worker", "list", json=True)] == [1]
    gate.touch()
    hq_env.wait_job()
    instances = assert_exactly_once(hq_env, done, range(1, 7))
    ids = [i for i, s in running.items() if s.upper() == "RUNNING"]
    assert {instances[str(i)] for i in ids} == {"0"}, "running tasks were re-run, not adopted"
    assert worker.is_running()
    tasks = hq_env.command("task", "list", "1", json=True)["1"]
    assert {t.get("crash_count", 0) for t in tasks} == {0}


def test_kill9_mid_2000_task_array_on_local_allocations(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    journal = hq_env.root / "journal.hqj"
    done = hq_env.path("done.txt")
    server = hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    hq_env.run(
        "alloc",
        "add",
        "local",
        "--no-dry-run",
        "--time-limit",
        "10m",
        "--max-worker-count",
        "2",
        "--",
        "--cpus",
        "1",
    )
    hq_env.command("submit", "--array", "1-2000", "--", "bash", "-c", append_line(done))
    wait_until(lambda: len(read_lines(done)) >= 300, timeout=120, what="300 tasks done")
    before = running_allocations(hq_env)
    server.signal(signal.SIGKILL)
    server.wait_exit()
    assert len(read_lines(done)) < 2000, "killed too late: the array had ended"
    assert before, "no allocation ran"
    groups = allocation_script_groups(hq_env)
    assert len(groups) >= len(before), "the allocations outlive the server (they reconnect)"

    restarted = hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    # The restarted server's local backend follows the process groups it did not start: the
    # same allocations are shown running, and their workers' tasks are adopted.
    wait_until(lambda: "adopted" in restarted.stderr(), timeout=60, what="running tasks adopted")
    wait_until(lambda: before <= running_allocations(hq_env), what="the same allocations running")
    wait_until(
        lambda: hq_env.job_info()["info"]["task_stats"]["finished"] == 2000,
        timeout=180,
        what="all 2000 tasks finished",
    )
    assert_exactly_once(hq_env, done, range(1, 2001))
    assert before <= running_allocations(hq_env), "the allocations ended under the server"
    assert hq_env.stop_server() == 0
    assert_no_allocation_left(hq_env)
    assert not any(group_alive(g) for g in groups), "a process group of the first server lives"
    # Every allocation dir the two servers made was submitted (it has its id); no process of
    # any is left (above).
    dirs = sorted(hq_env.server_dir.glob("*/autoalloc/*/*"))
    assert dirs and all((d / "jobid").exists() for d in dirs), dirs


def running_allocations(hq_env: HqEnv, queue_id: int = 1) -> set[str]:
    """Ids of the queue's allocations `hq alloc info` shows running."""
    allocations = hq_env.command("alloc", "info", str(queue_id), json=True)
    return {a["id"] for a in allocations if a["status"] == "running"}


def test_a_drain_and_task_histories_survive_a_server_kill(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    journal = hq_env.root / "journal.hqj"
    done = hq_env.path("done.txt")
    gate = hq_env.path("gate")
    flags = ("--journal", str(journal), "--journal-flush-period", "100ms")
    server = hq_env.start_server(*flags)
    hq_env.run(
        "alloc", "add", "local", "--no-dry-run", "--time-limit", "10m", "--max-worker-count", "2"
    )
    wait_gate = f"while [ ! -e {gate} ]; do sleep 0.05; done; "
    hq_env.command("submit", "--array", "1-20", "--", "bash", "-c", append_line(done, wait_gate))
    wait_until(lambda: len(running_allocations(hq_env)) == 2, what="2 allocations running")
    hq_env.wait_task_states(
        lambda s: sum(v.upper() == "RUNNING" for v in s.values()) >= 2, what="tasks running"
    )
    hq_env.command("alloc", "drain", "local-1", "--grace", "15s")
    server.signal(signal.SIGKILL)
    server.wait_exit()

    hq_env.start_server(*flags)

    def events(kind: str) -> list[str]:
        listed = hq_env.command("alloc", "events", "1", json=True)
        return [e["allocation_id"] for e in listed if e["event"] == kind]

    # Still draining: its running tasks are handed back at the end of the grace, and it is
    # cancelled (its process group, which this server did not start).
    wait_until(lambda: "local-1" in events("allocation-drained"), timeout=90, what="drained")
    assert events("allocation-draining") == ["local-1"]
    assert "local-1" not in running_allocations(hq_env)
    gate.touch()
    hq_env.wait_job()
    assert_exactly_once(hq_env, done, range(1, 21))
    shown = task_history(hq_env)
    assert any(instances for _, _, _, instances in shown), "no task was handed back"
    assert hq_env.stop_server() == 0
    assert_no_allocation_left(hq_env)

    # `hq task info` shows the same earlier instances after a restart.
    hq_env.start_server(*flags)
    assert task_history(hq_env) == shown
    assert hq_env.stop_server() == 0


def task_history(hq_env: HqEnv) -> list[tuple[int, int, int, tuple[tuple[int, str], ...]]]:
    """Per task: id, instance id, crash count, earlier instances (why each ended)."""
    return [(v.id, v.instance_id, v.crash_count, v.instances) for v in task_views(hq_env)]
