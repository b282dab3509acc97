"""The JSON document behind the status page (`/api/status`).

It is bounded whatever the server holds: the newest jobs, workers, allocations and events only,
and no per-task data (jobs carry per-state counts), so the page can poll it every few seconds
even when the server holds a million-task array.
"""

from __future__ import annotations

import dataclasses
import heapq
import platform

from hqpy import __version__
from hqpy.common.jsontypes import JsonOutObject
from hqpy.common.resources import FRACTIONS
from hqpy.common.states import AllocationState, AllocEventKind, TaskState, WorkerState
from hqpy.http.metrics import worker_state_label
from hqpy.http.taskstream import TaskStream
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import (
    AllocatorReadModel,
    JobSummary,
    ServerReadModel,
    WorkerSummary,
)

TASK_STATE_NAMES = tuple(s.label for s in TaskState)

JsonObject = JsonOutObject
"""A JSON object for `json.dumps`."""

MAX_JOBS = 50
MAX_WORKERS = 100
MAX_ALLOCATIONS = 40
"""Per queue: its active allocations first, then the newest ended ones."""
MAX_EVENTS = 50
MAX_QUEUE_ERRORS = 5
"""Distinct error messages shown on a queue (each with how often and when it was last seen)."""
ERROR_EVENTS = frozenset(
    {
        AllocEventKind.SUBMIT_FAILED,
        AllocEventKind.STATUS_ERROR,
        AllocEventKind.CANCEL_FAILED,
        AllocEventKind.ALLOCATION_FAILED,
    }
)


def build_status(
    server: ServerReadModel,
    allocator: AllocatorReadModel | None,
    started_at: float,
    now: float,
    stream: TaskStream | None = None,
) -> JsonObject:
    """Everything the status page draws, as plain JSON values (times in epoch seconds).

    Removed queues stay (marked `removed`) so that their allocations and events remain, as
    `hq alloc events` keeps them."""
    queues = [] if allocator is None else allocator.queue_views(include_removed=True)
    summaries = server.newest_workers(MAX_WORKERS)
    workers = [_worker(w) for w in summaries]
    newest_jobs = server.newest_jobs(MAX_JOBS)
    jobs = _jobs(newest_jobs)
    events = _recent_events(queues, allocator)
    doc: JsonObject = {
        "server": {
            "uid": server.server_uid,
            "version": __version__,
            "python": platform.python_version(),
            "started_at": started_at,
            "now": now,
        },
        "totals": _totals(server),
        "queues": [_queue(q, allocator, events.get(q.id, [])) for q in queues],
        "workers": workers,
        "jobs": jobs,
        "events": _newest(events),
    }
    if stream is not None:
        doc["tasks"] = stream.snapshot(
            now,
            {w.id for w in summaries},
            {j.id for j in newest_jobs if j.counts[TaskState.FAILED]},
        )
    return doc


def _totals(server: ServerReadModel) -> JsonObject:
    tasks = server.task_state_totals()
    return {
        "jobs": server.job_count(),
        "tasks": dict(zip(TASK_STATE_NAMES, tasks, strict=True)),
        "workers": sum(1 for w in server.worker_summaries() if w.state is WorkerState.RUNNING),
    }


def _queue(
    queue: m.QueueView, allocator: AllocatorReadModel | None, events: list[m.AllocEventView]
) -> JsonObject:
    p = queue.params
    allocations = [] if allocator is None else allocator.allocation_views(queue.id)
    order = {a.id: i for i, a in enumerate(allocations)}
    active = [a for a in allocations if AllocationState(a.state).is_active]
    ended = [a for a in allocations if not AllocationState(a.state).is_active]
    shown = active[-MAX_ALLOCATIONS:]
    shown += ended[len(ended) - max(0, MAX_ALLOCATIONS - len(shown)) :]
    shown.sort(key=lambda a: (a.queued_at, order[a.id]))
    counts = {state.lower(): 0 for state in AllocationState}
    for a in allocations:
        counts[a.state.lower()] += 1
    return {
        "id": queue.id,
        "name": p.name,
        "manager": p.manager,
        "state": queue.state.lower(),
        "removed": queue.removed,
        "pause_reason": queue.pause_reason,
        "backlog": p.backlog,
        "workers_per_alloc": p.workers_per_alloc,
        "max_worker_count": p.max_worker_count,
        "time_limit": p.time_limit,
        "allocation_counts": counts,
        "allocations": [_allocation(a, p.time_limit) for a in shown],
        "errors": _errors(events),
    }


