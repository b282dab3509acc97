"""The real server in the test's trio loop with its HTTP side on: metrics, status, refusals."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hqpy.app.server_process import ServerProcess
from hqpy.client.connection import ServerConnection, connect
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.codec import encode
from hqpy.protocol.framing import HEADER
from hqpy.server.server import ServerConfig
from tests.factories import worker_config
from tests.server.test_server_inprocess import connect_worker, poll_job, submit

TIMEOUT = 10


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One request on a fresh connection: (status, head, body)."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin-1"), body


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels sorted, as one flat dict."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
async def server(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[ServerProcess]:
    srv = ServerProcess(ServerConfig(server_dir=tmp_path, metrics_port=0))
    with trio.fail_after(TIMEOUT):
        await nursery.start(srv.run)
    yield srv
    srv.request_stop()


@pytest.fixture
def port(server: ServerProcess) -> int:
    [listener] = server.http_listeners
    sockname = listener.socket.getsockname()
    assert sockname[0] == "127.0.0.1"
    return int(sockname[1])


@pytest.fixture
async def client(server: ServerProcess, tmp_path: Path) -> AsyncIterator[ServerConnection]:
    with trio.fail_after(TIMEOUT):
        conn = await connect(tmp_path)
    yield conn
    await conn.aclose()


async def test_metrics_follow_a_job_run_by_a_worker(
    server: ServerProcess, port: int, client: ServerConnection, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await connect_worker(tmp_path, cpus=3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.serve)
            job_id = await submit(client, "1-500")
            await poll_job(client, job_id, lambda d: d.finished_at is not None)
            nursery.cancel_scope.cancel()
    status, head, body = await http_get(port, "/metrics")
    assert status == 200
    assert "text/plain; version=0.0.4" in head
    s = samples(body.decode())
    assert s['hqpy_tasks{state="finished"}'] == 500
    assert s['hqpy_tasks_finished_total{outcome="finished"}'] == 500
    assert s["hqpy_task_duration_seconds_count"] == 500
    assert s['hqpy_jobs{state="finished"}'] == 1
    assert s['hqpy_workers{state="running"}'] == 1
    assert s["hqpy_worker_cpus"] == 3
    await worker.aclose()
    with trio.fail_after(TIMEOUT):
        while True:
            s = samples((await http_get(port, "/metrics"))[2].decode())
            if s['hqpy_worker_disconnections_total{reason="connection_lost"}'] == 1:
                break
            await trio.sleep(0.01)
    assert s['hqpy_workers{state="connection_lost"}'] == 1


async def test_status_endpoint_and_page(
    server: ServerProcess, port: int, client: ServerConnection
) -> None:
    await submit(client, "1-1000000")
    status, head, body = await http_get(port, "/api/status")
    assert status == 200 and "application/json" in head
    doc = json.loads(body)
    assert doc["server"]["uid"] == server.state.server_uid
    [job] = doc["jobs"]
    assert job["task_count"] == 1_000_000 and job["counts"]["waiting"] == 1_000_000
    for path in ("/", "/index.html"):
        status, head, page = await http_get(port, path)
        assert status == 200 and "text/html" in head
        assert "content-security-policy: default-src 'none'" in head.lower()
        # Everything the page refers to is served.
        for ref in re.findall(rb'(?:src|href)="(/[^"]*)"', page):
            assert (await http_get(port, ref.decode()))[0] == 200, ref
    status, head, _ = await http_get(port, "/static/app.js")
    assert "text/javascript" in head


async def test_a_million_task_array_scrapes(
    server: ServerProcess, port: int, client: ServerConnection
) -> None:
    await submit(client, "0-999999")
    status, _, body = await http_get(port, "/metrics")
    assert status == 200
    assert samples(body.decode())['hqpy_tasks{state="waiting"}'] == 1_000_000


async def test_protocol_frames_on_the_metrics_port_are_refused(
    server: ServerProcess, port: int, tmp_path: Path
) -> None:
    """A client's or worker's first frames get a 400 and reach no handler."""
    register = encode(m.RegisterWorker(worker_config(4, "intruder")), codec.FROM_WORKER)
    submit_frame = encode(m.StopServerRequest(), codec.CLIENT_REQUEST)
    for payload in (register, submit_frame):
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HEADER.pack(len(payload)) + payload)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 "), data[:60]
    assert server.state.workers == {}
    assert (await http_get(port, "/metrics"))[0] == 200  # and the server still runs


async def test_metrics_port_is_closed_with_the_server(tmp_path: Path) -> None:
    srv = ServerProcess(ServerConfig(server_dir=tmp_path, metrics_port=0))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            await nursery.start(srv.run)
        port = srv.http_listeners[0].socket.getsockname()[1]
        assert (await http_get(port, "/metrics"))[0] == 200
        srv.request_stop()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
