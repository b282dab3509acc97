"""The contracts between the server core and the allocator, as read models.

The allocator reads the work that waits (`DemandSource`); the server's fit check reads what each
queue's workers could give a task (`QueueOffers`). `hqpy.app` wires one to the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from hqpy.common.resources import ResourceRequest


@attrs.frozen
class WaitingWork:
    """Waiting tasks that share one resource request (one task group's waiting part)."""

    request: ResourceRequest
    count: int
    tags: frozenset[str] = frozenset()
    """The tasks' tags: only queues whose filter tags they all carry count them as demand."""


class DemandSource(Protocol):
    def waiting_work(self) -> list[WaitingWork]:
        """Tasks that wait for a worker, grouped by request; the scheduler has already placed
        what running workers can take."""
        ...

    def schedule_now(self) -> None:
        """Place waiting tasks on running workers now, so only what is left counts as demand."""
        ...


@attrs.frozen
class QueueOffer:
    """What a worker of one queue could give a task, for the fit check and `hq task explain`."""

    queue_id: int
    name: str
    manager: str
    capacity: Mapping[str, int] | None
    """Amount of each resource one worker has (1/10,000 units): declared with `--cpus` /
    `--resource` / `memory`, or learned from the queue's latest worker; None while unknown."""
    exact: bool
    """`capacity` was learned from a real worker: a resource it lacks, it does not have."""
    time_limit: float
    """Seconds a worker of the queue lives (its allocation's walltime)."""
    workers_per_alloc: int
    """The widest group of workers one allocation gives (for multi-node tasks)."""
    filter_tags: frozenset[str] = frozenset()
    paused: bool = False


class QueueOffers(Protocol):
    def queue_offers(self) -> list[QueueOffer]:
        """Every queue that is not removed, in id order."""
        ...
