"""A server state journaled while it runs, then replayed into a fresh state: jobs, finished and
failed tasks, cancels and forgets come back; tasks that were running wait again with a new
instance id; job ids continue."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from hqpy.app import journaling
from hqpy.common.errors import RequestError
from hqpy.common.states import TaskState
from hqpy.journal import file
from hqpy.journal import records as r
from hqpy.journal.writer import JournalWriter
from hqpy.protocol import messages as m
from hqpy.server.state import ServerState
from tests.factories import submit_desc, worker_config

FIN = TaskState.FINISHED
WAIT = TaskState.WAITING


def restored(path: Path) -> ServerState:
    state = ServerState("restored")
    journaling.replay(state, file.read(path).records)
    return state


class Live:
    """A server state with a journal writer, as the server process wires them."""

    def __init__(self, path: Path, nursery: trio.Nursery) -> None:
        self.state = ServerState("live", clock=trio.current_time)
        self.writer = JournalWriter(path, 0, flush_period=0.5)
        self.handlers = journaling.JournalHandlers(self.state, self.writer, trio.current_time)
        journaling.watch_tasks(self.state, self.state.hub, self.writer)
        self.on_updates = journaling.task_starts(self.writer)
        nursery.start_soon(self.writer.run)

    async def submit(self, ids: str, **kw: object) -> int:
        resp = await self.handlers.submit(m.SubmitRequest(submit_desc(ids), **kw))  # type: ignore[arg-type]
        return resp.job_id

    def run_all(self, worker_cpus: int = 4) -> list[list[int]]:
        """Add a worker and schedule; returns the rows `[job, task, instance]` it got."""
        worker = self.state.add_worker(worker_config(cpus=worker_cpus))
        self.worker = worker
        self.state.schedule()
        rows = [[t.group.body.job_id, t.id, t.instance_id] for t in worker.tasks.values()]
        self.update([[j, t, i, TaskState.RUNNING, 1.0, None, None] for j, t, i in rows])
        return rows

    def update(self, rows: list[list[object]]) -> None:
        self.state.on_task_updates(self.worker, rows)
        self.on_updates(rows)


async def test_submit_is_durable_before_it_returns(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    job_id = await live.submit("0-999")
    # No flush, no close: what `hq submit` was told is already in the file.
    state = restored(path)
    assert list(state.jobs) == [job_id]
    assert state.jobs[job_id].counts[WAIT] == 1000
    assert state.next_job_id == job_id + 1


async def test_finished_failed_and_running_tasks_restore(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-9")
    rows = live.run_all(worker_cpus=4)
    assert [t for _, t, _ in rows] == [0, 1, 2, 3]
    live.update(
        [
            [1, 0, 0, TaskState.FINISHED, 1.0, 2.0, None],
            [1, 1, 0, TaskState.FAILED, 1.0, 2.0, "exit code 3"],
        ]
    )
    await live.writer.flush()
    state = restored(path)
    job = state.jobs[1]
    assert job.counts[FIN] == 1
    assert job.counts[TaskState.FAILED] == 1
    assert job.counts[WAIT] == 8
    assert job.tasks[1].error == "exit code 3"
    # 2 and 3 were running: waiting again, with a new instance id, and handed out first.
    assert job.tasks[2].state is WAIT and job.tasks[2].instance_id == 1
    assert job.tasks[3].instance_id == 1
    worker = state.add_worker(worker_config(cpus=10))
    assert state.schedule() == 8
    given = sorted(t.id for t in worker.tasks.values())
    assert given == [2, 3, 4, 5, 6, 7, 8, 9]


async def test_completions_wait_for_the_flush_period(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-1")
    live.run_all()
    ended_at = trio.current_time()
    live.update([[1, 0, 0, TaskState.FINISHED, 1.0, 2.0, None]])
    await trio.sleep(0.1)
    assert restored(path).jobs[1].counts[FIN] == 0
    await live.writer.next_write()
    # Written once the flush period (0.5 s, on trio's clock) had passed, and not before.
    assert trio.current_time() - ended_at >= 0.5
    assert restored(path).jobs[1].counts[FIN] == 1


async def test_a_submit_flushes_the_completions_before_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-1")
    live.run_all()
    live.update([[1, 0, 0, TaskState.FINISHED, 1.0, 2.0, None]])
    await live.submit("5")
    records = file.read(path).records
    kinds = [type(x).__name__ for x in records]
    assert kinds == ["JobSubmitted", "TasksUpdated", "JobSubmitted"]
    assert restored(path).jobs[1].counts[FIN] == 1


async def test_cancel_close_and_forget_replay_with_the_ids_they_named(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-4")
    await live.submit("0-4")
    open_id = (await live.handlers.open_job(m.OpenJobRequest("opened"))).job_id
    await live.submit("0-2", job_id=open_id)
    await live.handlers.cancel_jobs(m.CancelJobsRequest("1", None))
    await live.handlers.forget_jobs(m.ForgetJobsRequest("all", ()))
    await live.handlers.close_jobs(m.CloseJobsRequest("last"))
    # `last` meant job 3 then; after it, job 4 exists: replay must still close 3.
    await live.submit("0")
    state = restored(path)
    assert sorted(state.jobs) == [2, 3, 4]
    assert not state.jobs[3].is_open
    assert state.jobs[3].task_count == 3
    assert state.next_job_id == 5


def test_a_million_task_array_restores_compactly(tmp_path: Path) -> None:
    """Completions in many flushes restore as one id set: the finished array makes no task
    objects, and a half-finished one only for what finished."""
    path = tmp_path / "j"
    request = m.SubmitRequest(submit_desc("0-999999"))
    records: list[r.Record] = [
        r.JobSubmitted(1, 1, 0.0, request),
        r.JobSubmitted(2, 2, 0.0, request),
    ]
    for first in range(0, 1_000_000, 10_000):
        records.append(
            r.TasksUpdated(
                [[1, 0, first, first + 9999]],
                [[1, first, first + 9999]] + ([[2, first, first + 9999]] if first < 5000 else []),
                [],
            )
        )
    file.write_atomically(path, records)
    state = restored(path)
    assert state.jobs[1].counts[FIN] == 1_000_000
    assert state.jobs[1].tasks == {}
    assert state.jobs[1].finished_at is not None
    assert state.jobs[2].counts[FIN] == 10_000
    assert state.jobs[2].counts[WAIT] == 990_000


async def test_compact_drops_forgotten_jobs_and_keeps_counting(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-1")
    await live.submit("0-1")
    live.run_all()
    live.update([[1, 0, 0, TaskState.FINISHED, 1.0, 2.0, None]])
    live.update([[1, 1, 0, TaskState.FINISHED, 1.0, 2.0, None]])
    await live.handlers.forget_jobs(m.ForgetJobsRequest("1", ()))
    await live.writer.flush()
    live.writer.close()  # the server stopped
    before, after = journaling.compact(path)
    assert after < before
    records = file.read(path).records
    assert [type(x).__name__ for x in records] == ["JobSubmitted", "TasksUpdated", "IdsUsed"]
    state = restored(path)
    assert sorted(state.jobs) == [2]
    assert state.next_job_id == 3


async def test_a_submit_the_journal_cannot_take_is_refused_and_not_run(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0-4")
    # The disk goes away under the writer (as a full disk would fail the write).
    os.close(live.writer._fd)
    live.writer._fd = os.open(path, os.O_RDONLY)
    with pytest.raises(RequestError, match="Submit refused: Cannot write the journal"):
        await live.submit("0-9")
    assert list(live.state.jobs) == [1]
    assert 2 not in live.state.jobs
    # What was acknowledged before is still there, and the file is still well-formed.
    state = restored(path)
    assert list(state.jobs) == [1]


async def test_submits_are_taken_again_once_the_journal_can_be_written(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    good_fd = live.writer._fd
    live.writer._fd = os.open(path, os.O_RDONLY)
    with pytest.raises(RequestError, match="Submit refused"):
        await live.submit("0")
    os.close(live.writer._fd)
    live.writer._fd = good_fd
    job_id = await live.submit("0-1")
    assert live.writer.error is None
    assert list(restored(path).jobs) == [job_id]


async def test_compact_refuses_a_journal_a_server_writes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.submit("0")
    with pytest.raises(file.JournalError, match="in use by a running server"):
        journaling.compact(path)
    live.writer.close()
    assert journaling.compact(path) == (1, 2)


async def test_pools_tags_and_pool_membership_restore(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    await live.handlers.pool_set(m.PoolSetRequest("lic", 2))
    await live.handlers.pool_set(m.PoolSetRequest("gone", 1))
    await live.handlers.pool_remove(m.PoolRemoveRequest("gone"))
    desc = submit_desc("0-4", tags=("system=H2O", "gpu"), pool="lic")
    job_id = (await live.handlers.submit(m.SubmitRequest(desc))).job_id
    await live.handlers.pool_set(m.PoolSetRequest("lic", 3))
    await live.writer.flush()
    live.writer.close()
    for _ in range(2):
        state = restored(path)
        assert state.pool_views() == [m.PoolView("lic", 3, 0, 5)]
        (group,) = state.jobs[job_id].groups
        assert group.body.tags == ("gpu", "system=H2O")
        assert group.pool is state.pools.pools["lic"]
        # The restored pool still caps the restored tasks.
        state.add_worker(worker_config(cpus=8))
        assert state.schedule() == 3
        journaling.compact(path)
