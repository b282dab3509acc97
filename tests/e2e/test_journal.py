"""`hq server start --journal`: a server killed with SIGKILL and started again from its journal
loses no task and runs none twice to completion; a torn tail restores with a warning; damage
in the middle refuses to start with a clear error; `hq journal export|compact`."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv, HqProcess, read_lines, wait_until

pytestmark = pytest.mark.e2e


def journal_finished(hq_env: HqEnv, journal: Path) -> int:
    """Finished tasks the journal holds (what a restore would know)."""
    out = hq_env.run("journal", "export", str(journal), check_stderr=False).stdout
    n = 0
    for line in out.splitlines():
        record = json.loads(line)
        if record["op"] == "tasks-updated":
            n += sum(last - first + 1 for _job, first, last in record["finished"])
    return n


def gated_script(gate: Path, done: Path, free: int) -> str:
    """Tasks up to `free` run through; later ones wait until `gate` exists. A task that ends
    appends "id:instance" to `done`: the file counts completions."""
    return (
        f'if [ "$HQ_TASK_ID" -gt {free} ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi; '
        f'echo "$HQ_TASK_ID:$HQ_INSTANCE_ID" >> {done}'
    )


def start_worker_unchecked(hq_env: HqEnv, cpus: str) -> HqProcess:
    """A worker on a restarted server (worker ids start again from 1 there)."""
    proc = hq_env.start_worker(cpus=cpus, wait=False)
    wait_until(
        lambda: any(w["state"] == "RUNNING" for w in hq_env.command("worker", "list", json=True)),
        what="a worker runs",
    )
    return proc


def test_kill9_mid_array_then_restore_loses_nothing_and_runs_nothing_twice(
    hq_env: HqEnv,
) -> None:
    journal = hq_env.root / "journal.hqj"
    gate = hq_env.path("gate")
    done = hq_env.path("done.txt")
    server = hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    worker = hq_env.start_worker(cpus="3")
    hq_env.command("submit", "--array", "1-60", "--", "bash", "-c", gated_script(gate, done, 15))
    # Tasks 1-15 finish; the next three block at the gate (running) until it opens.
    wait_until(
        lambda: journal_finished(hq_env, journal) == len(read_lines(done)) == 15,
        what="15 completions, all in the journal",
    )
    running = {i for i, s in hq_env.task_states().items() if s.upper() == "RUNNING"}
    assert len(running) == 3, "three tasks should be running when the server is killed"
    finished_before = len(read_lines(done))

    server.signal(signal.SIGKILL)
    server.wait_exit()
    # The worker loses the server and stops, ending its tasks (they never pass the gate).
    worker.wait_exit(30)

    hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    info = hq_env.job_info()["info"]
    assert info["task_stats"]["finished"] == finished_before
    assert info["task_stats"]["finished"] + info["task_stats"]["waiting"] == 60
    gate.touch()
    start_worker_unchecked(hq_env, "3")
    hq_env.wait_job()

    lines = read_lines(done)
    counts = Counter(line.split(":")[0] for line in lines)
    assert sorted(int(i) for i in counts) == list(range(1, 61)), "tasks lost"
    assert [i for i, n in counts.items() if n != 1] == [], "tasks run twice to completion"
    instances = dict(line.split(":") for line in lines)
    for task_id in running:
        assert instances[str(task_id)] == "1", f"task {task_id} kept its old instance id"
    states = hq_env.task_states()
    assert {s.upper() for s in states.values()} == {"FINISHED"} and len(states) == 60
    # Job ids go on after the restored ones.
    out = hq_env.command("submit", "--", "true")
    assert out.strip() == "Job submitted successfully, job ID: 2"


def test_torn_tail_restores_with_a_warning(hq_env: HqEnv) -> None:
    journal = hq_env.root / "journal.hqj"
    hq_env.start_server("--journal", str(journal))
    hq_env.command("submit", "--array", "1-5", "--", "true")
    hq_env.command("submit", "--array", "1-7", "--", "true")
    assert hq_env.stop_server() == 0
    size = journal.stat().st_size
    with open(journal, "r+b") as f:
        f.truncate(size - 10)  # inside the last record (the second submit)
    server = hq_env.start_server("--journal", str(journal))
    jobs = hq_env.command("job", "list", "--all", json=True)
    assert [(j["id"], j["task_count"]) for j in jobs] == [(1, 5)]
    assert "torn or corrupt tail" in server.stderr()
    assert "WARN" in server.stderr()
    # The journal was cut there and goes on well-formed.
    hq_env.command("submit", "--", "true")
    assert hq_env.stop_server() == 0
    export = hq_env.run("journal", "export", str(journal))
    assert export.stderr == ""


def test_damage_in_the_middle_refuses_to_start(hq_env: HqEnv) -> None:
    journal = hq_env.root / "journal.hqj"
    hq_env.start_server("--journal", str(journal))
    hq_env.command("submit", "--array", "1-5", "--", "true")
    hq_env.command("submit", "--array", "1-7", "--", "true")
    assert hq_env.stop_server() == 0
    data = bytearray(journal.read_bytes())
    middle = data.index(b'"1-5"')
    data[middle : middle + 3] = b"XYZ"
    journal.write_bytes(bytes(data))
    result = hq_env.run("server", "start", "--journal", str(journal), expect_fail=True, timeout=30)
    assert result.returncode == 1
    assert "is damaged at byte" in result.stderr
    assert "refusing to load part of it" in result.stderr
    exported = hq_env.run("journal", "export", str(journal), expect_fail=True)
    assert "is damaged at byte" in exported.stderr


def test_export_and_compact(hq_env: HqEnv) -> None:
    journal = hq_env.root / "journal.hqj"
    hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    hq_env.start_worker()
    hq_env.command("submit", "--array", "1-3", "--", "true")
    hq_env.wait_job(1)
    hq_env.command("submit", "--", "true")
    hq_env.wait_job(2)
    hq_env.command("job", "forget", "1")
    assert hq_env.stop_server() == 0
    ops = [
        json.loads(line)["op"]
        for line in hq_env.command("journal", "export", str(journal)).splitlines()
    ]
    assert ops.count("job-submitted") == 2 and "jobs-forgotten" in ops
    out = hq_env.command("journal", "compact", str(journal))
    assert "compacted" in out
    ops = [
        json.loads(line)["op"]
        for line in hq_env.command("journal", "export", str(journal)).splitlines()
    ]
    assert ops.count("job-submitted") == 1 and "jobs-forgotten" not in ops
    hq_env.start_server("--journal", str(journal))
    jobs = hq_env.command("job", "list", "--all", json=True)
    assert [(j["id"], j["task_count"]) for j in jobs] == [(2, 1)]
    out = hq_env.command("submit", "--", "true")
    assert out.strip() == "Job submitted successfully, job ID: 3"


FAST_TIMERS = {
    "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "100",
    "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "100",
    "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "100",
}


def allocation_processes(hq_env: HqEnv) -> list[int]:
    """Live processes of this test started by a local allocation."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            continue
        if hq_env.marker.encode() in environ and any(
            v.startswith(b"HQPY_ALLOCATION_ID=") for v in environ
        ):
            pids.append(int(entry.name))
    return pids


