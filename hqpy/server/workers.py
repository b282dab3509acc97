"""The server's record of a worker: its configuration, capacity and the tasks it holds."""

from __future__ import annotations

from typing import Protocol

from hqpy.common.resources import ALL
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol.messages import ToWorker, WorkerConfiguration
from hqpy.server.jobs import Task


class Outbox(Protocol):
    """Where the server core puts messages for one worker (a trio memory channel); its
    session sends them."""

    def send_nowait(self, message: ToWorker) -> None: ...


STOP_REASONS = {
    "stopped": WorkerState.STOPPED,
    "idle-timeout": WorkerState.IDLE_TIMEOUT,
    "time-limit": WorkerState.TIME_LIMIT_REACHED,
}


class Worker:
    def __init__(
        self, worker_id: int, config: WorkerConfiguration, now: float, outbox: Outbox | None = None
    ) -> None:
        self.id = worker_id
        self.config = config
        self.state: WorkerState = WorkerState.RUNNING
        self.started_at = now
        self.ended_at: float | None = None
        self.capacity = {r.name: r.capacity() for r in config.resources}
        self.assigned: dict[str, int] = {}
        self.tasks: dict[tuple[int, int], Task] = {}
        self.running = 0
        self.last_task_started: float | None = None
        self.last_heartbeat = now
        self.idle_since: float | None = now
        self.deadline = None if config.time_limit is None else now + config.time_limit
        self.filter_tags: frozenset[str] = frozenset(config.filter_tags)
        """A task runs here only if it carries all of these (`runs`); empty: any task."""
        self.known_groups: set[int] = set()
        self.stop_reason: str | None = None
        """Set when the server asked the worker to stop, or the worker said it is stopping."""
        self.draining = False
        """Its allocation is being drained: it takes no new task (see `drain`)."""
        self.handback: str | None = None
        """Set when its allocation ends on purpose: why its tasks go back (not a crash)."""
        self.mn_task: tuple[int, int] | None = None
        """(job id, task id) of the multi-node task this worker is held for (see `multinode`)."""
        self.outbox = outbox
        """Where messages for the worker go (a trio memory channel); None in pure tests."""

    def takes(self, tags: frozenset[str]) -> bool:
        """Does it run tasks with these tags? (`common.tags.runs`, with the common case of a
        worker without filter tags first: the scheduler asks this per worker and task group.)"""
        return not self.filter_tags or self.filter_tags <= tags

    @property
    def is_running(self) -> bool:
        return self.state is WorkerState.RUNNING and self.stop_reason is None

    def _add(self, task: Task, sign: int) -> None:
        for entry in task.group.body.request.entries:
            amount = self.capacity.get(entry.resource, 0) if entry.amount == ALL else entry.amount
            self.assigned[entry.resource] = self.assigned.get(entry.resource, 0) + sign * amount

    def assign(self, task: Task) -> None:
        task.worker_id = self.id
        self.tasks[(task.group.body.job_id, task.id)] = task
        self._add(task, 1)
        pool = task.group.pool
        if pool is not None:
            pool.active += 1
        self.idle_since = None

    def release(self, task: Task, now: float) -> None:
        if self.tasks.pop((task.group.body.job_id, task.id), None) is None:
            return
        if task.state is TaskState.RUNNING:
            self.running -= 1
        self._add(task, -1)
        pool = task.group.pool
        if pool is not None:
            pool.active -= 1
        task.worker_id = None
        if not self.tasks:
            self.idle_since = now
