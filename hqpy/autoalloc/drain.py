"""`hq alloc drain`: end an allocation on purpose without losing work (Balsam's
`pending_deletion`).

Its workers take no new task at once (tasks queued on them but not started go back to
waiting); running tasks get up to the grace time to finish; then what still runs is handed back
(waiting again with a new instance id, not counted as a crash) and the allocation is cancelled
in the batch system. Events: `allocation-draining` when it starts, `allocation-drained` when the
allocation was cancelled (the cancel itself ends it as usual).

A drain survives a server restart (the journal's `allocation-draining` record): the restored
server goes on with what is left of the grace (`resume`). A worker of a draining allocation that
registers (one that comes back after the restart, or starts late) is drained at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from hqpy.autoalloc.params import AllocError
from hqpy.autoalloc.process import AllocatorProcess
from hqpy.autoalloc.state import AutoAllocState
from hqpy.common import drain as reasons
from hqpy.common.drain import AllocationControl
from hqpy.common.durations import format_duration
from hqpy.common.events import EventHub, WorkerConnected, WorkerLost
from hqpy.common.states import AllocEventKind

log = logging.getLogger(__name__)


class Drains:
    def __init__(
        self,
        state: AutoAllocState,
        process: AllocatorProcess,
        control: AllocationControl | None,
        cancel_bound: float,
        hub: EventHub,
    ) -> None:
        self.state = state
        self.process = process
        self.control = control
        self.cancel_bound = cancel_bound
        self.draining: dict[str, trio.Event] = {}
        """Allocations being drained; each event is set when one of its workers goes (the
        server stops a draining worker once it holds no task)."""
        self.on_start: Callable[[int, str, float], None] | None = None
        """Told of each drain that starts (queue id, allocation id, grace): the journal."""
        hub.subscribe(WorkerLost, self._on_worker_lost)
        hub.subscribe(WorkerConnected, self._on_worker_connected)

    def _on_worker_connected(self, event: WorkerConnected) -> None:
        allocation_id = event.allocation_id
        if allocation_id is None or allocation_id not in self.draining or self.control is None:
            return
        found = self.state.find_allocation(allocation_id)
        if found is None:
            return
        control = self.control

        async def step(queue_id: int) -> None:
            # After the registration is answered and every listener has seen the worker.
            await trio.lowlevel.checkpoint()
            if allocation_id in self.draining:
                control.drain(allocation_id)

        self.process._start("drain", step, found[0].id)

    def _on_worker_lost(self, event: WorkerLost) -> None:
        changed = self.draining.get(event.allocation_id or "")
        if changed is not None:
            changed.set()

    def start(self, allocation_id: str, grace: float) -> None:
        """Begin draining; the rest runs as a step of the allocation's queue.

        Raises:
            AllocError: no such allocation, or it has ended or is draining already.
        """
        found = self.state.find_allocation(allocation_id)
        if found is None:
            raise AllocError(f"Allocation {allocation_id} not found")
        queue, alloc = found
        if not alloc.is_active:
            raise AllocError(f"Allocation {allocation_id} has already ended")
        if allocation_id in self.draining:
            raise AllocError(f"Allocation {allocation_id} is already draining")
        self.draining[allocation_id] = trio.Event()
        self.state.record(
            queue,
            AllocEventKind.ALLOCATION_DRAINING,
            allocation_id,
            f"drain requested; running tasks get {format_duration(grace)} to finish",
        )
        if self.control is not None:
            self.control.drain(allocation_id)
        if self.on_start is not None:
            self.on_start(queue.id, allocation_id, grace)

        async def step(queue_id: int) -> None:
            await self._finish(queue_id, allocation_id, grace)

        self.process._start("drain", step, queue.id)  # one step of the queue, as the others

    def resume(self, allocation_id: str, grace_left: float, settle: float) -> bool:
        """A drain of the server before a restart goes on (the allocator runs): its running
        tasks get what is left of the grace, of which up to `settle` seconds (the reconnect
        window) are given to its workers to come back before it may end early. False when
        the allocation has ended or drains already."""
        found = self.state.find_allocation(allocation_id)
        if found is None or not found[1].is_active or allocation_id in self.draining:
            return False
        queue = found[0]
        self.draining[allocation_id] = trio.Event()
        log.info(
            "Allocation %s was draining when the server stopped; %s left",
            allocation_id,
            format_duration(grace_left),
        )
        if self.control is not None:
            self.control.drain(allocation_id)

        async def step(queue_id: int) -> None:
            await self._finish(queue_id, allocation_id, grace_left, settle)

        self.process._start("drain", step, queue.id)
        return True

    async def _finish(
        self, queue_id: int, allocation_id: str, grace: float, settle: float = 0.0
    ) -> None:
        try:
            control = self.control
            handed = 0
            if control is not None:
                with trio.move_on_after(grace):
                    if settle > 0:
                        await trio.sleep(settle)
                    while control.busy(allocation_id):
                        await self.draining[allocation_id].wait()
                        self.draining[allocation_id] = trio.Event()
                handed = control.busy(allocation_id)
                control.hand_back(allocation_id, reasons.DRAINED)
            failures = await self.process.cancel_allocations(
                queue_id,
                [allocation_id],
                "drained",
                trio.current_time() + self.cancel_bound,
            )
            queue = self.state.queues.get(queue_id)
            if queue is not None and allocation_id not in failures:
                self.state.record(
                    queue,
                    AllocEventKind.ALLOCATION_DRAINED,
                    allocation_id,
                    f"{handed} task(s) handed back; cancelled in the batch system",
                )
        finally:
            self.draining.pop(allocation_id, None)
