"""Allocations for multi-node tasks. Pure.

A waiting task of `--nodes N` needs one allocation that gives a group of at least N workers
(the queue's `--workers-per-alloc`). Each such task asks for one allocation of N workers;
an allocation that already waits in the batch queue and is at least N wide covers one. They
are planned before single-node work, as in HyperQueue.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from hqpy.common.demand import WaitingWork

MAX_REQUESTS = 1000
"""Multi-node tasks looked at per pass (more than any backlog needs)."""


@attrs.frozen
class MultiNodePlan:
    sizes: list[int]
    """Worker counts of the allocations to submit now for multi-node tasks."""
    needed_workers: int
    """Workers of queued allocations that multi-node tasks still wait for."""
    covered: int
    """Multi-node tasks served: by a queued allocation or by one submitted now."""


def split_work(work: Iterable[WaitingWork]) -> tuple[list[WaitingWork], list[WaitingWork]]:
    """(single-node work, multi-node work)."""
    single: list[WaitingWork] = []
    multi: list[WaitingWork] = []
    for w in work:
        (multi if w.request.n_nodes > 0 else single).append(w)
    return single, multi


def satisfiable(work: Iterable[WaitingWork], widest: int, time_limit: float) -> list[int]:
    """The node counts of the waiting multi-node tasks this queue could run, widest first."""
    counts: list[int] = []
    for w in work:
        n = w.request.n_nodes
        if 0 < n <= widest and w.count > 0 and w.request.min_time <= time_limit:
            counts.extend([n] * min(w.count, MAX_REQUESTS - len(counts)))
        if len(counts) >= MAX_REQUESTS:
            break
    return sorted(counts, reverse=True)


def plan(
    requests: list[int],
    queued_sizes: list[int],
    slots: int,
    budget: int | None,
    size_for: int | None,
) -> MultiNodePlan:
    """Allocations to submit for the multi-node tasks `requests` (node counts, widest first).

    `queued_sizes`: worker counts of allocations waiting in the batch queue (each covers one
    task as wide or narrower); `slots`: how many more may wait; `budget`: workers left under
    the queue's maximum (None: no maximum); `size_for`: a fixed allocation size (a split
    queue), else each allocation is as wide as its task.
    """
    free = sorted(queued_sizes, reverse=True)
    left: list[int] = []
    needed = 0
    for n in requests:
        index = next((i for i, s in enumerate(free) if s >= n), None)
        if index is None:
            left.append(n)
        else:
            needed += free.pop(index)
    sizes: list[int] = []
    for n in left:
        size = n if size_for is None else size_for
        if len(sizes) >= slots or (budget is not None and size > budget):
            break
        sizes.append(size)
        if budget is not None:
            budget -= size
    return MultiNodePlan(sizes, needed, len(requests) - len(left) + len(sizes))
