"""Issue 8 on the real server in the test's loop: clients that hang up while they wait, huge id
ranges, a long task list beside a worker with a short heartbeat, the server's own stalls, one
port for every address family."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hqpy.app.server_process import ServerProcess
from hqpy.client.blocking import ClientError
from hqpy.client.connection import ServerConnection, connect
from hqpy.common import serverdir
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import peer_handshake
from hqpy.protocol.framing import FramedStream
from hqpy.server.server import REAPER_INTERVAL, Server, ServerConfig
from tests import factories
from tests.factories import worker_config
from tests.server.test_server_inprocess import connect_worker, open_raw, submit

TIMEOUT = 30


@pytest.fixture
async def process(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(ServerConfig(server_dir=tmp_path))
    with trio.fail_after(TIMEOUT):
        await nursery.start(server.run)
    yield server
    server.request_stop()


@pytest.fixture
async def client(process: ServerProcess) -> AsyncIterator[ServerConnection]:
    with trio.fail_after(TIMEOUT):
        conn = await connect(process.config.server_dir)
    yield conn
    await conn.aclose()


async def open_client(server_dir: Path) -> FramedStream:
    record = serverdir.load_access(server_dir)
    assert record.client is not None and record.client.secret_key is not None
    framed = FramedStream(await open_raw(server_dir))
    await peer_handshake(framed, "client", record.client.secret_key)
    return framed


async def hang_up_while_waiting(process: ServerProcess, request: m.ClientRequest) -> None:
    """100 clients send a request that waits, then close their side (what `kill -9` of the
    client does); the server must close every one of these connections (no CLOSE_WAIT)."""
    server_dir = process.config.server_dir
    clients = [await open_client(server_dir) for _ in range(100)]
    for framed in clients:
        await framed.send(request, codec.CLIENT_REQUEST)
    for framed in clients:
        stream = framed.stream
        assert isinstance(stream, trio.SocketStream)
        await stream.send_eof()
    for framed in clients:
        # EOF from the server: it closed its side of the connection.
        assert await framed.stream.receive_some(1) == b""
        await framed.aclose()


async def test_job_wait_clients_that_hang_up_leave_no_waiter_or_socket(
    process: ServerProcess, client: ServerConnection
) -> None:
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0")
        await hang_up_while_waiting(process, m.WaitJobsRequest(str(job_id)))
        assert process.state.jobs[job_id].waiters == []
        # The server goes on answering.
        info = await client.request(m.JobDetailsRequest(str(job_id)), m.JobDetailsResponse)
    assert [d.info.id for d in info.jobs] == [job_id]


async def test_worker_wait_clients_that_hang_up_leave_no_waiter_or_socket(
    process: ServerProcess,
) -> None:
    with trio.fail_after(TIMEOUT):
        await hang_up_while_waiting(process, m.WaitWorkersRequest(3))
    assert process.state.worker_waiters == []


async def test_a_request_sent_while_another_is_answered_is_answered_next(
    process: ServerProcess, client: ServerConnection
) -> None:
    """The session watches the connection while a handler waits; a frame that arrives then
    is kept and answered, in order."""
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0")
        framed = await open_client(process.config.server_dir)
        await framed.send(m.WaitJobsRequest(str(job_id)), codec.CLIENT_REQUEST)
        await framed.send(m.ServerInfoRequest(), codec.CLIENT_REQUEST)
        worker = await connect_worker(process.config.server_dir)
        async with trio.open_nursery() as inner:
            inner.start_soon(worker.serve)
            first = await framed.receive(codec.CLIENT_RESPONSE)
            second = await framed.receive(codec.CLIENT_RESPONSE)
            inner.cancel_scope.cancel()
        await framed.aclose()
        await worker.aclose()
    assert isinstance(first, m.JobListResponse) and first.jobs[0].id == job_id
    assert isinstance(second, m.ServerInfoResponse)


async def test_huge_id_ranges_are_answered_as_ranges(client: ServerConnection) -> None:
    """Issue 8.2: these walked the range id by id (minutes, then out of memory)."""
    with trio.fail_after(TIMEOUT):
        job_id = await submit(client, "0-2")
        details = await client.request(m.JobDetailsRequest("0-4294967295"), m.JobDetailsResponse)
        canceled = await client.request(m.CancelJobsRequest("100-50000000"), m.LogLinesResponse)
        tasks = await client.request(m.TaskInfoRequest(job_id, "1-99999999"), m.TaskInfoResponse)
        listed = await client.request(
            m.TaskListRequest(str(job_id), "2-4000000000:2"), m.TaskListResponse
        )
        with pytest.raises(ClientError, match="ids are 32-bit, at most 4294967295"):
            await client.request(m.JobDetailsRequest("1-9223372036854775807"), m.OkResponse)
        assert await client.request(m.ServerInfoRequest(), m.ServerInfoResponse)
    assert [d.info.id for d in details.jobs] == [job_id]
    assert details.missing == "0,2-4294967295"
    assert [(line.level, line.text) for line in canceled.lines] == [
        ("ERROR", "Canceling jobs 100-50000000 failed; jobs not found")
    ]
    assert [t.id for t in tasks.tasks] == [1, 2] and tasks.missing == "3-99999999"
    assert [[t.id for t in rows] for _, rows in listed.jobs] == [[2]]


async def test_a_long_task_list_pages_and_never_drops_a_worker_with_a_short_heartbeat(
    process: ServerProcess, client: ServerConnection, nursery: trio.Nursery
) -> None:
    """Issue 8.3: listing a big compact job ran on the loop for seconds, the heartbeat check
    then dropped a healthy worker, and the reply went over the frame limit."""
    n = 200_000
    server_dir = process.config.server_dir
    with trio.fail_after(120):
        job_id = await submit(client, f"0-{n - 1}")
        config = worker_config(cpus=1, heartbeat_interval=0.2)
        worker = await connect_worker(server_dir, config=config)

        async def heartbeats() -> None:
            while True:
                await worker.framed.send(m.Heartbeat(), codec.FROM_WORKER)
                await trio.sleep(0.05)

        nursery.start_soon(heartbeats)
        compute = await worker.next_compute()
        await worker.report(compute.tasks, TaskState.RUNNING)
        listed = 0
        pages = 0
        after = None
        while True:
            page = await client.request(
                m.TaskListRequest(str(job_id), after=after), m.TaskListResponse
            )
            pages += 1
            listed += sum(len(rows) for _, rows in page.jobs)
            if page.next is None:
                break
            after = page.next
    [w] = process.state.workers.values()
    assert w.state is WorkerState.RUNNING
    assert process.state.jobs[job_id].counts[TaskState.RUNNING] == 1
    assert listed == n
    assert pages == -(-n // m.TASK_PAGE)


async def test_the_heartbeat_check_forgives_the_servers_own_stall(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The injected clock jumps 30 s in one step (the loop was busy that long): a worker whose
    heartbeats wait unread in its socket is not lost. One that really goes silent is."""
    skew = [0.0]
    server = Server(ServerConfig(server_dir=tmp_path), clock=lambda: trio.current_time() + skew[0])
    worker = server.state.add_worker(worker_config(cpus=1, heartbeat_interval=1.0))
    nursery.start_soon(server._reaper)
    await trio.sleep(0.5)
    skew[0] += 30.0
    await trio.sleep(3 * REAPER_INTERVAL)
    assert worker.state is WorkerState.RUNNING
    server.state.on_heartbeat(worker)
    await trio.sleep(2.5)
    assert server.state.workers[worker.id].state is WorkerState.HEARTBEAT_LOST


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on this machine")
async def test_every_address_family_listens_on_the_port_in_access_json(
    process: ServerProcess,
) -> None:
    """Issue 8.11: the IPv6 listener had a port of its own, not the one clients are told."""
    record = serverdir.load_access(process.config.server_dir)
    assert record.client is not None and record.worker is not None
    families: dict[int, set[int]] = {}
    for listener in process.core.listeners:
        sock = listener.socket
        families.setdefault(sock.getsockname()[1], set()).add(sock.family)
    assert set(families) == {record.client.port, record.worker.port}
    assert all(len(f) >= 2 for f in families.values()), families


