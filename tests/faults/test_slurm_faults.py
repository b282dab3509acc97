"""`kill -9` of the server in the middle of an array on real Slurm allocations, restarted from
its journal: every task finishes once, and no allocation is left in `squeue` at the end.

Needs the local Slurm (`bash scripts/slurm-local.sh start`); skips without it. A `slurmd`
killed under a running allocation is not tested here: the local Slurm is shared by everyone on
the machine and its fake nodes all hang on one slurmd (see docs/reliability.md)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.e2e.harness import HqEnv, _marked_processes, read_lines, wait_until
from tests.e2e.test_slurm_real import (
    SKIP_REASON,
    WAIT,
    SlurmJobs,
    _slurm_answers,
    active_in_squeue,
    add_queue,
    queued_ids,
    setup_server,
)
from tests.faults.common import append_line, assert_exactly_once

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.e2e,
    pytest.mark.skipif(not _slurm_answers(), reason=SKIP_REASON),
]


@pytest.fixture
def slurm_jobs(hq_env: HqEnv) -> Iterator[SlurmJobs]:
    """scancel of whatever the test left in Slurm (before the harness checks processes)."""
    jobs = SlurmJobs(hq_env.root)
    yield jobs
    jobs.cancel_all()


def test_kill9_mid_array_on_slurm_allocations(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    journal = hq_env.root / "journal.hqj"
    done = hq_env.path("done.txt")
    journal_args = ("--journal", str(journal), "--journal-flush-period", "100ms")
    setup_server_with(hq_env, *journal_args)
    add_queue(hq_env, "--time-limit", "10m", "--max-worker-count", "2", "--cpus", "1")
    hq_env.command("submit", "--array", "1-200", "--", "bash", "-c", append_line(done))
    wait_until(lambda: len(read_lines(done)) >= 40, timeout=WAIT, what="40 tasks done")
    assert hq_env.server is not None
    hq_env.server.signal(signal.SIGKILL)
    hq_env.server.wait_exit()
    before = [j["id"] for j in slurm_jobs.mine()]

    hq_env.start_server(*journal_args)
    wait_until(
        lambda: hq_env.job_info()["info"]["task_stats"]["finished"] == 200,
        timeout=WAIT + 60,
        what="all 200 tasks finished",
    )
    assert_exactly_once(hq_env, done, range(1, 201))
    ids = sorted(set(before) | set(queued_ids(hq_env)) | {j["id"] for j in slurm_jobs.mine()})
    assert hq_env.stop_server() == 0
    # Nothing of ours is left in Slurm: the orderly stop stopped the workers (their jobs
    # end) and cancelled what was queued.
    wait_until(lambda: not active_in_squeue(ids), timeout=60, interval=0.5, what="squeue is empty")
    # And no process of those jobs lives on (Slurm kills a cancelled job's processes within
    # its KillWait).
    wait_until(lambda: not workers_alive(hq_env), timeout=60, interval=0.5, what="workers gone")


def workers_alive(env: HqEnv) -> list[tuple[int, str]]:
    return [
        (pid, cmd)
        for pid, cmd in _marked_processes(env.marker.encode())
        if "worker start" in cmd or "hq-submit.sh" in cmd
    ]


def setup_server_with(env: HqEnv, *args: str) -> None:
    """`setup_server` (Slurm's environment and fast timers) with server options."""
    setup_server(env)
    assert env.stop_server() == 0
    env.start_server(*args)
