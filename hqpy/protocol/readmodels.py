"""Read models: what the request handlers, the metrics and the status page may see of the
allocator and of the server core, as protocol views. The allocator and the server core implement
them; the readers (`hqpy.http`) depend only on this."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import attrs

from hqpy.common.states import JobState, WorkerState
from hqpy.protocol import messages as m


class AllocatorReadModel(Protocol):
    def queue_views(self, include_removed: bool = False) -> list[m.QueueView]:
        """Queues by id; removed ones only when asked (the status page keeps their events)."""
        ...

    def allocation_views(self, queue_id: int) -> list[m.AllocationView]:
        """Every allocation the queue ever had, in submission order."""
        ...

    def event_views(self, queue_id: int, after: int = 0) -> list[m.AllocEventView]:
        """The queue's kept events whose sequence number is `after` or more (0: all kept)."""
        ...


@attrs.frozen
class JobSummary:
    """One job as the status page shows it: per-state task counts, never per-task data."""

    id: int
    name: str
    state: JobState
    task_count: int
    counts: tuple[int, ...]
    """Tasks by `TaskState` (index = the state's int)."""
    submitted_at: float
    started_at: float | None
    finished_at: float | None


@attrs.frozen
class WorkerSummary:
    """One worker as the metrics and the status page see it."""

    id: int
    hostname: str
    state: WorkerState
    stopping: bool
    """Still connected, but asked to stop (or said it is stopping)."""
    manager: str | None
    allocation_id: str | None
    cpus: int
    """CPU capacity in resource fractions (`FRACTIONS` per CPU)."""
    cpus_assigned: int
    tasks: int
    running_tasks: int
    started_at: float
    ended_at: float | None


class ServerReadModel(Protocol):
    """What the HTTP side reads of the server core. Every call costs O(jobs + workers) at most,
    never O(tasks): jobs keep per-state task counts, so a million-task array is one job."""

    @property
    def server_uid(self) -> str: ...

    def job_count(self) -> int: ...

    def task_state_totals(self) -> list[int]:
        """Tasks of all jobs by `TaskState` (index = the state's int)."""
        ...

    def job_state_totals(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zeros included)."""
        ...

    def newest_jobs(self, limit: int) -> list[JobSummary]:
        """At most `limit` jobs, newest first."""
        ...

    def worker_summaries(self) -> Iterator[WorkerSummary]:
        """Every worker the server knows (connected or ended), oldest first."""
        ...

    def newest_workers(self, limit: int) -> list[WorkerSummary]:
        """The running workers (oldest first), then the most recently ended ones; `limit` in all."""
        ...


RequestHandler = Callable[[Any], Awaitable[Any]]
"""Answers one kind of client request (the table key says which) with a `ClientResponse`.
`Any` because a table maps each request class to its own handler type, which Python's typing
cannot say per key; the table is built from handlers typed exactly."""

HandlerTable = Mapping[type[object], RequestHandler]
