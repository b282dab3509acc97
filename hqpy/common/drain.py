"""The contract through which the allocator ends an allocation without losing work.

The allocator decides when (`hq alloc drain`, `alloc remove --force`); the server core owns the
workers and their tasks. `hqpy.app` wires one to the other."""

from __future__ import annotations

from typing import Protocol

DRAINED = "allocation drained"
WALLTIME = "walltime reached"
REMOVED = "allocation removed"
LOST = "worker lost"
STOPPED = "worker stopped"
"""Why a task's instance ended without a result (`task info`, JSON `instances`)."""


class AllocationControl(Protocol):
    def drain(self, allocation_id: str) -> None:
        """The allocation's workers take no new task; tasks queued on them but not started go
        back to waiting; a worker that holds no task is stopped at once."""
        ...

    def busy(self, allocation_id: str) -> int:
        """How many tasks the allocation's live workers still hold."""
        ...

    def hand_back(self, allocation_id: str, reason: str, stop: bool = True) -> None:
        """The allocation's workers end on purpose: their tasks go back to waiting with a new
        instance, recorded with `reason` and not counted as crashes. With `stop`, the server
        stops them now; else when the batch system kills them (a cancel under way)."""
        ...
