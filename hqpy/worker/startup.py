"""`worker start`: register first, then import trio and the task machinery.

Scripts start a worker and submit right after, so the start-up sequence (`run_worker`) is

1. the options are settled (absolute paths, the work directory made) and the configuration built
   (the caller detected the resources: affinity, cpuset and `/proc/meminfo`, no subprocess);
2. the access file is read, the socket connected, the handshake made and `RegisterWorker`
   answered, all on a blocking socket with the standard library (`connect`, `register`);
3. only then are trio and the agent (launcher, orphan guard, process handling) imported; the
   agent adopts the sealed connection (`trio.SocketStream` on the same socket, the same sealer
   and opener) and serves.

A reconnect after a lost server (`--server-lost-grace`) runs the same `connect` and `register`
in a trio worker thread, so there is one way to register. Frames are read exactly (the header,
then the payload): what the server sends after its answer stays in the socket for the agent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from hqpy.common import serverdir
from hqpy.common.resources import ResourceDescriptorItem
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.blocking import BlockingLink
from hqpy.protocol.frames import ProtocolError
from hqpy.protocol.handshake import HANDSHAKE_TIMEOUT, AuthError
from hqpy.protocol.seal import Opener, Sealer

log = logging.getLogger("hqpy.worker.agent")
"""The agent's logger: the worker's log reads as before this module was split from it."""

EXIT_SERVER_LOST = 1
INTERRUPTED = "interrupted by a signal"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
CONNECT_PATIENCE = 10.0
"""Seconds a starting worker keeps trying to reach its server (read the access file, connect)."""
CONNECT_RETRY = 0.2


@attrs.frozen
class WorkerOptions:
    server_dir: Path
    resources: tuple[ResourceDescriptorItem, ...]
    hostname: str = attrs.field(factory=socket.gethostname)
    heartbeat: float = 8.0
    idle_timeout: float | None = None
    time_limit: float | None = None
    group: str = "default"
    on_server_lost: str = "stop"
    work_dir: Path | None = None
    manager: m.ManagerInfo | None = None
    min_utilization: float = 0.0
    overview_interval: float | None = None
    zero_worker: bool = False
    """Bench-only: complete tasks at once without starting processes."""
    filter_tags: tuple[str, ...] = ()
    """`--filter-tag`: sent at registration; the server gives this worker only tasks with all."""
    server_lost_grace: float = 0.0
    """`--server-lost-grace`: keep tasks running and reconnect this long after losing the server."""

    def settled(self) -> WorkerOptions:
        """Absolute paths (the worker moves to each task's directory to start it) and a work
        directory that exists (a fresh temporary one when none was given)."""
        work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix="hq-worker")) / "work"
        work_dir = work_dir.absolute()
        work_dir.mkdir(parents=True, exist_ok=True)
        return attrs.evolve(self, server_dir=self.server_dir.absolute(), work_dir=work_dir)

    def configuration(self) -> m.WorkerConfiguration:
        """What the worker registers with (of settled options)."""
        time_limit = self.time_limit
        if time_limit is None and self.manager is not None:
            time_limit = self.manager.time_limit
        return m.WorkerConfiguration(
            hostname=self.hostname,
            work_dir=str(self.work_dir),
            listen_address=f"{self.hostname}:0",
            heartbeat_interval=self.heartbeat,
            idle_timeout=self.idle_timeout,
            time_limit=time_limit,
            resources=self.resources,
            group=self.group,
            on_server_lost=self.on_server_lost,
            pid=os.getpid(),
            manager=self.manager,
            overview_interval=self.overview_interval,
            min_utilization=self.min_utilization,
            filter_tags=self.filter_tags,
            server_lost_grace=self.server_lost_grace,
        )


class WorkerExit(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RegistrationRefused(Exception):
    """Connected, but the registration failed; the message says why."""


@attrs.define
class Registration:
    """A registered worker's connection, sealed, ready for the agent to take over."""

    sock: socket.socket
    sealer: Sealer
    opener: Opener
    reply: m.WorkerRegistered
    at: float = attrs.field(factory=time.monotonic)
    """When the server answered (`time.monotonic`)."""


def connect(server_dir: Path, attempts: int | None = None) -> BlockingLink[socket.socket]:
    """Connect and handshake: retried for `CONNECT_PATIENCE`, or `attempts` times (a reconnect).
    Raises `WorkerExit` with the reason when the server cannot be reached."""
    deadline = time.monotonic() + CONNECT_PATIENCE
    while True:
        try:
            record = serverdir.load_access(server_dir)
            if record.worker is None or not record.worker.secret_key:
                raise WorkerExit(1, "The access file has no worker part")
            endpoint = (record.worker.host, record.worker.port)
            sock = socket.create_connection(endpoint, timeout=HANDSHAKE_TIMEOUT)
            break
        except (serverdir.AccessError, OSError) as e:
            if attempts is not None:
                attempts -= 1
            if time.monotonic() > deadline or attempts == 0:
                raise WorkerExit(EXIT_SERVER_LOST, f"Cannot connect to the server: {e}") from None
            time.sleep(CONNECT_RETRY)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = BlockingLink(sock)
    try:
        link.handshake("worker", record.worker.secret_key)
    except (AuthError, ProtocolError, OSError) as e:
        sock.close()
        raise WorkerExit(EXIT_SERVER_LOST, f"Cannot connect to the server: {e}") from None
    return link


def register(link: BlockingLink[socket.socket], message: m.RegisterWorker) -> Registration:
    """Register on a connected link (closed on failure); `RegistrationRefused` says why not."""
    try:
        try:
            link.send(message, codec.FROM_WORKER)
            reply = link.receive(codec.TO_WORKER)
        except (ProtocolError, OSError) as e:
            raise RegistrationRefused(f"Registration failed: {e}") from None
        if not isinstance(reply, m.WorkerRegistered):
            raise RegistrationRefused("Registration failed: the server did not accept this worker")
    except RegistrationRefused:
        link.sock.close()
        raise
    assert link.sealer is not None and link.opener is not None
    link.sock.settimeout(None)
    previous = message.previous_worker_id
    if previous is None:
        log.info("Worker %d registered with server %s", reply.worker_id, reply.server_uid)
    else:
        log.info(
            "Worker %d registered again with server %s as worker %d, presenting %d task(s)",
            previous,
            reply.server_uid,
            reply.worker_id,
            len(message.tasks),
        )
    return Registration(link.sock, link.sealer, link.opener, reply)


def connect_and_register(options: WorkerOptions) -> Registration:
    """The first registration of a starting worker. Raises `WorkerExit` when it fails."""
    link = connect(options.server_dir)
    try:
        return register(link, m.RegisterWorker(options.configuration(), None, []))
    except RegistrationRefused as e:
        raise WorkerExit(EXIT_SERVER_LOST, str(e)) from None


def run_worker(options: WorkerOptions) -> int:
    """Register, then serve until stopped (SIGINT or SIGTERM: exit 0); the exit code.

    A signal that arrives while registering or importing is a clean stop as well: until then
    both raise `KeyboardInterrupt`, whatever was inherited (a shell starts `hq worker start &`
    with SIGINT ignored). From then until trio watches them they are recorded (never blocked,
    so no process inherits a mask), and the watcher acts on what was recorded. trio finds
    SIGINT handled already and leaves it alone, so no signal is ever turned into a
    `KeyboardInterrupt` inside the event loop."""
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOP_SIGNALS}
    early: list[int] = []
    try:
        options = options.settled()
        registration = connect_and_register(options)
        import trio

        from hqpy.worker.agent import WorkerAgent, hq_executable

        agent = WorkerAgent(options, hq_executable())
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, _frame: early.append(signum))
    except WorkerExit as e:
        _restore(previous)
        log.error("%s", e.reason)
        return e.code
    except KeyboardInterrupt:
        _restore(previous)
        log.info("Worker is stopping: %s", INTERRUPTED)
        return 0

    async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            if not early:  # checked once the receiver has the signals: none falls between
                await signals.__anext__()
            agent.stop(0, INTERRUPTED)

    async def run() -> int:
        result: list[int] = []
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                result.append(await agent.run(registration))
                nursery.cancel_scope.cancel()

            await nursery.start(watch_signals)
            nursery.start_soon(serve)
        return result[0]

    return trio.run(run)


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
