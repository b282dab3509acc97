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

import trio

from hqpy.autoalloc.backends.base import BatchBackend
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.requests import AllocRequests
from hqpy.autoalloc.service import AutoAllocService
from hqpy.common.events import EventHub
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
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
    ) -> None:
        """`clock`: every time read of the server core (tests pass `trio.current_time`)."""
        self.config = config
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

    async def run(self, *, task_status: trio.TaskStatus[m.ServerInfoView]) -> None:
        core = self.core
        instance_dir = core.instance_dir or await core.prepare()
        allocator = AutoAllocService(
            ServerDemand(core.state),
            self.hub,
            instance_dir,
            self.autoalloc_config,
            make_backend=self.make_backend,
        )
        self.allocator = allocator
        core.handlers.extend(AllocRequests(allocator).table())
        async with trio.open_nursery() as nursery:
            await nursery.start(allocator.run)
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
            core.close_listeners()
            with trio.CancelScope(shield=True):
                await allocator.cancel_all()
            nursery.cancel_scope.cancel()
