"""Tunables of the allocator, with HyperQueue's names and defaults.

The three intervals are the *longest* waits: the allocator also wakes within milliseconds when a
job is submitted, a worker connects or is lost, or a queue is added or resumed.
"""

from __future__ import annotations

import os

import attrs


def _ms(name: str, default_ms: int) -> float:
    value = os.environ.get(name)
    if not value:
        return default_ms / 1000
    try:
        return max(int(value), 1) / 1000
    except ValueError:
        raise ValueError(f"{name} must be a whole number of milliseconds, not `{value}`") from None


@attrs.frozen
class AutoAllocConfig:
    refresh_interval: float = 30 * 60.0
    """How often the batch system is polled for the status of running allocations (a safety
    net: their workers' connections are the truth)."""
    queued_refresh_interval: float = 30.0
    """How often queued allocations are polled (one batched query per queue): an allocation
    that ends before any worker registered, and whose exit trap could not report, is noticed
    within this time. hqpy's own; HyperQueue polls every allocation every 30 minutes."""
    max_schedule_delay: float = 30.0
    """The longest time between two submit passes."""
    tick_interval: float = 5.0
    """How often the loop checks its timers."""
    max_allocation_fails: int = 3
    """Failed allocations in a row before the queue pauses itself."""
    command_timeout: float = 30.0
    """The longest any batch command (`sbatch`, `squeue`, `qsub`, ...) may take."""
    debounce: float = 0.005
    """Events that arrive together cause one submit pass."""
    withdraw_grace: float = 60.0
    """How long a queued allocation may go without demand before it is withdrawn (cancelled
    in the batch system). hqpy's own: HyperQueue leaves such allocations queued."""

    @classmethod
    def from_env(cls) -> AutoAllocConfig:
        fails = os.environ.get("HQ_AUTOALLOC_MAX_ALLOCATION_FAILS")
        try:
            max_fails = int(fails) if fails else 3
        except ValueError:
            raise ValueError(
                f"HQ_AUTOALLOC_MAX_ALLOCATION_FAILS must be a whole number, not `{fails}`"
            ) from None
        return cls(
            refresh_interval=_ms("HQ_AUTOALLOC_REFRESH_INTERVAL_MS", 30 * 60 * 1000),
            queued_refresh_interval=_ms("HQPY_AUTOALLOC_QUEUED_REFRESH_INTERVAL_MS", 30_000),
            max_schedule_delay=_ms("HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS", 30_000),
            tick_interval=_ms("HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS", 5_000),
            max_allocation_fails=max(max_fails, 1),
            withdraw_grace=_ms("HQPY_AUTOALLOC_WITHDRAW_GRACE_MS", 60_000),
        )
