"""The allocator's state as protocol views (`AllocatorReadModel`): what `hq alloc list/info/
events`, the metrics and the status page see. Pure."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hqpy.autoalloc.state import Allocation, AllocationQueue, AutoAllocState
from hqpy.common.states import QueueState
from hqpy.protocol import messages as m

WorkerCpus = Callable[[m.QueueParams], str | None]
"""`--cpus` that a queue's workers get when the queue gives none (local: their share)."""


def no_share(params: m.QueueParams) -> str | None:
    return None


def queue_view(queue: AllocationQueue, worker_cpus: WorkerCpus = no_share) -> m.QueueView:
    return m.QueueView(
        id=queue.id,
        params=queue.params,
        state=queue.state,
        known_resources=queue.known_resources,
        pause_reason=queue.pause_reason,
        self_paused=queue.state is QueueState.PAUSED and queue.limiter.pause_reason() is not None,
        removed=queue.removed,
        event_count=queue.event_count,
        local_cpus=worker_cpus(queue.params),
        prealloc_started=queue.prealloc_started,
        prealloc_stopped=queue.prealloc_stopped,
    )


def allocation_view(a: Allocation) -> m.AllocationView:
    return m.AllocationView(
        id=a.id,
        state=a.state,
        workdir=str(a.workdir),
        worker_count=a.worker_count,
        queued_at=a.queued_at,
        started_at=a.started_at,
        ended_at=a.finished_at,
        connected_workers=len(a.connected),
        pending_reason=a.pending_reason,
    )


class AllocatorViews:
    """`AllocatorReadModel` over the allocator's state."""

    def __init__(self, state: AutoAllocState, worker_cpus: WorkerCpus = no_share) -> None:
        self.state = state
        self.worker_cpus = worker_cpus

    def queue_views(self, include_removed: bool = False) -> list[m.QueueView]:
        queues = self.state.queues.values() if include_removed else self.state.live_queues()
        return [queue_view(q, self.worker_cpus) for q in queues]

    def allocation_views(self, queue_id: int) -> list[m.AllocationView]:
        queue = self.state.queues.get(queue_id)
        if queue is None:
            return []
        return [allocation_view(a) for a in queue.allocations.values()]

    def event_views(self, queue_id: int, after: int = 0) -> list[m.AllocEventView]:
        queue = self.state.queues.get(queue_id)
        if queue is None:
            return []
        first_kept = queue.event_count - len(queue.events)
        skip = max(0, after - first_kept)
        return [
            m.AllocEventView(e.time, e.event, e.queue_id, e.allocation_id, e.message)
            for e in itertools.islice(queue.events, skip, None)
        ]
