"""A small, careful HTTP/1.1 service on trio streams (h11), in the server's own loop.

Why not `prometheus_client.start_http_server`: it runs a thread that would read the server's
state while the trio thread changes it, and it binds 0.0.0.0. Here every request is answered on
the trio thread, between two steps of the server, so a scrape sees one consistent state.

The request loop is defensive, since anything on the network may connect:
- request line and headers are limited by h11 (`max_incomplete_event_size`), bodies by
  `max_body`; too large: 431/413 and the connection closes;
- malformed HTTP (including the client or worker protocol's binary frames) gets a 400 and the
  connection closes: this port never speaks anything but HTTP;
- only GET and HEAD (405 otherwise), 404 for unknown paths; handlers only read state;
- timeouts: a connection idle between requests (a few seconds), a request that arrives too
  slowly, and a client that does not read its answer are all dropped;
- at most `max_connections` at once, but idle ones never crowd out new ones: when the cap is
  reached, the connection idle the longest is closed to make room; only when every connection
  is busy is a new one refused (logged at most once per `REFUSED_LOG_INTERVAL`, with a count);
- keep-alive and pipelining work as h11 provides them;
- no exception escapes a connection's task (that would stop the server): it is logged.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from http import HTTPStatus
from importlib import resources
from urllib.parse import urlsplit

import attrs
import h11
import trio

from hqpy import __version__
from hqpy.common.events import EventHub
from hqpy.http.metrics import ServerMetrics
from hqpy.http.status import build_status
from hqpy.http.taskstream import TaskStream
from hqpy.protocol.readmodels import AllocatorReadModel, ServerReadModel

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
"""Request line plus headers."""
MAX_BODY = 64 * 1024
"""GET and HEAD need no body; a small one is read and ignored, a larger one refused."""
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0
"""From a request's first byte to its last, and for sending an answer."""
IDLE_TIMEOUT = 5.0
"""How long a kept-alive connection may wait for its next request (Prometheus reconnects at
no cost; an idle connection only holds a slot)."""
REFUSED_LOG_INTERVAL = 10.0
"""Refused connections are logged at most this often, as one line with their count."""
READ_SIZE = 16 * 1024
LINGER_TIME = 1.0
LINGER_BYTES = 1024 * 1024

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What `generate_latest` writes (classic names); every Prometheus version reads it."""
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page loads only its own files and talks only to this server."""


@attrs.frozen
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[], Reply]
"""Answers a GET of one path. Runs on the trio thread; must not block or change state."""


class _Refuse(Exception):
    """Answer with this status and close the connection."""

    def __init__(self, status: int, message: str, request: h11.Request | None) -> None:
        super().__init__(message)
        self.status = status
        self.request = request
        """The request being refused, if its head was read (a HEAD gets no body back)."""