def test_kill9_with_local_allocations_restores_queue_and_leaks_nothing(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    journal = hq_env.root / "journal.hqj"
    gate = hq_env.path("gate")
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
        "1",
        # With `stop`, the worker kills its tasks if the server does not come back in time.
        "--on-server-lost",
        "stop",
        "--",
        "--cpus",
        "2",
    )
    hq_env.command("submit", "--array", "1-30", "--", "bash", "-c", gated_script(gate, done, 8))
    wait_until(
        lambda: journal_finished(hq_env, journal) == len(read_lines(done)) == 8,
        timeout=60,
        what="8 completions, all in the journal",
    )
    running = {i for i, st in hq_env.task_states().items() if st.upper() == "RUNNING"}
    assert len(running) == 2
    server.signal(signal.SIGKILL)
    server.wait_exit()
    # The allocation's worker keeps its tasks (blocked at the gate) and reconnects for 5 min.
    assert allocation_processes(hq_env), "the allocation should outlive the server"

    hq_env.start_server("--journal", str(journal), "--journal-flush-period", "100ms")
    queues = hq_env.command("alloc", "list", json=True)
    assert [q["id"] for q in queues] == [1]
    wait_until(
        lambda: any(w["state"] == "RUNNING" for w in hq_env.command("worker", "list", json=True)),
        what="the allocation's worker comes back",
    )
    gate.touch()
    hq_env.wait_job()
    lines = read_lines(done)
    counts = Counter(line.split(":")[0] for line in lines)
    assert sorted(int(i) for i in counts) == list(range(1, 31)), "tasks lost"
    assert [i for i, n in counts.items() if n != 1] == [], "tasks run twice to completion"
    instances = dict(line.split(":") for line in lines)
    assert {instances[str(i)] for i in running} == {"0"}, "running tasks were adopted, not re-run"
    events = [e["event"] for e in hq_env.command("alloc", "events", "1", json=True)]
    # The history from before the kill is there. The restarted server's local backend follows
    # the process group it did not start (`process-group` in its dir): the first allocation is
    # still running (its worker came back); the orderly stop below cancels it.
    assert events[0] == "queue-created"
    allocations = hq_env.command("alloc", "info", "1", json=True)
    first = [a for a in allocations if a["id"] == "local-1"]
    assert len(first) == 1 and first[0]["status"] == "running"
    ids = [a["id"] for a in allocations]
    assert len(ids) == len(set(ids)), "allocation ids reused after restore"
    assert hq_env.stop_server() == 0
    wait_until(lambda: not allocation_processes(hq_env), timeout=30, what="allocations end")
