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
from hqpy.http.metrics import worker_state_label
from hqpy.server.jobs import STATE_NAMES

if TYPE_CHECKING:
    from hqpy.autoalloc.service import AutoAllocService
    from hqpy.autoalloc.state import Allocation, AllocationQueue, AllocEvent
    from hqpy.server.state import ServerState
    from hqpy.server.workers import Worker

MAX_JOBS = 50
MAX_WORKERS = 100
MAX_ALLOCATIONS = 40
"""Per queue: its active allocations first, then the newest ended ones."""
MAX_EVENTS = 50


def build_status(
    state: ServerState,
    autoalloc: AutoAllocService | None,
    started_at: float,
    now: float,
) -> dict[str, Any]:
    """Everything the status page draws, as plain JSON values (times in epoch seconds)."""
    queues = [] if autoalloc is None else autoalloc.state.live_queues()
    return {
        "server": {
            "uid": state.server_uid,
            "version": __version__,
            "python": platform.python_version(),
            "started_at": started_at,
            "now": now,
        },
        "totals": _totals(state),
        "queues": [_queue(q) for q in queues],
        "workers": _workers(state),
        "jobs": _jobs(state),
        "events": _events(queues),
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


def _queue(queue: AllocationQueue) -> dict[str, Any]:
    p = queue.params
    allocations = list(queue.allocations.values())
    active = [a for a in allocations if a.is_active]
    ended = [a for a in allocations if not a.is_active]
    shown = active[-MAX_ALLOCATIONS:]
    shown += ended[len(ended) - max(0, MAX_ALLOCATIONS - len(shown)) :]
    shown.sort(key=lambda a: (a.queued_at, a.seq))
    counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0}
    for a in allocations:
        counts[a.state.value.lower()] += 1
    return {
        "id": queue.id,
        "name": p.name,
        "manager": p.manager,
        "state": queue.state.value.lower(),
        "pause_reason": queue.pause_reason,
        "backlog": p.backlog,
        "workers_per_alloc": p.workers_per_alloc,
        "max_worker_count": p.max_worker_count,
        "time_limit": p.time_limit,
        "allocation_counts": counts,
        "allocations": [_allocation(a) for a in shown],
    }


def _allocation(a: Allocation) -> dict[str, Any]:
    return {
        "id": a.id,
        "state": a.state.value.lower(),
        "worker_count": a.worker_count,
        "workers": len(a.connected),
        "queued_at": a.queued_at,
        "started_at": a.started_at,
        "ended_at": a.finished_at,
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


def _events(queues: list[AllocationQueue]) -> list[dict[str, Any]]:
    """The newest events of all live queues together, newest first."""
    recent: list[AllocEvent] = []
    for q in queues:
        recent.extend(itertools.islice(reversed(q.events), MAX_EVENTS))
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
