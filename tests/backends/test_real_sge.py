"""Grid Engine for real: the backend class, and `hq alloc add sge` end to end (50 tasks through
`qsub` allocations, `qstat` empty at the end, `alloc remove --force` of held allocations).

Start it with `bash scripts/sge-local.sh start` (as root, after `apt-get install -y
--no-install-recommends gridengine-master gridengine-exec gridengine-client`); `.ci/run` does both.
Without it these tests skip. Nothing here asserts on timings: waits poll with generous bounds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import AllocationRequest, CancelTarget, ExternalState
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.sge import SgeBackend
from tests.e2e.harness import HqEnv, hq_env_fixture, wait_until

SKIP_REASON = (
    "needs a real Grid Engine: run `bash scripts/sge-local.sh start` (as root, with the Debian "
    "packages gridengine-master gridengine-exec gridengine-client installed)"
)


def _sge_answers() -> bool:
    # Debian's qconf is a wrapper that sets SGE_ROOT=/var/lib/gridengine when it is unset.
    if shutil.which("qconf") is None:
        return False
    try:
        out = subprocess.run(["qconf", "-sel"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


pytestmark = pytest.mark.skipif(not _sge_answers(), reason=SKIP_REASON)


def request(tmp_path: Path, seq: int, command: str) -> AllocationRequest:
    return AllocationRequest(
        queue_id=1,
        seq=seq,
        name=f"hq-1-{seq}",
        worker_count=1,
        time_limit=120,
        additional_args=(),
        worker_command=command,
        workdir=tmp_path / f"{seq:03}",
    )


async def wait_state(backend: SgeBackend, job_id: str, states: set[ExternalState]) -> str:
    with trio.fail_after(60):
        while True:
            status = (await backend.query([job_id]))[job_id]
            if status.state in states:
                return status.raw
            await trio.sleep(0.5)


async def test_submit_run_and_cancel(tmp_path: Path) -> None:
    backend = SgeBackend(timeout=30)
    done = request(tmp_path, 1, 'echo "job $HQPY_ALLOCATION_ID"')
    job_id = await backend.submit(done, write_script(done, backend.render_script(done)))
    await wait_state(backend, job_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert (done.workdir / "stdout").read_text() == f"job {job_id}\n"

    reqs = [request(tmp_path, n, "sleep 300") for n in (2, 3)]
    ids = [await backend.submit(r, write_script(r, backend.render_script(r))) for r in reqs]
    for job_id in ids:
        await wait_state(backend, job_id, {ExternalState.RUNNING, ExternalState.QUEUED})
    outcome = await backend.cancel_many(
        [CancelTarget(i, r.workdir) for i, r in zip(ids, reqs, strict=True)]
    )
    assert outcome == dict.fromkeys(ids)
    with trio.fail_after(60):
        while set(ids) & qstat_ids():  # noqa: ASYNC110
            await trio.sleep(0.5)


async def test_two_workers_through_the_parallel_environment(tmp_path: Path) -> None:
    # `scripts/sge-local.sh` makes the PE `hq` (one host here: both slots on it).
    backend = SgeBackend(timeout=30, parallel_environment=os.environ.get("HQPY_SGE_PE", "hq"))
    out = tmp_path / "out"
    req = attrs.evolve(
        request(tmp_path, 4, f'echo "worker of $HQPY_ALLOCATION_ID" >> {out}'), worker_count=2
    )
    job_id = await backend.submit(req, write_script(req, backend.render_script(req)))
    await wait_state(backend, job_id, {ExternalState.FINISHED, ExternalState.FAILED})
    # Each `qrsh -inherit` ran the whole line (quoted for the remote shell), once per slot.
    assert out.read_text() == f"worker of {job_id}\n" * 2
    assert (req.workdir / "stderr").read_text() == ""


# ---------------------------------------------------------------------------------------------
# `hq alloc add sge` end to end

FAST_TIMERS = {
    "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "500",
    "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "500",
    "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "200",
}

WAIT = 120.0
"""Bound of the waits that depend on Grid Engine scheduling jobs (about a second each here)."""


def qstat_ids() -> set[str]:
    """The jobs of every user Grid Engine still holds (pending, running, being deleted)."""
    out = subprocess.run(
        ["qstat", "-u", "*"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    # A header and a rule line, then one line per job: `  12 0.55500 hq-1-1 root qw ...`.
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


@pytest.fixture
def hq_env(tmp_path: Path) -> Iterator[HqEnv]:
    """A fresh hq world; teardown deletes the Grid Engine jobs the test left (`qdel` of the
    ids its server queued), then stops the server and checks that no process is left."""
    env_iter = hq_env_fixture(tmp_path)
    env = next(env_iter)
    try:
        yield env
    finally:
        if env.server is not None:
            ids = re.findall(r"allocation-queued (\d+)\b", env.server.stderr())
            left = sorted(set(ids) & qstat_ids())
            if left:
                subprocess.run(["qdel", *left], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(StopIteration):
            next(env_iter)


def add_sge_queue(env: HqEnv, *args: str) -> None:
    result = env.run("alloc", "add", "sge", *args)
    assert "Allocation queue 1 successfully created" in result.stderr, result.stderr


def alloc_info(env: HqEnv) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = env.command("alloc", "info", "1", json=True)
    return data


def queued_ids(env: HqEnv) -> list[str]:
    assert env.server is not None
    return re.findall(r"Queue 1: allocation-queued (\d+)\b", env.server.stderr())


def test_fifty_tasks_through_qsub_allocations(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    hq_env.start_server()
    # With the trial allocation of the dry run (submitted with qsub, deleted with qdel).
    add_sge_queue(
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
    )
    hq_env.command("submit", "--array", "1-50", "--", "bash", "-c", 'echo "$HQ_TASK_ID"')
    [job] = hq_env.command("job", "wait", "1", json=True, timeout=WAIT + 30)
    assert job["task_stats"]["finished"] == 50, job

    ids = queued_ids(hq_env)
    assert ids and all(i.isdigit() for i in ids), ids
    # Every worker registered with its Grid Engine job (`HQPY_ALLOCATION_ID=$JOB_ID`).
    workers: list[dict[str, Any]] = hq_env.command("worker", "list", "--all", json=True)
    assert workers
    for w in workers:
        assert w["allocation"] is not None, w
        assert (w["allocation"]["manager"], w["allocation"]["id"] in ids) == ("SGE", True), w

    # The workers idle out, their jobs end, Grid Engine forgets them, the server sees them end.
    wait_until(
        lambda: not (qstat_ids() & set(ids)),
        timeout=WAIT,
        interval=0.5,
        what=f"allocations {ids} leave qstat",
    )

    def all_ended() -> list[dict[str, Any]]:
        allocations = alloc_info(hq_env)
        return allocations if all(a["status"] == "finished" for a in allocations) else []

    allocations = wait_until(all_ended, timeout=WAIT, interval=0.5, what="allocations finish")
    assert sorted(a["id"] for a in allocations) == sorted(ids)
    for a in allocations:
        assert (Path(a["workdir"]) / "jobid").read_text().strip() == a["id"]
    assert qstat_ids() == set()


def test_remove_force_deletes_held_allocations(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    hq_env.start_server()
    # `-h`: submitted on hold, so they stay queued (`hqw`) with a scheduling reason.
    add_sge_queue(
        hq_env,
        "--no-dry-run",
        "--time-limit",
        "5m",
        "--backlog",
        "2",
        "--workers-per-alloc",
        "1",
        "--cpus",
        "1",
        "--",
        "-h",
    )
    hq_env.command("submit", "--array", "1-4", "--", "true")
    ids = wait_until(
        lambda: queued_ids(hq_env) if len(queued_ids(hq_env)) >= 2 else [],
        timeout=WAIT,
        interval=0.2,
        what="two allocations are submitted",
    )
    assert set(ids) <= qstat_ids()

    def reasons() -> dict[str, str]:
        queued = [a for a in alloc_info(hq_env) if a["status"] == "queued"]
        found = {a["id"]: a["pending_reason"] for a in queued if a["pending_reason"]}
        return found if set(found) == set(ids) else {}

    # Grid Engine's scheduling info reaches `alloc info` as the pending reason.
    found = wait_until(reasons, timeout=WAIT, interval=0.5, what="pending reasons are known")
    assert found == dict.fromkeys(ids, "Job is in hold state")
    table = hq_env.command("alloc", "info", "1")
    assert "Pending reason" in table and "Job is in hold state" in table

    hq_env.command("alloc", "remove", "1", "--force")
    wait_until(
        lambda: not (qstat_ids() & set(ids)),
        timeout=60,
        interval=0.2,
        what=f"held allocations {ids} are deleted",
    )
    assert hq_env.command("alloc", "list", json=True) == []


def test_refused_trial_allocation_fails_alloc_add_with_qsub_text(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run(
        "alloc", "add", "sge", "--time-limit", "5m", "--", "-l", "nosuchres=1", expect_fail=True
    )
    assert result.returncode == 1
    assert 'Unable to run job: unknown resource "nosuchres"' in result.stderr, result.stderr
    assert hq_env.command("alloc", "list", json=True) == []


def test_template_and_worker_environment_reach_tasks(hq_env: HqEnv) -> None:
    # A site template with an `-x` parameter, plus `--env-script` and `--worker-env`.
    hq_env.env.update(FAST_TIMERS)
    hq_env.start_server()
    env_script = hq_env.work_dir / "env.sh"
    env_script.write_text("export FROM_ENV_SCRIPT=sourced\n")
    template = hq_env.work_dir / "site.sh"
    template.write_text(
        "#!/bin/bash\n$directives\n# site template for $queue_name, $walltime\n$env_setup\n"
        "export FROM_TEMPLATE=$module\n$worker_command\n"
    )
    add_sge_queue(
        hq_env,
        "--no-dry-run",
        "--time-limit",
        "5m",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
        "--env-script",
        str(env_script),
        "--worker-env",
        "FROM_WORKER_ENV=a b",
        "--script-template",
        str(template),
        "-x",
        "module=gcc/12",
    )
    hq_env.command(
        "submit", "--", "bash", "-c", 'echo "$FROM_ENV_SCRIPT|$FROM_WORKER_ENV|$FROM_TEMPLATE"'
    )
    [job] = hq_env.command("job", "wait", "1", json=True, timeout=WAIT + 30)
    assert job["task_stats"]["finished"] == 1, job
    assert hq_env.command("job", "cat", "1", "stdout").strip() == "sourced|a b|gcc/12"
    [allocation] = alloc_info(hq_env)
    script = (Path(allocation["workdir"]) / "hq-submit.sh").read_text()
    assert "#$ -l h_rt=00:05:00\n" in script
    assert "# site template for 1, 00:05:00\n" in script  # an unnamed queue: its id


def test_two_worker_allocations_through_the_queues_pe(hq_env: HqEnv) -> None:
    hq_env.env.update(FAST_TIMERS)
    hq_env.env.pop("HQPY_SGE_PE", None)
    hq_env.start_server()
    common = ("--time-limit", "5m", "--workers-per-alloc", "2", "--idle-timeout", "3s")
    refused = hq_env.run("alloc", "add", "sge", *common, "--cpus", "1", expect_fail=True)
    assert (
        "an allocation of 2 workers on Grid Engine needs a parallel environment: "
        "add `--pe NAME` (one of `qconf -spl`)"
    ) in refused.stderr
    # `scripts/sge-local.sh` makes the PE `hq` (one host here: both slots on it).
    add_sge_queue(hq_env, *common, "--cpus", "1", "--pe", "hq", "--backlog", "1")
    [queue] = hq_env.command("alloc", "list", json=True)
    assert queue["parallel_environment"] == "hq"
    hq_env.command("submit", "--array", "1-8", "--", "bash", "-c", 'echo "$HQ_TASK_ID"')
    [job] = hq_env.command("job", "wait", "1", json=True, timeout=WAIT + 30)
    assert job["task_stats"]["finished"] == 8, job
    by_allocation: dict[str, int] = {}

    def workers_by_allocation() -> set[int]:
        # The 8 short tasks may all end before an allocation's second worker registers.
        workers: list[dict[str, Any]] = hq_env.command("worker", "list", "--all", json=True)
        by_allocation.clear()
        for w in workers:
            by_allocation[w["allocation"]["id"]] = by_allocation.get(w["allocation"]["id"], 0) + 1
        return set(by_allocation.values())

    wait_until(
        lambda: workers_by_allocation() == {2}, timeout=WAIT, what="two workers per allocation"
    )
    wait_until(
        lambda: not (qstat_ids() & set(by_allocation)),
        timeout=WAIT,
        interval=0.5,
        what="the allocations leave qstat",
    )
