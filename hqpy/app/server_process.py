"""The whole server process: the server core, the allocator and the HTTP side, wired through one
event hub. The only module that knows all three; each of them knows only `common` and
`protocol`.

    ServerProcess.run
      +-- allocator   (AutoAllocService: submit passes, status polls, local allocations)
      +-- core        (Server: listeners, sessions, scheduler, reaper, signals)
      +-- HTTP        (with --metrics-port: /metrics, status page)

On stop the listeners close first (no new clients or workers), then the allocator cancels its
allocations (shielded), then everything else is cancelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from hqpy.app import journaling
from hqpy.autoalloc.backends.base import BatchBackend
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.requests import AllocRequests
from hqpy.autoalloc.service import AutoAllocService
from hqpy.common.events import EventHub
from hqpy.config.loader import Config
from hqpy.journal import file as journal_file
from hqpy.journal import records as journal_records
from hqpy.journal.writer import JournalWriter
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
from hqpy.server.drain import ServerDrain
from hqpy.server.server import Server, ServerConfig
from hqpy.server.state import ServerState
from hqpy.server.views import ServerViews

log = logging.getLogger(__name__)

BackendFactory = Callable[[str, trio.Nursery, float], BatchBackend]


class ServerProcess:
    def __init__(
        self,
        config: ServerConfig,
        autoalloc_config: AutoAllocConfig | None = None,
        make_backend: BackendFactory | None = None,
        clock: Callable[[], float] = time.time,
        journal: Path | None = None,
        journal_flush_period: float = 1.0,
        startup: Config | None = None,
    ) -> None:
        """`clock`: every time read of the server core (tests pass `trio.current_time`).
        `journal`: restore from this file (when it exists) and append to it."""
        self.config = config
        self.startup = startup
        """`hq server start --config`: queues and pools added before clients are served."""
        self.journal_path = journal
        self.journal_flush_period = journal_flush_period
        self.journal: JournalWriter | None = None
        self._journal_records: list[journal_records.Record] = []
        self.hub = EventHub()
        self.core = Server(config, self.hub, clock)
        self.autoalloc_config = autoalloc_config or AutoAllocConfig.from_env()
        self.make_backend = make_backend
        self.allocator: AutoAllocService | None = None
        self.http_listeners: list[trio.SocketListener] = []
        """Where `/metrics` and the status page are served (with `metrics_port`)."""

    @property
    def state(self) -> ServerState:
        return self.core.state

    def request_stop(self) -> None:
        self.core.request_stop()

    def _open_journal(self) -> JournalWriter | None:
        """Replay the journal into the fresh core state and open it for appending; raises
        `JournalError` for a journal damaged before its tail."""
        path = self.journal_path
        if path is None:
            return None
        core = self.core
        started = time.monotonic()
        loaded = journal_file.read(path) if path.exists() else journal_file.Loaded([], 0, None)
        if loaded.warning is not None:
            log.warning("%s", loaded.warning)
        self._journal_records = loaded.records
        if loaded.records:
            rep = journaling.replay(core.state, loaded.records)
            core.state.restore_expect_workers(rep.returning_workers())
            log.info(
                "Restored %d job(s) from %d journal record(s) of `%s` in %.2f s",
                len(core.state.jobs),
                rep.records,
                path,
                time.monotonic() - started,
            )
        try:
            writer = JournalWriter(path, loaded.good_size, self.journal_flush_period)
        except OSError as e:
            raise journal_file.JournalError(
                f"Cannot open journal `{path}`: {e.strerror or e}"
            ) from None
        writer.append(journaling.server_started())
        core.handlers.extend(journaling.JournalHandlers(core.state, writer, core.clock).table())
        journaling.watch_tasks(core.state, self.hub, writer)
        journaling.watch_workers(core.state, self.hub, writer)
        core.on_task_updates = journaling.task_starts(writer)
        return writer

    async def run(self, *, task_status: trio.TaskStatus[m.ServerInfoView]) -> None:
        core = self.core
        instance_dir = core.instance_dir or await core.prepare()
        self.journal = journal = self._open_journal()
        allocator = AutoAllocService(
            ServerDemand(core.state),
            self.hub,
            instance_dir,
            self.autoalloc_config,
            make_backend=self.make_backend,
            control=ServerDrain(core.state),
        )
        self.allocator = allocator
        core.state.queue_offers = allocator
        core.handlers.extend(AllocRequests(allocator).table())
        drains: list[tuple[str, float]] = []
        if journal is not None:
            drains = journaling.restored_drains(self._journal_records)
            unconfirmed = journaling.restore_allocator(
                allocator, self._journal_records, self.autoalloc_config.max_allocation_fails
            )
            self._journal_records = []
            core.handlers.extend(journaling.AllocJournal(allocator, journal).install(self.hub))
            journaling.resolve_unconfirmed(allocator, unconfirmed)
            journaling.expect_workers_back(allocator, core.state.hold_grace)
            journaling.continue_allocation_ids(allocator)
        async with trio.open_nursery() as nursery:
            if journal is not None:
                await nursery.start(journal.run)
                await journal.durable()
            await nursery.start(allocator.run)
            if core.state.expected_back:
                nursery.start_soon(
                    end_restore_settle,
                    core.state,
                    min(journaling.RESTORE_SETTLE, core.state.hold_grace),
                )
            journaling.resume_drains(allocator, drains, core.state.hold_grace)
            if self.startup is not None:
                added = await apply_config(self.startup, allocator, core.state)
                if journal is not None:
                    await journaling.AllocJournal(allocator, journal).queues_added(added)
            info = await nursery.start(core.run)
            if self.config.metrics_port is not None:
                from hqpy.http.server import serve_http

                self.http_listeners = await nursery.start(
                    partial(
                        serve_http,
                        ServerViews(core.state),
                        allocator,
                        self.hub,
                        core.started_at,
                        self.config.metrics_host,
                        self.config.metrics_port,
                        clock=core.clock,
                    )
                )
            task_status.started(info)
            await core.stop_requested.wait()
            log.info("Server is stopping")
            with trio.CancelScope(shield=True):
                await core.stop_workers()  # before the listeners: they hold the sessions
            core.close_listeners()
            with trio.CancelScope(shield=True):
                await allocator.cancel_all()
                if journal is not None:
                    await journal.flush()
                    journal.close()
            nursery.cancel_scope.cancel()


async def apply_config(
    config: Config, allocator: AutoAllocService, state: ServerState
) -> tuple[int, ...]:
    """Add the queues (all checked first) and set the pools of a configuration; returns the
    ids of the queues added. A queue whose name a queue restored from the journal already has
    is not added twice."""
    have = {q.params.name for q in allocator.state.live_queues() if q.params.name}
    added = await allocator.load_queues(tuple(q for q in config.queues if q.name not in have))
    for name, size in config.pools:
        state.set_pool(name, size)
    return tuple(added)


async def end_restore_settle(state: ServerState, settle: float) -> None:
    """Tasks are handed out once the workers of the server before are back, or after this."""
    await trio.sleep(settle)
    state.end_restore_settle()
