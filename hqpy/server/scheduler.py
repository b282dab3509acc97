"""Which waiting task runs on which worker: priority first, then submission order.

A task goes to a worker only if its request fits the worker's resources and its time request
fits the worker's remaining lifetime, and only if the task carries every filter tag of the
worker. A task of a concurrency pool goes out only while the pool has a free slot. Short
tasks are assigned ahead ("prefill"): a worker gets several rounds of them queued, so it
never waits for a round trip to the server between two tasks. Long tasks are not
prefilled, so an idle worker is never starved by a busy one.
"""

from __future__ import annotations

from collections.abc import Iterable

from hqpy.common.resources import ALL, ResourceRequest
from hqpy.server import multinode
from hqpy.server.jobs import Job, Task, TaskGroup, sort_key
from hqpy.server.pools import pool_full
from hqpy.server.workers import Worker

PREFILL_HORIZON = 0.25
"""Seconds of work to keep queued on a worker when a group's tasks are short."""
MAX_PREFILL_ROUNDS = 512
PREFILL_SHARE_PARTS = 8
"""A worker is queued at most 1/PREFILL_SHARE_PARTS of its share of the waiting tasks at a time,
so that the share of each worker is dealt in several small parts and the last part is small."""


def prefill_rounds(group: TaskGroup) -> int:
    """Extra rounds of the worker's capacity that may be queued for tasks of this group."""
    mean = group.mean_duration()
    if mean is None:
        return 0
    return min(MAX_PREFILL_ROUNDS, int(PREFILL_HORIZON / max(mean, 1e-4)))


def fits_worker(worker: Worker, request: ResourceRequest, now: float) -> bool:
    """Could this worker ever run a task with this request (ignoring what it runs now)?"""
    if request.n_nodes > 0:
        return False
    for entry in request.entries:
        capacity = worker.capacity.get(entry.resource, 0)
        if entry.amount == ALL:
            if capacity == 0:
                return False
        elif entry.amount > capacity:
            return False
    if request.min_time > 0 and worker.deadline is not None:
        return request.min_time <= worker.deadline - now
    return True


def can_take(worker: Worker, request: ResourceRequest, rounds: int) -> bool:
    """Is there room for one more task, counting `rounds` extra rounds of capacity?"""
    for entry in request.entries:
        capacity = worker.capacity.get(entry.resource, 0)
        amount = capacity if entry.amount == ALL else entry.amount
        if worker.assigned.get(entry.resource, 0) + amount > capacity * (1 + rounds):
            return False
    return True


def is_full(worker: Worker) -> bool:
    """Is every resource of the worker fully assigned (no task with a positive request fits
    without prefill)?"""
    assigned = worker.assigned
    return all(assigned.get(name, 0) >= cap for name, cap in worker.capacity.items())


def schedule(
    groups: Iterable[tuple[Job, TaskGroup]],
    workers: list[Worker],
    now: float,
    reserved: set[int] | None = None,
) -> dict[int, list[Task]]:
    """Assign waiting tasks to workers; returns the new tasks per worker id.

    First every worker is filled up to its capacity, in priority order; then short tasks are
    queued ahead on top of that. Multi-node tasks take whole idle workers of one group and
    reserve workers for themselves (`multinode`); later task groups leave reserved workers alone.
    `reserved` (if given) receives the ids of the workers reserved for a waiting one.
    """
    out: dict[int, list[Task]] = {}
    workers = [w for w in workers if w.mn_task is None]
    if not workers:
        return out
    ordered = sorted(groups, key=lambda jg: sort_key(jg[1]))
    if reserved is None:
        reserved = set()
    for prefill in (False, True):
        # Once every worker is full, the rest of the first pass can place no single-node task:
        # skipping them keeps a pass cheap when thousands of task groups wait.
        full = not prefill and all(is_full(w) for w in workers if w.id not in reserved)
        for job, group in ordered:
            if not group.has_waiting():
                continue
            request = group.body.request
            if request.n_nodes > 0:
                if not prefill:
                    for started, nodes in multinode.place(job, group, workers, now, reserved):
                        out.setdefault(nodes[0].id, []).append(started)
                continue
            if full and all(e.amount != 0 for e in request.entries):
                continue
            rounds = prefill_rounds(group) if prefill else 0
            if prefill and rounds == 0:
                continue
            pool = group.pool
            if pool_full(pool):
                continue
            tags = group.tags
            eligible = [
                w
                for w in workers
                if w.id not in reserved and fits_worker(w, request, now) and w.takes(tags)
            ]
            # Tasks queued ahead go out in small parts of equal shares of what waits, so that
            # every worker gets about as many (a worker's last part decides the spread).
            share = None
            if prefill and len(eligible) > 1:
                share = -(-group.waiting_count() // (len(eligible) * PREFILL_SHARE_PARTS))
            for worker in eligible:
                given = 0
                while can_take(worker, request, rounds) and (share is None or given < share):
                    if pool_full(pool):
                        break
                    task = group.take(job)
                    if task is None:
                        break
                    worker.assign(task)
                    out.setdefault(worker.id, []).append(task)
                    given += 1
                if not group.has_waiting() or pool_full(pool):
                    break
            if not prefill:
                full = all(is_full(w) for w in workers if w.id not in reserved)
    return out
