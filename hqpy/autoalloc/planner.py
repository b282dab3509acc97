"""How many allocations of how many workers a queue should submit now. Pure.

Demand counts only waiting tasks that a worker of the queue could run: its resources (from
`--cpus/--resource`, or learned from the queue's latest worker) must hold the task's request, and
the task's time request must fit in the worker's time limit (equal fits). Workers that queued
allocations will bring are subtracted, and the result is cut to the queue's limits.

A backend that runs workers on this machine (`SharesHost`, the local one) says how its cpus are
shared; its methods are pure, so everything here stays pure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import attrs

from hqpy.autoalloc import multinode, partitions
from hqpy.autoalloc.backends.base import SharesHost
from hqpy.autoalloc.state import AllocationQueue
from hqpy.common.demand import WaitingWork
from hqpy.common.resources import (
    ALL,
    FRACTIONS,
    ResourceDescriptorItem,
    ResourceRequest,
    parse_descriptor,
    parse_resource_arg,
)
from hqpy.common.tags import runs
from hqpy.protocol.messages import QueueParams

log = logging.getLogger(__name__)


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


def workers_wanted(
    work: Iterable[WaitingWork],
    shape: WorkerShape,
    time_limit: float,
    filter_tags: frozenset[str] = frozenset(),
) -> int:
    """Workers of this shape that the waiting tasks could keep busy (only tasks that carry
    all the queue's filter tags count)."""
    total = 0
    for w in work:
        if w.count <= 0 or w.request.min_time > time_limit or not runs(filter_tags, w.tags):
            continue
        per = tasks_per_worker(w.request, shape)
        if per > 0:
            total += math.ceil(w.count / per)
    return total


def consume(
    work: Iterable[WaitingWork],
    shape: WorkerShape | None,
    workers: int,
    time_limit: float,
    filter_tags: frozenset[str] = frozenset(),
) -> list[WaitingWork]:
    """The work left after `workers` workers of this shape took what they can run.

    Queues are served in order, so one waiting task does not make every queue submit for it.
    A worker of unknown shape (probing) is taken to run one task.
    """
    left = []
    for w in work:
        if (
            workers <= 0
            or w.count <= 0
            or w.request.min_time > time_limit
            or not runs(filter_tags, w.tags)
        ):
            left.append(w)
            continue
        per = 1 if shape is None else tasks_per_worker(w.request, shape)
        if per <= 0:
            left.append(w)
            continue
        take = min(w.count, workers * per)
        workers -= math.ceil(take / per)
        if w.count > take:
            left.append(WaitingWork(w.request, w.count - take, w.tags))
    return left


def any_runnable(
    work: Iterable[WaitingWork], time_limit: float, filter_tags: frozenset[str] = frozenset()
) -> bool:
    """For a probing queue: is anything waiting that a worker of unknown shape might run?"""
    return any(
        w.count > 0 and w.request.min_time <= time_limit and runs(filter_tags, w.tags) for w in work
    )


def preallocation_permit(
    *,
    pool: int,
    allocations: int,
    workers_per_alloc: int,
    active_workers: int,
    max_worker_count: int | None,
) -> list[int]:
    """Worker counts of the allocations a pool of `pool` allocations submits now: all that
    are missing at once (the backlog does not apply), within the worker cap.

    Args:
        allocations: the pool's queued and running allocations, and submissions under way.
        active_workers: target workers of those allocations (against the max).
    """
    missing = pool - allocations
    budget = None if max_worker_count is None else max_worker_count - active_workers
    sizes: list[int] = []
    while missing > 0:
        size = workers_per_alloc if budget is None else min(workers_per_alloc, budget)
        if size <= 0:
            break
        sizes.append(size)
        missing -= 1
        if budget is not None:
            budget -= size
    return sizes


def pool_on(params: QueueParams, started: bool, stopped: bool, has_work: bool) -> bool:
    """Does a pool keep its N allocations up now? A stopped pool submits nothing until
    `hq alloc preallocate` starts it again; otherwise work its workers can run, `--persist`
    or `hq alloc preallocate` turn it on."""
    if params.preallocate <= 0 or stopped:
        return False
    return has_work or started or params.persist


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


def declared_resources(params: QueueParams) -> list[ResourceDescriptorItem]:
    """The worker resources a queue's options describe (`--cpus`, `--resource`).

    Raises:
        ValueError: an option that does not parse.
    """
    items = []
    if params.cpus is not None:
        items.append(parse_descriptor("cpus", params.cpus))
    for text in params.resources:
        name, definition = parse_resource_arg(text)
        items.append(parse_descriptor(name, definition))
    mem = memory_resource(params)
    if mem is not None:
        items.append(parse_descriptor(*parse_resource_arg(mem)))
    return items


def memory_resource(params: QueueParams) -> str | None:
    """`mem=sum(MiB)` for a queue with `memory` and no `mem` resource of its own: its workers
    offer what the batch system was asked for (MiB, HyperQueue's unit of `mem`)."""
    if params.memory is None:
        return None
    if any(parse_resource_arg(r)[0] == "mem" for r in params.resources):
        return None
    return f"mem=sum({max(1, params.memory // 2**20)})"


def max_workers(
    params: QueueParams, shape: WorkerShape | None, share: SharesHost | None
) -> int | None:
    """The queue's worker cap: `--max-worker-count`, or what a backend that shares this
    machine allows for workers of this shape."""
    if share is None or shape is None:
        return params.max_worker_count
    return share.worker_cap(params, shape.capacity.get("cpus", 0) // FRACTIONS)


@attrs.frozen
class QueuePlan:
    sizes: list[int]
    """Worker counts of the allocations to submit now."""
    rest: list[WaitingWork]
    """The work left for the next queues once this queue's coming workers took their part."""
    needed_workers: int
    """Workers of queued allocations the demand still needs; queued allocations beyond them
    are unneeded (and withdrawn after a grace period)."""
    pool_on: bool = False
    """A pool (`--preallocate`) that keeps its N allocations up in this pass."""


def plan_queue(
    queue: AllocationQueue,
    work: list[WaitingWork],
    share: SharesHost | None = None,
    may_submit: bool = True,
) -> QueuePlan:
    """What one queue should do in this pass, given the work earlier queues left.

    Submissions under way (`queue.in_flight`) count as queued allocations. With `may_submit`
    False (its previous submissions are still running) it submits nothing, but its coming
    workers still take their part of the work."""
    p = queue.params
    time_limit = queue.worker_time_limit()
    declared = declared_resources(p)
    override = None if share is None else share.worker_cpus(p)
    if override is not None:
        declared.append(parse_descriptor("cpus", override))
    shape = shape_of(declared, queue.known_resources)
    tags = frozenset(p.filter_tags)
    queued = queue.queued()
    in_flight = sum(queue.in_flight)
    running_coming = sum(
        max(0, a.worker_count - len(a.connected) - len(a.disconnected)) for a in queue.running()
    )
    coming = sum(a.worker_count for a in queued) + in_flight + running_coming
    mn: multinode.MultiNodePlan | None = None
    multi: list[WaitingWork] = []
    untagged: list[WaitingWork] = []  # multi-node work its filter tags exclude: for the next
    if any(w.request.n_nodes > 0 for w in work):
        # Multi-node tasks first: each needs an allocation of its own width (multinode.py).
        work, multi = multinode.split_work(work)
        untagged = [w for w in multi if not runs(tags, w.tags)]
        multi = [w for w in multi if runs(tags, w.tags)]
        cap = max_workers(p, shape, share)
        widest = partitions.widest_group(p.splits, p.workers_per_alloc)
        mn = multinode.plan(
            multinode.satisfiable(multi, widest, time_limit),
            [a.worker_count for a in queued],
            p.backlog - len(queued) - len(queue.in_flight) if may_submit else 0,
            None if cap is None else cap - queue.active_worker_count() - in_flight,
            p.workers_per_alloc if p.splits else None,
        )
        coming -= mn.needed_workers
    if shape is None:
        # Probing: one allocation at a time until a worker tells what workers look like.
        runnable = any_runnable(work, time_limit, tags)
        busy = any(True for _ in queue.active()) or bool(queue.in_flight)
        wanted = p.workers_per_alloc if runnable and not busy else 0
        needed = sum(a.worker_count for a in queued) if runnable else 0
    else:
        runnable = workers_wanted(work, shape, time_limit, tags) > 0
        wanted = workers_wanted(work, shape, time_limit, tags)
        needed = max(0, wanted - running_coming)
    pool = p.preallocate > 0
    on = pool_on(p, queue.prealloc_started, queue.prealloc_stopped, runnable)
    sizes: list[int] = []
    mn_sizes = [] if mn is None else mn.sizes
    if pool:
        if on:
            needed = sum(a.worker_count for a in queued)  # a pool withdraws nothing
            # A started pool without `--persist` and with no work does not replace.
            replaces = p.persist or runnable or not queue.prealloc_up
            if may_submit and replaces:
                sizes = preallocation_permit(
                    pool=p.preallocate,
                    allocations=sum(1 for _ in queue.active()) + len(queue.in_flight),
                    workers_per_alloc=p.workers_per_alloc,
                    active_workers=queue.active_worker_count() + in_flight,
                    max_worker_count=max_workers(p, shape, share),
                )
    elif may_submit:
        sizes = compute_submission_permit(
            wanted_workers=wanted,
            coming_workers=coming,
            queued_allocations=len(queued) + len(queue.in_flight) + len(mn_sizes),
            backlog=p.backlog,
            workers_per_alloc=p.workers_per_alloc,
            active_workers=queue.active_worker_count() + in_flight + sum(mn_sizes),
            max_worker_count=max_workers(p, shape, share),
        )
    log.debug(
        "Queue %d: %d waiting task groups, shape %s, wanted %d workers, coming %d, "
        "queued %d/%d, pool %s -> submit %s",
        queue.id,
        len(work),
        shape,
        wanted,
        coming,
        len(queued) + len(queue.in_flight),
        p.backlog,
        on if pool else "-",
        sizes,
    )
    if p.splits:
        # A split allocation always has all its parts.
        sizes = [p.workers_per_alloc] * len(sizes)
    if shape is None:
        coming = sum(a.worker_count for a in queue.active()) + in_flight
    rest = consume(work, shape, coming + sum(sizes), time_limit, tags)
    if mn is not None:
        needed += mn.needed_workers
        served = multinode.satisfiable(multi, widest, time_limit)
        if len(served) <= mn.covered:
            # This queue serves every one it can; the next queues see only the others.
            multi = [w for w in multi if w.request.n_nodes not in served]
        rest += multi
        sizes = mn.sizes + sizes
    return QueuePlan(sizes, rest + untagged, needed, on)
