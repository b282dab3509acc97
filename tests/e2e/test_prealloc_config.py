"""Preallocated pools and the TOML configuration, end to end on the local backend."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.harness import HqEnv, wait_until


def add_local_queue(env: HqEnv, *options: str) -> None:
    """`hq alloc add local` with a 10 minute time limit and workers of one cpu, plus `options`."""
    env.command(
        "alloc", "add", "local", "--no-dry-run", "--time-limit", "10m", "--cpus", "1", *options
    )


def running_workers(env: HqEnv) -> list[int]:
    workers: list[dict[str, Any]] = env.command("worker", "list", json=True)
    return sorted(w["id"] for w in workers if w["state"] == "RUNNING")


def allocation_states(env: HqEnv, queue_id: int = 1) -> list[str]:
    allocations: list[dict[str, Any]] = env.command("alloc", "info", str(queue_id), json=True)
    return [a["status"] for a in allocations]


def test_persistent_pool_is_up_without_a_job_survives_idle_timeout_and_stops(
    hq_env: HqEnv,
) -> None:
    hq_env.start_server()
    add_local_queue(
        hq_env,
        "--idle-timeout",
        "1s",
        "--preallocate",
        "2",
        "--persist",
        "--name",
        "warm",
    )
    wait_until(lambda: len(running_workers(hq_env)) == 2, timeout=30, what="2 pool workers")
    first = running_workers(hq_env)
    time.sleep(3)  # three idle timeouts of an ordinary worker
    assert running_workers(hq_env) == first
    assert allocation_states(hq_env) == ["running", "running"]
    [queue] = hq_env.command("alloc", "list", json=True)
    assert queue["preallocate"] == {
        "jobs": 2,
        "persist": True,
        "memory": None,
        "started": True,
        "stopped": False,
    }
    assert "2 allocations, persistent, started" in hq_env.command("alloc", "list")
    assert hq_env.command("alloc", "list", mode="quiet").strip() == "1 ACTIVE preallocate=2"
    allocations = hq_env.command("alloc", "info", "1", json=True)
    assert [a["preallocate"] for a in allocations] == [queue["preallocate"]] * 2

    result = hq_env.command("alloc", "stop", "--preallocated", "warm", json=True)
    assert result == {"queue_ids": [1]}
    wait_until(
        lambda: allocation_states(hq_env) == ["finished", "finished"],
        timeout=30,
        what="the pool's allocations end",
    )
    assert running_workers(hq_env) == []
    events = [e["event"] for e in hq_env.command("alloc", "events", "1", json=True)]
    assert events.count("allocation-queued") == 2  # none replaced
    assert "prealloc-started" in events and "prealloc-stopped" in events
    assert "stopped" in hq_env.command("alloc", "info", "1")


def test_stop_needs_preallocated(hq_env: HqEnv) -> None:
    hq_env.start_server()
    out = hq_env.command("alloc", "stop", expect_fail=True)
    assert "hq alloc stop --preallocated" in out


CONFIG = """
[queue.cpu]
manager = "local"
time_limit = "10m"
idle_timeout = "5s"
cpus = 1

