"""The server core: listeners, sessions and its own services under one nursery.

    Server.run
      +-- client listener   (serve_tcp; one session task per client connection)
      +-- worker listener   (serve_tcp; one session task per worker)
      +-- scheduler         (wakes on demand, assigns waiting tasks)
      +-- reaper            (heartbeat loss, idle timeouts)
      +-- signal watcher    (SIGINT/SIGTERM: clean stop)

The allocator and the HTTP side are not part of the core: `hqpy.app` builds the whole server
process around it. `access.json` is written only once both listeners are bound, so a client that
finds it can connect.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import trio
import trio.lowlevel

from hqpy import __version__
from hqpy.common import serverdir
from hqpy.common.events import AllocationEndReported, EventHub
from hqpy.common.resources import ResourceKind
from hqpy.common.states import WorkerState
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import AuthError, new_secret, server_handshake
from hqpy.protocol.framing import FramedStream, ProtocolError
from hqpy.server.clients import ClientHandlers
from hqpy.server.startup import EarlyStart
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker

log = logging.getLogger(__name__)

REAPER_INTERVAL = 0.1
SERVER_STOPPED = m.SERVER_STOPPED
STOP_WORKERS_WAIT = 2.0
"""Seconds an orderly stop waits for the workers it told to stop to hang up."""
BIND_ATTEMPTS = 10
MAX_ALLOCATION_ID = 256
MAX_STDERR_TAIL = 4096
"""Bounds of what an allocation end report (`AllocationEnded`) may carry."""
MAX_RESOURCE_INDICES = 1 << 20
"""A registering worker's range resources may span this many indices in all: the server lists
them, so a forged `range(0-2**60)` must be refused before it is expanded."""


@attrs.frozen
class ServerConfig:
    server_dir: Path
    host: str | None = None
    client_port: int = 0
    worker_port: int = 0
    access_file: Path | None = None
    idle_timeout: float | None = None
    metrics_port: int | None = None
    """Serve Prometheus metrics and the status page on this port (None: do not)."""
    metrics_host: str = "127.0.0.1"
    early: EarlyStart | None = attrs.field(default=None, eq=False)
    """Sockets already bound and the access file already written (`server start`)."""


class Server:
    def __init__(
        self,
        config: ServerConfig,
        hub: EventHub | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is every time the server reads (tests pass `trio.current_time` to run the
        heartbeat and idle checks on trio's autojump clock)."""
        self.config = config
        self.clock = clock
        self.started_at = clock()
        self.instance_dir: Path | None = None
        self.access: serverdir.AccessRecord | None = None
        uid = serverdir.new_server_uid()
        if config.early is not None:
            self.instance_dir = config.early.instance_dir
            self.access = config.early.record()
            uid = self.access.server_uid
        elif config.access_file is not None:
            self.access = serverdir.read_access_file(config.access_file)
            uid = self.access.server_uid
        self.state = ServerState(uid, clock=clock, hub=hub)
        self.hub = self.state.hub
        self.handlers = ClientHandlers(self.state, self.info)
        self.stop_requested = trio.Event()
        """Set by `hq server stop`, SIGINT or SIGTERM; whoever runs the server then stops it."""
        self._schedule = trio.Event()
        self.state.on_schedule_needed = self._schedule.set
        self._sessions: dict[int, trio.CancelScope] = {}
        self._no_sessions = trio.Event()
        self._listeners = trio.CancelScope()
        self.listeners: list[trio.SocketListener] = []
        """The client and worker listeners (IPv4 and IPv6 of each on one port)."""
        self.on_task_updates: Callable[[list[m.TaskUpdateRow]], None] | None = None
        """Sees every batch of task updates once applied (the journal records task starts)."""

    # -----------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_requested.set()

    def info(self) -> m.ServerInfoView:
        assert self.access is not None and self.access.client and self.access.worker
        return m.ServerInfoView(
            server_uid=self.state.server_uid,
            client_host=self.access.client.host,
            client_port=self.access.client.port,
            worker_host=self.access.worker.host,
            worker_port=self.access.worker.port,
            version=__version__,
            pid=os.getpid(),
            start_date=self.started_at,
            server_dir=str(self.instance_dir),
        )

    async def prepare(self) -> Path:
        """Refuse to start beside a live server, and make this server's instance directory."""
        server_dir = self.config.server_dir
        current = serverdir.resolve_access_path(server_dir)
        if current.exists():
            if await _server_alive(current):
                raise serverdir.AccessError(
                    f"Server at `{server_dir}` is already running, "
                    "use another server dir or stop it first (`hq server stop`)"
                )
        self.instance_dir = serverdir.create_instance_dir(server_dir)
        if self.access is None:
            host = self.config.host or socket.gethostname()
            self.access = serverdir.AccessRecord(
                __version__,
                self.state.server_uid,
                serverdir.Endpoint(host, self.config.client_port, new_secret()),
                serverdir.Endpoint(host, self.config.worker_port, new_secret()),
            )
        return self.instance_dir

    def close_listeners(self) -> None:
        """Take no new connections (shutdown); sessions already open go on until cancelled."""
        self._listeners.cancel()

    async def run(self, *, task_status: trio.TaskStatus[m.ServerInfoView]) -> None:
        """Serve until cancelled; `task_status.started` once clients can connect."""
        if self.instance_dir is None:
            await self.prepare()
        assert self.instance_dir is not None and self.access is not None
        server_dir = self.config.server_dir
        client_ep, worker_ep = self.access.client, self.access.worker
        if (
            client_ep is None
            or worker_ep is None
            or not client_ep.secret_key
            or not worker_ep.secret_key
        ):
            raise serverdir.AccessError(
                "The access file must hold both the client and the worker part, with secret keys"
            )
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    self._listen,
                    (client_ep.secret_key, client_ep.port),
                    (worker_ep.secret_key, worker_ep.port),
                )
                client_port, worker_port = listeners
                if self.config.early is None:
                    self.access = attrs.evolve(
                        self.access,
                        client=attrs.evolve(client_ep, port=client_port),
                        worker=attrs.evolve(worker_ep, port=worker_port),
                    )
                    serverdir.write_access(self.instance_dir / serverdir.ACCESS_FILE, self.access)
                    serverdir.link_current(server_dir, self.instance_dir)
                nursery.start_soon(self._scheduler)
                nursery.start_soon(self._reaper)
                nursery.start_soon(self._watch_signals)
                log.info("Server %s started in %s", self.state.server_uid, self.instance_dir)
                task_status.started(self.info())
        finally:
            serverdir.unlink_current(server_dir, self.instance_dir)

    async def _listen(
        self,
        client: tuple[str, int],
        worker: tuple[str, int],
        *,
        task_status: trio.TaskStatus[tuple[int, int]],
    ) -> None:
        """Both listeners, in one cancel scope so that shutdown can close them first."""
        with self._listeners:
            async with trio.open_nursery() as nursery:
                early = self.config.early
                if early is not None:
                    client_listeners = adopt_listeners(early.client_sockets)
                    worker_listeners = adopt_listeners(early.worker_sockets)
                else:
                    client_listeners = await open_listeners(client[1])
                    worker_listeners = await open_listeners(worker[1])
                self.listeners = client_listeners + worker_listeners
                for listeners, role, secret in (
                    (client_listeners, "client", client[0]),
                    (worker_listeners, "worker", worker[0]),
                ):
                    handler = partial(self._serve_connection, role=role, secret=secret)
                    nursery.start_soon(trio.serve_listeners, handler, listeners)
                task_status.started((_port_of(client_listeners), _port_of(worker_listeners)))

    # -----------------------------------------------------------------------------------------
    # Sessions

    async def _serve_connection(self, stream: trio.SocketStream, *, role: str, secret: str) -> None:
        """Authenticate a connection and run its session; a bad peer never hurts the server."""
        framed = FramedStream(stream)
        peer = _peer_name(stream)
        authenticated = False
        try:
            await server_handshake(framed, {role: secret})
            authenticated = True
            if role == "client":
                await self._client_session(framed)
            else:
                await self._worker_session(framed)
        except (AuthError, ProtocolError) as e:
            what = "closed" if authenticated else "refused"
            log.warning("Connection from %s (%s) %s: %s", peer, role, what, e)
        except trio.TooSlowError:
            log.warning("Connection from %s refused: handshake timed out", peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as e:
            log.debug("Connection from %s closed: %s", peer, e)
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _client_session(self, framed: FramedStream) -> None:
        pending: bytes | None = None
        while True:
            payload = pending if pending is not None else await framed.receive_frame()
            pending = None
            if payload is None:
                return
            try:
                request = codec.decode(payload, codec.CLIENT_REQUEST)
            except codec.DecodeError as e:
                raise ProtocolError(str(e)) from None
            answer = await self._answer_while_connected(framed, request)
            if answer is None:
                log.debug("Client hung up while its %s was answered", type(request).__name__)
                return
            response, pending = answer
            await framed.send(response, codec.CLIENT_RESPONSE)
            if isinstance(request, m.StopServerRequest):
                self.request_stop()

    async def _answer_while_connected(
        self, framed: FramedStream, request: m.ClientRequest
    ) -> tuple[m.ClientResponse, bytes | None] | None:
        """The answer to a request, watching the connection meanwhile: if the client hangs up
        first (EOF or a broken connection), the handler is cancelled (a waiting one drops its
        waiter) and this returns None. A frame that arrives meanwhile is handed back, to be
        answered next."""
        response: m.ClientResponse | None = None
        early: list[bytes] = []

        async def watch(cancel: trio.CancelScope) -> None:
            try:
                frame = await framed.receive_frame()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                frame = None
            except ProtocolError as e:
                log.warning("Connection from %s (client) closed: %s", _peer_name(framed.stream), e)
                frame = None
            if frame is None:
                cancel.cancel()
            else:
                early.append(frame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            response = await self.handlers.handle(request)
            nursery.cancel_scope.cancel()
        if response is None:
            return None
        return response, (early[0] if early else None)

    async def stop_workers(self) -> None:
        """An orderly stop tells the workers so (unlike a crash, after which they keep their
        tasks and reconnect for their `--server-lost-grace`); waits a moment for them to go."""
        for worker in list(self.state.workers.values()):
            if worker.state is WorkerState.RUNNING and worker.outbox is not None:
                self.state.request_worker_stop(worker, SERVER_STOPPED)
        if self._sessions:
            self._no_sessions = trio.Event()
            with trio.move_on_after(STOP_WORKERS_WAIT):
                await self._no_sessions.wait()

    async def _worker_session(self, framed: FramedStream) -> None:
        hello = await framed.receive(codec.FROM_WORKER)
        if hello is None:
            return
        if isinstance(hello, m.AllocationEnded):
            # An allocation script's exit trap (w2alloc): told to the allocator, then closed.
            self._on_allocation_ended(hello)
            return
        if not isinstance(hello, m.RegisterWorker):
            raise ProtocolError(f"a worker must register first, got {type(hello).__name__}")
        _check_registration(hello.configuration)
        send, receive = trio.open_memory_channel[m.ToWorker](math.inf)
        rows = hello.tasks
        if not all(len(row) == 3 and all(type(x) is int for x in row) for row in rows):
            raise ProtocolError("malformed task rows in a worker registration")
        worker = self.state.add_worker(hello.configuration, send, hello.previous_worker_id, rows)
        idle = hello.configuration.idle_timeout
        if idle is None:
            idle = self.config.idle_timeout
        await framed.send(
            m.WorkerRegistered(worker.id, self.state.server_uid, idle), codec.TO_WORKER
        )
        reason = WorkerState.CONNECTION_LOST
        try:
            with trio.CancelScope() as scope:
                self._sessions[worker.id] = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_loop, framed, receive)
                    await self._worker_receive_loop(framed, worker)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                reason = WorkerState.HEARTBEAT_LOST
        except* ProtocolError as group:
            # The nursery groups errors; a misbehaving worker only ends its session.
            log.warning(
                "Connection from %s (worker %d) closed: %s",
                _peer_name(framed.stream),
                worker.id,
                "; ".join(map(str, group.exceptions)),
            )
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            log.debug("Session of worker %d ended by an error", worker.id)
        finally:
            self._sessions.pop(worker.id, None)
            if not self._sessions:
                self._no_sessions.set()
            self.state.on_worker_lost(worker, reason)

    def _on_allocation_ended(self, msg: m.AllocationEnded) -> None:
        """Publish an allocation's reported end; bounded, since the peer is a script."""
        self.hub.publish(
            AllocationEndReported(
                msg.allocation_id[:MAX_ALLOCATION_ID],
                msg.exit_code,
                msg.stderr_tail[-MAX_STDERR_TAIL:],
            )
        )

    async def _worker_receive_loop(self, framed: FramedStream, worker: Worker) -> None:
        state = self.state
        while True:
            msg = await framed.receive(codec.FROM_WORKER)
            if msg is None:
                return
            if isinstance(msg, m.TaskUpdates):
                try:
                    state.on_task_updates(worker, msg.updates)
                except (ValueError, TypeError, KeyError) as e:
                    raise ProtocolError(f"malformed task update: {e}") from None
                if self.on_task_updates is not None:
                    self.on_task_updates(msg.updates)
            elif isinstance(msg, m.Heartbeat):
                state.on_heartbeat(worker)
            elif isinstance(msg, m.WorkerStopping):
                state.on_worker_stopping(worker, msg.reason)
            else:
                raise ProtocolError(f"unexpected message {type(msg).__name__} from a worker")

    # -----------------------------------------------------------------------------------------
    # Services

    async def _scheduler(self) -> None:
        while True:
            await self._schedule.wait()
            self._schedule = trio.Event()
            self.state.on_schedule_needed = self._schedule.set
            # Let every message that already arrived land before deciding.
            await trio.lowlevel.checkpoint()
            self.state.schedule()

    async def _reaper(self) -> None:
        """Drop workers whose heartbeat stopped, and stop workers that idled too long.

        A worker is never blamed for the server's own stall: when this tick comes late (the
        loop was busy), the lateness is added to every worker's heartbeat allowance, since
        their heartbeats may be waiting unread in the socket."""
        expected = self.clock() + REAPER_INTERVAL
        while True:
            await trio.sleep(REAPER_INTERVAL)
            now = self.clock()
            late = now - expected
            expected = now + REAPER_INTERVAL
            if late > REAPER_INTERVAL:
                self.state.forgive_stall(late)
            if self.state.held:
                self.state.expire_held(now)
            for worker in list(self.state.workers.values()):
                if worker.state is not WorkerState.RUNNING:
                    continue
                hb = worker.config.heartbeat_interval
                if now - worker.last_heartbeat > 2 * hb:
                    log.warning("Worker %d missed its heartbeats", worker.id)
                    self.state.on_worker_lost(worker, WorkerState.HEARTBEAT_LOST)
                    scope = self._sessions.get(worker.id)
                    if scope is not None:
                        scope.cancel()
                    continue
                idle = worker.config.idle_timeout
                if idle is None:
                    idle = self.config.idle_timeout
                if (
                    idle is not None
                    and worker.stop_reason is None
                    and worker.idle_since is not None
                    and now - worker.idle_since >= idle
                ):
                    log.info("Worker %d idle for %.1f s: stopping it", worker.id, idle)
                    self.state.request_worker_stop(worker, "idle-timeout")

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.request_stop()
                return


def _check_registration(config: m.WorkerConfiguration) -> None:
    """Refuse a configuration the server could not hold (found by tests/fuzz)."""
    span = 0
    for item in config.resources:
        if item.kind is ResourceKind.RANGE:
            span += max(0, item.end - item.start + 1)
    if span > MAX_RESOURCE_INDICES:
        raise ProtocolError(
            f"worker resources span {span} indices (at most {MAX_RESOURCE_INDICES})"
        )


async def _send_loop(framed: FramedStream, receive: trio.MemoryReceiveChannel[m.ToWorker]) -> None:
    """Send queued messages, merging consecutive task assignments into one frame."""
    async for msg in receive:
        batch = [msg]
        while True:
            try:
                batch.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        merged: list[m.ToWorker] = []
        for item in batch:
            last = merged[-1] if merged else None
            if isinstance(item, m.ComputeTasks) and isinstance(last, m.ComputeTasks):
                merged[-1] = m.ComputeTasks(last.bodies + item.bodies, last.tasks + item.tasks)
            else:
                merged.append(item)
        for item in merged:
            await framed.send(item, codec.TO_WORKER)


async def open_listeners(port: int) -> list[trio.SocketListener]:
    """Listeners on every address family, all on one port: with port 0 the first family picks
    it and the others bind the same one (`access.json` records a single port)."""
    if port != 0:
        return await trio.open_tcp_listeners(port)
    for _attempt in range(BIND_ATTEMPTS):
        listeners = await trio.open_tcp_listeners(0)
        ports = {_port_of([listener]) for listener in listeners}
        if len(ports) == 1:
            return listeners
        chosen = _port_of(listeners)
        for listener in listeners:
            await listener.aclose()
        try:
            return await trio.open_tcp_listeners(chosen)
        except OSError as e:
            # Someone took the port between the two binds: pick another.
            log.debug("Port %d taken before all address families were bound: %s", chosen, e)
    raise OSError(f"could not bind one port on every address family in {BIND_ATTEMPTS} attempts")


def adopt_listeners(sockets: list[socket.socket]) -> list[trio.SocketListener]:
    """Trio listeners on sockets bound (and listening) before trio started."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]


def _port_of(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "<unknown>"
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "<unknown>"


async def _server_alive(access_path: Path) -> bool:
    """Is a server answering at the address in this access file?"""
    try:
        record = serverdir.read_access_file(access_path)
    except serverdir.AccessError:
        return False
    if record.client is None:
        return False
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream(record.client.host, record.client.port)
            await stream.aclose()
        return True
    except (OSError, trio.TooSlowError):
        return False
