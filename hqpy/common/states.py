"""Every state and event-kind name of hqpy, and each precedence rule, in one place.

Task states are ints on the wire (task updates are the hot path); the others travel as their
string values, which are the names HyperQueue shows.
"""

from __future__ import annotations

import enum


class TaskState(enum.IntEnum):
    WAITING = 0
    """Not started yet; it may already be assigned to a worker that has not started it."""
    RUNNING = 1
    """A worker reported that the process started."""
    FINISHED = 2
    FAILED = 3
    CANCELED = 4
    """Canceled by the user."""
    ABORTED = 5
    """Canceled by the server, because the job hit its `--max-fails`."""

    @property
    def label(self) -> str:
        """The lower-case name HyperQueue prints and accepts (`--task-status failed`)."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> TaskState:
        """A state from its name, any case; ValueError names the choices."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.label for s in cls)
            raise ValueError(f"Unknown task state `{text}`; expected one of {choices}") from None


DONE_TASK_STATES = frozenset(
    {TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELED, TaskState.ABORTED}
)


class JobState(enum.StrEnum):
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    CANCELED = "CANCELED"
    OPENED = "OPENED"
    FINISHED = "FINISHED"


def job_state(counts: list[int] | tuple[int, ...], is_open: bool) -> JobState:
    """A job's state from its per-task-state counts (indexed by `TaskState`), as HyperQueue
    decides it: the first rule that matches wins."""
    if counts[TaskState.RUNNING]:
        return JobState.RUNNING
    if counts[TaskState.WAITING]:
        return JobState.WAITING
    if counts[TaskState.FAILED]:
        return JobState.FAILED
    if counts[TaskState.ABORTED]:
        return JobState.ABORTED
    if counts[TaskState.CANCELED]:
        return JobState.CANCELED
    if is_open:
        return JobState.OPENED
    return JobState.FINISHED


class WorkerState(enum.StrEnum):
    RUNNING = "RUNNING"
    CONNECTION_LOST = "CONNECTION LOST"
    HEARTBEAT_LOST = "HEARTBEAT LOST"
    STOPPED = "STOPPED"
    IDLE_TIMEOUT = "IDLE TIMEOUT"
    TIME_LIMIT_REACHED = "TIME LIMIT REACHED"

    @property
    def is_failure(self) -> bool:
        """Losing a worker this way counts against the crash limit of its running tasks."""
        return self in (WorkerState.CONNECTION_LOST, WorkerState.HEARTBEAT_LOST)


class AllocationState(enum.StrEnum):
    QUEUED = "QUEUED"
    """Submitted; waiting in the batch system's queue, no worker has registered yet."""
    RUNNING = "RUNNING"
    """A worker from it registered, or the batch system says it runs."""
    FINISHED = "FINISHED"
    """All its workers are gone, or the batch system says it ended normally (walltime too)."""
    FAILED = "FAILED"
    """Its workers all crashed within a minute, it vanished, or its status checks kept failing
    while it was queued."""

    @property
    def is_active(self) -> bool:
        return self in (AllocationState.QUEUED, AllocationState.RUNNING)


class QueueState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


class AllocEventKind(enum.StrEnum):
    """What `hq alloc events` lists, one per queue or allocation step."""

    QUEUE_CREATED = "queue-created"
    ALLOCATION_QUEUED = "allocation-queued"
    ALLOCATION_STARTED = "allocation-started"
    ALLOCATION_FINISHED = "allocation-finished"
    ALLOCATION_FAILED = "allocation-failed"
    ALLOCATION_WITHDRAWN = "allocation-withdrawn"
    SUBMIT_FAILED = "submit-failed"
    STATUS_ERROR = "status-error"
    CANCEL_FAILED = "cancel-failed"
    ALLOCATION_DRAINING = "allocation-draining"
    """`hq alloc drain`: its workers take no new task; running ones get the grace time."""
    ALLOCATION_DRAINED = "allocation-drained"
    """The drain is over: what still ran was handed back and the allocation cancelled."""
    QUEUE_PAUSED = "queue-paused"
    QUEUE_RESUMED = "queue-resumed"
    QUEUE_REMOVED = "queue-removed"
    TASKS_UNFITTABLE = "tasks-unfittable"
    """The fit check: tasks were submitted that no worker and no queue could ever run."""
    PREALLOC_STARTED = "prealloc-started"
    """A pool starts its N allocations (work for it, `--persist`, or `hq alloc preallocate`)."""
    PREALLOC_REPLACED = "prealloc-replaced"
    """A persistent pool submits in place of an allocation that ended."""
    PREALLOC_STOPPED = "prealloc-stopped"
    """`hq alloc stop --preallocated`: the pool stops keeping its allocations up."""


class WorkerFilter(enum.StrEnum):
    """Which workers `hq worker list` shows."""

    RUNNING = "running"
    OFFLINE = "offline"
    ALL = "all"
