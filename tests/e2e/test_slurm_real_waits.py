"""Queued allocations on a real Slurm (hq #13): why they wait (the pending reason in `alloc
info`), and their withdrawal when the work they were for is gone.

Same cluster, helpers and clean-up as `test_slurm_real.py` (start it with
`bash scripts/slurm-local.sh start`; without it these tests skip). `--hold` keeps an allocation
PENDING (Reason=JobHeldUser) however free the nodes are. The server runs with fast timers: the
queued-status poll at 0.5 s and the withdrawal grace at 2 s instead of the product's 30 s and
1 min (`HQPY_AUTOALLOC_QUEUED_REFRESH_INTERVAL_MS`, `HQPY_AUTOALLOC_WITHDRAW_GRACE_MS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, wait_until
from tests.e2e.test_slurm_real import (
    WAIT,
    SlurmJobs,
    active_in_squeue,
    add_queue,
    alloc_info,
    cancelled_or_gone,
    job_states,
    pytestmark,  # noqa: F401 - the same marks and skip as the other real-Slurm tests
    setup_server,
    wait_queued,
)

QUEUED_TIMERS = {
    "HQPY_AUTOALLOC_QUEUED_REFRESH_INTERVAL_MS": "500",
    "HQPY_AUTOALLOC_WITHDRAW_GRACE_MS": "2000",
}


@pytest.fixture
def slurm_jobs(hq_env: HqEnv) -> Iterator[SlurmJobs]:
    """As in `test_slurm_real.py`: scancel of everything the test left, before the harness
    stops the server."""
    jobs = SlurmJobs(hq_env.root)
    yield jobs
    jobs.cancel_all()


def queued_with_reason(env: HqEnv) -> list[dict[str, Any]]:
    return [a for a in alloc_info(env) if a["status"] == "queued" and a["pending_reason"]]


def test_pending_reason_of_a_held_allocation(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    hq_env.env.update(QUEUED_TIMERS)
    setup_server(hq_env)
    add_queue(hq_env, "--time-limit", "5m", "--cpus", "1", "--", "--hold")
    hq_env.command("submit", "--", "true")
    [allocation_id] = wait_queued(hq_env, 1)
    [allocation] = wait_until(
        lambda: queued_with_reason(hq_env),
        timeout=WAIT,
        interval=0.3,
        what="the allocation's pending reason is known",
    )
    assert (allocation["id"], allocation["pending_reason"]) == (allocation_id, "JobHeldUser")
    assert job_states([allocation_id]) == {allocation_id: "PENDING"}
    table = hq_env.command("alloc", "info", "1")
    header, row = (line for line in table.splitlines() if allocation_id in line or "ID" in line)
    assert header.rstrip(" |").endswith("Pending reason"), table
    assert row.rstrip(" |").endswith("JobHeldUser"), table

    # The progress of the job says why nothing runs (a line now and then: not a terminal).
    progress = hq_env._spawn("progress", hq_env.hq_argv("job", "progress", "1"), None)
    wanted = "waiting for workers: 1 allocation queued in slurm (JobHeldUser)"
    wait_until(lambda: wanted in progress.stdout(), timeout=WAIT, what="the waiting line")
    hq_env.command("job", "cancel", "1")
    assert progress.wait_exit() == 0


def test_queued_allocation_is_withdrawn_when_its_work_is_gone(
    hq_env: HqEnv, slurm_jobs: SlurmJobs
) -> None:
    hq_env.env.update(QUEUED_TIMERS)
    setup_server(hq_env)
    add_queue(hq_env, "--time-limit", "5m", "--backlog", "1", "--cpus", "1", "--", "--hold")
    hq_env.command("submit", "--", "true")
    [allocation_id] = wait_queued(hq_env, 1)
    wait_until(
        lambda: job_states([allocation_id]).get(allocation_id) == "PENDING",
        timeout=WAIT,
        interval=0.2,
        what=f"allocation {allocation_id} is pending in Slurm",
    )

    hq_env.command("job", "cancel", "1")

    def withdrawn() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = hq_env.command("alloc", "events", "1", json=True)
        return [e for e in events if e["event"] == "allocation-withdrawn"]

    [event] = wait_until(withdrawn, timeout=WAIT, interval=0.3, what="allocation-withdrawn")
    assert event["allocation_id"] == allocation_id
    wait_until(
        lambda: cancelled_or_gone([allocation_id]),
        timeout=30,
        interval=0.2,
        what=f"allocation {allocation_id} is cancelled in Slurm",
    )
    assert not active_in_squeue([allocation_id])
    [allocation] = alloc_info(hq_env)
    assert (allocation["id"], allocation["status"]) == (allocation_id, "finished")
    # Nothing new was submitted for work that is gone.
    assert len(alloc_info(hq_env)) == 1