[pools]
licence = 1
"""


def test_server_start_with_a_config_runs_a_job(hq_env: HqEnv) -> None:
    path = hq_env.work_dir / "hqpy.toml"
    path.write_text(CONFIG)
    hq_env.start_server("--config", str(path))
    [queue] = hq_env.command("alloc", "list", json=True)
    assert (queue["name"], queue["manager"]) == ("cpu", "LOCAL")
    pools = hq_env.command("pool", "list", json=True)
    assert [(p["name"], p["size"]) for p in pools] == [("licence", 1)]
    hq_env.command("submit", "--pool", "licence", "--", "echo", "hello")
    [job] = hq_env.command("job", "wait", "1", json=True)
    assert job["task_stats"]["finished"] == 1
    assert hq_env.command("job", "cat", "1", "stdout").strip() == "hello"


def test_hqpy_config_variable_and_a_bad_file_starts_nothing(hq_env: HqEnv) -> None:
    path = hq_env.work_dir / "hqpy.toml"
    path.write_text('[queue.cpu]\nmanager = "local"\ntime_limt = "1h"\n')
    env = dict(hq_env.env, HQPY_CONFIG=str(path))
    out = hq_env.run("server", "start", expect_fail=True, env=env)
    assert out.stderr.strip().endswith(
        f"{path}: queue.cpu.time_limt: unknown key; did you mean `time_limit`?"
    )
    assert not (hq_env.server_dir / "hq-current").exists()


def test_alloc_load_adds_queues_and_pools_and_a_bad_file_changes_nothing(
    hq_env: HqEnv,
) -> None:
    hq_env.start_server()
    bad = hq_env.work_dir / "bad.toml"
    bad.write_text(
        CONFIG + '\n[preallocate.small]\nmanager = "local"\nwalltime = "8 hours and a bit"\n'
    )
    out = hq_env.command("alloc", "load", str(bad), expect_fail=True)
    assert f'{bad}: preallocate.small.walltime: "8 hours and a bit" is not a duration' in out
    missing = hq_env.work_dir / "missing.toml"
    missing.write_text(
        CONFIG + '\n[queue.x]\nmanager = "local"\ntime_limit = "1h"\nenv_script = "none.sh"\n'
    )
    out = hq_env.command("alloc", "load", str(missing), expect_fail=True)
    assert "queue x: Env script" in out and "no queue was added" in out
    assert hq_env.command("alloc", "list", json=True) == []
    assert hq_env.command("pool", "list", json=True) == []

    good = hq_env.work_dir / "good.toml"
    good.write_text(
        CONFIG + '\n[preallocate.small]\nmanager = "local"\nwalltime = "1h"\njobs = 2\n'
    )
    result = hq_env.command("alloc", "load", str(good), json=True)
    assert result == {"queue_ids": [1, 2], "pools": {"licence": 1}}
    queues = hq_env.command("alloc", "list", json=True)
    assert [(q["name"], q.get("filter_tags")) for q in queues] == [
        ("cpu", None),
        ("small", ["small"]),
    ]
    # Not persistent and no work: the pool submits nothing.
    assert allocation_states(hq_env, 2) == []


def test_config_queues_are_journaled_once_across_restarts(hq_env: HqEnv) -> None:
    path = hq_env.work_dir / "hqpy.toml"
    path.write_text(CONFIG)
    journal = hq_env.work_dir / "journal.bin"
    hq_env.start_server("--config", str(path), "--journal", str(journal))
    extra = hq_env.work_dir / "extra.toml"
    extra.write_text('[queue.more]\nmanager = "local"\ntime_limit = "1h"\n')
    assert hq_env.command("alloc", "load", str(extra), mode="quiet").split() == ["2"]
    assert hq_env.stop_server() == 0
    hq_env.start_server("--config", str(path), "--journal", str(journal))
    queues = hq_env.command("alloc", "list", json=True)
    assert [(q["id"], q["name"]) for q in queues] == [(1, "cpu"), (2, "more")]
    assert [p["name"] for p in hq_env.command("pool", "list", json=True)] == ["licence"]


def test_stop_preallocated_lets_running_tasks_finish(hq_env: HqEnv) -> None:
    hq_env.start_server()
    add_local_queue(
        hq_env,
        "--preallocate",
        "1",
        "--persist",
        "--filter-tag",
        "warm",
    )
    wait_until(lambda: len(running_workers(hq_env)) == 1, timeout=30, what="the pool's worker")
    marker = hq_env.work_dir / "started"
    hq_env.command("submit", "--tag", "warm", "--", "bash", "-c", f"touch {marker}; sleep 2")
    wait_until(marker.exists, timeout=30, what="the task starts")
    hq_env.command("alloc", "stop", "--preallocated")
    [job] = hq_env.command("job", "wait", "1", json=True)
    assert job["task_stats"]["finished"] == 1
    wait_until(
        lambda: allocation_states(hq_env) == ["finished"],
        timeout=30,
        what="the pool's allocation ends after its task",
    )


def test_tagged_job_starts_allocations_only_in_the_matching_queue(hq_env: HqEnv) -> None:
    hq_env.start_server()
    for tag in ("gpu", "cpu"):
        hq_env.command(
            "alloc",
            "add",
            "local",
            "--no-dry-run",
            "--time-limit",
            "10m",
            "--cpus",
            "1",
            "--idle-timeout",
            "2s",
            "--filter-tag",
            tag,
            "--name",
            tag,
        )
    hq_env.command("submit", "--tag", "cpu", "--", "true")
    [job] = hq_env.command("job", "wait", "1", json=True)
    assert job["task_stats"]["finished"] == 1
    assert allocation_states(hq_env, 1) == []
    assert len(allocation_states(hq_env, 2)) == 1
    assert "cpu" in hq_env.table("alloc", "list").column("Filter tags")


def test_fit_check_sees_a_queues_memory(hq_env: HqEnv) -> None:
    hq_env.start_server()
    add_local_queue(
        hq_env,
        "--memory",
        "16g",
        "--name",
        "small",
    )
    result = hq_env.run("submit", "--resource", "mem=32768", "--", "true")
    assert 'needs mem 32 GiB; queue 1 "small" gives 16 GiB' in result.stderr, result.stderr


def test_preallocate_and_stop_in_every_output_mode(hq_env: HqEnv) -> None:
    hq_env.start_server()
    add_local_queue(
        hq_env,
        "--preallocate",
        "1",
        "--name",
        "small",
    )
    assert allocation_states(hq_env) == []  # no work, not persistent: nothing yet
    assert hq_env.command("alloc", "preallocate", "small", mode="quiet") == "1\n"
    wait_until(lambda: len(running_workers(hq_env)) == 1, timeout=30, what="the pool's worker")
    result = hq_env.run("alloc", "preallocate")
    assert "Preallocated pools started: 1" in result.stderr
    assert hq_env.command("alloc", "stop", "--preallocated", "small", json=True) == {
        "queue_ids": [1]
    }
    result = hq_env.run("alloc", "stop", "--preallocated", "nope", expect_fail=True)
    assert "Allocation queue `nope` not found" in result.stderr
    out = hq_env.command("--output-mode", "json", "alloc", "preallocate", "x", expect_fail=True)
    assert '"error": "Allocation queue `x` not found' in out
