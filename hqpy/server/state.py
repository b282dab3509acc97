"""All the server's state and every change to it, with no I/O.

Everything runs on the trio thread, so there are no locks. Messages for workers are put into
each worker's outbox (a memory channel) and sent by its session; requests for scheduling are
made through `on_schedule_needed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hqpy.common.errors import RequestError
from hqpy.common.events import (
    EventHub,
    JobForgotten,
    JobSubmitted,
    TaskEnded,
    WorkerConnected,
    WorkerLost,
)
from hqpy.common.idset import IdSet, Selector, parse_id_set, parse_selector
from hqpy.common.states import DONE_TASK_STATES as DONE_STATES
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.scheduler import schedule
from hqpy.server.workers import FAILURE_STATES, STOP_REASONS, Worker

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_BY_NAME = {
    "waiting": TaskState.WAITING,
    "running": TaskState.RUNNING,
    "finished": TaskState.FINISHED,
    "failed": TaskState.FAILED,
    "canceled": TaskState.CANCELED,
    "aborted": TaskState.ABORTED,
}


class ServerState:
    def __init__(
        self,
        server_uid: str,
        clock: Callable[[], float] = time.time,
        hub: EventHub | None = None,
    ) -> None:
        self.server_uid = server_uid
        self.clock = clock
        self.hub = hub if hub is not None else EventHub()
        """Where job, task and worker events go (the allocator and the metrics listen)."""
        self.jobs: dict[int, Job] = {}
        self.workers: dict[int, Worker] = {}
        self.waiting_groups: dict[int, tuple[Job, TaskGroup]] = {}
        """Groups that may have waiting tasks, by group id."""
        self.next_job_id = 1
        self.next_worker_id = 1
        self.next_group_id = 1
        self.on_schedule_needed: Callable[[], None] = lambda: None
        self.worker_waiters: list[tuple[int, Any]] = []

    # -----------------------------------------------------------------------------------------
    # Jobs

    def _new_job(self, name: str, max_fails: int | None, is_open: bool) -> Job:
        job = Job(self.next_job_id, name, max_fails, is_open, self.clock())
        self.next_job_id += 1
        self.jobs[job.id] = job
        return job

    def open_job(self, name: str | None, max_fails: int | None) -> int:
        job = self._new_job(name or "job", max_fails, is_open=True)
        return job.id

    def submit(self, req: m.SubmitRequest) -> int:
        desc = req.submit
        if not desc.request.entries and desc.request.n_nodes == 0:
            raise RequestError("A task must request some resources (at least `--cpus 1`)")
        if not desc.args:
            raise RequestError("A task needs a program to run")
        try:
            ids = parse_id_set(desc.ids)
        except ValueError as e:
            raise RequestError(str(e)) from None
        if desc.entries is not None and ids and ids.max() >= len(desc.entries):
            raise RequestError(
                f"Task id {ids.max()} has no entry: there are only {len(desc.entries)} entries"
            )
        if req.job_id is not None:
            if req.name is not None:
                raise RequestError(
                    "Parameter --name is not allowed when submitting to an open job."
                )
            if req.max_fails is not None:
                raise RequestError(
                    "Parameter --max-fails is not allowed when submitting to an open job."
                )
            job = self.jobs.get(req.job_id)
            if job is None:
                raise RequestError(f"Job {req.job_id} not found.")
            if not job.is_open:
                raise RequestError(f"Job {req.job_id} is not opened.")
            for g in job.groups:
                common = g.ids.intersection(ids)
                if common:
                    raise RequestError(f"Task {common.min()} already exists in job {job.id}.")
        else:
            name = req.name or (desc.args[0].rsplit("/", 1)[-1] if desc.args else "job")
            job = self._new_job(name, req.max_fails, is_open=False)
        if not job.groups:
            job.submit_dir = desc.submit_dir
        body = m.TaskBody(
            group_id=self.next_group_id,
            job_id=job.id,
            args=desc.args,
            env=desc.env,
            cwd=desc.cwd,
            stdout=desc.stdout,
            stderr=desc.stderr,
            submit_dir=desc.submit_dir,
            request=desc.request,
            priority=desc.priority,
            time_limit=desc.time_limit,
            task_dir=desc.task_dir,
            stdin=desc.stdin,
            server_uid=self.server_uid,
        )
        self.next_group_id += 1
        group = TaskGroup(body, ids, desc.entries, desc.crash_limit, len(job.groups))
        job.groups.append(group)
        job.counts[TaskState.WAITING] += len(ids)
        job.finished_at = None
        if ids:
            self.waiting_groups[body.group_id] = (job, group)
        self._check_job_complete(job)
        self.hub.publish(JobSubmitted(job.id))
        self.on_schedule_needed()
        return job.id

    def select_jobs(self, selector: str) -> tuple[list[Job], list[int]]:
        """Jobs named by a selector (`3`, `1-4`, `last`, `all`), and the ids that do not exist."""
        return select(self.jobs, selector)

    def close_jobs(self, selector: str) -> list[m.LogLine]:
        jobs, missing = self.select_jobs(selector)
        lines = []
        for job in jobs:
            if not job.is_open:
                lines.append(
                    m.LogLine("ERROR", f"Closing job {job.id} failed; job is already closed")
                )
                continue
            job.is_open = False
            lines.append(m.LogLine("INFO", f"Job {job.id} closed"))
            self._check_job_complete(job)
        lines += [m.LogLine("ERROR", f"Closing job {i} failed; job not found") for i in missing]
        return lines

    def cancel_jobs(self, selector: str, reason: str | None) -> list[m.LogLine]:
        jobs, missing = self.select_jobs(selector)
        lines = []
        all_jobs = selector.strip() == "all"
        for job in jobs:
            if not job.is_unfinished():
                if not all_jobs:
                    lines.append(
                        m.LogLine(
                            "ERROR",
                            f"Canceling job {job.id} failed; all tasks are already finished",
                        )
                    )
                continue
            canceled = self._close_unfinished(job, TaskState.CANCELED)
            job.cancel_reason = reason
            done = job.counts[TaskState.FINISHED]
            lines.append(
                m.LogLine(
                    "INFO",
                    f"Job {job.id} canceled ({canceled} tasks canceled, "
                    f"{done} tasks already finished)",
                )
            )
        lines += [m.LogLine("ERROR", f"Canceling job {i} failed; job not found") for i in missing]
        if all_jobs and not lines:
            lines.append(m.LogLine("INFO", "There is nothing to cancel"))
        return lines

    def _close_unfinished(self, job: Job, state: TaskState) -> int:
        """Cancel or abort every unfinished task of a job; returns how many."""
        n = 0
        now = self.clock()
        cancels: dict[int, list[list[Any]]] = {}
        for group in job.groups:
            k = group.close_untouched(state)
            job.counts[TaskState.WAITING] -= k
            job.counts[state] += k
            n += k
            self.waiting_groups.pop(group.group_id, None)
        for task in job.tasks.values():
            if task.state in (TaskState.WAITING, TaskState.RUNNING):
                if task.worker_id is not None:
                    cancels.setdefault(task.worker_id, []).append(
                        [job.id, task.id, task.instance_id]
                    )
                    worker = self.workers.get(task.worker_id)
                    if worker is not None:
                        worker.release(task, now)
                task.ended_at = now
                job.move(task, state)
                n += 1
        for worker_id, rows in cancels.items():
            self._send(worker_id, m.CancelTasks(rows))
        self._check_job_complete(job)
        self.on_schedule_needed()
        return n

    def forget_jobs(self, selector: str, states: tuple[str, ...]) -> list[m.LogLine]:
        jobs, missing = self.select_jobs(selector)
        wanted = {s.upper() for s in states} or {"FINISHED", "FAILED", "CANCELED", "ABORTED"}
        forgotten = ignored = len(missing)
        forgotten = 0
        for job in jobs:
            if job.is_complete() and job.state_name() in wanted:
                self.hub.publish(JobForgotten(job.id, tuple(job.counts)))
                del self.jobs[job.id]
                forgotten += 1
            else:
                ignored += 1
        text = f"{forgotten} {'job' if forgotten == 1 else 'jobs'} were forgotten"
        if ignored:
            text += f", {ignored} were ignored due to wrong state or invalid ID"
        return [m.LogLine("INFO", text)]

    def _check_job_complete(self, job: Job) -> None:
        if job.finished_at is None and job.is_complete() and job.task_count >= 0:
            if not job.is_unfinished() and not job.is_open:
                job.finished_at = self.clock()
        if not job.is_unfinished():
            job.notify_waiters()

    # -----------------------------------------------------------------------------------------
    # Workers

    def add_worker(self, config: m.WorkerConfiguration, outbox: Any = None) -> Worker:
        worker = Worker(self.next_worker_id, config, self.clock(), outbox)
        self.next_worker_id += 1
        self.workers[worker.id] = worker
        manager = config.manager
        log.info(
            "Worker %d registered from %s (%s)%s",
            worker.id,
            config.hostname,
            ", ".join(f"{r.name}" for r in config.resources),
            "" if manager is None else f" in {manager.manager} allocation {manager.allocation_id}",
        )
        self._wake_worker_waiters()
        self.hub.publish(
            WorkerConnected(
                worker.id,
                None if manager is None else manager.manager,
                None if manager is None else manager.allocation_id,
                config.resources,
            )
        )
        self.on_schedule_needed()
        return worker

    def running_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.is_running]

    def _wake_worker_waiters(self) -> None:
        count = len(self.running_workers())
        keep = []
        for wanted, event in self.worker_waiters:
            if count >= wanted:
                event.set()
            else:
                keep.append((wanted, event))
        self.worker_waiters = keep

    def select_workers(self, selector: str) -> tuple[list[Worker], list[int]]:
        return select(self.workers, selector)

    def stop_workers(self, selector: str) -> list[m.LogLine]:
        workers, missing = self.select_workers(selector)
        lines = []
        for w in workers:
            if w.state != WorkerState.RUNNING or w.stop_reason is not None:
                lines.append(
                    m.LogLine("WARN", f"Stopping worker {w.id} failed; worker is already stopped")
                )
                continue
            self.request_worker_stop(w, "stopped")
            lines.append(m.LogLine("INFO", f"Worker {w.id} stopped"))
        lines += [
            m.LogLine("ERROR", f"Stopping worker {i} failed; worker not found") for i in missing
        ]
        return lines

    def request_worker_stop(self, worker: Worker, reason: str) -> None:
        log.info("Worker %d asked to stop: %s", worker.id, reason)
        worker.stop_reason = reason
        self._send(worker.id, m.StopWorker(reason))
        self._wake_worker_waiters()

    def on_worker_stopping(self, worker: Worker, reason: str) -> None:
        """The worker says it ends on its own; hand its tasks back now."""
        worker.stop_reason = reason
        self.on_worker_lost(worker, STOP_REASONS.get(reason, WorkerState.STOPPED))

    def on_worker_lost(self, worker: Worker, state: WorkerState) -> None:
        """Put the worker's unfinished tasks back to waiting, counting crashes where it failed."""
        if worker.state != WorkerState.RUNNING:
            return
        if worker.stop_reason is not None and state in FAILURE_STATES:
            state = STOP_REASONS.get(worker.stop_reason, WorkerState.STOPPED)
        now = self.clock()
        worker.state = state
        worker.ended_at = now
        failure = state in FAILURE_STATES
        log.info(
            "Worker %d %s: %s (%d task(s) handed back)",
            worker.id,
            "lost" if failure else "ended",
            state.lower(),
            len(worker.tasks),
        )
        for task in list(worker.tasks.values()):
            was_running = task.state is TaskState.RUNNING
            worker.release(task, now)
            job = self.jobs.get(task.group.body.job_id)
            if job is None or task.state in DONE_STATES:
                continue
            if was_running and failure:
                task.crash_count += 1
                limit = task.group.crash_limit
                if limit == -1 or (limit > 0 and task.crash_count >= limit):
                    task.error = (
                        "Task was running on a worker that was lost; the task has occurred "
                        f"{task.crash_count} times in this situation and limit was reached."
                    )
                    task.ended_at = now
                    job.move(task, TaskState.FAILED)
                    self._after_failure(job)
                    continue
            task.instance_id += 1
            task.started_at = None
            task.hostname = None
            if was_running:
                job.move(task, TaskState.WAITING)
            task.group.requeued.append(task)
            self.waiting_groups[task.group.group_id] = (job, task.group)
        worker.outbox = None
        self._wake_worker_waiters()
        manager = worker.config.manager
        self.hub.publish(
            WorkerLost(
                worker.id,
                None if manager is None else manager.manager,
                None if manager is None else manager.allocation_id,
                state,
                now - worker.started_at,
            )
        )
        self.on_schedule_needed()

    def on_heartbeat(self, worker: Worker) -> None:
        worker.last_heartbeat = self.clock()

    # -----------------------------------------------------------------------------------------
    # Scheduling and task updates

    def schedule(self) -> int:
        """Assign waiting tasks to workers and queue the messages; returns how many."""
        workers = self.running_workers()
        if not workers or not self.waiting_groups:
            return 0
        now = self.clock()
        assigned = schedule(self.waiting_groups.values(), workers, now)
        for gid in [g for g, (_, grp) in self.waiting_groups.items() if not grp.has_waiting()]:
            del self.waiting_groups[gid]
        n = 0
        for worker_id, tasks in assigned.items():
            worker = self.workers[worker_id]
            bodies = []
            rows = []
            for task in tasks:
                group = task.group
                if group.group_id not in worker.known_groups:
                    worker.known_groups.add(group.group_id)
                    bodies.append(group.body)
                rows.append(
                    [
                        group.body.job_id,
                        task.id,
                        task.instance_id,
                        group.group_id,
                        group.entry(task.id),
                    ]
                )
            n += len(rows)
            self._send(worker_id, m.ComputeTasks(bodies, rows))
        return n

    def on_task_updates(self, worker: Worker, updates: list[list[Any]]) -> None:
        jobs = self.jobs
        now = self.clock()
        touched: set[int] = set()
        hub = self.hub
        publish = hub.wants(TaskEnded)
        for job_id, task_id, instance_id, status, started_at, ended_at, error in updates:
            job = jobs.get(job_id)
            if job is None:
                continue
            task = job.tasks.get(task_id)
            if task is None or task.instance_id != instance_id or task.worker_id != worker.id:
                continue
            if task.state in DONE_STATES:
                worker.release(task, now)
                continue
            if started_at is not None and task.started_at is None:
                task.started_at = started_at
                task.hostname = worker.config.hostname
                job.hostnames[worker.config.hostname] = None
                worker.last_task_started = started_at
                if job.started_at is None:
                    job.started_at = started_at
            if status == m.TASK_RUNNING:
                if task.state is TaskState.WAITING:
                    job.move(task, TaskState.RUNNING)
                    worker.running += 1
                continue
            worker.release(task, now)
            task.ended_at = ended_at
            if status == m.TASK_FINISHED:
                job.move(task, TaskState.FINISHED)
                if started_at is not None and ended_at is not None:
                    task.group.duration_sum += ended_at - started_at
                    task.group.duration_count += 1
            elif status == m.TASK_FAILED:
                task.error = error
                job.move(task, TaskState.FAILED)
                self._after_failure(job)
            else:
                job.move(task, TaskState.CANCELED)
            if publish and status != m.TASK_CANCELED:
                hub.publish(TaskEnded(job_id, task_id, task.state, task.started_at, ended_at))
            touched.add(job_id)
        for job_id in touched:
            job = jobs.get(job_id)
            if job is not None and not job.is_unfinished():
                self._check_job_complete(job)
        self.on_schedule_needed()

    def _after_failure(self, job: Job) -> None:
        if job.max_fails is not None and job.counts[TaskState.FAILED] > job.max_fails:
            if job.is_unfinished():
                self._close_unfinished(job, TaskState.ABORTED)
        self._check_job_complete(job)

    def _send(self, worker_id: int, message: Any) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.outbox is not None:
            worker.outbox.send_nowait(message)

    # -----------------------------------------------------------------------------------------
    # Views

    def job_view(self, job: Job) -> m.JobView:
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

    def task_view(self, job: Job, group: TaskGroup, task_id: int, task: Task | None) -> m.TaskView:
        if task is None:
            return m.TaskView(
                id=task_id, state=group.untouched_state.name.lower(), group=group.index
            )
        paths = group.body.resolve_paths(task_id, task.instance_id)
        return m.TaskView(
            id=task_id,
            state=task.state.name.lower(),
            instance_id=task.instance_id,
            workers=(task.hostname,) if task.hostname else (),
            started_at=task.started_at,
            ended_at=task.ended_at,
            error=task.error,
            cwd=paths[0],
            stdout=paths[1],
            stderr=paths[2],
            crash_count=task.crash_count,
            group=group.index,
        )

    def job_detail(self, job: Job, include_tasks: bool) -> m.JobDetailView:
        failed = []
        for task_id in sorted(t.id for t in job.tasks.values() if t.state is TaskState.FAILED)[:5]:
            task = job.tasks[task_id]
            failed.append(self.task_view(job, task.group, task_id, task))
        tasks = None
        if include_tasks:
            tasks = tuple(self.task_view(job, g, tid, t) for tid, g, t in job.iter_tasks())
        return m.JobDetailView(
            info=self.job_view(job),
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

    def task_views(
        self, job: Job, ids: IdSet | None, states: set[TaskState] | None
    ) -> Iterator[m.TaskView]:
        for task_id, group, task in job.iter_tasks(ids):
            state = task.state if task is not None else group.untouched_state
            if states is None or state in states:
                yield self.task_view(job, group, task_id, task)

    def worker_view(self, w: Worker) -> m.WorkerView:
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


def select(items: dict[int, T], selector: str) -> tuple[list[T], list[int]]:
    """The items a selector names (`3`, `1-4`, `last`, `all`), and the ids that do not exist."""
    try:
        sel: Selector = parse_selector(selector)
    except ValueError as e:
        raise RequestError(str(e)) from None
    if sel.kind == "all":
        return list(items.values()), []
    if sel.kind == "last":
        return ([items[max(items)]] if items else []), []
    assert sel.ids is not None
    found, missing = [], []
    for item_id in sel.ids:
        item = items.get(item_id)
        if item is None:
            missing.append(item_id)
        else:
            found.append(item)
    return found, missing


def parse_states(names: tuple[str, ...]) -> set[TaskState] | None:
    if not names:
        return None
    out = set()
    for name in names:
        state = STATE_BY_NAME.get(name.lower())
        if state is None:
            raise RequestError(
                f"Unknown task state `{name}`; expected one of {', '.join(STATE_BY_NAME)}"
            )
        out.add(state)
    return out
