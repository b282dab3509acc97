"""What clients, the metrics and the status page see of the server: protocol views built from
the core's objects. Nothing here changes state; `ServerState` owns every transition."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from hqpy.common.idset import IdSet
from hqpy.common.placeholders import _PLACEHOLDER_RE
from hqpy.common.states import JobState, TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import JobSummary, WorkerSummary
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker

MAX_FAILED_SHOWN = 5
"""`job info` shows the errors of this many failed tasks."""


def job_view(job: Job) -> m.JobView:
    c = job.counts
    return m.JobView(
        id=job.id,
        name=job.name,
        task_count=job.task_count,
        task_stats=m.TaskStats(
            waiting=c[TaskState.WAITING],
            running=c[TaskState.RUNNING],
            finished=c[TaskState.FINISHED],
            failed=c[TaskState.FAILED],
            canceled=c[TaskState.CANCELED],
            aborted=c[TaskState.ABORTED],
        ),
        is_open=job.is_open,
        cancel_reason=job.cancel_reason,
    )


Piece = tuple[bool, str]
"""`(True, NAME)`: the per-task value of a placeholder; `(False, TEXT)`: text as it is."""

_PER_TASK = ("TASK_ID", "INSTANCE_ID", "CWD")


def _compile(template: str, fixed: dict[str, str], names: tuple[str, ...]) -> list[Piece]:
    """A path template split once, with the group's own values already in: filling it per
    task is a join, not a regex pass (`TaskBody.resolve_paths` gives the same text)."""
    pieces: list[Piece] = []
    text = []
    pos = 0
    for match in _PLACEHOLDER_RE.finditer(template):
        text.append(template[pos : match.start()])
        name = match[1]
        if name in fixed:
            text.append(fixed[name])
        elif name in names:
            pieces.append((False, "".join(text)))
            text = []
            pieces.append((True, name))
        else:
            text.append(match[0])
        pos = match.end()
    text.append(template[pos:])
    pieces.append((False, "".join(text)))
    return [p for p in pieces if p[0] or p[1]]


def _format(pieces: list[Piece]) -> str:
    """The pieces as a `str.format_map` template: filling it is one C call per path (a page of
    20,000 task views fills 40,000 paths)."""
    return "".join(
        f"{{{text}}}" if per_task else text.replace("{", "{{").replace("}", "}}")
        for per_task, text in pieces
    )


class _Paths:
    """The cwd, stdout and stderr templates of one group, compiled."""

    __slots__ = ("cwd", "stdout", "stderr")

    def __init__(self, body: m.TaskBody) -> None:
        fixed = {
            "JOB_ID": str(body.job_id),
            "SUBMIT_DIR": body.submit_dir,
            "SERVER_UID": body.server_uid,
        }
        self.cwd = _format(_compile(body.cwd, fixed, _PER_TASK[:2]))
        self.stdout = (
            None if body.stdout is None else _format(_compile(body.stdout, fixed, _PER_TASK))
        )
        self.stderr = (
            None if body.stderr is None else _format(_compile(body.stderr, fixed, _PER_TASK))
        )

    def resolve(self, task_id: int, instance_id: int) -> tuple[str, str | None, str | None]:
        values: dict[str, object] = {"TASK_ID": task_id, "INSTANCE_ID": instance_id}
        cwd = self.cwd.format_map(values)
        values["CWD"] = cwd
        out = None if self.stdout is None else self.stdout.format_map(values)
        err = None if self.stderr is None else self.stderr.format_map(values)
        return cwd, out, err


def task_paths(
    group: TaskGroup, task_id: int, instance_id: int
) -> tuple[str, str | None, str | None]:
    """A task's cwd, stdout and stderr, as `group.body.resolve_paths` gives them."""
    paths = group.paths
    if not isinstance(paths, _Paths):
        paths = group.paths = _Paths(group.body)
    return paths.resolve(task_id, instance_id)


def task_view(group: TaskGroup, task_id: int, task: Task | None) -> m.TaskView:
    if task is None:
        return m.TaskView(id=task_id, state=group.untouched_state, group=group.index)
    paths = task_paths(group, task_id, task.instance_id)
    return m.TaskView(
        id=task_id,
        state=task.state,
        instance_id=task.instance_id,
        workers=(
            tuple(h for _, h in task.nodes)
            if task.nodes
            else ((task.hostname,) if task.hostname else ())
        ),
        started_at=task.started_at,
        ended_at=task.ended_at,
        error=task.error,
        cwd=paths[0],
        stdout=paths[1],
        stderr=paths[2],
        crash_count=task.crash_count,
        group=group.index,
        nodes=tuple(i for i, _ in task.nodes) if task.nodes else (),
        instances=tuple(task.history) if task.history else (),
    )


