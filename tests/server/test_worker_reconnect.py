"""Workers that come back to a restarted server (issue 12 item 2): the real server with a
journal, over loopback, and fake workers speaking the protocol; plus the pure reconnect policy.

A "crash" here cancels the server's scope: nothing of its orderly stop (final journal flush,
allocation cancels) runs, as after `kill -9`.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.lowlevel

from hqpy.app.server_process import ServerProcess
from hqpy.client.connection import ServerConnection, connect
from hqpy.common import serverdir
from hqpy.common.states import TaskState
from hqpy.journal import file as journal_file
from hqpy.journal import records as r
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import peer_handshake
from hqpy.protocol.framing import FramedStream
from hqpy.server.server import ServerConfig
from hqpy.worker.agent import RECONNECT_FIRST, RECONNECT_MAX, Reconnect
from tests.factories import worker_config
from tests.server.test_server_inprocess import (
    job_detail,
    open_raw,
    poll_job,
    submit,
    submit_request,
)

TIMEOUT = 20


# --- the pure policy -----------------------------------------------------------------------------


def test_reconnect_delays_double_up_to_the_max_and_end_with_the_grace() -> None:
    policy = Reconnect(grace=30.0, lost_at=100.0)
    delays = [policy.next_delay(100.0) for _ in range(8)]
    assert delays[0] == RECONNECT_FIRST
    assert delays[1] == 2 * RECONNECT_FIRST
    assert max(d for d in delays if d is not None) == RECONNECT_MAX
    assert policy.next_delay(129.0) == 1.0  # never past the grace
    assert policy.next_delay(130.0) is None


def test_no_grace_means_no_try() -> None:
    assert Reconnect(grace=0.0, lost_at=5.0).next_delay(5.0) is None


# --- a server that crashes and comes back --------------------------------------------------------


class Run:
    """One server run on `server_dir` with `journal`, crashed (not stopped) by `crash`."""

    def __init__(self, server_dir: Path, journal: Path) -> None:
        self.process = ServerProcess(
            ServerConfig(server_dir=server_dir), journal=journal, journal_flush_period=0.05
        )
        self.scope = trio.CancelScope()

    async def start(self, nursery: trio.Nursery) -> None:
        async def run(task_status: trio.TaskStatus[m.ServerInfoView]) -> None:
            with self.scope:
                await self.process.run(task_status=task_status)

        await nursery.start(run)

    async def crash(self) -> None:
        """Everything journaled so far is on disk, then the server vanishes."""
        writer = self.process.journal
        assert writer is not None
        await writer.flush()

        def dead(data: bytes) -> None:
            raise OSError(errno.EIO, "the process is gone")

        # Nothing written after this point reaches the file, as when the process dies: the
        # sessions' ends below are never journaled. Its lock goes with it.
        writer._write = dead  # type: ignore[method-assign]
        async with writer.flushing:
            writer.close()
        self.scope.cancel()
        await trio.lowlevel.checkpoint()


async def register(
    server_dir: Path,
    grace: float,
    previous: int | None = None,
    tasks: list[list[int]] | None = None,
) -> tuple[FramedStream, m.WorkerRegistered]:
    record = serverdir.load_access(server_dir)
    assert record.worker is not None and record.worker.secret_key is not None
    framed = FramedStream(await open_raw(server_dir, "worker"))
    await peer_handshake(framed, "worker", record.worker.secret_key)
    config = attrs.evolve(
        worker_config(4, "fake1", heartbeat_interval=3600.0), server_lost_grace=grace
    )
    await framed.send(m.RegisterWorker(config, previous, tasks or []), codec.FROM_WORKER)
    reply = await framed.receive(codec.TO_WORKER)
    assert isinstance(reply, m.WorkerRegistered)
    return framed, reply


async def receive_compute(framed: FramedStream) -> list[list[Any]]:
    msg = await framed.receive(codec.TO_WORKER)
    assert isinstance(msg, m.ComputeTasks), msg
    return msg.tasks


async def report(framed: FramedStream, rows: list[list[Any]], status: int) -> None:
    updates = [
        [j, t, i, status, 1.0, None if status == m.TASK_RUNNING else 2.0, None]
        for j, t, i, *_ in rows
    ]
    await framed.send(m.TaskUpdates(updates), codec.FROM_WORKER)


async def start_four_running(
    run: Run, server_dir: Path, grace: float
) -> tuple[ServerConnection, int, int, list[list[Any]]]:
    """A job of 4 tasks, all running on one worker with `grace`, journaled."""
    client = await connect(server_dir)
    framed, reply = await register(server_dir, grace)
    job_id = await submit(client, "0-3")
    rows = await receive_compute(framed)
    assert len(rows) == 4
    await report(framed, rows, m.TASK_RUNNING)
    await poll_job(client, job_id, lambda d: d.info.task_stats.running == 4)
    await client.aclose()
    return client, job_id, reply.worker_id, rows


async def test_a_returning_worker_keeps_its_tasks_and_its_id(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    journal = tmp_path / "journal"
    server_dir = tmp_path / "server"
    with trio.fail_after(TIMEOUT):
        first = Run(server_dir, journal)
        await first.start(nursery)
        _, job_id, worker_id, rows = await start_four_running(first, server_dir, 60.0)
        await first.crash()

        second = Run(server_dir, journal)
        await second.start(nursery)
        client = await connect(server_dir)
        detail = await job_detail(client, job_id, tasks=True)
        # Held for the worker, not re-run: same instance ids, nobody has them.
        assert [(t.state, t.instance_id) for t in detail.tasks or ()] == [
            (TaskState.WAITING, 0)
        ] * 4
        presented = [[j, t, i] for j, t, i, *_ in rows[:3]] + [[job_id, 99, 0]]
        framed, reply = await register(server_dir, 60.0, worker_id, presented)
        assert reply.worker_id == worker_id
        kill = await framed.receive(codec.TO_WORKER)
        assert kill == m.CancelTasks([[job_id, 99, 0]])  # a task the server does not know
        await report(framed, rows[:3], m.TASK_FINISHED)
        detail = await poll_job(
            client, job_id, lambda d: d.info.task_stats.finished == 3, tasks=True
        )
        assert detail.info.task_stats.running == 0
        assert detail.info.task_stats.waiting == 1  # the fourth, not presented, still held
        assert [(t.instance_id, t.crash_count) for t in detail.tasks or ()] == [(0, 0)] * 4
        await client.aclose()
        await framed.aclose()
        second.process.request_stop()


async def test_tasks_of_a_worker_that_does_not_come_back_rerun_with_a_new_instance(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    journal = tmp_path / "journal"
    server_dir = tmp_path / "server"
    with trio.fail_after(TIMEOUT):
        first = Run(server_dir, journal)
        await first.start(nursery)
        _, job_id, worker_id, rows = await start_four_running(first, server_dir, 0.3)
        await first.crash()

        second = Run(server_dir, journal)
        await second.start(nursery)
        client = await connect(server_dir)
        other, reply = await register(server_dir, 0.0)
        assert reply.worker_id > worker_id  # ids stay unique across the restart
        rerun = await receive_compute(other)  # once the 0.3 s hold ended
        assert sorted((t, i) for _, t, i, *_ in rerun) == [(t, 1) for t in range(4)]
        # The late worker is told to kill what it presents: given to someone else.
        late, late_reply = await register(server_dir, 0.3, worker_id, [[job_id, 0, 0]])
        assert late_reply.worker_id == worker_id
        assert await late.receive(codec.TO_WORKER) == m.CancelTasks([[job_id, 0, 0]])
        await report(other, rerun, m.TASK_FINISHED)
        detail = await poll_job(client, job_id, lambda d: d.finished_at is not None, tasks=True)
        assert detail.info.task_stats == m.TaskStats(finished=4)
        assert [(t.instance_id, t.crash_count) for t in detail.tasks or ()] == [(1, 1)] * 4
        await client.aclose()
        await other.aclose()
        await late.aclose()
        await second.crash()

    # Crash counts and instance ids are journaled.
    records = journal_file.read(journal).records
    crashed = [row for rec in records if isinstance(rec, r.TasksUpdated) for row in rec.crashed]
    assert sorted(crashed) == [[job_id, t, 1, 1] for t in range(4)]


async def test_crash_counts_carry_over_restarts_and_a_crash_limit_failure_is_journaled(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Crash limit 2: one crash in the first run (the worker is lost), one in the second
    (its holder never comes back): failed, and still failed after another restart."""
    journal = tmp_path / "journal"
    server_dir = tmp_path / "server"
    request = submit_request("0")
    request = attrs.evolve(request, submit=attrs.evolve(request.submit, crash_limit=2))
    with trio.fail_after(TIMEOUT):
        first = Run(server_dir, journal)
        await first.start(nursery)
        client = await connect(server_dir)
        job_id = (await client.request(request, m.SubmitResponse)).job_id
        lost, _ = await register(server_dir, 0.0)
        await report(lost, await receive_compute(lost), m.TASK_RUNNING)
        await poll_job(client, job_id, lambda d: d.info.task_stats.running == 1)
        await lost.aclose()  # crash 1: the task waits again, instance 1
        await poll_job(client, job_id, lambda d: d.info.task_stats.waiting == 1)
        holder, _ = await register(server_dir, 0.3)
        await report(holder, await receive_compute(holder), m.TASK_RUNNING)
        await poll_job(client, job_id, lambda d: d.info.task_stats.running == 1)
        await client.aclose()
        await first.crash()

        second = Run(server_dir, journal)
        await second.start(nursery)
        client = await connect(server_dir)
        # Crash 2: the holder does not come back within its 0.3 s.
        detail = await poll_job(client, job_id, lambda d: d.info.task_stats.failed == 1, True)
        [task] = detail.tasks or ()
        assert task.crash_count == 2
        assert task.error is not None and "limit was reached" in task.error
        await client.aclose()
        await second.crash()
        await holder.aclose()

        third = Run(server_dir, journal)
        await third.start(nursery)
        client = await connect(server_dir)
        detail = await job_detail(client, job_id, tasks=True)
        assert detail.info.task_stats.failed == 1
        [task] = detail.tasks or ()
        assert task.error is not None and "limit was reached" in task.error
        await client.aclose()
        third.process.request_stop()
