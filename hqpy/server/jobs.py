"""Jobs, task groups and tasks, stored compactly.

A job is made of task groups, one per submit. A group keeps its task ids as an `IdSet` and hands
out tasks from a cursor; a `Task` object exists only once a task has been touched (assigned,
canceled one by one, ...). So a million-task array costs a few objects until it runs, and a
task that finished cleanly gives its object up again: its group keeps its times and host in
columns (`retire`), about 20 bytes a task instead of some 300.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator

import trio

from hqpy.common.idset import IdSet
from hqpy.common.states import JobState, TaskState, job_state
from hqpy.protocol.messages import TaskBody
from hqpy.server.pools import Pool


class Task:
    """A touched task. `worker_id` is set while it is assigned to a worker."""

    __slots__ = (
        "id",
        "group",
        "state",
        "instance_id",
        "crash_count",
        "worker_id",
        "started_at",
        "ended_at",
        "error",
        "hostname",
        "nodes",
        "history",
    )

    def __init__(self, task_id: int, group: TaskGroup) -> None:
        self.id = task_id
        self.group = group
        self.state = TaskState.WAITING
        self.instance_id = 0
        self.crash_count = 0
        self.worker_id: int | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.hostname: str | None = None
        self.nodes: tuple[tuple[int, str], ...] | None = None
        """Multi-node tasks: (worker id, host) of each of its workers, root first."""
        self.history: list[tuple[int, str]] | None = None
        """Earlier instances that ended without a result: (instance id, why), bounded."""


class TaskGroup:
    """The tasks of one submit: they share a body, a priority and a resource request."""

    __slots__ = (
        "body",
        "ids",
        "entries",
        "crash_limit",
        "index",
        "entry_offset",
        "_cursor",
        "untouched",
        "untouched_state",
        "requeued",
        "duration_sum",
        "duration_count",
        "_rank_starts",
        "_rank_before",
        "_done",
        "_done_started",
        "_done_ended",
        "_done_host",
        "_done_instance",
        "_hosts",
        "_host_names",
        "paths",
        "tags",
        "pool",
    )

    def __init__(
        self,
        body: TaskBody,
        ids: IdSet,
        entries: list[str] | None,
        crash_limit: int,
        index: int,
        entry_offset: int = 0,
    ) -> None:
        self.body = body
        self.ids = ids
        self.entries = entries
        self.crash_limit = crash_limit
        self.index = index
        self.entry_offset = entry_offset
        """Task `entry_offset + i` has entry `i` (tasks added to an open job after others)."""
        self._cursor: Iterator[int] = iter(ids)
        self.untouched = len(ids)
        """Tasks never materialised; they are in `untouched_state`."""
        self.untouched_state = TaskState.WAITING
        self.requeued: deque[Task] = deque()
        """Waiting tasks that already exist (their worker was lost); they go first."""
        self.duration_sum = 0.0
        self.duration_count = 0
        self._rank_starts: list[int] | None = None
        self._rank_before: list[int] = []
        self._done: bytearray | None = None
        """Per task position: 1 if the task finished and was retired into the columns."""
        self._done_started = array("d")
        self._done_ended = array("d")
        self._done_host = array("I")
        self._done_instance: dict[int, int] = {}
        self._hosts: dict[str, int] = {}
        self._host_names: list[str] = []
        self.paths: object = None
        """The views' compiled path templates of this group (built on first use)."""
        self.tags: frozenset[str] = frozenset(body.tags)
        self.pool: Pool | None = None
        """The concurrency pool its tasks take a slot of while assigned (`--pool`)."""

    @property
    def group_id(self) -> int:
        return self.body.group_id

    @property
    def priority(self) -> int:
        return self.body.priority

    def has_waiting(self) -> bool:
        return bool(self.requeued) or (
            self.untouched > 0 and self.untouched_state is TaskState.WAITING
        )

    def waiting_count(self) -> int:
        """About how many tasks wait (requeued ones may since have been canceled)."""
        untouched = self.untouched if self.untouched_state is TaskState.WAITING else 0
        return len(self.requeued) + untouched

    def take(self, job: Job) -> Task | None:
        """The next waiting task, materialised."""
        while self.requeued:
            task = self.requeued.popleft()
            if task.state is TaskState.WAITING and task.worker_id is None:
                return task
        if self.untouched_state is not TaskState.WAITING:
            return None
        done = self._done
        for task_id in self._cursor:
            # Skip tasks already made (ahead of the cursor: restored from a journal), also
            # those that have finished since and gave up their object.
            if task_id in job.tasks or (done is not None and done[self._rank(task_id)]):
                continue
            self.untouched -= 1
            task = Task(task_id, self)
            job.tasks[task_id] = task
            return task
        return None

    def _rank(self, task_id: int) -> int:
        """The position of a task id in `ids` (O(log runs))."""
        runs = self.ids.runs()
        if self._rank_starts is None:
            before, n = [], 0
            for run in runs:
                before.append(n)
                n += len(range(*run))
            self._rank_starts = [run[0] for run in runs]
            self._rank_before = before
        i = bisect_right(self._rank_starts, task_id) - 1
        start, _, step = runs[i]
        return self._rank_before[i] + (task_id - start) // step

    def retire(self, task: Task) -> None:
        """Keep a cleanly finished task in columns; the caller drops its object."""
        if self._done is None:
            n = len(self.ids)
            self._done = bytearray(n)
            self._done_started = array("d", bytes(8 * n))
            self._done_ended = array("d", bytes(8 * n))
            self._done_host = array("I", bytes(4 * n))
        pos = self._rank(task.id)
        self._done[pos] = 1
        started, ended = task.started_at, task.ended_at
        self._done_started[pos] = math.nan if started is None else started
        self._done_ended[pos] = math.nan if ended is None else ended
        host = task.hostname
        if host is not None:
            index = self._hosts.get(host)
            if index is None:
                self._host_names.append(host)
                index = self._hosts[host] = len(self._host_names)
            self._done_host[pos] = index
        if task.instance_id:
            self._done_instance[task.id] = task.instance_id

    def retired(self, task_id: int) -> Task | None:
        """A finished task's record as a (fresh, unlinked) object, if it was retired."""
        if self._done is None:
            return None
        pos = self._rank(task_id)
        if not self._done[pos]:
            return None
        task = Task(task_id, self)
        task.state = TaskState.FINISHED
        task.instance_id = self._done_instance.get(task_id, 0)
        started, ended = self._done_started[pos], self._done_ended[pos]
        task.started_at = None if math.isnan(started) else started
        task.ended_at = None if math.isnan(ended) else ended
        index = self._done_host[pos]
        if index:
            task.hostname = self._host_names[index - 1]
        return task

    def materialise(self, job: Job, task_id: int) -> Task:
        """The task object for `task_id`, creating it in the untouched state if needed."""
        task = job.tasks.get(task_id)
        if task is None:
            task = Task(task_id, self)
            task.state = self.untouched_state
            self.untouched -= 1
            job.tasks[task_id] = task
        return task

    def close_untouched(self, state: TaskState) -> int:
        """Move every untouched task to `state` (cancel, abort); returns how many."""
        if self.untouched_state is not TaskState.WAITING:
            return 0
        self.untouched_state = state
        n = self.untouched
        return n

    def entry(self, task_id: int) -> str | None:
        if self.entries is None:
            return None
        return self.entries[task_id - self.entry_offset]

    def mean_duration(self) -> float | None:
        if self.duration_count == 0:
            return None
        return self.duration_sum / self.duration_count


