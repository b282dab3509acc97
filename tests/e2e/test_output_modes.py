"""`--output-mode json|quiet`: exact documents and lines, errors, and usage errors."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.e2e.harness import HqEnv, wait_until

pytestmark = pytest.mark.e2e

TASK_STATS = {"aborted", "canceled", "failed", "finished", "running", "waiting"}


def test_job_list_json(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.command("submit", "--array", "1-3", "--name", "my-job", "--", "echo", "tt")
    jobs = hq_env.command("job", "list", json=True)
    assert jobs == [
        {
            "id": 1,
            "name": "my-job",
            "task_count": 3,
            "task_stats": {
                "aborted": 0,
                "canceled": 0,
                "failed": 0,
                "finished": 0,
                "running": 0,
                "waiting": 3,
            },
        }
    ]


def test_job_info_json_waiting(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.command("submit", "--array", "1-3", "--", "echo", "tt")
    jobs = hq_env.command("job", "info", "1", json=True)
    assert isinstance(jobs, list) and len(jobs) == 1
    job = jobs[0]
    assert set(job) == {"info", "submits", "finished_at", "max_fails", "started_at", "tasks"}
    assert job["info"] == {
        "id": 1,
        "name": "echo",
        "task_count": 3,
        "task_stats": {k: (3 if k == "waiting" else 0) for k in TASK_STATS},
        "is_open": False,
        "cancel_reason": None,
    }
    assert job["finished_at"] is None
    assert job["max_fails"] is None
    assert isinstance(job["started_at"], str)
    assert job["tasks"] == [
        {"id": 1, "state": "waiting"},
        {"id": 2, "state": "waiting"},
        {"id": 3, "state": "waiting"},
    ]
    assert len(job["submits"]) == 1
    array = job["submits"][0]["array"]
    assert set(array) == {
        "resources",
        "priority",
        "program",
        "pin_mode",
        "crash_limit",
        "task_dir",
        "time_limit",
    }
    assert array["priority"] == 0
    assert array["pin_mode"] is None
    assert array["task_dir"] is False
    assert array["time_limit"] is None
    program = array["program"]
    assert set(program) == {"args", "env", "cwd", "stdout", "stderr"}
    assert program["args"] == ["echo", "tt"]
    assert program["env"] == {}


def test_job_info_json_finished_task(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "echo", "tt")
    job = hq_env.job_info()
    assert job["info"]["task_stats"]["finished"] == 1
    assert job["finished_at"] is not None
    [task] = job["tasks"]
    assert task["id"] == 0
    assert task["state"] == "finished"
    cwd = str(hq_env.work_dir.resolve())
    assert task["cwd"] == cwd
    assert task["stdout"] == f"{cwd}/job-1/0.stdout"
    assert task["stderr"] == f"{cwd}/job-1/0.stderr"


def test_task_list_json(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.command("submit", "--array", "1-2", "--", "true")
    assert hq_env.command("task", "list", "1", json=True) == {
        "1": [{"id": 1, "state": "waiting"}, {"id": 2, "state": "waiting"}]
    }


def test_quiet_submit(hq_env: HqEnv) -> None:
    hq_env.start_server()
    assert hq_env.command("submit", "--", "true", mode="quiet") == "1\n"
    assert hq_env.command("submit", "--", "true", mode="quiet") == "2\n"


def test_quiet_worker_list(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    assert hq_env.command("worker", "list", mode="quiet") == "1 RUNNING\n"


def test_json_error_goes_to_stdout(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run(
        "--output-mode", "json", "submit", "--job", "123", "--", "true", expect_fail=True
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert set(data) == {"error"}
    assert "Job 123 not found." in data["error"]


def test_cli_error_goes_to_stderr(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("submit", "--job", "123", "--", "true", expect_fail=True)
    assert result.returncode == 1
    assert "Job 123 not found." in result.stderr
    assert result.stdout == ""


def test_usage_error_exits_2(hq_env: HqEnv) -> None:
    result = hq_env.run("submit", "--array", expect_fail=True)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr != ""


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("submit", "--time-limit", "90", "--", "true"), "--time-limit"),
        (("submit", "--time-request", "90", "--", "true"), "--time-request"),
        (("worker", "start", "--idle-timeout", "90"), "--idle-timeout"),
        (("worker", "start", "--time-limit", "90"), "--time-limit"),
        (("server", "start", "--idle-timeout", "90"), "--idle-timeout"),
        (("alloc", "add", "local", "--time-limit", "90"), "-t/--time-limit"),
        (("alloc", "add", "slurm", "-t", "1h", "--idle-timeout", "90"), "--idle-timeout"),
        (("alloc", "add", "slurm", "-t", "1h", "--worker-time-limit", "90"), "--worker-time-limit"),
    ],
)
def test_bare_number_duration_is_a_usage_error_with_an_example(
    hq_env: HqEnv, args: tuple[str, ...], option: str
) -> None:
    result = hq_env.run(*args, expect_fail=True)
    assert result.returncode == 2
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: argument {option}: invalid duration '90': time unit needed,"
        " for example 90m, 1h 30m or 01:30:00 (90s for seconds)"
    )


def test_progress_explains_waiting_for_a_queued_local_allocation(hq_env: HqEnv) -> None:
    hq_env.env.update(
        {
            "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "100",
            "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "100",
            "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "100",
        }
    )
    hq_env.start_server()
    # The worker start command holds the allocation QUEUED (no worker registers).
    hq_env.command(
        "alloc", "add", "local", "--time-limit", "10m", "--cpus", "1",
        "--worker-start-cmd", "sleep 60",
    )  # fmt: skip
    # Output to a file, not a terminal: a line now and then, all on stdout.
    progress = hq_env._spawn("progress", hq_env.hq_argv("submit", "--progress", "--", "true"), None)
    wanted = "waiting for workers: 1 allocation queued in local"
    wait_until(lambda: wanted in progress.stdout(), what="the waiting line")
    hq_env.command("job", "cancel", "1")
    assert progress.wait_exit() == 0
    lines = progress.stdout().splitlines()
    elapsed = r", elapsed (\d+m )?\d+s"
    assert lines[0] == "Job submitted successfully, job ID: 1"
    assert re.fullmatch(r"\[\.{40}\] 0/1 tasks done, 0 running, 0 failed" + elapsed, lines[1])
    assert wanted in lines
    # The canceled task counts as done.
    assert re.fullmatch(r"\[#{40}\] 1/1 tasks done, 0 running, 0 failed" + elapsed, lines[-1])
    assert "waiting for workers" not in progress.stderr()


def test_local_queue_messages_and_worker_shape(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("alloc", "add", "local", "--time-limit", "10m", "--workers-per-alloc", "1")
    # Local only checks the script: it must not claim a trial was submitted and cancelled.
    assert "The allocation script was checked with `bash -n`." in result.stderr
    assert "trial allocation was submitted" not in result.stderr
    assert "Allocation queue 1 successfully created" in result.stderr
    queue = hq_env.table("alloc", "list").records()[0]
    cpus = len(os.sched_getaffinity(0))
    assert queue["Worker resources"] == f"--cpus {cpus}"
    for action, done in (("pause", "paused"), ("resume", "resumed"), ("remove", "removed")):
        result = hq_env.run("alloc", action, "1")
        assert result.stderr.strip().endswith(f"Allocation queue 1 successfully {done}")
        assert result.stdout == ""
