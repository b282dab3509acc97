"""The fit check: could some connected worker or some queue's worker ever run a task?

Each requirement of a task (each resource, its time request, its node count, the filter tags
of the worker) is checked against one worker or one queue's worker shape and gives one row
(`Check`); `hq task explain` shows the rows, `hq submit` warns when no worker and no queue
passes them all. Pure: the server and the allocator give their current shapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

from hqpy.common.demand import QueueOffer
from hqpy.common.durations import format_duration
from hqpy.common.resources import ALL, FRACTIONS, ResourceRequest, format_amount
from hqpy.common.tags import missing, runs
from hqpy.protocol import messages as m


@attrs.frozen
class WorkerShape:
    """What a connected worker gives a task (from `hqpy.server.workers.Worker`)."""

    id: int
    capacity: Mapping[str, int]
    filter_tags: frozenset[str] = frozenset()
    time_left: float | None = None
    """Seconds until the worker's time limit; None: no limit."""
    group: str = "default"
    """Its worker group: a multi-node task runs on workers of one group only."""


Check = m.ExplainVariant
"""One requirement of a task against one worker or queue: the checks are what `task explain`
sends, as they are."""


@attrs.frozen
class Verdict:
    """The checks of one task against one worker (`who` = `1`) or queue (`who` = `queue 2`)."""

    who: str
    checks: tuple[Check, ...]

    @property
    def runnable(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def format_resource(name: str, amount: int) -> str:
    """`32 GiB` for memory (MiB units, as HyperQueue's `mem`), `2` or `0.5` otherwise."""
    if name == "mem":
        mib = amount // FRACTIONS
        if mib >= 1024 and mib % 1024 == 0:
            return f"{mib // 1024} GiB"
        return f"{format_amount(amount)} MiB"
    return format_amount(amount)


def _resource_checks(
    request: ResourceRequest, capacity: Mapping[str, int] | None, exact: bool
) -> list[Check]:
    out = []
    for entry in request.entries:
        name = entry.resource
        wanted = "all" if entry.amount == ALL else format_resource(name, entry.amount)
        if capacity is None or (name not in capacity and not exact):
            # An unknown shape (or a resource the queue does not declare) may have it.
            out.append(Check("resource", name, "unknown", wanted, True))
            continue
        have = capacity.get(name, 0)
        ok = have > 0 if entry.amount == ALL else entry.amount <= have
        out.append(Check("resource", name, format_resource(name, have), wanted, ok))
    return out


def _time_check(request: ResourceRequest, time_left: float | None) -> list[Check]:
    if request.min_time <= 0:
        return []
    wanted = format_duration(request.min_time)
    if time_left is None:
        return [Check("time", "time", "unlimited", wanted, True)]
    ok = request.min_time <= time_left
    return [Check("time", "time", format_duration(max(0.0, time_left)), wanted, ok)]


def _tag_check(filter_tags: frozenset[str], tags: frozenset[str]) -> list[Check]:
    if not filter_tags:
        return []
    return [
        Check(
            "tags",
            "tags",
            ",".join(sorted(filter_tags)),
            ",".join(sorted(tags)) or "(none)",
            runs(filter_tags, tags),
        )
    ]


def check_worker(
    worker: WorkerShape, request: ResourceRequest, tags: frozenset[str], n_workers: int
) -> Verdict:
    """`n_workers`: how many workers of its group the task may run on (the widest multi-node
    task the worker can be part of)."""
    checks = _resource_checks(request, worker.capacity, exact=True)
    if request.n_nodes > 0:
        ok = n_workers >= request.n_nodes
        checks.append(Check("nodes", "nodes", str(n_workers), str(request.n_nodes), ok))
    checks += _time_check(request, worker.time_left)
    checks += _tag_check(worker.filter_tags, tags)
    return Verdict(str(worker.id), tuple(checks))


def check_queue(offer: QueueOffer, request: ResourceRequest, tags: frozenset[str]) -> Verdict:
    checks = _resource_checks(request, offer.capacity, offer.exact)
    if request.n_nodes > 0:
        width = offer.workers_per_alloc
        checks.append(
            Check("nodes", "nodes", str(width), str(request.n_nodes), width >= request.n_nodes)
        )
    checks += _time_check(request, offer.time_limit)
    checks += _tag_check(offer.filter_tags, tags)
    return Verdict(f"queue {offer.queue_id}", tuple(checks))


def explain(
    request: ResourceRequest,
    tags: frozenset[str],
    workers: Sequence[WorkerShape],
    offers: Sequence[QueueOffer],
) -> tuple[list[Verdict], list[Verdict]]:
    """The verdicts for every connected worker and every queue."""
    # A multi-node task needs that many workers it may run on (by their filter tags) in one
    # group: workers of two 1-worker allocations never run a 2-node task together.
    per_group: Counter[str] = Counter()
    if request.n_nodes:
        per_group.update(w.group for w in workers if runs(w.filter_tags, tags))
    return (
        [check_worker(w, request, tags, per_group[w.group]) for w in workers],
        [check_queue(o, request, tags) for o in offers],
    )


def shortfall(
    request: ResourceRequest,
    tags: frozenset[str],
    workers: Sequence[WorkerShape],
    offers: Sequence[QueueOffer],
) -> str | None:
    """None if some worker or queue could run the task (or there is none to ask yet: a task
    submitted before its workers start is the usual case); else why not, against the closest
    queue (the fewest failed checks, then the lowest id) or, with no queue, the closest worker.
    """
    if not workers and not offers:
        return None
    worker_verdicts, queue_verdicts = explain(request, tags, workers, offers)
    if any(v.runnable for v in worker_verdicts) or any(v.runnable for v in queue_verdicts):
        return None
    named = {f"queue {o.queue_id}": f'queue {o.queue_id} "{o.name}"' for o in offers}
    pool = queue_verdicts or worker_verdicts
    closest = min(pool, key=lambda v: len(v.failed()))
    who = named.get(closest.who, f"worker {closest.who}")
    parts = []
    for c in closest.failed():
        if c.kind == "resource":
            parts.append(f"needs {c.name} {c.request}; {who} gives {c.provides}")
        elif c.kind == "time":
            parts.append(f"needs {c.request} of worker time; {who} gives {c.provides}")
        elif c.kind == "nodes":
            if queue_verdicts:
                widest = max(o.workers_per_alloc for o in offers)
                parts.append(f"needs {c.request} nodes; the widest queue gives {widest}")
            else:
                parts.append(f"needs {c.request} nodes; {c.provides} worker(s) could take it")
        else:
            lacks = missing(frozenset(c.provides.split(",")), tags)
            tagged = "no tags" if not tags else "tags " + ",".join(sorted(tags))
            parts.append(
                f"has {tagged}; no worker or queue runs it ({who} filters for {','.join(lacks)})"
            )
    return "; ".join(parts)
