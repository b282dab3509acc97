"""`hq alloc` end to end against a real Slurm: real `sbatch`/`squeue`/`scancel`, real jobs.

Start the cluster with `bash scripts/slurm-local.sh start` (as root; 2 fake nodes n1, n2 by
default); CI does it in `.ci/run`. Without it these tests skip.

The server runs with fast autoalloc timers. Every Slurm job a test caused (found by its batch
script, which lies under the test's tmp dir, or tracked by id) is cancelled in teardown, before
the harness checks that no process of the test is left. Nothing here asserts on timings: waits
poll with generous bounds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, wait_until

SKIP_REASON = (
    "needs a real Slurm: run `bash scripts/slurm-local.sh start` "
    "(as root, with slurm-wlm installed)"
)


def _slurm_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.e2e,
    pytest.mark.skipif(not _slurm_answers(), reason=SKIP_REASON),
]

FAST_TIMERS = {
    "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "500",
    "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "500",
    "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "200",
}

ACTIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}
"""Slurm states in which a job still waits for or holds nodes."""

PENDING_FOR_AN_HOUR = "--begin=now+1hour"
"""An extra sbatch argument that keeps a job PENDING (Reason=BeginTime)."""

WAIT = 90.0
"""Bound of the waits that depend on Slurm scheduling jobs (~1 s each here)."""


# ---------------------------------------------------------------------------------------------
# Slurm helpers


def slurm(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, check=False, cwd="/"
    )
    if check:
        assert result.returncode == 0, (
            f"`{' '.join(argv)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def slurm_jobs_table() -> list[dict[str, str]]:
    """Every job slurmctld still holds (finished ones too): id, state, batch script, name."""
    out = slurm("squeue", "--noheader", "--states=all", "--format=%i|%T|%o|%j").stdout
    jobs = []
    for line in out.splitlines():
        if not line.strip():
            continue
        job_id, state, command, name = line.strip().split("|", 3)
        jobs.append({"id": job_id, "state": state, "command": command, "name": name})
    return jobs


def job_states(ids: list[str]) -> dict[str, str]:
    """`squeue -h -t all -j <ids> -o %i|%T`: the state of each id Slurm still knows."""
    if not ids:
        return {}
    result = slurm("squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T", check=False)
    if result.returncode != 0:
        # 22.05: rc 1 and `Invalid job id specified` when none of the ids is known any more.
        assert "Invalid job id" in result.stderr, result.stderr
        return {}
    states = {}
    for line in result.stdout.splitlines():
        if line.strip():
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state
    return states


def active_in_squeue(ids: list[str]) -> set[str]:
    """Those of `ids` that plain `squeue -h` (pending and running jobs) lists."""
    listed = set(slurm("squeue", "-h", "-o", "%i").stdout.split())
    return listed & set(ids)


def cancelled_or_gone(ids: list[str]) -> bool:
    states = job_states(ids)
    return all(states.get(i, "CANCELLED") == "CANCELLED" for i in ids)


class SlurmJobs:
    """The Slurm jobs of one test: those whose batch script lies under the test's tmp dir
    (allocations and dry runs of its server), and those the test submitted itself."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tracked: set[str] = set()

    def mine(self) -> list[dict[str, str]]:
        prefix = str(self.root) + os.sep
        return [
            j
            for j in slurm_jobs_table()
            if j["command"].startswith(prefix) or j["id"] in self.tracked
        ]

    def sbatch(self, *args: str) -> str:
        """Submit a job of the test's own (`sbatch --parsable ARGS`) and track its id."""
        out = slurm("sbatch", "--parsable", *args).stdout.strip()
        job_id = out.split(";")[0]
        assert job_id.isdigit(), out
        self.tracked.add(job_id)
        return job_id

    def occupy_all_nodes(self) -> str:
        """Submit a job that holds every node exclusively, so that allocations stay PENDING
        (Reason=Resources/Priority); wait until it runs and return its id."""
        nodes = set(slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split())
        assert nodes, "Slurm has no nodes"
        blocker = self.sbatch(
            f"--nodes={len(nodes)}",
            "--exclusive",
            "--time=00:05:00",
            "--job-name=hq-test-blocker",
            "--output=/dev/null",
            "--wrap",
            "sleep 300",
        )
        wait_until(
            lambda: job_states([blocker]).get(blocker) == "RUNNING",
            timeout=WAIT,
            interval=0.2,
            what=f"the blocker job {blocker} runs on all nodes",
        )
        return blocker

    def cancel_all(self) -> list[str]:
        """scancel every job of the test that is still active; return their ids."""
        active = [j["id"] for j in self.mine() if j["state"] in ACTIVE_STATES]
        for job_id in active:
            slurm("scancel", job_id, check=False)
        if active:
            wait_until(
                lambda: not (active_in_squeue(active)),
                timeout=30,
                interval=0.2,
                what=f"cancelled jobs {active} leave squeue",
            )
        return active


