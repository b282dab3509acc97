"""What the allocator needs to know of the server: the work that waits, as a read model."""

from __future__ import annotations

from typing import Protocol

import attrs

from hqpy.common.resources import ResourceRequest


@attrs.frozen
class WaitingWork:
    """Waiting tasks that share one resource request (one task group's waiting part)."""

    request: ResourceRequest
    count: int


class DemandSource(Protocol):
    def waiting_work(self) -> list[WaitingWork]:
        """Tasks that wait for a worker, grouped by request; the scheduler has already placed
        what running workers can take."""
        ...

    def schedule_now(self) -> None:
        """Place waiting tasks on running workers now, so only what is left counts as demand."""
        ...
