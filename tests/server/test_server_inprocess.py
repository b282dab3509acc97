"""The real server in the test's trio loop, over loopback TCP, with fake workers written here.

A fake worker speaks the wire protocol directly (handshake, `RegisterWorker`, `TaskUpdates`) and
runs no processes, so these tests exercise the server's sessions, scheduler and state end to end.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hqpy.app.server_process import ServerProcess
from hqpy.client.connection import ServerConnection, connect
from hqpy.common import serverdir
from hqpy.common.resources import (
    FRACTIONS,
    ResourceAmountRequest,
    ResourceRequest,
)
from hqpy.common.states import TaskState, WorkerFilter
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import AuthError, new_secret, peer_handshake
from hqpy.protocol.framing import HEADER, FramedStream
from hqpy.server.server import ServerConfig
from tests.factories import worker_config

TIMEOUT = 10


class FakeWorker:
    """A worker that finishes every task it is given at once, and remembers what it got."""

    def __init__(self, framed: FramedStream, registered: m.WorkerRegistered) -> None:
        self.framed = framed
        self.id = registered.worker_id
        self.frames: list[m.ComputeTasks] = []
        self.stops: list[m.StopWorker] = []
        self.stopped = trio.Event()

    @property
    def rows(self) -> list[list[Any]]:
        return [row for frame in self.frames for row in frame.tasks]

    async def next_compute(self) -> m.ComputeTasks:
        while True:
            msg = await self.framed.receive(codec.TO_WORKER)
            assert msg is not None, "the server closed the worker connection"
            if isinstance(msg, m.ComputeTasks):
                self.frames.append(msg)
                return msg

    async def report(self, rows: list[list[Any]], status: int) -> None:
        now = time.time()
        ended = None if status == m.TASK_RUNNING else now
        updates = [[job, task, inst, status, now, ended, None] for job, task, inst, *_ in rows]
        await self.framed.send(m.TaskUpdates(updates), codec.FROM_WORKER)

    async def serve(self) -> None:
        """Finish every assigned task until the server stops this worker or goes away."""
        while True:
            msg = await self.framed.receive(codec.TO_WORKER)
            if msg is None:
                return
            if isinstance(msg, m.ComputeTasks):
                self.frames.append(msg)
                await self.report(msg.tasks, m.TASK_FINISHED)
            elif isinstance(msg, m.StopWorker):
                self.stops.append(msg)
                self.stopped.set()
                return

    async def aclose(self) -> None:
        await self.framed.aclose()


async def open_raw(server_dir: Path, role: str = "client") -> trio.SocketStream:
    record = serverdir.load_access(server_dir)
    endpoint = record.client if role == "client" else record.worker
    assert endpoint is not None
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


async def connect_worker(
    server_dir: Path,
    cpus: int = 4,
    hostname: str = "fake1",
    config: m.WorkerConfiguration | None = None,
) -> FakeWorker:
    record = serverdir.load_access(server_dir)
    assert record.worker is not None and record.worker.secret_key is not None
    framed = FramedStream(await open_raw(server_dir, "worker"))
    await peer_handshake(framed, "worker", record.worker.secret_key)
    if config is None:
        config = worker_config(cpus, hostname, heartbeat_interval=3600.0)
    await framed.send(m.RegisterWorker(config), codec.FROM_WORKER)
    registered = await framed.receive(codec.TO_WORKER)
    assert isinstance(registered, m.WorkerRegistered)
    return FakeWorker(framed, registered)


def submit_request(ids: str) -> m.SubmitRequest:
    return m.SubmitRequest(
        m.SubmitDesc(
            ids=ids,
            args=("true",),
            env={},
            cwd="%{SUBMIT_DIR}",
            stdout=None,
            stderr=None,
            submit_dir="/tmp",
            request=ResourceRequest((ResourceAmountRequest("cpus", FRACTIONS),)),
        )
    )


async def submit(client: ServerConnection, ids: str) -> int:
    response = await client.request(submit_request(ids), m.SubmitResponse)
    return response.job_id


async def job_detail(client: ServerConnection, job_id: int, tasks: bool = False) -> m.JobDetailView:
    response = await client.request(m.JobDetailsRequest(str(job_id), tasks), m.JobDetailsResponse)
    [detail] = response.jobs
    return detail


async def poll_job(
    client: ServerConnection,
    job_id: int,
    done: Callable[[m.JobDetailView], bool],
    tasks: bool = False,
) -> m.JobDetailView:
    """Ask for the job until `done` holds (callers bound the wait with `fail_after`)."""
    while True:
        detail = await job_detail(client, job_id, tasks)
        if done(detail):
            return detail
        await trio.sleep(0.01)


async def server_is_responsive(client: ServerConnection) -> bool:
    response = await client.request(m.ServerInfoRequest(), m.ServerInfoResponse)
    return response.info.version != ""


@pytest.fixture
async def server_dir(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Path]:
    """A running server; a crash of `Server.run` fails the test."""
    server = ServerProcess(ServerConfig(server_dir=tmp_path))
    with trio.fail_after(TIMEOUT):
        await nursery.start(server.run)
    yield tmp_path
    server.request_stop()


@pytest.fixture
async def client(server_dir: Path) -> AsyncIterator[ServerConnection]:
    with trio.fail_after(TIMEOUT):
        conn = await connect(server_dir)
    yield conn
    await conn.aclose()


# --- jobs ----------------------------------------------------------------------------------------


async def test_thousand_tasks_all_finish_on_a_fake_worker(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(server_dir)
        nursery.start_soon(worker.serve)
        job_id = await submit(client, "0-999")
        detail = await poll_job(client, job_id, lambda d: d.finished_at is not None)
    assert detail.info.task_stats == m.TaskStats(finished=1000)
    assert sorted(row[1] for row in worker.rows) == list(range(1000))


async def test_wait_jobs_returns_when_the_job_is_done(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0-999")
        worker = await connect_worker(server_dir)
        nursery.start_soon(worker.serve)
        response = await client.request(m.WaitJobsRequest(str(job_id)), m.JobListResponse)
    [view] = response.jobs
    assert view.task_stats == m.TaskStats(finished=1000)


async def test_one_compute_tasks_frame_carries_many_tasks(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(server_dir, cpus=4)
        nursery.start_soon(worker.serve)
        job_id = await submit(client, "0-999")
        await client.request(m.WaitJobsRequest(str(job_id)), m.JobListResponse)
    sizes = [len(frame.tasks) for frame in worker.frames]
    assert sum(sizes) == 1000
    assert sizes[0] == 4, sizes
    assert max(sizes) > 4, sizes


async def test_task_body_is_sent_to_a_worker_once(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(server_dir, cpus=4)
        nursery.start_soon(worker.serve)
        job_id = await submit(client, "0-99")
        await client.request(m.WaitJobsRequest(str(job_id)), m.JobListResponse)
    assert [len(frame.bodies) for frame in worker.frames][:2] == [1, 0]
    assert sum(len(frame.bodies) for frame in worker.frames) == 1


# --- bad peers -----------------------------------------------------------------------------------


async def test_garbage_connection_does_not_disturb_a_concurrent_client(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        garbage = await open_raw(server_dir)
        await garbage.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 10)
        job_id = await submit(client, "0-9")
        while await garbage.receive_some(65536):
            pass
        assert (await job_detail(client, job_id)).info.task_count == 10
    await garbage.aclose()


async def test_garbage_on_the_worker_port_does_not_disturb_a_concurrent_client(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        garbage = await open_raw(server_dir, "worker")
        await garbage.send_all(HEADER.pack(10**9) + b"x" * 100)
        while await garbage.receive_some(65536):
            pass
        assert await server_is_responsive(client)
    await garbage.aclose()


async def test_non_object_json_hello_does_not_disturb_a_concurrent_client(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        bad = FramedStream(await open_raw(server_dir))
        await bad.send_frame(b"null")
        while await bad.stream.receive_some(65536):
            pass
        assert await server_is_responsive(client)
    await bad.aclose()


async def test_wrong_secret_is_refused_without_disturbing_a_concurrent_client(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        intruder = FramedStream(await open_raw(server_dir))
        with pytest.raises(AuthError, match="wrong secret"):
            await peer_handshake(intruder, "client", new_secret())
        assert await server_is_responsive(client)
    await intruder.aclose()


async def test_worker_secret_on_the_client_port_is_refused(
    server_dir: Path, client: ServerConnection
) -> None:
    record = serverdir.load_access(server_dir)
    assert record.worker is not None and record.worker.secret_key is not None
    with trio.fail_after(TIMEOUT):
        intruder = FramedStream(await open_raw(server_dir, "client"))
        with pytest.raises(AuthError):
            await peer_handshake(intruder, "worker", record.worker.secret_key)
        assert await server_is_responsive(client)
    await intruder.aclose()


async def test_malformed_task_update_drops_only_that_worker(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(server_dir)
        await worker.framed.send(m.TaskUpdates([[1, 2]]), codec.FROM_WORKER)
        assert await worker.framed.receive(codec.TO_WORKER) is None
        workers = await client.request(m.ListWorkersRequest(WorkerFilter.ALL), m.WorkerListResponse)
    assert [w.state for w in workers.workers] == ["CONNECTION LOST"]
    await worker.aclose()


# --- lost and stopped workers --------------------------------------------------------------------


async def test_worker_disconnect_mid_task_requeues_it_to_another_worker(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0")
        first = await connect_worker(server_dir, cpus=1, hostname="first")
        compute = await first.next_compute()
        assert [row[:3] for row in compute.tasks] == [[job_id, 0, 0]]
        await first.report(compute.tasks, m.TASK_RUNNING)
        await first.aclose()
        second = await connect_worker(server_dir, cpus=1, hostname="second")
        compute = await second.next_compute()
        assert [row[:3] for row in compute.tasks] == [[job_id, 0, 1]]
        await second.report(compute.tasks, m.TASK_FINISHED)
        await client.request(m.WaitJobsRequest(str(job_id)), m.JobListResponse)
        detail = await job_detail(client, job_id, tasks=True)
    assert detail.tasks is not None
    [task] = detail.tasks
    assert (task.state, task.instance_id, task.crash_count) == (TaskState.FINISHED, 1, 1)
    assert task.workers == ("second",)
    await second.aclose()


async def test_worker_connection_reset_mid_task_requeues_the_task(
    server_dir: Path, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0")
        worker = await connect_worker(server_dir, cpus=1)
        compute = await worker.next_compute()
        await worker.report(compute.tasks, m.TASK_RUNNING)
        await poll_job(client, job_id, lambda d: d.info.task_stats.running == 1)
        stream = worker.framed.stream
        assert isinstance(stream, trio.SocketStream)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await worker.aclose()
        detail = await poll_job(client, job_id, lambda d: d.info.task_stats.running == 0, True)
    assert detail.tasks is not None
    [task] = detail.tasks
    assert (task.state, task.instance_id, task.crash_count) == (TaskState.WAITING, 1, 1)


async def test_stop_workers_request_sends_stop_worker(
    server_dir: Path, client: ServerConnection, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(server_dir)
        nursery.start_soon(worker.serve)
        response = await client.request(m.StopWorkersRequest(str(worker.id)), m.LogLinesResponse)
        await worker.stopped.wait()
    assert [(line.level, line.text) for line in response.lines] == [
        ("INFO", f"Worker {worker.id} stopped")
    ]
    assert worker.stops == [m.StopWorker("stopped")]
    await worker.aclose()


# --- server stop ---------------------------------------------------------------------------------


async def test_stop_server_request_ends_run_and_removes_hq_current(tmp_path: Path) -> None:
    current = tmp_path / serverdir.CURRENT
    server = ServerProcess(ServerConfig(server_dir=tmp_path))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert current.is_symlink()
            client = await connect(tmp_path)
            response = await client.request(m.StopServerRequest(), m.OkResponse)
            await client.aclose()
    assert response == m.OkResponse()
    assert not current.exists() and not current.is_symlink()