@dataclasses.dataclass
class _ErrorGroup:
    event: str
    message: str
    count: int
    first: float
    last: float
    allocation_id: str | None


def _errors(events: list[m.AllocEventView]) -> list[JsonObject]:
    """The queue's recent failures, one entry per distinct message, newest first: a queue whose
    every submission fails shows `sbatch: error: ...` once with its count, on the queue."""
    grouped: dict[tuple[str, str], _ErrorGroup] = {}
    for e in events:
        if e.event not in ERROR_EVENTS:
            continue
        key = (e.event, e.message)
        entry = grouped.get(key)
        if entry is None:
            grouped[key] = _ErrorGroup(e.event, e.message, 1, e.time, e.time, e.allocation_id)
        else:
            entry.count += 1
            entry.first = min(entry.first, e.time)
            if e.time >= entry.last:
                entry.last = e.time
                entry.allocation_id = e.allocation_id
    groups = sorted(grouped.values(), key=lambda x: x.last, reverse=True)[:MAX_QUEUE_ERRORS]
    return [
        {
            "event": g.event,
            "message": g.message,
            "count": g.count,
            "first": g.first,
            "last": g.last,
            "allocation_id": g.allocation_id,
        }
        for g in groups
    ]


def _allocation(a: m.AllocationView, time_limit: float) -> JsonObject:
    return {
        "id": a.id,
        "state": a.state.lower(),
        "worker_count": a.worker_count,
        "walltime_end": None if a.started_at is None else a.started_at + time_limit,
        "workers": a.connected_workers,
        "pending_reason": a.pending_reason,
        "queued_at": a.queued_at,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
    }


def _worker(w: WorkerSummary) -> JsonObject:
    return {
        "id": w.id,
        "hostname": w.hostname,
        "state": worker_state_label(w),
        "allocation": w.allocation_id,
        "manager": w.manager,
        "cpus": w.cpus / FRACTIONS,
        "cpus_assigned": w.cpus_assigned / FRACTIONS,
        "tasks": w.tasks,
        "running_tasks": w.running_tasks,
        "started_at": w.started_at,
        "ended_at": w.ended_at,
    }


def _jobs(newest: list[JobSummary]) -> list[JsonObject]:
    out: list[JsonObject] = []
    for job in newest:
        out.append(
            {
                "id": job.id,
                "name": job.name,
                "state": job.state.lower(),
                "task_count": job.task_count,
                "counts": dict(zip(TASK_STATE_NAMES, job.counts, strict=True)),
                "submitted_at": job.submitted_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
            }
        )
    return out


def _recent_events(
    queues: list[m.QueueView], allocator: AllocatorReadModel | None
) -> dict[int, list[m.AllocEventView]]:
    """The newest `MAX_EVENTS` events of each queue (removed ones too)."""
    recent: dict[int, list[m.AllocEventView]] = {}
    for q in queues:
        assert allocator is not None
        recent[q.id] = allocator.event_views(q.id, max(0, q.event_count - MAX_EVENTS))
    return recent


def _newest(events: dict[int, list[m.AllocEventView]]) -> list[JsonObject]:
    """The newest events of all queues together, newest first."""
    picked = heapq.nlargest(
        MAX_EVENTS, (e for es in events.values() for e in es), key=lambda e: e.time
    )
    return [
        {
            "time": e.time,
            "event": e.event,
            "queue_id": e.queue_id,
            "allocation_id": e.allocation_id,
            "message": e.message,
        }
        for e in picked
    ]