async def test_a_hand_written_client_cannot_submit_a_poison_task(
    process: ServerProcess, client: ServerConnection
) -> None:
    """Issue 8.4: an env key with `=` made `Popen` raise in every worker that took the task."""
    poison = factories.submit_desc("0", env={"A=B": "1"})
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ClientError, match="Invalid environment variable name 'A=B'"):
            await client.request(m.SubmitRequest(poison), m.SubmitResponse)
        nul = factories.submit_desc("0", args=("/bin/echo", "a\0b"))
        with pytest.raises(ClientError, match="Argument 1 of the task contains a NUL"):
            await client.request(m.SubmitRequest(nul), m.SubmitResponse)
    assert process.state.jobs == {}


async def test_job_details_with_tasks_come_in_pages(client: ServerConnection) -> None:
    n = 2 * m.TASK_PAGE + 5
    with trio.fail_after(TIMEOUT):
        first = await submit(client, f"0-{n - 1}")
        second = await submit(client, "0-2")
        pages = []
        after = None
        while True:
            page = await client.request(
                m.JobDetailsRequest(f"{first},{second}", True, after), m.JobDetailsResponse
            )
            pages.append(page)
            if page.next is None:
                break
            after = page.next
    assert len(pages) == 3
    assert all(sum(len(d.tasks or ()) for d in p.jobs) <= m.TASK_PAGE for p in pages)
    ids: dict[int, list[int]] = {}
    for page in pages:
        for detail in page.jobs:
            ids.setdefault(detail.info.id, []).extend(t.id for t in detail.tasks or ())
    assert ids == {first: list(range(n)), second: [0, 1, 2]}


async def test_alloc_events_follow_clients_that_hang_up_are_dropped(
    process: ServerProcess, client: ServerConnection
) -> None:
    """`alloc events --follow` waits in the allocator's handler; the session's hang-up watch
    ends it like any other waiting request."""
    params = m.QueueParams("local", time_limit=3600.0)
    with trio.fail_after(TIMEOUT):
        created = await client.request(m.AllocAddRequest(params, False), m.QueueCreatedResponse)
        events = await client.request(m.AllocEventsRequest(created.queue_id), m.AllocEventsResponse)
        follow = m.AllocEventsRequest(created.queue_id, after=events.total, wait=True)
        await hang_up_while_waiting(process, follow)
        assert await client.request(m.AllocListRequest(), m.QueueListResponse)
