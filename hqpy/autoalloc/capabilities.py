"""Optional abilities a backend may have beyond `BatchBackend`.

The allocator asks for them with `isinstance` against these runtime-checkable protocols (never
by probing attribute names), so a backend opts in by defining the method, typed as here. Today
the local backend has all three; Slurm and PBS have none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class ChecksScript(Protocol):
    async def check_script(self, script: Path) -> None:
        """The dry run without a submission (`bash -n` for local); raises `BackendError`."""
        ...


@runtime_checkable
class MarksStarted(Protocol):
    def mark_started(self, allocation_id: str) -> None:
        """A worker of the allocation registered: the backend may now call it running."""
        ...


@runtime_checkable
class CancelsAll(Protocol):
    async def cancel_all(self) -> None:
        """End every allocation the backend still runs (on server stop, as a last sweep)."""
        ...