class Job:
    __slots__ = (
        "id",
        "name",
        "max_fails",
        "is_open",
        "groups",
        "tasks",
        "counts",
        "submitted_at",
        "started_at",
        "finished_at",
        "cancel_reason",
        "submit_dir",
        "waiters",
        "hostnames",
    )

    def __init__(
        self, job_id: int, name: str, max_fails: int | None, is_open: bool, now: float
    ) -> None:
        self.id = job_id
        self.name = name
        self.max_fails = max_fails
        self.is_open = is_open
        self.groups: list[TaskGroup] = []
        self.tasks: dict[int, Task] = {}
        self.counts = [0] * len(TaskState)
        self.submitted_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_reason: str | None = None
        self.submit_dir = ""
        self.waiters: list[trio.Event] = []
        self.hostnames: dict[str, None] = {}

    @property
    def task_count(self) -> int:
        return sum(len(g.ids) for g in self.groups)

    def max_task_id(self) -> int | None:
        return max((g.ids.max() for g in self.groups if g.ids), default=None)

    def task_ids(self) -> IdSet:
        ids = IdSet.from_ids(())
        for g in self.groups:
            ids = ids.union(g.ids)
        return ids

    def is_unfinished(self) -> bool:
        return self.counts[TaskState.WAITING] + self.counts[TaskState.RUNNING] > 0

    def is_complete(self, ignore_open: bool = False) -> bool:
        return (ignore_open or not self.is_open) and not self.is_unfinished()

    def state(self) -> JobState:
        """The job's state as HyperQueue names it."""
        return job_state(self.counts, self.is_open)

    def move(self, task: Task, state: TaskState) -> None:
        self.counts[task.state] -= 1
        self.counts[state] += 1
        task.state = state

    def iter_tasks(self, ids: IdSet | None = None) -> Iterator[tuple[int, TaskGroup, Task | None]]:
        """Every task (or those in `ids`) in id order, with its object when it has one."""
        tasks = self.tasks
        for g in self.groups:
            for task_id in g.ids if ids is None else g.ids.intersection(ids):
                task = tasks.get(task_id)
                yield task_id, g, task if task is not None else g.retired(task_id)

    def retire(self, task: Task) -> None:
        """A task that finished cleanly (no error, no crash) gives up its object."""
        if (
            task.error is None
            and task.crash_count == 0
            and task.worker_id is None
            and task.nodes is None
            and task.history is None
        ):
            task.group.retire(task)
            del self.tasks[task.id]

    def notify_waiters(self) -> None:
        for ev in self.waiters:
            ev.set()
        self.waiters.clear()


def sort_key(group: TaskGroup) -> tuple[int, int, int]:
    """Higher priority first, then submission order."""
    return (-group.priority, group.body.job_id, group.group_id)
