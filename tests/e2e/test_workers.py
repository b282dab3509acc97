"""`hq worker ...`: sharing work, listing, stopping, idle timeout, worker loss, batch managers."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.e2e.harness import HqEnv, parse_table, process_alive, read_lines, wait_until

pytestmark = pytest.mark.e2e

# Record every run of a task; the first run (instance 0) then blocks until its worker dies (it
# polls the worker's pid, as the kernel would kill it with a parent-death signal), while a
# re-run finishes at once.
RERUN_SCRIPT = (
    'echo "$HQ_INSTANCE_ID" >> "instances-$HQ_TASK_ID"; '
    'if [ "$HQ_INSTANCE_ID" = 0 ]; then '
    "while kill -0 $PPID 2>/dev/null; do sleep 0.1; done; exit 7; fi; "
    'echo "done $HQ_INSTANCE_ID"'
)


def worker_rows(hq_env: HqEnv, *args: str) -> dict[str, dict[str, str]]:
    table = parse_table(hq_env.command("worker", "list", *args))
    return {r["ID"]: r for r in table.records()}


def test_two_workers_share_array(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--hostname", "w1")
    hq_env.start_worker("--hostname", "w2")
    # Every task waits until two tasks have started: with one cpu per worker, the first two
    # tasks can only run at the same time on different workers.
    script = (
        'touch "started-$HQ_TASK_ID"; '
        "for i in $(seq 200); do "
        '[ "$(ls started-* | wc -l)" -ge 2 ] && exit 0; sleep 0.05; done; exit 1'
    )
    hq_env.command("submit", "--wait", "--array", "1-6", "--", "bash", "-c", script)
    table = parse_table(hq_env.command("task", "list", "1"))
    assert set(table.column("State")) == {"FINISHED"}
    assert set(table.column("Worker")) == {"w1", "w2"}


def test_worker_list_cli(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--hostname", "node-a", "--detect-resources=none", cpus="2")
    table = parse_table(hq_env.command("worker", "list"))
    assert table.header == ["ID", "State", "Hostname", "Resources", "Manager", "Manager Job ID"]
    assert table.records() == [
        {
            "ID": "1",
            "State": "RUNNING",
            "Hostname": "node-a",
            "Resources": "cpus 2",
            "Manager": "None",
            "Manager Job ID": "N/A",
        }
    ]


def test_worker_list_json(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(
        "--hostname", "node-a", "--detect-resources=none", "--heartbeat", "2s", cpus="2"
    )
    workers = hq_env.command("worker", "list", json=True)
    assert isinstance(workers, list) and len(workers) == 1
    worker = workers[0]
    assert worker["id"] == 1
    config = worker["configuration"]
    assert config["hostname"] == "node-a"
    assert config["heartbeat_interval"] == 2.0
    assert config["idle_timeout"] is None
    assert config["time_limit"] is None
    assert config["group"] == "default"
    assert config["resources"]["resources"] == [
        {"name": "cpus", "kind": "range", "start": 0, "end": 1}
    ]
    assert worker["allocation"] is None
    assert worker["ended"] is None
    assert isinstance(worker["started"], str)


def test_worker_stop(hq_env: HqEnv) -> None:
    hq_env.start_server()
    worker = hq_env.start_worker()
    result = hq_env.run("worker", "stop", "1")
    assert " INFO Worker 1 stopped" in result.stderr
    assert worker.wait_exit() == 0
    rows = worker_rows(hq_env, "--all")
    assert rows["1"]["State"] == "STOPPED"
    assert worker_rows(hq_env) == {}


def test_worker_idle_timeout(hq_env: HqEnv) -> None:
    hq_env.start_server()
    # It may stop before a `worker list` could see it running, so do not wait for that.
    worker = hq_env.start_worker("--idle-timeout", "1s", "--heartbeat", "500ms", wait=False)
    assert worker.wait_exit() == 0
    rows = worker_rows(hq_env, "--all")
    assert rows["1"]["State"] == "IDLE TIMEOUT"


def test_worker_killed_task_reruns_elsewhere(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--hostname", "first")
    hq_env.command("submit", "--", "bash", "-c", RERUN_SCRIPT)
    wait_until(lambda: read_lines(hq_env.path("instances-0")) == ["0"])
    hq_env.start_worker("--hostname", "second")
    hq_env.kill_worker(1)

    hq_env.wait_job()
    assert read_lines(hq_env.path("instances-0")) == ["0", "1"]
    assert hq_env.path("job-1", "0.stdout").read_text() == "done 1\n"
    [task] = parse_table(hq_env.command("task", "list", "1")).records()
    assert (task["State"], task["Worker"]) == ("FINISHED", "second")
    rows = worker_rows(hq_env, "--all")
    assert rows["1"]["State"] == "CONNECTION LOST"
    assert rows["2"]["State"] == "RUNNING"


def test_worker_killed_task_processes_die(hq_env: HqEnv) -> None:
    """A task does not outlive its worker (HyperQueue gives tasks a parent-death signal), nor
    do the processes it started: the worker's orphan guard kills the task's process group."""
    hq_env.start_server()
    hq_env.start_worker()
    script = "sleep 100 & echo $! > child.pid; echo $$ > task.pid; wait"
    hq_env.command("submit", "--", "bash", "-c", script)
    files = [hq_env.path("task.pid"), hq_env.path("child.pid")]
    wait_until(lambda: all(f.exists() and f.read_text().strip() for f in files))
    pids = [int(f.read_text()) for f in files]
    assert all(process_alive(pid) for pid in pids)
    hq_env.kill_worker(1)
    wait_until(
        lambda: not any(process_alive(pid) for pid in pids), timeout=10, what="the tasks end"
    )


def test_worker_heartbeat_lost(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--heartbeat", "500ms", "--hostname", "frozen")
    hq_env.command("submit", "--", "bash", "-c", RERUN_SCRIPT)
    wait_until(lambda: read_lines(hq_env.path("instances-0")) == ["0"])
    hq_env.start_worker("--hostname", "healthy")
    hq_env.kill_worker(1, signal.SIGSTOP)

    wait_until(
        lambda: worker_rows(hq_env, "--all")["1"]["State"] == "HEARTBEAT LOST",
        what="worker 1 is HEARTBEAT LOST",
    )
    hq_env.wait_job()
    assert read_lines(hq_env.path("instances-0"))[-1] == "1"
    assert hq_env.path("job-1", "0.stdout").read_text() == "done 1\n"
    [task] = parse_table(hq_env.command("task", "list", "1")).records()
    assert (task["State"], task["Worker"]) == ("FINISHED", "healthy")
    # Teardown sends SIGCONT before ending the worker.


def test_crash_limit(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--crash-limit", "1", "--", "bash", "-c", RERUN_SCRIPT)
    wait_until(lambda: read_lines(hq_env.path("instances-0")) == ["0"])
    # A crash counts for a task the server knows was running: its worker reported the start
    # (batched, so a loaded machine may write the file first).
    hq_env.wait_task_states(
        lambda states: states.get(0, "").upper() == "RUNNING", what="the start reported"
    )
    hq_env.kill_worker(1)
    hq_env.wait_job()
    info = parse_table(hq_env.command("task", "info", "1", "0", "-v")).as_dict()
    assert info["State"] == "FAILED"
    assert "limit was reached" in info["Error"]
    assert read_lines(hq_env.path("instances-0")) == ["0"]


def test_worker_exits_when_server_stops(hq_env: HqEnv) -> None:
    hq_env.start_server()
    worker = hq_env.start_worker()
    assert hq_env.stop_server() == 0
    assert worker.wait_exit() == 1
    assert "Traceback" not in worker.stderr(), worker.stderr()


def test_worker_manager_slurm_without_allocation(hq_env: HqEnv) -> None:
    hq_env.start_server()
    worker = hq_env.start_worker("--manager", "slurm", wait=False)
    assert worker.wait_exit() == 1
    assert worker_rows(hq_env, "--all") == {}


def test_worker_detects_slurm_allocation(hq_env: HqEnv) -> None:
    hq_env.start_server()
    bin_dir = hq_env.root / "empty-bin"
    bin_dir.mkdir()
    env = dict(hq_env.env)
    env["SLURM_JOB_ID"] = "77"
    # No `scontrol` here: the time-limit query fails, which must only cause a warning.
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}"
    worker = hq_env.start_worker("--manager", "detect", env=env)
    row = worker_rows(hq_env)["1"]
    assert row["Manager"] == "SLURM"
    assert row["Manager Job ID"] == "77"
    assert any(" WARN " in line for line in worker.stderr().splitlines()), worker.stderr()
    assert worker.is_running()
    data = hq_env.command("worker", "list", json=True)
    assert data[0]["allocation"] == {"manager": "SLURM", "id": "77"}


def test_worker_sizes_itself_from_its_allocation(hq_env: HqEnv) -> None:
    """A 1-core Slurm (or PBS) allocation gives a 1-cpu worker; `--cpus` still wins."""
    hq_env.start_server()
    env = dict(hq_env.env)
    env["SLURM_CPUS_ON_NODE"] = "1"
    hq_env.start_worker("--detect-resources", "cpus", cpus=None, env=env)
    env = dict(hq_env.env)
    env["PBS_NCPUS"] = "1"
    hq_env.start_worker("--detect-resources", "cpus", cpus="3", env=env)
    workers = {w["id"]: w for w in hq_env.command("worker", "list", json=True)}
    [cpus] = workers[1]["configuration"]["resources"]["resources"]
    assert cpus["name"] == "cpus"
    assert (cpus["kind"], cpus["end"] - cpus["start"]) == ("range", 0)
    assert workers[2]["configuration"]["resources"]["resources"] == [
        {"name": "cpus", "kind": "range", "start": 0, "end": 2}
    ]
