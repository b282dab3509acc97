"""Concurrency pools (StepUp's `pool(name, size)`): at most `size` tasks of a pool hold a slot
at once, across all workers.

A task holds a slot from the moment it is assigned to a worker (prefilled tasks too, so prefill
never oversubscribes a pool) until its worker releases it (finished, failed, canceled, lost).
Resizing changes only how many may start next; a running task is never stopped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hqpy.common.errors import RequestError

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
MAX_POOL_SIZE = 2**31 - 1


class Pool:
    __slots__ = ("name", "size", "active")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.active = 0
        """Tasks of the pool assigned to a worker now (running or queued ahead on it)."""

    def free(self) -> int:
        """Slots a new task may take now (0 while the pool is full or was shrunk below use)."""
        return max(0, self.size - self.active)


def pool_full(pool: Pool | None) -> bool:
    """May no task of this pool start now? (No pool: never full.)"""
    return pool is not None and pool.active >= pool.size


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise RequestError(
            f"invalid pool name {name!r}: use 1-64 letters, digits or _.- (e.g. licenses)"
        )
    return name


def check_size(size: int) -> int:
    if size < 1 or size > MAX_POOL_SIZE:
        raise RequestError(
            f"invalid pool size {size}: use 1 to {MAX_POOL_SIZE} (tasks it runs at once)"
        )
    return size


class PoolTable:
    """The server's pools by name."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}

    def set(self, name: str, size: int) -> Pool:
        """Create a pool or resize it; RequestError for a bad name or size."""
        check_name(name)
        check_size(size)
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = Pool(name, size)
        else:
            pool.size = size
        return pool

    def get(self, name: str) -> Pool:
        """The pool for `hq submit --pool NAME`; RequestError says how to create a missing one."""
        pool = self.pools.get(name)
        if pool is None:
            raise RequestError(
                f"Pool {name!r} does not exist; create it with: hq pool set {name} SIZE"
            )
        return pool

    def remove(self, name: str, waiting: Callable[[Pool], int]) -> None:
        """Drop an idle pool; RequestError while tasks of it wait or run (they would be left
        with no limit, or with a pool that no longer exists)."""
        pool = self.pools.get(name)
        if pool is None:
            raise RequestError(f"Pool {name!r} does not exist")
        waiting_now = waiting(pool)
        if pool.active or waiting_now:
            raise RequestError(
                f"Pool {name!r} still has {pool.active} running and {waiting_now} waiting task(s); "
                "remove it once they end (or cancel their jobs)"
            )
        del self.pools[name]