@pytest.fixture
def slurm_jobs(hq_env: HqEnv) -> Iterator[SlurmJobs]:
    """Depends on `hq_env`, so its teardown (scancel of everything the test left in Slurm)
    runs before the harness stops the server and checks for leftover processes."""
    jobs = SlurmJobs(hq_env.root)
    yield jobs
    jobs.cancel_all()


# ---------------------------------------------------------------------------------------------
# hq helpers


def setup_server(env: HqEnv) -> None:
    env.env.update(FAST_TIMERS)
    # The harness strips SLURM_*; a cluster configured elsewhere than /etc/slurm needs this.
    if "SLURM_CONF" in os.environ:
        env.env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    env.start_server()


def add_queue(env: HqEnv, *args: str, dry_run: bool = False) -> str:
    """`hq alloc add slurm ARGS`; returns its stderr (the log lines)."""
    extra = [] if dry_run else ["--no-dry-run"]
    options, _, batch_args = _split(list(args))
    argv = ["alloc", "add", "slurm", *extra, *options]
    if batch_args:
        argv += ["--", *batch_args]
    result = env.run(*argv)
    assert "Allocation queue 1 successfully created" in result.stderr, result.stderr
    return result.stderr


def _split(args: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], "--", args[i + 1 :]
    return args, "", []


def alloc_info(env: HqEnv, queue_id: int = 1) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = env.command("alloc", "info", str(queue_id), json=True)
    return data


def queued_ids(env: HqEnv, queue_id: int = 1) -> list[str]:
    """Allocation ids in the order the server logged them as queued (free to read)."""
    assert env.server is not None
    return re.findall(rf"Queue {queue_id}: allocation-queued (\d+)\b", env.server.stderr())


def wait_queued(env: HqEnv, count: int, queue_id: int = 1) -> list[str]:
    wait_until(
        lambda: len(queued_ids(env, queue_id)) >= count,
        timeout=WAIT,
        interval=0.1,
        what=f"queue {queue_id} submits {count} allocation(s)",
    )
    return queued_ids(env, queue_id)


def workers_all(env: HqEnv) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = env.command("worker", "list", "--all", json=True)
    return data


def wait_job_finished(env: HqEnv, job_id: int, tasks: int) -> None:
    [job] = env.command("job", "wait", str(job_id), json=True, timeout=WAIT + 30)
    assert job["task_stats"]["finished"] == tasks, job


# ---------------------------------------------------------------------------------------------
# Scenarios


