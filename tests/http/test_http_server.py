"""The HTTP request loop over loopback TCP: what it answers, what it refuses, how it closes."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing

from hqpy.http.server import HttpServer, Reply

TIMEOUT = 10
BODY = b"hello metrics\n"


def routes(calls: list[str]) -> dict[str, object]:
    def ok() -> Reply:
        calls.append("ok")
        return Reply(200, BODY)

    def broken() -> Reply:
        calls.append("broken")
        raise RuntimeError("a bug in a handler")

    return {"/metrics": ok, "/broken": broken}


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
async def app(calls: list[str], nursery: trio.Nursery) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(
        routes(calls),  # type: ignore[arg-type]
        max_head=1024,
        max_body=100,
        max_connections=3,
        request_timeout=0.5,
        idle_timeout=0.5,
    )
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    yield server, listeners[0].socket.getsockname()[1]


async def open_conn(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[int, bytes, bytes]:
    """One response with a content-length body: (status, head, body)."""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            assert data, f"closed before a whole head: {bytes(buffer)!r}"
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        del buffer[: len(head) + 4]
        while len(buffer) < length:
            data = await stream.receive_some(65536)
            assert data
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
    status = int(head.split(b" ", 2)[1])
    return status, head, body


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


async def test_get_metrics_and_keep_alive(app: tuple[HttpServer, int], calls: list[str]) -> None:
    _, port = app
    stream = await open_conn(port)
    buffer = bytearray()
    for _ in range(3):
        await stream.send_all(get("/metrics?x=1"))
        status, head, body = await read_response(stream, buffer)
        assert status == 200 and body == BODY
        assert b"cache-control: no-store" in head.lower()
    assert calls == ["ok", "ok", "ok"]
    await stream.aclose()


async def test_pipelined_requests_are_answered_in_order(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get("/metrics") + get("/nope") + get("/metrics"))
    buffer = bytearray()
    statuses = [(await read_response(stream, buffer))[0] for _ in range(3)]
    assert statuses == [200, 404, 200]
    await stream.aclose()


async def test_head_has_length_but_no_body(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get("/metrics", "Connection: close\r\n", method="HEAD"))
    data = await read_all(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert f"content-length: {len(BODY)}".encode() in head.lower()
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_get_405_and_change_nothing(
    app: tuple[HttpServer, int], calls: list[str], method: str
) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get("/metrics", "Content-Length: 2\r\n", method=method) + b"{}")
    status, head, _ = await read_response(stream, bytearray())
    assert status == 405
    assert b"allow: get, head" in head.lower()
    assert calls == []
    await stream.aclose()


async def test_unknown_path_is_404(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    for path in ("/", "/metrics/", "/../etc/passwd", "/static/../server.py"):
        await stream.send_all(get(path))
        status, _, _ = await read_response(stream, bytearray())
        assert status == 404, path
    await stream.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host header
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_and_close(
    app: tuple[HttpServer, int], calls: list[str], raw: bytes
) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(raw)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert b"connection: close" in data.lower()
    assert calls == []


async def test_client_protocol_frame_is_refused(
    app: tuple[HttpServer, int], calls: list[str]
) -> None:
    """What a hq client or worker sends first: a length-prefixed JSON frame."""
    _, port = app
    payload = b'{"protocol": "hqpy", "version": "0.1.0", "role": "client"}'
    stream = await open_conn(port)
    await stream.send_all(struct.pack(">I", len(payload)) + payload)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert calls == []


async def test_oversized_head_gets_431(app: tuple[HttpServer, int], calls: list[str]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get("/metrics", "X-Big: " + "a" * 4000 + "\r\n"))
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert calls == []


async def test_oversized_request_line_gets_4xx(
    app: tuple[HttpServer, int], calls: list[str]
) -> None:
    _, port = app
    stream = await open_conn(port)
    with trio.fail_after(TIMEOUT):
        try:
            await stream.send_all(b"GET /" + b"a" * 100_000)
        except trio.BrokenResourceError:
            pass  # it may close on us before we are done: fine
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert calls == []


async def test_oversized_body_gets_413(app: tuple[HttpServer, int], calls: list[str]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get("/metrics", "Content-Length: 1000\r\n") + b"x" * 1000)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert calls == []


async def test_chunked_body_over_limit_gets_413(
    app: tuple[HttpServer, int], calls: list[str]
) -> None:
    _, port = app
    stream = await open_conn(port)
    chunk = b"80\r\n" + b"x" * 128 + b"\r\n"
    await stream.send_all(get("/metrics", "Transfer-Encoding: chunked\r\n") + chunk * 2)
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert calls == []


async def test_small_body_is_ignored(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    buffer = bytearray()
    await stream.send_all(get("/metrics", "Content-Length: 5\r\n") + b"hello" + get("/metrics"))
    assert (await read_response(stream, buffer))[0] == 200
    assert (await read_response(stream, buffer))[0] == 200
    await stream.aclose()


async def test_a_failing_handler_gives_500_and_the_server_goes_on(
    app: tuple[HttpServer, int],
) -> None:
    _, port = app
    stream = await open_conn(port)
    buffer = bytearray()
    await stream.send_all(get("/broken") + get("/metrics"))
    assert (await read_response(stream, buffer))[0] == 500
    assert (await read_response(stream, buffer))[0] == 200
    await stream.aclose()


async def test_idle_connection_is_closed(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    assert await read_all(stream) == b""


async def test_slow_request_gets_408(app: tuple[HttpServer, int], calls: list[str]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert calls == []


async def wait_for_connections(server: HttpServer, n: int) -> None:
    with trio.fail_after(TIMEOUT):
        while server.connections != n:  # noqa: ASYNC110 (a plain counter, polled)
            await trio.sleep(0.01)


async def busy_app(calls: list[str], nursery: trio.Nursery) -> tuple[HttpServer, int]:
    """Three slots, and requests may take their time: held half-sent requests stay busy."""
    server = HttpServer(routes(calls), max_connections=3, request_timeout=60)  # type: ignore[arg-type]
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    return server, listeners[0].socket.getsockname()[1]


async def test_busy_connections_beyond_the_limit_are_refused(
    calls: list[str], nursery: trio.Nursery
) -> None:
    server, port = await busy_app(calls, nursery)
    held = [await open_conn(port) for _ in range(3)]
    for s in held:
        # A request under way: these connections are busy, not idle.
        await s.send_all(b"GET /metrics HTTP/1.1\r\n")
    await wait_for_connections(server, 3)
    extra = await open_conn(port)
    assert await read_all(extra) == b""
    assert server.refused == 1
    for s in held:
        await s.aclose()
    await wait_for_connections(server, 0)
    stream = await open_conn(port)
    await stream.send_all(get("/metrics"))
    assert (await read_response(stream, bytearray()))[0] == 200
    await stream.aclose()


async def test_refused_connections_are_logged_once_with_a_count(
    calls: list[str], nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await busy_app(calls, nursery)
    held = [await open_conn(port) for _ in range(3)]
    for s in held:
        await s.send_all(b"GET /metrics HTTP/1.1\r\n")
    await wait_for_connections(server, 3)
    with caplog.at_level(logging.WARNING, logger="hqpy.http.server"):
        for _ in range(5):
            extra = await open_conn(port)
            assert await read_all(extra) == b""
    assert server.refused == 5
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.getMessage() for r in refused] == [
        "HTTP: 3 connections busy; refused 1 new connection(s)"
    ]
    for s in held:
        await s.aclose()


async def test_idle_connections_make_room_for_a_new_one(app: tuple[HttpServer, int]) -> None:
    server, port = app
    held = []
    for _ in range(3):
        held.append(await open_conn(port))
        await wait_for_connections(server, len(held))
    stream = await open_conn(port)
    await stream.send_all(get("/metrics"))
    assert (await read_response(stream, bytearray()))[0] == 200
    # The one idle the longest made room.
    assert await read_all(held[0]) == b""
    assert server.refused == 0
    for s in [*held, stream]:
        await s.aclose()


async def test_sixty_four_idle_connections_do_not_stop_a_scrape(
    calls: list[str], nursery: trio.Nursery
) -> None:
    """Issue 8.8: the default cap held by idle connections used to lock `/metrics` out."""
    server = HttpServer(routes(calls))  # type: ignore[arg-type]
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    held = [await open_conn(port) for _ in range(server.max_connections)]
    await wait_for_connections(server, server.max_connections)
    stream = await open_conn(port)
    await stream.send_all(get("/metrics"))
    assert (await read_response(stream, bytearray()))[0] == 200
    assert calls == ["ok"]
    for s in [*held, stream]:
        await s.aclose()


async def test_idle_connections_close_after_a_few_seconds(
    calls: list[str], nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = HttpServer(routes(calls))  # type: ignore[arg-type]
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    stream = await open_conn(port)
    start = trio.current_time()
    assert await read_all(stream) == b""
    assert trio.current_time() - start <= 5.0 + 0.5
    await stream.aclose()


async def test_http_1_0_closes_after_the_answer(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = await read_all(stream)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(BODY)


async def test_absolute_form_target(app: tuple[HttpServer, int]) -> None:
    _, port = app
    stream = await open_conn(port)
    await stream.send_all(get(f"http://127.0.0.1:{port}/metrics"))
    assert (await read_response(stream, bytearray()))[0] == 200
    await stream.aclose()
