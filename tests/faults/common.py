"""What every fault test checks at its end: tasks lost 0, run twice to completion 0,
allocations leaked 0, server alive."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import trio

from hqpy.client.connection import connect
from hqpy.protocol import messages as m
from tests.e2e.harness import HqEnv, read_lines, wait_until
from tests.e2e.test_journal import FAST_TIMERS, allocation_processes

__all__ = [
    "FAST_TIMERS",
    "allocation_processes",
    "append_line",
    "assert_exactly_once",
    "task_views",
]


def append_line(done: Path, before: str = "") -> str:
    """A task script: `before`, then append "id:instance" to `done` (counts completions)."""
    return f'{before}echo "$HQ_TASK_ID:$HQ_INSTANCE_ID" >> {done}'


def assert_exactly_once(hq_env: HqEnv, done: Path, ids: range, job_id: int = 1) -> dict[str, str]:
    """Every task finished (in the server and in `done`) and none completed twice; the server
    answers. Returns the instance id each task completed under."""
    lines = read_lines(done)
    counts = Counter(line.split(":")[0] for line in lines)
    lost = sorted(set(ids) - {int(i) for i in counts})
    assert lost == [], f"tasks lost: {lost[:20]}"
    twice = sorted(int(i) for i, n in counts.items() if n != 1)
    assert twice == [], f"tasks run twice to completion: {twice[:20]}"
    stats = hq_env.job_info(job_id)["info"]["task_stats"]
    assert stats["finished"] == len(ids), stats
    return dict(line.split(":") for line in lines)


def assert_no_allocation_left(hq_env: HqEnv) -> None:
    wait_until(lambda: not allocation_processes(hq_env), timeout=30, what="allocations end")


def task_views(hq_env: HqEnv, job_id: int = 1) -> list[m.TaskView]:
    """The server's own view of each task (instance id, crash count), over the protocol."""

    async def ask() -> list[m.TaskView]:
        with trio.fail_after(30):
            conn = await connect(hq_env.server_dir)
            try:
                request = m.JobDetailsRequest(str(job_id), True)
                response = await conn.request(request, m.JobDetailsResponse)
            finally:
                await conn.aclose()
        [detail] = response.jobs
        assert detail.tasks is not None
        return list(detail.tasks)

    return trio.run(ask)


def allocation_script_groups(hq_env: HqEnv) -> set[int]:
    """Process groups of the allocations' scripts (each local allocation is one)."""
    groups = set()
    for pid in allocation_processes(hq_env):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"hq-submit.sh" in cmdline:
                groups.add(os.getpgid(pid))
        except (OSError, ProcessLookupError):
            continue
    return groups
