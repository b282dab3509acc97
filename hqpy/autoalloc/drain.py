"""`hq alloc drain`: end an allocation on purpose without losing work (Balsam's
`pending_deletion`).

Its workers take no new task at once (tasks queued on them but not started go back to
waiting); running tasks get up to the grace time to finish; then what still runs is handed back
(waiting again with a new instance id, not counted as a crash) and the allocation is cancelled
in the batch system. Events: `allocation-draining` when it starts, `allocation-drained` when the
allocation was cancelled (the cancel itself ends it as usual).
"""

from __future__ import annotations

import logging

import trio

from hqpy.autoalloc.params import AllocError
from hqpy.autoalloc.process import AllocatorProcess
from hqpy.autoalloc.state import AutoAllocState
from hqpy.common import drain as reasons
from hqpy.common.drain import AllocationControl
from hqpy.common.durations import format_duration
from hqpy.common.events import EventHub, WorkerLost
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
        hub.subscribe(WorkerLost, self._on_worker_lost)

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

        async def step(queue_id: int) -> None:
            await self._finish(queue_id, allocation_id, grace)

        self.process._start("drain", step, queue.id)  # one step of the queue, as the others

    async def _finish(self, queue_id: int, allocation_id: str, grace: float) -> None:
        try:
            control = self.control
            handed = 0
            if control is not None:
                with trio.move_on_after(grace):
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
