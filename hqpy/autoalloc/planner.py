"""How many allocations of how many workers a queue should submit now. Pure.

Demand counts only waiting tasks that a worker of the queue could run: its resources (from
`--cpus/--resource`, or learned from the queue's latest worker) must hold the task's request, and
the task's time request must fit in the worker's time limit (equal fits). Workers that queued
allocations will bring are subtracted, and the result is cut to the queue's limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from hqpy.common.demand import WaitingWork
from hqpy.common.resources import ALL, ResourceDescriptorItem, ResourceRequest


@attrs.frozen
class WorkerShape:
    capacity: dict[str, int]
    """Amount of each resource one worker has, in 1/10,000 units."""
    exact: bool
    """Known from a real worker: a resource it lacks, it does not have. Otherwise (from the
    queue's options) an unnamed resource may exist and counts as unlimited."""


def shape_of(
    declared: Iterable[ResourceDescriptorItem], known: Iterable[ResourceDescriptorItem] | None
) -> WorkerShape | None:
    """The shape of the queue's workers; None while it is unknown (probing)."""
    if known is not None:
        return WorkerShape({r.name: r.capacity() for r in known}, exact=True)
    items = list(declared)
    if not items:
        return None
    return WorkerShape({r.name: r.capacity() for r in items}, exact=False)


def tasks_per_worker(request: ResourceRequest, shape: WorkerShape) -> int:
    """How many such tasks one worker runs at once; 0 if it cannot run one."""
    if request.n_nodes > 0:
        return 0
    per: int | None = None
    for entry in request.entries:
        capacity = shape.capacity.get(entry.resource)
        if capacity is None:
            if shape.exact:
                return 0
            continue
        if entry.amount == ALL:
            fit = 1 if capacity > 0 else 0
        elif entry.amount <= 0:
            continue
        else:
            fit = capacity // entry.amount
        per = fit if per is None else min(per, fit)
    return 1 if per is None else per


def workers_wanted(work: Iterable[WaitingWork], shape: WorkerShape, time_limit: float) -> int:
    """Workers of this shape that the waiting tasks could keep busy."""
    total = 0
    for w in work:
        if w.count <= 0 or w.request.min_time > time_limit:
            continue
        per = tasks_per_worker(w.request, shape)
        if per > 0:
            total += math.ceil(w.count / per)
    return total


def consume(
    work: Iterable[WaitingWork], shape: WorkerShape | None, workers: int, time_limit: float
) -> list[WaitingWork]:
    """The work left after `workers` workers of this shape took what they can run.

    Queues are served in order, so one waiting task does not make every queue submit for it.
    A worker of unknown shape (probing) is taken to run one task.
    """
    left = []
    for w in work:
        if workers <= 0 or w.count <= 0 or w.request.min_time > time_limit:
            left.append(w)
            continue
        per = 1 if shape is None else tasks_per_worker(w.request, shape)
        if per <= 0:
            left.append(w)
            continue
        take = min(w.count, workers * per)
        workers -= math.ceil(take / per)
        if w.count > take:
            left.append(WaitingWork(w.request, w.count - take))
    return left


def any_runnable(work: Iterable[WaitingWork], time_limit: float) -> bool:
    """For a probing queue: is anything waiting that a worker of unknown shape might run?"""
    return any(w.count > 0 and w.request.min_time <= time_limit for w in work)


def compute_submission_permit(
    *,
    wanted_workers: int,
    coming_workers: int,
    queued_allocations: int,
    backlog: int,
    workers_per_alloc: int,
    active_workers: int,
    max_worker_count: int | None,
) -> list[int]:
    """Worker counts of the allocations to submit now.

    Args:
        wanted_workers: workers the waiting tasks could use.
        coming_workers: workers that queued (or partly started) allocations will still bring.
        queued_allocations: allocations waiting in the batch queue (they count against backlog).
        active_workers: target workers of all queued and running allocations (against the max).
    """
    demand = wanted_workers - coming_workers
    slots = backlog - queued_allocations
    if demand <= 0 or slots <= 0:
        return []
    budget = demand
    if max_worker_count is not None:
        budget = min(budget, max_worker_count - active_workers)
    sizes: list[int] = []
    while budget > 0 and len(sizes) < slots:
        size = min(workers_per_alloc, budget)
        sizes.append(size)
        budget -= size
    return sizes
