"""Recent task runs for the status page: which task ran on which worker and when, tasks ended per
minute, and the latest failures with their errors.

Fed by the hub's `TaskEnded` events (the server core keeps no history); everything is bounded:
a ring buffer of runs, one of failures, and a fixed window of per-minute counts, so a
million-task array costs the same memory as a small one.
"""

from __future__ import annotations

import collections
import math

import attrs

from hqpy.common.events import EventHub, TaskEnded
from hqpy.common.jsontypes import JsonOutObject
from hqpy.common.states import TaskState

MAX_RUNS = 2000
"""Runs kept for the task stream (newest); the page draws those of the shown workers."""
MAX_FAILURES = 200
MAX_ERROR_CHARS = 300
MINUTES = 60
"""The per-minute chart covers the last hour."""
MAX_FAILURES_PER_JOB = 10


@attrs.frozen
class TaskRun:
    job_id: int
    task_id: int
    worker_id: int | None
    state: str
    started_at: float | None
    ended_at: float
    error: str | None = None


class TaskStream:
    """Subscribes to `TaskEnded`; `snapshot` gives the page its part of `/api/status`."""

    def __init__(self, hub: EventHub | None = None) -> None:
        self.runs: collections.deque[TaskRun] = collections.deque(maxlen=MAX_RUNS)
        self.failures: collections.deque[TaskRun] = collections.deque(maxlen=MAX_FAILURES)
        self.per_minute: dict[int, list[int]] = {}
        """Minute (epoch seconds // 60) -> [finished, failed]; only the last `MINUTES` kept."""
        self.newest_minute = -(2**62)
        if hub is not None:
            hub.subscribe(TaskEnded, self.on_task_ended)

    def on_task_ended(self, event: TaskEnded) -> None:
        if event.ended_at is None or not math.isfinite(event.ended_at):
            return
        error = event.error
        if error is not None and len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        run = TaskRun(
            event.job_id,
            event.task_id,
            event.worker_id,
            event.state.label,
            event.started_at,
            event.ended_at,
            error,
        )
        self.runs.append(run)
        failed = event.state is TaskState.FAILED
        if failed:
            self.failures.append(run)
        minute = int(event.ended_at // 60)
        self.newest_minute = max(self.newest_minute, minute)
        if minute <= self.newest_minute - MINUTES:
            return  # older than the charted hour (a late report)
        counts = self.per_minute.setdefault(minute, [0, 0])
        counts[1 if failed else 0] += 1
        if len(self.per_minute) > MINUTES:
            for old in [k for k in self.per_minute if k <= self.newest_minute - MINUTES]:
                del self.per_minute[old]

    def snapshot(self, now: float, worker_ids: set[int], job_ids: set[int]) -> JsonOutObject:
        """The runs of the shown workers, per-minute counts of the last hour (zeros filled in),
        and the newest failures of the shown jobs."""
        runs = [
            _run_json(r) for r in self.runs if r.worker_id is not None and r.worker_id in worker_ids
        ]
        last = int(now // 60)
        minutes = [
            {"minute": minute * 60, "finished": c[0], "failed": c[1]}
            for minute in range(last - MINUTES + 1, last + 1)
            for c in [self.per_minute.get(minute, [0, 0])]
        ]
        failures: dict[str, list[JsonOutObject]] = {}
        for r in reversed(self.failures):
            if r.job_id in job_ids:
                shown = failures.setdefault(str(r.job_id), [])
                if len(shown) < MAX_FAILURES_PER_JOB:
                    shown.append(_run_json(r))
        return {"runs": runs, "per_minute": minutes, "failures": failures}


def _run_json(r: TaskRun) -> JsonOutObject:
    return {
        "job": r.job_id,
        "task": r.task_id,
        "worker": r.worker_id,
        "state": r.state,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "error": r.error,
    }
