"""All the server's state and every change to it (the transitions), with no I/O.

Everything runs on the trio thread, so there are no locks. Messages for workers are put into
each worker's outbox (a memory channel) and sent by its session; requests for scheduling are
made through `on_schedule_needed`. Request checks are in `validation`, the user-facing texts of
commands in `commands`, views in `views`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress

import trio

from hqpy.common import drain as reasons
from hqpy.common.demand import QueueOffer, QueueOffers
from hqpy.common.errors import RequestError
from hqpy.common.events import (
    EventHub,
    JobForgotten,
    JobSubmitted,
    TaskEnded,
    TasksUnfittable,
    WorkerConnected,
    WorkerLost,
)
from hqpy.common.idset import IdSet
from hqpy.common.states import DONE_TASK_STATES as DONE_STATES
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server import fit, multinode
from hqpy.server.drain import MAX_INSTANCE_HISTORY, end_reason, record_instance
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.pools import Pool, PoolTable
from hqpy.server.scheduler import schedule
from hqpy.server.selection import check_id_limit, intersect, shift
from hqpy.server.validation import validate_submit
from hqpy.server.workers import STOP_REASONS, Outbox, Worker

log = logging.getLogger(__name__)

NEVER_RESTART = -1
"""`--crash-limit never-restart`: a task whose worker goes away while it runs fails."""


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
        self.reserved: set[int] = set()
        """Workers reserved for a waiting multi-node task at the last pass (see `multinode`)."""
        self.worker_waiters: list[tuple[int, trio.Event]] = []
        """`hq worker wait N` sessions: (N, set when N workers run)."""
        self.pools = PoolTable()
        """Concurrency pools (`hq pool set`), by name."""
        self.queue_offers: QueueOffers | None = None
        """What the allocator's queues could give a task (fit check, `task explain`); None:
        no allocator."""
        self.held: dict[tuple[int, int], float] = {}
        """Restored tasks that were running when the server went, kept with their instance id
        for their worker to come back and present them, until this deadline (`expire_held`)."""
        self.hold_grace = 0.0
        """How long restored running tasks are held (0: re-run them at once)."""
        self.expected_back: set[int] = set()
        """After a restore: workers of the server before that may come back (they had a
        grace). No task is handed out until all have, or the settle time passed
        (`end_restore_settle`): a task one of them ran, whose start the journal had not yet
        received, is waiting here and would else go to another worker and might run twice."""
        self.on_task_crashed: Callable[[Task], None] | None = None
        """Told of each task handed back by a lost worker (the journal keeps crash counts)."""

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
        """A new job, or new tasks in an open job; RequestError names what is wrong."""
        desc = req.submit
        ids = validate_submit(desc)
        pool = None if desc.pool is None else self.pools.get(desc.pool)
        offset = 0
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
            if desc.auto_ids:
                last = job.max_task_id()
                offset = 0 if last is None else last + 1
                ids = shift(ids, offset)
                check_id_limit(ids, desc.ids)
            for g in job.groups:
                common, _ = intersect(ids, g.ids)
                if common:
                    raise RequestError(f"Task {common.min()} already exists in job {job.id}.")
        else:
            name = req.name or (desc.args[0].rsplit("/", 1)[-1] if desc.args else "job")
            job = self._new_job(name, req.max_fails, is_open=False)
        if not job.groups:
            job.submit_dir = desc.submit_dir
        for tags, part in _tag_parts(desc, ids, offset):
            self._add_group(job, desc, part, offset, tags, pool)
        job.finished_at = None
        self._check_job_complete(job)
        self.hub.publish(JobSubmitted(job.id))
        self.on_schedule_needed()
        return job.id

    def _add_group(
        self,
        job: Job,
        desc: m.SubmitDesc,
        ids: IdSet,
        offset: int,
        tags: tuple[str, ...],
        pool: Pool | None,
    ) -> None:
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
            tags=tags,
            pool=desc.pool,
        )
        self.next_group_id += 1
        group = TaskGroup(body, ids, desc.entries, desc.crash_limit, len(job.groups), offset)
        group.pool = pool
        job.groups.append(group)
        job.counts[TaskState.WAITING] += len(ids)
        if ids:
            self.waiting_groups[body.group_id] = (job, group)

    def close_job(self, job: Job) -> bool:
        """Close an open job (no more submits into it); False if it was not open."""
        if not job.is_open:
            return False
        job.is_open = False
        self._check_job_complete(job)
        return True

    def cancel_job(self, job: Job, reason: str | None) -> int | None:
        """Cancel a job's unfinished tasks; how many, or None if none was left."""
        if not job.is_unfinished():
            return None
        canceled = self._close_unfinished(job, TaskState.CANCELED)
        job.cancel_reason = reason
        return canceled

    def forget_job(self, job: Job) -> None:
        """Drop a complete job from memory (its task counts go to the hub's listeners)."""
        self.hub.publish(JobForgotten(job.id, tuple(job.counts)))
        del self.jobs[job.id]

    def _close_unfinished(self, job: Job, state: TaskState) -> int:
        """Cancel or abort every unfinished task of a job; returns how many."""
        n = 0
        now = self.clock()
        cancels: dict[int, list[list[int]]] = {}
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
                if task.nodes:
                    multinode.release(task, self.workers, now)
                task.ended_at = now
                job.move(task, state)
                n += 1
        for worker_id, rows in cancels.items():
            self._send(worker_id, m.CancelTasks(rows))
        self._check_job_complete(job)
        self.on_schedule_needed()
        return n

    def _check_job_complete(self, job: Job) -> None:
        if job.finished_at is None and job.is_complete():
            job.finished_at = self.clock()
        if not job.is_unfinished():
            job.notify_waiters()

    # -----------------------------------------------------------------------------------------
    # Fit check

    def worker_shapes(self) -> list[fit.WorkerShape]:
        now = self.clock()
        return [
            fit.WorkerShape(
                w.id,
                w.capacity,
                w.filter_tags,
                None if w.deadline is None else w.deadline - now,
                w.config.group,
            )
            for w in self.running_workers()
        ]

    def offers(self) -> list[QueueOffer]:
        return [] if self.queue_offers is None else self.queue_offers.queue_offers()

    def check_fit(self, job_id: int, first_group_id: int) -> list[str]:
        """Warnings for the groups a submit made (ids from `first_group_id`) that no worker and
        no queue could run (a log line and a `TasksUnfittable` event too): no task is left
        waiting in silence."""
        job = self.jobs.get(job_id)
        if job is None:
            return []
        workers = offers = None
        out = []
        for group in job.groups:
            if group.group_id < first_group_id or not group.ids:
                continue
            if workers is None or offers is None:
                workers, offers = self.worker_shapes(), self.offers()
            why = fit.shortfall(group.body.request, group.tags, workers, offers)
            if why is None:
                continue
            ids = group.ids
            what = f"Task {ids.min()}" if len(ids) == 1 else f"Tasks {ids}"
            text = f"{what} of job {job_id} can run on no worker and in no queue: {why}"
            log.warning("%s", text)
            self.hub.publish(TasksUnfittable(job_id, len(ids), why))
            out.append(text)
        return out

    # -----------------------------------------------------------------------------------------
    # Concurrency pools

    def set_pool(self, name: str, size: int) -> None:
        """Create or resize a pool; a larger size lets waiting tasks start now."""
        self.pools.set(name, size)
        self.on_schedule_needed()

    def remove_pool(self, name: str) -> None:
        self.pools.remove(name, lambda pool: self._pool_waiting().get(pool.name, 0))

    def pool_views(self) -> list[m.PoolView]:
        waiting = self._pool_waiting()
        return [
            m.PoolView(p.name, p.size, p.active, waiting.get(p.name, 0))
            for p in sorted(self.pools.pools.values(), key=lambda p: p.name)
        ]

    def _pool_waiting(self) -> dict[str, int]:
        """Waiting tasks per pool, from the groups that may have some (O(those groups))."""
        out: dict[str, int] = {}
        for _, group in self.waiting_groups.values():
            pool = group.pool
            if pool is not None:
                untouched = group.untouched if group.untouched_state is TaskState.WAITING else 0
                requeued = sum(
                    1
                    for t in group.requeued
                    if t.state is TaskState.WAITING and t.worker_id is None
                )
                out[pool.name] = out.get(pool.name, 0) + untouched + requeued
        return out

    # -----------------------------------------------------------------------------------------
    # Workers

    def add_worker(
        self,
        config: m.WorkerConfiguration,
        outbox: Outbox | None = None,
        previous_id: int | None = None,
        tasks: list[list[int]] | None = None,
    ) -> Worker:
        """Register a worker; one that comes back (`previous_id`) keeps its id when it is free
        and has the tasks it presents adopted or killed (`adopt`)."""
        worker_id = self.next_worker_id
        if previous_id is not None and previous_id > 0 and previous_id not in self.workers:
            worker_id = previous_id
        worker = Worker(worker_id, config, self.clock(), outbox)
        self.expected_back.discard(worker_id)
        self.next_worker_id = max(self.next_worker_id, worker_id + 1)
        self.workers[worker.id] = worker
        if tasks:
            kill = self.adopt(worker, tasks)
            if kill:
                self._send(worker.id, m.CancelTasks(kill))
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

    def adopt(self, worker: Worker, rows: list[list[int]]) -> list[list[int]]:
        """Take over the tasks a returning worker presents: a task held for it (restored as
        running, same instance id) becomes its again; any other (unknown, ended, or given to
        someone else under a new instance id) is returned, to be killed."""
        kill: list[list[int]] = []
        now = self.clock()
        for row in rows:
            job_id, task_id, instance_id = (int(x) for x in row)
            job = self.jobs.get(job_id)
            task = None if job is None else self._waiting_task(job, task_id)
            if (
                job is None
                or task is None
                or task.instance_id != instance_id
                or task.state in DONE_STATES
                or task.worker_id is not None
            ):
                kill.append([job_id, task_id, instance_id])
                continue
            # Held, or waiting unassigned: what the journal had not yet flushed (a start or
            # an end) when the server went. Nobody else runs it under this instance id.
            self.held.pop((job_id, task_id), None)
            worker.assign(task)
            if task.state is TaskState.WAITING:
                job.move(task, TaskState.RUNNING)
                worker.running += 1
            task.hostname = worker.config.hostname
            job.hostnames[worker.config.hostname] = None
            worker.last_task_started = now
        if kill:
            log.info(
                "Worker %d: %d task(s) it presented are not its any more", worker.id, len(kill)
            )
        if len(kill) < len(rows):
            log.info("Worker %d: adopted %d running task(s)", worker.id, len(rows) - len(kill))
        return kill

    @staticmethod
    def _waiting_task(job: Job, task_id: int) -> Task | None:
        """The task, materialised if it is still untouched (waiting)."""
        task = job.tasks.get(task_id)
        if task is not None:
            return task
        for group in job.groups:
            if task_id in group.ids:
                if group.untouched_state is not TaskState.WAITING:
                    return None
                if group.retired(task_id) is not None:
                    return None
                return group.materialise(job, task_id)
        return None

    def expire_held(self, now: float) -> int:
        """Re-run held tasks whose worker did not come back in time (a new instance id, a
        crash counted as for any lost worker); returns how many."""
        expired = [key for key, deadline in self.held.items() if deadline <= now]
        for key in expired:
            del self.held[key]
            job = self.jobs.get(key[0])
            task = None if job is None else job.tasks.get(key[1])
            if job is None or task is None or task.state in DONE_STATES:
                continue
            if task.state is TaskState.RUNNING:
                job.move(task, TaskState.WAITING)
            self._hand_back(
                job, task, now, was_running=True, failure=True, worker_id=None, why=reasons.LOST
            )
        if expired:
            log.info("%d restored task(s) whose worker did not come back re-run", len(expired))
            self._wake_worker_waiters()
            self.on_schedule_needed()
        return len(expired)

    def _hand_back(
        self,
        job: Job,
        task: Task,
        now: float,
        *,
        was_running: bool,
        failure: bool,
        worker_id: int | None,
        why: str,
    ) -> None:
        """A task whose worker went: failed (crash limit, never-restart) or waiting again with
        a new instance id (`why` its instance ended is kept in its history)."""
        limit = task.group.crash_limit
        error = None
        if was_running and limit == NEVER_RESTART:
            # Whatever the reason the worker went (stop, idle timeout, time limit, crash).
            error = "Task was running on a lost worker while never restart flag was set."
        elif was_running and failure:
            task.crash_count += 1
            if limit > 0 and task.crash_count >= limit:
                error = (
                    "Task was running on a worker that was lost; the task has occurred "
                    f"{task.crash_count} times in this situation and limit was reached."
                )
        if error is not None:
            task.error = error
            task.ended_at = now
            job.move(task, TaskState.FAILED)
            # Published (the journal keeps the failure, the metrics count it).
            self.hub.publish(
                TaskEnded(job.id, task.id, TaskState.FAILED, task.started_at, now, worker_id, error)
            )
            self._after_failure(job)
            return
        if was_running:
            record_instance(task, why)
        task.instance_id += 1
        task.started_at = None
        task.hostname = None
        task.nodes = None
        if was_running:
            job.move(task, TaskState.WAITING)
        if self.on_task_crashed is not None and was_running:
            self.on_task_crashed(task)
        task.group.requeued.append(task)
        self.waiting_groups[task.group.group_id] = (job, task.group)

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
        if worker.state is not WorkerState.RUNNING:
            return
        if worker.stop_reason is not None and state.is_failure:
            state = STOP_REASONS.get(worker.stop_reason, WorkerState.STOPPED)
        now = self.clock()
        worker.state = state
        worker.ended_at = now
        why, failure = end_reason(worker, state, now)
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
            if task.nodes:
                multinode.release(task, self.workers, now)
            job = self.jobs.get(task.group.body.job_id)
            if job is None or task.state in DONE_STATES:
                continue
            self._hand_back(
                job,
                task,
                now,
                was_running=was_running,
                failure=failure,
                worker_id=worker.id,
                why=why,
            )
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

    def forgive_stall(self, seconds: float) -> None:
        """The server itself did not run for `seconds` (a long request): heartbeats that came
        meanwhile are still unread, so no worker may be blamed for that time."""
        for worker in self.workers.values():
            if worker.state is WorkerState.RUNNING:
                worker.last_heartbeat += seconds

    # -----------------------------------------------------------------------------------------
    # Scheduling and task updates

    def schedule(self) -> int:
        """Assign waiting tasks to workers and queue the messages; returns how many."""
        workers = [w for w in self.workers.values() if w.is_running and not w.draining]
        if self.expected_back:
            return 0  # just restored: the workers of the server before come back first
        if not workers or not self.waiting_groups:
            if self.reserved:
                self._keep_reserved(set())
            return 0
        now = self.clock()
        reserved: set[int] = set()
        assigned = schedule(self.waiting_groups.values(), workers, now, reserved)
        if reserved or self.reserved:
            self._keep_reserved(reserved)
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
                row: m.ComputeRow = [
                    group.body.job_id,
                    task.id,
                    task.instance_id,
                    group.group_id,
                    group.entry(task.id),
                ]
                if task.nodes:
                    row.append(multinode.host_rows(task))
                rows.append(row)
            n += len(rows)
            self._send(worker_id, m.ComputeTasks(bodies, rows))
        return n

    def _keep_reserved(self, reserved: set[int]) -> None:
        """Workers reserved for a waiting multi-node task are not idle (no idle timeout while
        they wait for their group); those no longer reserved are idle again."""
        now = self.clock()
        for worker_id in self.reserved - reserved:
            w = self.workers.get(worker_id)
            if w is not None and not w.tasks and w.mn_task is None and w.idle_since is None:
                w.idle_since = now
        for worker_id in reserved:
            w = self.workers[worker_id]
            if w.mn_task is None:
                w.idle_since = None
        self.reserved = reserved

    def on_task_updates(self, worker: Worker, updates: list[m.TaskUpdateRow]) -> None:
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
                if task.nodes:
                    for host in multinode.host_rows(task):
                        job.hostnames[host] = None
                worker.last_task_started = started_at
                if job.started_at is None:
                    job.started_at = started_at
            if status == TaskState.RUNNING:
                if task.state is TaskState.WAITING:
                    job.move(task, TaskState.RUNNING)
                    worker.running += 1
                continue
            worker.release(task, now)
            if task.nodes:
                multinode.release(task, self.workers, now)
            task.ended_at = ended_at
            if status == TaskState.FINISHED:
                job.move(task, TaskState.FINISHED)
                if started_at is not None and ended_at is not None:
                    task.group.duration_sum += ended_at - started_at
                    task.group.duration_count += 1
            elif status == TaskState.FAILED:
                task.error = error
                job.move(task, TaskState.FAILED)
                self._after_failure(job)
            else:
                job.move(task, TaskState.CANCELED)
            if publish and status != TaskState.CANCELED:
                why = task.error if task.state is TaskState.FAILED else None
                hub.publish(
                    TaskEnded(
                        job_id, task_id, task.state, task.started_at, ended_at, worker.id, why
                    )
                )
            if task.state is TaskState.FINISHED:
                job.retire(task)
            touched.add(job_id)
        for job_id in touched:
            job = jobs.get(job_id)
            if job is not None and not job.is_unfinished():
                self._check_job_complete(job)
        if worker.draining and not worker.tasks and worker.mn_task is None:
            # Its allocation is being drained and its last task ended: it is done.
            self.request_worker_stop(worker, "drained")
            self.on_worker_lost(worker, WorkerState.STOPPED)
        self.on_schedule_needed()

    def _after_failure(self, job: Job) -> None:
        if job.max_fails is not None and job.counts[TaskState.FAILED] > job.max_fails:
            if job.is_unfinished():
                self._close_unfinished(job, TaskState.ABORTED)
        self._check_job_complete(job)

    def send(self, worker_id: int, message: m.ToWorker) -> None:
        """Queue a message for a worker (dropped if it is gone)."""
        self._send(worker_id, message)

    def _send(self, worker_id: int, message: m.ToWorker) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and worker.outbox is not None:
            worker.outbox.send_nowait(message)

    # -----------------------------------------------------------------------------------------
    # Restore from a journal (hqpy.app.journaling replays the records through these)

    def restore_submit(self, req: m.SubmitRequest, job_id: int, group_id: int, at: float) -> None:
        """Replay an accepted submit with the ids it got then."""
        if req.job_id is None:
            self.next_job_id = job_id
        self.next_group_id = group_id
        self.submit(req)
        job = self.jobs[job_id]
        if req.job_id is None:
            job.submitted_at = at

    def restore_open_job(
        self, job_id: int, name: str | None, max_fails: int | None, at: float
    ) -> None:
        self.next_job_id = job_id
        self.open_job(name, max_fails)
        self.jobs[job_id].submitted_at = at

    def restore_finished(self, job_id: int, done: IdSet) -> None:
        """Mark these tasks finished; a group that finished whole stays unmaterialised."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        for group in job.groups:
            common = group.ids.intersection(done)
            if not common:
                continue
            n = len(common)
            if (
                n == len(group.ids)
                and group.untouched == n
                and group.untouched_state is TaskState.WAITING
            ):
                group.untouched_state = TaskState.FINISHED
                job.counts[TaskState.WAITING] -= n
                job.counts[TaskState.FINISHED] += n
                self.waiting_groups.pop(group.group_id, None)
                continue
            if group.untouched_state is not TaskState.WAITING:
                for task_id in common:
                    task = group.materialise(job, task_id)
                    if task.state not in DONE_STATES:
                        job.move(task, TaskState.FINISHED)
                continue
            # Many tasks at once: made here directly, counted once.
            tasks = job.tasks
            created = 0
            for task_id in common:
                found = tasks.get(task_id)
                if found is None:
                    new = Task(task_id, group)
                    new.state = TaskState.FINISHED
                    tasks[task_id] = new
                    created += 1
                elif found.state not in DONE_STATES:
                    job.move(found, TaskState.FINISHED)
            group.untouched -= created
            job.counts[TaskState.WAITING] -= created
            job.counts[TaskState.FINISHED] += created
        self._check_job_complete(job)

    def restore_failed(self, job_id: int, task_id: int, error: str | None) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        for group in job.groups:
            if task_id in group.ids:
                task = group.materialise(job, task_id)
                if task.state not in DONE_STATES:
                    task.error = error
                    job.move(task, TaskState.FAILED)
                    self._after_failure(job)
                return

    def restore_started(self, job_id: int, task_ids: IdSet, instance_id: int) -> None:
        """Tasks that were running when the server went: held for their worker to come back
        (`hold_grace`), else waiting again with a new instance id."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        deadline = self.clock() + self.hold_grace
        for group in job.groups:
            for task_id in group.ids.intersection(task_ids):
                is_new = task_id not in job.tasks
                task = group.materialise(job, task_id)
                if task.state is not TaskState.WAITING or task.instance_id > instance_id:
                    continue
                if self.hold_grace > 0:
                    task.instance_id = instance_id
                    if not is_new:
                        with suppress(ValueError):
                            group.requeued.remove(task)
                    self.held[(job_id, task_id)] = deadline
                    continue
                task.instance_id = instance_id + 1
                if is_new:
                    group.requeued.append(task)
                self.waiting_groups[group.group_id] = (job, group)

    def restore_crashed(self, job_id: int, task_id: int, crash_count: int, instance: int) -> None:
        """A task handed back by a lost worker: its crash count and next instance id."""
        found = self._restored_task(job_id, task_id)
        if found is None:
            return
        job, group, task, is_new = found
        task.crash_count = max(task.crash_count, crash_count)
        task.instance_id = max(task.instance_id, instance)
        if is_new and task.state is TaskState.WAITING:
            group.requeued.append(task)
            self.waiting_groups[group.group_id] = (job, group)

    def _restored_task(self, job_id: int, task_id: int) -> tuple[Job, TaskGroup, Task, bool] | None:
        """The task as an object (made if it had none: then `True`), with its job and group."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        for group in job.groups:
            if task_id in group.ids:
                is_new = task_id not in job.tasks
                return job, group, group.materialise(job, task_id), is_new
        return None

    def restore_finished_instance(self, job_id: int, task_ids: IdSet, instance_id: int) -> None:
        """These finished tasks had started under this instance id (only ids above 0 are
        restored: a task that never ran again keeps 0 without an object of its own)."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        for group in job.groups:
            for task_id in group.ids.intersection(task_ids):
                task = group.materialise(job, task_id)
                if task.state is TaskState.FINISHED:
                    task.instance_id = max(task.instance_id, instance_id)

    def restore_instance_ended(self, job_id: int, task_id: int, instance: int, why: str) -> None:
        """An earlier instance of the task and why it ended (what `hq task info` shows)."""
        found = self._restored_task(job_id, task_id)
        if found is None:
            return
        job, group, task, is_new = found
        history = task.history
        if history is None:
            history = task.history = []
        if (instance, why) not in history:
            history.append((instance, why))
            history.sort()
            del history[:-MAX_INSTANCE_HISTORY]
        if is_new and task.state is TaskState.WAITING:
            task.instance_id = max(task.instance_id, instance + 1)
            group.requeued.append(task)
            self.waiting_groups[group.group_id] = (job, group)

    def restore_expect_workers(self, worker_ids: set[int]) -> None:
        """These workers of the server before may come back: hand out no task until they have
        or `end_restore_settle` is called."""
        self.expected_back = set(worker_ids)

    def end_restore_settle(self) -> None:
        """The settle time after a restore is over: tasks are handed out, whoever is back."""
        if self.expected_back:
            log.info(
                "%d worker(s) of the server before not back yet; handing out tasks",
                len(self.expected_back),
            )
            self.expected_back.clear()
            self.on_schedule_needed()

    def restore_done(self) -> None:
        """After replay: job completion times and waiters as if it had all just happened."""
        for job in self.jobs.values():
            self._check_job_complete(job)
        self.on_schedule_needed()


def _tag_parts(desc: m.SubmitDesc, ids: IdSet, offset: int) -> list[tuple[tuple[str, ...], IdSet]]:
    """The tasks of a submit by tag set: one part unless `--from-json` items carry their own
    tags (`task_tags`), in the order of each set's first task."""
    base = frozenset(desc.tags)
    if desc.task_tags is None:
        return [(tuple(sorted(base)), ids)]
    parts: dict[frozenset[str], list[int]] = {}
    task_tags = desc.task_tags
    for task_id in ids:
        extra = task_tags[task_id - offset]
        key = base.union(extra) if extra else base
        parts.setdefault(key, []).append(task_id)
    return [(tuple(sorted(k)), IdSet.from_ids(v)) for k, v in parts.items()]