def job_detail(job: Job, include_tasks: bool) -> m.JobDetailView:
    failed_ids = sorted(t.id for t in job.tasks.values() if t.state is TaskState.FAILED)
    failed = []
    for task_id in failed_ids[:MAX_FAILED_SHOWN]:
        task = job.tasks[task_id]
        failed.append(task_view(task.group, task_id, task))
    tasks = None
    if include_tasks:
        tasks = tuple(task_view(g, tid, t) for tid, g, t in job.iter_tasks())
    return m.JobDetailView(
        info=job_view(job),
        submits=tuple(
            m.SubmitView(
                ids=str(g.ids),
                args=g.body.args,
                env=g.body.env,
                cwd=g.body.cwd,
                stdout=g.body.stdout,
                stderr=g.body.stderr,
                request=g.body.request,
                priority=g.body.priority,
                time_limit=g.body.time_limit,
                crash_limit=g.crash_limit,
                task_dir=g.body.task_dir,
                has_entries=g.entries is not None,
                tags=g.body.tags,
                pool=g.body.pool,
            )
            for g in job.groups
        ),
        submitted_at=job.submitted_at,
        submit_dir=job.submit_dir,
        started_at=job.started_at,
        finished_at=job.finished_at,
        max_fails=job.max_fails,
        workers=tuple(job.hostnames),
        failed_tasks=tuple(failed),
        tasks=tasks,
    )


def task_views(job: Job, ids: IdSet | None, states: set[TaskState] | None) -> Iterator[m.TaskView]:
    """The tasks of a job (those in `ids`, in `states`), in id order."""
    for task_id, group, task in job.iter_tasks(ids):
        state = task.state if task is not None else group.untouched_state
        if states is None or state in states:
            yield task_view(group, task_id, task)


def worker_view(w: Worker) -> m.WorkerView:
    return m.WorkerView(
        id=w.id,
        state=w.state,
        configuration=w.config,
        started_at=w.started_at,
        ended_at=w.ended_at,
        assigned_tasks=len(w.tasks),
        running_tasks=w.running,
        last_task_started=w.last_task_started,
    )


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        name=job.name,
        state=job.state(),
        task_count=job.task_count,
        counts=tuple(job.counts),
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def worker_summary(w: Worker) -> WorkerSummary:
    manager = w.config.manager
    return WorkerSummary(
        id=w.id,
        hostname=w.config.hostname,
        state=w.state,
        stopping=w.stop_reason is not None,
        manager=None if manager is None else manager.manager,
        allocation_id=None if manager is None else manager.allocation_id,
        cpus=w.capacity.get("cpus", 0),
        cpus_assigned=w.assigned.get("cpus", 0),
        tasks=len(w.tasks),
        running_tasks=w.running,
        started_at=w.started_at,
        ended_at=w.ended_at,
    )


class ServerViews:
    """The server core as `ServerReadModel` (what `hqpy.http` reads); O(jobs + workers)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    @property
    def server_uid(self) -> str:
        return self.state.server_uid

    def job_count(self) -> int:
        return len(self.state.jobs)

    def task_state_totals(self) -> list[int]:
        totals = [0] * len(TaskState)
        for job in self.state.jobs.values():
            for i, n in enumerate(job.counts):
                totals[i] += n
        return totals

    def job_state_totals(self) -> dict[JobState, int]:
        totals = dict.fromkeys(JobState, 0)
        for job in self.state.jobs.values():
            totals[job.state()] += 1
        return totals

    def newest_jobs(self, limit: int) -> list[JobSummary]:
        return [job_summary(j) for j in itertools.islice(reversed(self.state.jobs.values()), limit)]

    def worker_summaries(self) -> Iterator[WorkerSummary]:
        return (worker_summary(w) for w in self.state.workers.values())

    def newest_workers(self, limit: int) -> list[WorkerSummary]:
        workers = self.state.workers.values()
        running = [w for w in workers if w.state is WorkerState.RUNNING][:limit]
        # Then the most recently ended ones, newest first (ids grow with time).
        ended = itertools.islice(
            (w for w in reversed(workers) if w.state is not WorkerState.RUNNING),
            max(0, limit - len(running)),
        )
        return [worker_summary(w) for w in [*running, *ended]]
