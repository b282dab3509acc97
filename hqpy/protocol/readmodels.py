"""Read models: what the request handlers, the metrics and the status page may see of the
allocator, as protocol views. The allocator implements them; the readers depend only on this."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from hqpy.protocol import messages as m


class AllocatorReadModel(Protocol):
    def queue_views(self, include_removed: bool = False) -> list[m.QueueView]:
        """Queues by id; removed ones only when asked (the status page keeps their events)."""
        ...

    def allocation_views(self, queue_id: int) -> list[m.AllocationView]:
        """Every allocation the queue ever had, in submission order."""
        ...

    def event_views(self, queue_id: int, after: int = 0) -> list[m.AllocEventView]:
        """The queue's kept events whose sequence number is `after` or more (0: all kept)."""
        ...


RequestHandler = Callable[[Any], Awaitable[Any]]
"""Answers one kind of client request (the table key says which) with a `ClientResponse`.
`Any` because a table maps each request class to its own handler type, which Python's typing
cannot say per key; the table is built from handlers typed exactly."""

HandlerTable = Mapping[type[Any], RequestHandler]