def test_allocations_run_tasks_through_real_slurm(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    setup_server(hq_env)
    stderr = add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--backlog",
        "2",
        "--workers-per-alloc",
        "1",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
        dry_run=True,
    )
    assert "A trial allocation was submitted successfully" in stderr

    # The dry run went through the real sbatch and was cancelled at once: nothing of it is
    # left waiting or running in Slurm.
    dry_runs = [j for j in slurm_jobs.mine() if "/autoalloc/dry-run-" in j["command"]]
    assert len(dry_runs) == 1, slurm_jobs.mine()
    dry_id = dry_runs[0]["id"]
    assert dry_id.isdigit()
    wait_until(
        lambda: not active_in_squeue([dry_id]),
        timeout=30,
        interval=0.2,
        what=f"the dry-run job {dry_id} leaves squeue",
    )
    assert job_states([dry_id]).get(dry_id, "CANCELLED") == "CANCELLED"

    hq_env.command("submit", "--array", "1-200", "--", "true")
    wait_job_finished(hq_env, 1, 200)

    # Every allocation is a real Slurm batch job running its hq-submit.sh.
    ids = queued_ids(hq_env)
    assert ids
    assert all(i.isdigit() for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert dry_id not in ids

    # The workers idle out (3 s), their jobs end, and the server sees them FINISHED.
    def all_finished() -> list[dict[str, Any]]:
        allocations = alloc_info(hq_env)
        if all(a["status"] == "finished" for a in allocations):
            return allocations
        return []

    allocations = wait_until(all_finished, timeout=WAIT, interval=0.5, what="allocations finish")
    assert sorted(a["id"] for a in allocations) == sorted(queued_ids(hq_env))
    by_id = {j["id"]: j for j in slurm_jobs.mine()}
    for a in allocations:
        script = Path(a["workdir"]) / "hq-submit.sh"
        assert by_id[a["id"]]["command"] == str(script), by_id.get(a["id"])
        assert (Path(a["workdir"]) / "jobid").read_text().strip() == a["id"]

    # Workers registered with their Slurm job, and left by idle timeout.
    workers = workers_all(hq_env)
    assert workers
    for w in workers:
        assert w["allocation"] is not None, w
        assert w["allocation"]["manager"] == "SLURM", w
        assert w["allocation"]["id"] in ids, w
        assert w["state"] == "IDLE TIMEOUT", w
    started = {a["id"] for a in allocations if a["started_at"] is not None}
    assert started == {w["allocation"]["id"] for w in workers}

    # Slurm agrees: none of the allocations is pending or running any more, and they
    # ended normally.
    wait_until(
        lambda: not active_in_squeue(ids),
        timeout=30,
        interval=0.5,
        what=f"allocations {ids} leave squeue",
    )
    states = job_states(ids)
    assert {states.get(i, "COMPLETED") for i in ids} == {"COMPLETED"}, states


def test_two_node_allocation_starts_a_worker_per_node(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    nodes = set(slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split())
    if len(nodes) < 2:
        pytest.skip("needs 2 Slurm nodes (SLURM_LOCAL_NODES=2 scripts/slurm-local.sh start)")
    setup_server(hq_env)
    add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--backlog",
        "1",
        "--workers-per-alloc",
        "2",
        "--max-worker-count",
        "2",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
    )
    hq_env.command("submit", "--array", "1-10", "--", "sleep", "0.5")
    [allocation_id] = wait_queued(hq_env, 1)
    assert allocation_id.isdigit()

    def two_workers() -> list[dict[str, Any]]:
        mine = [
            w
            for w in workers_all(hq_env)
            if w["allocation"] is not None and w["allocation"]["id"] == allocation_id
        ]
        return mine if len(mine) >= 2 else []

    workers = wait_until(two_workers, timeout=WAIT, interval=0.5, what="2 workers register")
    assert len(workers) == 2
    assert {w["allocation"]["manager"] for w in workers} == {"SLURM"}
    wait_job_finished(hq_env, 1, 10)

    [allocation] = alloc_info(hq_env)
    assert allocation["id"] == allocation_id
    assert allocation["target_worker_count"] == 2
    # srun started one worker per node of the job.
    node_list = slurm("squeue", "-h", "-t", "all", "-j", allocation_id, "-o", "%D|%N").stdout
    count, _, _ = node_list.strip().partition("|")
    assert count == "2", node_list
    assert len(workers_all(hq_env)) == 2


def test_remove_force_cancels_pending_allocation(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    slurm_jobs.occupy_all_nodes()
    setup_server(hq_env)
    add_queue(hq_env, "--time-limit", "5m", "--backlog", "1", "--cpus", "1")
    hq_env.command("submit", "--", "true")
    [allocation_id] = wait_queued(hq_env, 1)
    assert allocation_id.isdigit()

    def queued() -> list[dict[str, Any]]:
        allocations = alloc_info(hq_env)
        return allocations if allocations and allocations[0]["status"] == "queued" else []

    [allocation] = wait_until(queued, timeout=WAIT, interval=0.5, what="allocation is queued")
    assert allocation["id"] == allocation_id
    assert job_states([allocation_id]) == {allocation_id: "PENDING"}

    hq_env.command("alloc", "remove", "1", "--force")
    wait_until(
        lambda: cancelled_or_gone([allocation_id]),
        timeout=30,
        interval=0.2,
        what=f"allocation {allocation_id} is cancelled in Slurm",
    )
    assert not active_in_squeue([allocation_id])
    assert hq_env.command("alloc", "list", json=True) == []


def test_server_stop_cancels_queued_allocations(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    slurm_jobs.occupy_all_nodes()
    setup_server(hq_env)
    add_queue(
        hq_env, "--time-limit", "5m", "--backlog", "2", "--workers-per-alloc", "1", "--cpus", "1"
    )
    hq_env.command("submit", "--array", "1-4", "--", "true")
    ids = wait_queued(hq_env, 2)
    assert len(ids) == 2 and all(i.isdigit() for i in ids), ids

    def both_queued() -> bool:
        return sorted(a["id"] for a in alloc_info(hq_env) if a["status"] == "queued") == sorted(ids)

    wait_until(both_queued, timeout=WAIT, interval=0.5, what="both allocations are queued")
    assert job_states(ids) == dict.fromkeys(ids, "PENDING")

    assert hq_env.stop_server() == 0
    wait_until(
        lambda: cancelled_or_gone(ids),
        timeout=30,
        interval=0.2,
        what=f"allocations {ids} are cancelled in Slurm",
    )
    assert not active_in_squeue(ids)


def test_batch_arguments_after_double_dash_reach_sbatch(
    hq_env: HqEnv, slurm_jobs: SlurmJobs
) -> None:
    # HyperQueue's syntax: `hq alloc add slurm <options> -- <sbatch arguments>`.
    setup_server(hq_env)
    add_queue(hq_env, "--time-limit", "5m", "--cpus", "1", "--", PENDING_FOR_AN_HOUR)
    [queue] = hq_env.command("alloc", "list", json=True)
    assert queue["additional_args"] == [PENDING_FOR_AN_HOUR]
    hq_env.command("submit", "--", "true")
    [allocation_id] = wait_queued(hq_env, 1)
    reason = slurm("squeue", "-h", "-t", "all", "-j", allocation_id, "-o", "%T|%r").stdout
    assert reason.strip() == "PENDING|BeginTime"


# ---------------------------------------------------------------------------------------------
# Allocations that report their own end (hq #13.1) and the worker environment (hq #9.5)


def test_broken_worker_start_fails_the_allocation_within_seconds(
    hq_env: HqEnv, slurm_jobs: SlurmJobs
) -> None:
    # The batch system is polled every 30 minutes (queued: every 10): the allocation's exit
    # trap is what reports the failure, with Slurm's stderr file's text.
    hq_env.env.update(FAST_TIMERS)
    hq_env.env["HQ_AUTOALLOC_REFRESH_INTERVAL_MS"] = str(30 * 60 * 1000)
    hq_env.env["HQPY_AUTOALLOC_QUEUED_REFRESH_INTERVAL_MS"] = str(10 * 60 * 1000)
    hq_env.env["HQ_AUTOALLOC_MAX_ALLOCATION_FAILS"] = "1"
    if "SLURM_CONF" in os.environ:
        hq_env.env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    hq_env.start_server()
    add_queue(
        hq_env, "--time-limit", "5m", "--cpus", "1", "--worker-start-cmd", "echo boom >&2; false"
    )
    hq_env.command("submit", "--", "true")
    [allocation_id] = wait_queued(hq_env, 1)

    def failed() -> dict[str, Any]:
        [info] = alloc_info(hq_env)
        return info if info["status"] == "failed" else {}

    info = wait_until(failed, timeout=WAIT, interval=0.5, what="the allocation fails")
    assert info["id"] == allocation_id
    events = hq_env.command("alloc", "events", "1", json=True)
    [event] = [e for e in events if e["event"] == "allocation-failed"]
    assert "exited with code 1 before any worker registered" in event["message"]
    assert "boom" in event["message"]
    assert any(e["event"] == "queue-paused" for e in events), events
    wait_until(
        lambda: not active_in_squeue([allocation_id]),
        timeout=30,
        interval=0.5,
        what=f"{allocation_id} leaves squeue",
    )


def test_worker_environment_reaches_tasks_on_real_slurm(
    hq_env: HqEnv, slurm_jobs: SlurmJobs
) -> None:
    import shlex
    import sys

    setup_server(hq_env)
    env_script = hq_env.work_dir / "env.sh"
    env_script.write_text("export FROM_ENV_SCRIPT=sourced\n")
    python = hq_env.work_dir / "mypython"
    python.write_text(
        '#!/bin/bash\nexport VIA_PYTHON="$0"\nexport WORKER_CWD="$PWD"\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    worker_dir = hq_env.work_dir / "wdir"
    add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--cpus",
        "1",
        "--idle-timeout",
        "3s",
        "--env-script",
        str(env_script),
        "--worker-env",
        "FROM_WORKER_ENV=a b",
        "--python",
        str(python),
        "--worker-dir",
        str(worker_dir),
    )
    hq_env.command(
        "submit",
        "--",
        "bash",
        "-c",
        'echo "$FROM_ENV_SCRIPT|$FROM_WORKER_ENV|$VIA_PYTHON|$WORKER_CWD"',
    )
    wait_job_finished(hq_env, 1, 1)
    output = hq_env.command("job", "cat", "1", "stdout").strip()
    assert output == f"sourced|a b|{python}|{worker_dir}"


SLURM_CONFIG = """
[queue.any]
manager = "slurm"
time_limit = "5m"
idle_timeout = "3s"
cpus = 1

[preallocate.warm]
manager = "slurm"
jobs = 1
walltime = "5m"
memory = "512m"
persist = true
idle_timeout = "2s"
cpus = 1

[pools]
serial = 1
"""


def test_whole_flow_from_a_toml_file_on_real_slurm(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    """A config with a queue, a persistent pool (`--mem` from `memory`) and a concurrency
    pool: the pool is up before any job, a tagged job runs on it, an untagged one through the
    queue, and `alloc stop --preallocated` ends the pool."""
    config = hq_env.work_dir / "hqpy.toml"
    config.write_text(SLURM_CONFIG)
    hq_env.env.update(FAST_TIMERS)
    if "SLURM_CONF" in os.environ:
        hq_env.env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    hq_env.start_server("--config", str(config))
    [pool_id] = wait_queued(hq_env, 1, queue_id=2)
    script = slurm("scontrol", "show", "job", pool_id).stdout
    assert "MinMemoryNode=512M" in script, script

    def pool_worker() -> list[dict[str, Any]]:
        return [
            w
            for w in workers_all(hq_env)
            if w["state"] == "RUNNING" and w["allocation"]["id"] == pool_id
        ]

    [worker] = wait_until(pool_worker, timeout=WAIT, interval=0.5, what="the pool's worker")
    assert worker["configuration"]["filter_tags"] == ["warm"]

    hq_env.command("submit", "--tag", "warm", "--pool", "serial", "--", "echo", "warm")
    wait_job_finished(hq_env, 1, 1)
    # Only the pool's worker can run it: the plain queue submitted nothing for it.
    assert queued_ids(hq_env, 1) == []
    hq_env.command("submit", "--", "echo", "any")
    wait_job_finished(hq_env, 2, 1)
    assert queued_ids(hq_env, 1)  # the untagged job came through the plain queue

    hq_env.command("alloc", "stop", "--preallocated")
    wait_until(
        lambda: all(a["status"] == "finished" for a in alloc_info(hq_env, 2)),
        timeout=WAIT,
        interval=0.5,
        what="the pool's allocation ends",
    )
    assert queued_ids(hq_env, 2) == [pool_id]  # not replaced
    wait_until(
        lambda: not active_in_squeue([pool_id]),
        timeout=30,
        interval=0.5,
        what=f"{pool_id} leaves squeue",
    )