class HttpServer:
    """Serves a fixed table of routes; see the module doc for the limits it enforces."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        *,
        max_head: int = MAX_HEAD,
        max_body: int = MAX_BODY,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.routes = dict(routes)
        self.max_head = max_head
        self.max_body = max_body
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.connections = 0
        self.served = 0
        """Requests answered (any status); for tests and debugging."""
        self.refused = 0
        """Connections refused because every slot was busy; for tests and debugging."""
        self._idle: dict[int, trio.CancelScope] = {}
        """Connections waiting for their next request, oldest first: the first to evict."""
        self._next_id = 0
        self._refused_unlogged = 0
        self._refused_logged_at = -math.inf

    async def handle(self, stream: trio.abc.Stream) -> None:
        """One connection, from accept to close; never raises (but cancellation)."""
        if self.connections >= self.max_connections:
            if self._idle:
                # Make room: the connection idle the longest goes (it can reconnect).
                oldest = next(iter(self._idle))
                self._idle.pop(oldest).cancel()
            else:
                self._log_refused()
                await _close(stream)
                return
        self.connections += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as e:
            log.debug("HTTP connection closed by the peer: %s", e)
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self.connections -= 1
            await _close(stream)

    def _log_refused(self) -> None:
        self.refused += 1
        self._refused_unlogged += 1
        now = trio.current_time()
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL:
            log.warning(
                "HTTP: %d connections busy; refused %d new connection(s)",
                self.connections,
                self._refused_unlogged,
            )
            self._refused_unlogged = 0
            self._refused_logged_at = now

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        conn_id = self._next_id
        self._next_id += 1
        while True:
            try:
                request = await self._read_request(conn, stream, conn_id)
            except h11.RemoteProtocolError as e:
                await self._refuse(conn, stream, None, e.error_status_hint, f"Bad request: {e}")
                return
            except _Refuse as e:
                await self._refuse(conn, stream, e.request, e.status, str(e))
                return
            if request is None:
                return
            reply = self._dispatch(request)
            if not await self._send_reply(conn, stream, request, reply):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, conn_id: int = -1
    ) -> h11.Request | None:
        """The next whole request (its body read and dropped); None if the peer went away,
        stayed silent, or was evicted while idle to make room for a new connection. Raises
        `h11.RemoteProtocolError` or `_Refuse` on a bad one."""
        started = bool(conn.trailing_data[0])
        deadline = trio.current_time() + (self.request_timeout if started else self.idle_timeout)
        request: h11.Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = None
                with trio.move_on_at(deadline) as scope:
                    if not started:
                        self._idle[conn_id] = scope
                    try:
                        data = await stream.receive_some(READ_SIZE)
                    finally:
                        self._idle.pop(conn_id, None)
                if data is None:
                    if started:
                        raise _Refuse(408, "Request timeout", request)
                    return None
                if not started:
                    started = True
                    deadline = trio.current_time() + self.request_timeout
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                request = event
                # h11 bounds a head that arrives in pieces; one that came whole is measured here.
                if _head_size(event) > self.max_head:
                    raise _Refuse(431, "Request header fields too large", request)
                length = _content_length(event)
                if length is not None and length > self.max_body:
                    raise _Refuse(413, "Request body too large", request)
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > self.max_body:
                    raise _Refuse(413, "Request body too large", request)
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:
                # ConnectionClosed (or PAUSED, which cannot happen before EndOfMessage).
                return None

    def _dispatch(self, request: h11.Request) -> Reply:
        method = request.method
        if method not in (b"GET", b"HEAD"):
            return Reply(405, b"Method not allowed\n", headers=(("allow", "GET, HEAD"),))
        target = request.target
        if not target.startswith(b"/"):
            target = urlsplit(target).path or b"/"
        path = target.split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
        route = self.routes.get(path)
        if route is None:
            return Reply(404, b"Not found\n")
        try:
            return route()
        except Exception:
            log.exception("HTTP: answering %s failed", path)
            return Reply(500, b"Internal server error\n")

    async def _send_reply(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request | None,
        reply: Reply,
        close: bool = False,
    ) -> bool:
        """Send a whole answer; False if that did not work out (the connection is done)."""
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("server", f"hqpy/{__version__}"),
            *reply.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        head = request is not None and request.method == b"HEAD"
        response = h11.Response(status_code=reply.status, headers=headers, reason=_phrase(reply))
        data = conn.send(response)
        if not head and reply.body:
            data += conn.send(h11.Data(data=reply.body))
        data += conn.send(h11.EndOfMessage())
        self.served += 1
        with trio.move_on_after(self.request_timeout) as scope:
            await stream.send_all(data)
        return not scope.cancelled_caught

    async def _refuse(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request | None,
        status: int,
        message: str,
    ) -> None:
        """Answer a request we will not serve with `status`, if HTTP still allows an answer."""
        log.debug("HTTP: refusing a request with %d: %s", status, message)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            body = (message.splitlines()[0][:200] + "\n").encode("utf-8", "replace")
            if not await self._send_reply(conn, stream, request, Reply(status, body), close=True):
                return
        except h11.LocalProtocolError as e:
            log.debug("HTTP: could not send a %d: %s", status, e)
            return
        await _linger(stream)


def _phrase(reply: Reply) -> bytes:
    try:
        return HTTPStatus(reply.status).phrase.encode("ascii")
    except ValueError:
        return b""


def _head_size(request: h11.Request) -> int:
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _linger(stream: trio.abc.Stream) -> None:
    """Close our side, then drop what the peer still sends for a moment: closing a socket
    with unread input resets it, and the peer could lose the error answer we just sent."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_TIME):
        await stream.send_eof()
        received = 0
        while received < LINGER_BYTES:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            received += len(data)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


# ---------------------------------------------------------------------------------------------
# The routes of an hqpy server


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files from the package (`hqpy/http/static/`): name -> (content, type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("hqpy.http").joinpath("static").iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def make_routes(
    server: ServerReadModel,
    allocator: AllocatorReadModel | None,
    metrics: ServerMetrics,
    clock: Callable[[], float] = time.time,
    stream: TaskStream | None = None,
) -> dict[str, Route]:
    def scrape() -> Reply:
        return Reply(200, metrics.render(), METRICS_CONTENT_TYPE)

    def status() -> Reply:
        doc = build_status(server, allocator, metrics.started_at, clock(), stream)
        return Reply(200, json.dumps(doc).encode(), CONTENT_TYPES[".json"])

    routes: dict[str, Route] = {"/metrics": scrape, "/api/status": status}
    for name, (body, content_type) in static_files().items():
        reply = Reply(200, body, content_type, (("content-security-policy", PAGE_POLICY),))
        routes[f"/static/{name}"] = partial(_constant, reply)
        if name == "index.html":
            routes["/"] = routes["/index.html"] = partial(_constant, reply)
    return routes


def _constant(reply: Reply) -> Reply:
    return reply


async def serve_http(
    server: ServerReadModel,
    allocator: AllocatorReadModel | None,
    hub: EventHub,
    started_at: float,
    host: str,
    port: int,
    *,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/metrics`, the status page and `/api/status` until cancelled.

    Started with `await nursery.start(...)` once the allocator runs (the metrics subscribe to
    the hub); `task_status.started` gets the listeners.
    """
    metrics = ServerMetrics(server, allocator, hub, started_at)
    stream = TaskStream(hub)
    app = HttpServer(make_routes(server, allocator, metrics, clock, stream))
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, app.handle, port, host=host)
        )
        port = listeners[0].socket.getsockname()[1]
        base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        log.info("Metrics at %s/metrics, status page at %s/", base, base)
        task_status.started(listeners)
