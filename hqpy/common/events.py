"""The server's event hub: parts of the server tell each other what happened without knowing
who listens.

The server core publishes job and worker events, the allocator publishes allocation events,
and the allocator, the metrics and the status page subscribe to what they need. Handlers run
synchronously on the trio thread, in subscription order; they must not block or await. A
handler that raises is logged and does not stop the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from hqpy.common.resources import ResourceDescriptorItem
from hqpy.common.states import AllocEventKind, TaskState, WorkerState

log = logging.getLogger(__name__)

E = TypeVar("E")


@attrs.frozen
class JobSubmitted:
    job_id: int


@attrs.frozen
class TasksUnfittable:
    """The fit check found tasks of a submit that no worker and no queue could ever run."""

    job_id: int
    count: int
    reason: str


@attrs.frozen
class JobForgotten:
    job_id: int
    task_counts: tuple[int, ...]
    """Tasks per `TaskState` at the moment the job was forgotten (counters never drop)."""


@attrs.frozen
class TaskEnded:
    job_id: int
    task_id: int
    state: TaskState
    started_at: float | None
    ended_at: float | None
    worker_id: int | None = None
    """The worker it ran on (the status page's task stream draws it there)."""
    error: str | None = None


@attrs.frozen
class WorkerConnected:
    worker_id: int
    manager: str | None
    allocation_id: str | None
    resources: tuple[ResourceDescriptorItem, ...]


@attrs.frozen
class WorkerLost:
    worker_id: int
    manager: str | None
    allocation_id: str | None
    state: WorkerState
    lifetime: float
    """Seconds from registration to loss."""

    @property
    def failure(self) -> bool:
        return self.state.is_failure


@attrs.frozen
class AllocationSubmitted:
    queue_id: int
    manager: str
    success: bool


@attrs.frozen
class AllocEventRecorded:
    """One entry of a queue's event log (`hq alloc events`)."""

    time: float
    kind: AllocEventKind
    queue_id: int
    manager: str
    allocation_id: str | None
    message: str
    queue_wait: float | None = None
    """For `allocation-started`: seconds from submission to start."""


@attrs.frozen
class BatchCommandRun:
    """A batch-system command ended (sbatch, squeue, qsub, ...), for the metrics."""

    program: str
    seconds: float
    ok: bool


class EventHub:
    def __init__(self) -> None:
        # `Any`: each list holds handlers of its own key's event type, which typing cannot say.
        self._handlers: defaultdict[type[object], list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._handlers[kind].append(handler)

    def wants(self, kind: type[object]) -> bool:
        """Does anyone listen to `kind`? Hot paths skip building events nobody reads."""
        return bool(self._handlers.get(kind))

    def publish(self, event: object) -> None:
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("A handler of %s failed", type(event).__name__)


@attrs.frozen
class AllocationEndReported:
    """An allocation script's exit trap reported its end (`hq worker report-end`)."""

    allocation_id: str
    exit_code: int
    stderr_tail: str
