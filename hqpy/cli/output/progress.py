"""The progress bar of `submit --progress`, `job progress` and `job wait --progress`.

Pure rendering: the caller polls the server and passes what it saw, so that the text (elapsed
time, estimate, why nothing runs) is tested without processes. A bar that says `0/N, 0 running`
for minutes must say what it waits for: usually allocations queued in a batch system.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hqpy.common.durations import format_duration
from hqpy.protocol import messages as m

WIDTH = 40


@attrs.frozen
class QueueWait:
    """One allocation queue as the bar reports it."""

    queue_id: int
    manager: str
    queued_allocations: int
    paused: bool = False
    pending_reason: str | None = None
    """The batch system's reason (`Resources`, `Priority`), when the allocator knows it."""


@attrs.frozen
class WaitContext:
    """What the cluster side looks like while tasks wait (gathered now and then, not each frame)."""

    connected_workers: int
    queues: tuple[QueueWait, ...] = ()


@attrs.define
class RateEstimate:
    """Estimates the time left from the tasks that ended since the bar started.

    The first observation is the baseline, so `job progress` on a half-done job does not count
    tasks that ended before it started watching."""

    start: float | None = None
    done_at_start: int = 0

    def observe(self, now: float, done: int, total: int) -> float | None:
        """Seconds left, or None until a task has ended while watching."""
        if self.start is None:
            self.start = now
            self.done_at_start = done
            return None
        ended = done - self.done_at_start
        if ended <= 0 or done >= total:
            return None
        return (now - self.start) / ended * (total - done)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def waiting_line(context: WaitContext | None) -> str | None:
    """`waiting for workers: ...` when it can say why; None when it knows nothing useful."""
    if context is None:
        return None
    parts = []
    for q in context.queues:
        if q.queued_allocations:
            part = f"{_plural(q.queued_allocations, 'allocation')} queued in {q.manager}"
            if q.pending_reason:
                part += f" ({q.pending_reason})"
            parts.append(part)
    paused = [q for q in context.queues if q.paused]
    if paused:
        ids = ", ".join(str(q.queue_id) for q in paused)
        parts.append(f"{'queue' if len(paused) == 1 else 'queues'} {ids} paused")
    if parts:
        return "waiting for workers: " + ", ".join(parts)
    if context.connected_workers == 0:
        if context.queues:
            return "waiting for workers: no worker connected, no allocation queued yet"
        return "waiting for workers: no worker connected and no allocation queue"
    return None


def render_progress(
    jobs: Sequence[m.JobView],
    elapsed: float | None,
    left: float | None = None,
    context: WaitContext | None = None,
) -> list[str]:
    """The bar line, and a `waiting for workers` line while tasks wait and none runs."""
    total = sum(j.task_count for j in jobs)
    stats = [j.task_stats for j in jobs]
    done = sum(s.finished + s.failed + s.canceled + s.aborted for s in stats)
    running = sum(s.running for s in stats)
    failed = sum(s.failed for s in stats)
    waiting = sum(s.waiting for s in stats)
    filled = min(WIDTH, int(WIDTH * done / total)) if total else WIDTH
    bar = "#" * filled + "." * (WIDTH - filled)
    line = f"[{bar}] {done}/{total} tasks done, {running} running, {failed} failed"
    if elapsed is not None:
        line += f", elapsed {format_duration(int(max(0.0, elapsed)))}"
    if left is not None and done < total:
        line += f", about {format_duration(max(1, round(left)))} left"
    lines = [line]
    if running == 0 and waiting > 0:
        why = waiting_line(context)
        if why is not None:
            lines.append(why)
    return lines
