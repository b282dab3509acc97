"""The JSON document behind the status page (`/api/status`).

It is bounded whatever the server holds: the newest jobs, workers, allocations and events only,
and no per-task data (jobs carry per-state counts), so the page can poll it every few seconds
even when the server holds a million-task array.
"""

from __future__ import annotations

import heapq
import itertools
import platform
from typing import TYPE_CHECKING, Any

from hqpy import __version__
from hqpy.common.resources import FRACTIONS
from hqpy.common.states import AllocationState
from hqpy.http.metrics import worker_state_label
from hqpy.protocol import messages as m
from hqpy.server.jobs import STATE_NAMES

if TYPE_CHECKING:
    from hqpy.protocol.readmodels import AllocatorReadModel
    from hqpy.server.state import ServerState
    from hqpy.server.workers import Worker

MAX_JOBS = 50
MAX_WORKERS = 100
MAX_ALLOCATIONS = 40
"""Per queue: its active allocations first, then the newest ended ones."""
MAX_EVENTS = 50


def build_status(
    state: ServerState,
    allocator: AllocatorReadModel | None,
    started_at: float,
    now: float,
) -> dict[str, Any]:
    """Everything the status page draws, as plain JSON values (times in epoch seconds)."""
    queues = [] if allocator is None else allocator.queue_views()
    return {
        "server": {
            "uid": state.server_uid,
            "version": __version__,
            "python": platform.python_version(),
            "started_at": started_at,
            "now": now,
        },
        "totals": _totals(state),
        "queues": [_queue(q, allocator) for q in queues],
        "workers": _workers(state),
        "jobs": _jobs(state),
        "events": _events(queues, allocator),
    }


def _totals(state: ServerState) -> dict[str, Any]:
    tasks = [0] * len(STATE_NAMES)
    for job in state.jobs.values():
        for i, n in enumerate(job.counts):
            tasks[i] += n
    return {
        "jobs": len(state.jobs),
        "tasks": dict(zip(STATE_NAMES, tasks, strict=True)),
        "workers": sum(1 for w in state.workers.values() if w.state == "RUNNING"),
    }


def _queue(queue: m.QueueView, allocator: AllocatorReadModel | None) -> dict[str, Any]:
    p = queue.params
    allocations = [] if allocator is None else allocator.allocation_views(queue.id)
    order = {a.id: i for i, a in enumerate(allocations)}
    active = [a for a in allocations if AllocationState(a.state).is_active]
    ended = [a for a in allocations if not AllocationState(a.state).is_active]
    shown = active[-MAX_ALLOCATIONS:]
    shown += ended[len(ended) - max(0, MAX_ALLOCATIONS - len(shown)) :]
    shown.sort(key=lambda a: (a.queued_at, order[a.id]))
    counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0}
    for a in allocations:
        counts[a.state.lower()] += 1
    return {
        "id": queue.id,
        "name": p.name,
        "manager": p.manager,
        "state": queue.state.lower(),
        "pause_reason": queue.pause_reason,
        "backlog": p.backlog,
        "workers_per_alloc": p.workers_per_alloc,
        "max_worker_count": p.max_worker_count,
        "time_limit": p.time_limit,
        "allocation_counts": counts,
        "allocations": [_allocation(a) for a in shown],
    }


def _allocation(a: m.AllocationView) -> dict[str, Any]:
    return {
        "id": a.id,
        "state": a.state.lower(),
        "worker_count": a.worker_count,
        "workers": a.connected_workers,
        "queued_at": a.queued_at,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
    }


def _workers(state: ServerState) -> list[dict[str, Any]]:
    workers = state.workers
    running = [w for w in workers.values() if w.state == "RUNNING"]
    # Then the most recently ended ones, newest first (ids grow with time).
    rest = itertools.islice(
        (w for w in reversed(workers.values()) if w.state != "RUNNING"),
        max(0, MAX_WORKERS - len(running)),
    )
    return [_worker(w) for w in [*running[:MAX_WORKERS], *rest]]


def _worker(w: Worker) -> dict[str, Any]:
    manager = w.config.manager
    return {
        "id": w.id,
        "hostname": w.config.hostname,
        "state": worker_state_label(w),
        "allocation": None if manager is None else manager.allocation_id,
        "manager": None if manager is None else manager.manager,
        "cpus": w.capacity.get("cpus", 0) / FRACTIONS,
        "cpus_assigned": w.assigned.get("cpus", 0) / FRACTIONS,
        "tasks": len(w.tasks),
        "running_tasks": w.running,
        "started_at": w.started_at,
        "ended_at": w.ended_at,
    }


def _jobs(state: ServerState) -> list[dict[str, Any]]:
    out = []
    for job in itertools.islice(reversed(state.jobs.values()), MAX_JOBS):
        out.append(
            {
                "id": job.id,
                "name": job.name,
                "state": job.state_name().lower(),
                "task_count": job.task_count,
                "counts": dict(zip(STATE_NAMES, job.counts, strict=True)),
                "submitted_at": job.submitted_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
            }
        )
    return out


def _events(
    queues: list[m.QueueView], allocator: AllocatorReadModel | None
) -> list[dict[str, Any]]:
    """The newest events of all live queues together, newest first."""
    recent: list[m.AllocEventView] = []
    for q in queues:
        assert allocator is not None
        recent.extend(allocator.event_views(q.id, max(0, q.event_count - MAX_EVENTS)))
    picked = heapq.nlargest(MAX_EVENTS, recent, key=lambda e: e.time)
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
