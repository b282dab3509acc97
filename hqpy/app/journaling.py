"""The journal wired into the server process: what is written when, and the replay of a
journal into a fresh `ServerState`.

Submits, opened jobs and the job commands (close, cancel, forget) are appended and made durable
before their client gets its answer; task starts, finishes and failures go into the writer's
batch (one record per flush period). The job commands are journaled as the commands they were
and replayed as such: the journal is one ordered stream, so replay meets the same state.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import attrs

from hqpy import __version__
from hqpy.autoalloc.backends.base import BatchBackend
from hqpy.autoalloc.backends.common import JOBID_NAME, allocation_name
from hqpy.autoalloc.backends.local import EarlierAllocation, LocalBackend
from hqpy.autoalloc.requests import AllocRequests
from hqpy.autoalloc.service import AutoAllocService
from hqpy.autoalloc.state import Allocation, AllocEvent, AutoAllocState
from hqpy.common.errors import RequestError
from hqpy.common.events import (
    AllocEventRecorded,
    EventHub,
    TaskEnded,
    WorkerConnected,
    WorkerLost,
)
from hqpy.common.idset import IdSet, parse_id_set
from hqpy.common.states import AllocationState, AllocEventKind, QueueState, TaskState
from hqpy.journal import file as journal_file
from hqpy.journal import records as r
from hqpy.journal.writer import JournalWriteError, JournalWriter
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import HandlerTable
from hqpy.server.commands import cancel_jobs, close_jobs, forget_jobs
from hqpy.server.jobs import Task
from hqpy.server.selection import id_text, select
from hqpy.server.state import ServerState

log = logging.getLogger(__name__)


class JournalHandlers:
    """Request handlers that change jobs, journaled: each answers only once its record is on
    disk (or with an error naming the journal when it cannot be written)."""

    def __init__(self, state: ServerState, writer: JournalWriter, clock: Callable[[], float]):
        self.state = state
        self.writer = writer
        self.clock = clock

    def table(self) -> HandlerTable:
        return {
            m.SubmitRequest: self.submit,
            m.OpenJobRequest: self.open_job,
            m.CloseJobsRequest: self.close_jobs,
            m.CancelJobsRequest: self.cancel_jobs,
            m.ForgetJobsRequest: self.forget_jobs,
            m.PoolSetRequest: self.pool_set,
            m.PoolRemoveRequest: self.pool_remove,
        }

    async def _durable(self, record: r.Record) -> None:
        seq = self.writer.append(record)
        try:
            await self.writer.durable(seq)
        except JournalWriteError as e:
            raise RequestError(f"{e}; the request was done but is not durable") from None

    async def submit(self, req: m.SubmitRequest) -> m.SubmitResponse:
        group_id = self.state.next_group_id
        job_id = self.state.submit(req)
        seq = self.writer.append(r.JobSubmitted(job_id, group_id, self.clock(), req))
        try:
            await self.writer.durable(seq)
        except JournalWriteError as e:
            # Refused: a job that is not durable must not run (a new job is dropped at once;
            # tasks added to an open job are canceled with the job).
            job = self.state.jobs.get(job_id)
            if job is not None:
                self.state.cancel_job(job, "the journal could not be written")
                if req.job_id is None and job.is_complete():
                    self.state.forget_job(job)
            raise RequestError(f"Submit refused: {e}") from None
        return m.SubmitResponse(job_id, self.state.check_fit(job_id, group_id))

    async def open_job(self, req: m.OpenJobRequest) -> m.SubmitResponse:
        job_id = self.state.open_job(req.name, req.max_fails)
        await self._durable(r.JobOpened(job_id, req.name, req.max_fails, self.clock()))
        return m.SubmitResponse(job_id)

    async def pool_set(self, req: m.PoolSetRequest) -> m.OkResponse:
        self.state.set_pool(req.name, req.size)
        await self._durable(r.PoolChanged(req.name, req.size))
        return m.OkResponse()

    async def pool_remove(self, req: m.PoolRemoveRequest) -> m.OkResponse:
        self.state.remove_pool(req.name)
        await self._durable(r.PoolChanged(req.name, 0))
        return m.OkResponse()

    def _selected(self, selector: str) -> str | None:
        """The ids a selector names now (`last`, `all` change meaning over time; the journal
        keeps what they meant), or None when it names no job."""
        jobs, _missing = select(self.state.jobs, selector)
        return id_text(IdSet.from_ids(job.id for job in jobs)) if jobs else None

    async def close_jobs(self, req: m.CloseJobsRequest) -> m.LogLinesResponse:
        ids = self._selected(req.selector)
        lines = close_jobs(self.state, req.selector)
        if ids is not None:
            await self._durable(r.JobsClosed(ids))
        return m.LogLinesResponse(lines)

    async def cancel_jobs(self, req: m.CancelJobsRequest) -> m.LogLinesResponse:
        ids = self._selected(req.selector)
        lines = cancel_jobs(self.state, req.selector, req.reason)
        if ids is not None:
            await self._durable(r.JobsCanceled(ids, req.reason))
        return m.LogLinesResponse(lines)

    async def forget_jobs(self, req: m.ForgetJobsRequest) -> m.LogLinesResponse:
        ids = self._selected(req.selector)
        lines = forget_jobs(self.state, req.selector, req.states)
        if ids is not None:
            await self._durable(r.JobsForgotten(ids, req.states))
        return m.LogLinesResponse(lines)


def watch_tasks(state: ServerState, hub: EventHub, writer: JournalWriter) -> None:
    """Feed task ends (from the hub) into the writer's batch."""
    jobs = state.jobs

    def on_task_ended(event: TaskEnded) -> None:
        if event.state is TaskState.FINISHED:
            writer.task_finished(event.job_id, event.task_id)
        elif event.state is TaskState.FAILED:
            job = jobs.get(event.job_id)
            task = None if job is None else job.tasks.get(event.task_id)
            writer.task_failed(event.job_id, event.task_id, None if task is None else task.error)

    hub.subscribe(TaskEnded, on_task_ended)


def watch_workers(state: ServerState, hub: EventHub, writer: JournalWriter) -> None:
    """Journal workers coming and going (ids stay unique after a restore, and a restored
    server knows how long to hold tasks for workers that may come back), and crash counts."""

    def on_connected(event: WorkerConnected) -> None:
        worker = state.workers.get(event.worker_id)
        grace = 0.0 if worker is None else worker.config.server_lost_grace
        writer.append(r.WorkerJoined(event.worker_id, grace))

    def on_lost(event: WorkerLost) -> None:
        writer.append(r.WorkerLeft(event.worker_id))

    def on_crashed(task: Task) -> None:
        job_id = task.group.body.job_id
        if task.history:
            # The instance that just ended, and why (`hq task info` shows it after a restore).
            instance, why = task.history[-1]
            writer.task_instance_ended(job_id, task.id, instance, why)
        writer.task_crashed(job_id, task.id, task.crash_count, task.instance_id)

    hub.subscribe(WorkerConnected, on_connected)
    hub.subscribe(WorkerLost, on_lost)
    state.on_task_crashed = on_crashed


def task_starts(writer: JournalWriter) -> Callable[[list[m.TaskUpdateRow]], None]:
    """The server's `on_task_updates` hook: task starts go into the writer's batch."""
    running = TaskState.RUNNING

    def on_updates(rows: list[m.TaskUpdateRow]) -> None:
        for row in rows:
            if row[3] == running:
                writer.task_started(row[0], row[1], row[2])

    return on_updates


class Replay:
    """Applies records to a fresh state. Finished tasks are gathered per job and applied as
    one id set when the job is next touched (or at the end), so an array that finished over
    many flushes is restored without making one object per task."""

    def __init__(self, state: ServerState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.finished: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
        self.all_finished: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
        self.started: defaultdict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        self.live_workers: dict[int, float] = {}
        """Workers registered and not gone when the journal ends, with their grace."""
        self.earlier_workers: dict[int, float] = {}
        """Workers of an earlier run (one killed before they came back) that may still come
        back, with the latest time they may (the next run's start plus their grace)."""
        self.records = 0

    def apply(self, record: r.Record) -> None:
        self.records += 1
        state = self.state
        if isinstance(record, r.TasksUpdated):
            for job_id, instance_id, first, last in record.started:
                self.started[(job_id, instance_id)].append((first, last))
            for job_id, first, last in record.finished:
                self.finished[job_id].append((first, last))
                self.all_finished[job_id].append((first, last))
            for job_id, task_id, error in record.failed:
                self._flush_job(job_id)
                state.restore_failed(job_id, task_id, error)
            for job_id, task_id, crash_count, instance_id in record.crashed:
                state.restore_crashed(job_id, task_id, crash_count, instance_id)
            for job_id, task_id, instance_id, why in record.instances:
                state.restore_instance_ended(job_id, task_id, instance_id, str(why))
        elif isinstance(record, r.WorkerJoined):
            self.live_workers[record.worker_id] = record.grace
            self.earlier_workers.pop(record.worker_id, None)
            state.next_worker_id = max(state.next_worker_id, record.worker_id + 1)
        elif isinstance(record, r.WorkerLeft):
            self.live_workers.pop(record.worker_id, None)
            self.earlier_workers.pop(record.worker_id, None)
        elif isinstance(record, r.ServerStarted):
            # A worker of an earlier run registers again in the next one if it came back;
            # until then it may, for at most its grace from this start.
            earlier = self.earlier_workers
            for worker_id, grace in self.live_workers.items():
                if grace > 0:
                    earlier[worker_id] = max(earlier.get(worker_id, 0.0), record.at + grace)
            self.live_workers.clear()
            for worker_id in [w for w, until in earlier.items() if until <= record.at]:
                del earlier[worker_id]
        elif isinstance(record, r.JobSubmitted):
            if record.request.job_id is not None:
                self._flush_job(record.request.job_id)
            try:
                state.restore_submit(record.request, record.job_id, record.group_id, record.at)
            except RequestError as e:
                log.warning("Journal: submit of job %d not restored: %s", record.job_id, e)
        elif isinstance(record, r.JobOpened):
            state.restore_open_job(record.job_id, record.name, record.max_fails, record.at)
        elif isinstance(record, r.JobsClosed):
            self._flush_all()
            close_jobs(state, record.selector)
        elif isinstance(record, r.JobsCanceled):
            self._flush_all()
            cancel_jobs(state, record.selector, record.reason)
        elif isinstance(record, r.JobsForgotten):
            self._flush_all()
            forget_jobs(state, record.selector, record.states)
        elif isinstance(record, r.PoolChanged):
            if record.size > 0:
                state.set_pool(record.name, record.size)
            else:
                state.pools.pools.pop(record.name, None)
        elif isinstance(record, r.IdsUsed):
            state.next_job_id = max(state.next_job_id, record.next_job_id)
            state.next_group_id = max(state.next_group_id, record.next_group_id)

    def returning_workers(self) -> set[int]:
        """Workers registered when the server went that keep reconnecting (a grace), and
        those of an earlier run that still may."""
        now = self.clock()
        back = {worker_id for worker_id, grace in self.live_workers.items() if grace > 0}
        back.update(w for w, until in self.earlier_workers.items() if until > now)
        return back

    @property
    def reconnect_window(self) -> float:
        """How long workers of the server before may take to come back: the longest
        `--server-lost-grace` of those registered when it went, or what is left of it for
        those of an earlier run that never came back (0: none will). Restored running tasks
        are held, and restored allocations kept without a worker, this long."""
        now = self.clock()
        earlier = (until - now for until in self.earlier_workers.values())
        return max([0.0, *self.live_workers.values(), *earlier])

    def _flush_job(self, job_id: int) -> None:
        ranges = self.finished.pop(job_id, None)
        if ranges:
            self.state.restore_finished(job_id, IdSet.from_ranges(ranges))

    def _flush_all(self) -> None:
        for job_id in list(self.finished):
            self._flush_job(job_id)

    def finish(self) -> None:
        self._flush_all()
        done = {job_id: IdSet.from_ranges(ranges) for job_id, ranges in self.all_finished.items()}
        # Tasks running when the server went are held as long as a worker may come back.
        self.state.hold_grace = self.reconnect_window
        for (job_id, instance_id), ranges in sorted(self.started.items()):
            ids = IdSet.from_ranges(ranges)
            if job_id in done:
                if instance_id > 0:
                    # A task that finished under a later instance shows it (`hq task info`).
                    ended = ids.intersection(done[job_id])
                    if ended:
                        self.state.restore_finished_instance(job_id, ended, instance_id)
                ids = ids.difference(done[job_id])
            if ids:
                self.state.restore_started(job_id, ids, instance_id)
        self.started.clear()
        self.state.restore_done()


RESTORE_SETTLE = 10.0
"""After a restore, the longest wait for the workers of the server before to register again
before tasks are handed out (`ServerState.expected_back`): twice their longest wait between two
tries (5 s). Never longer than the reconnect window."""


def replay(
    state: ServerState, records: list[r.Record], clock: Callable[[], float] = time.time
) -> Replay:
    rep = Replay(state, clock)
    for record in records:
        rep.apply(record)
    rep.finish()
    return rep


def server_started(clock: Callable[[], float] = time.time) -> r.ServerStarted:
    return r.ServerStarted(clock(), __version__)


def compact(path: Path) -> tuple[int, int]:
    """Rewrite the journal at `path` without the records of jobs that are gone (forgotten),
    without task starts of complete jobs, and with task updates merged into one record.
    Replays it first to know what is gone; the new file replaces the old one atomically.
    Returns the record counts before and after."""
    try:
        with journal_file.locked(path):
            return _compact(path)
    except FileNotFoundError:
        raise journal_file.JournalError(f"Cannot read journal `{path}`: no such file") from None


def _compact(path: Path) -> tuple[int, int]:
    loaded = journal_file.read(path)
    if loaded.warning is not None:
        log.warning("%s", loaded.warning)
    state = ServerState("compact")
    replay(state, loaded.records)
    alive = state.jobs
    live = {job_id for job_id, job in alive.items() if not job.is_complete()}
    kept: list[r.Record] = []
    started: list[m.Row] = []
    finished: list[m.Row] = []
    failed: list[m.Row] = []
    crashed: list[m.Row] = []
    instances: list[m.Row] = []

    def close_updates() -> None:
        if started or finished or failed or crashed or instances:
            kept.append(
                r.TasksUpdated(
                    list(started), list(finished), list(failed), list(crashed), list(instances)
                )
            )
            started.clear()
            finished.clear()
            failed.clear()
            crashed.clear()
            instances.clear()

    def alive_ids(text: str) -> str | None:
        ids = IdSet.from_ids(i for i in parse_id_set(text) if i in alive)
        return id_text(ids) if ids else None

    for record in loaded.records:
        if isinstance(record, r.TasksUpdated):
            # Starts of complete jobs go, but those of later instances (`hq task info`).
            started.extend(
                row for row in record.started if row[0] in live or (row[0] in alive and row[1])
            )
            finished.extend(row for row in record.finished if row[0] in alive)
            failed.extend(row for row in record.failed if row[0] in alive)
            # Crash counts and earlier instances stay while the job does (`hq task info`).
            crashed.extend(row for row in record.crashed if row[0] in alive)
            instances.extend(row for row in record.instances if row[0] in alive)
            continue
        if isinstance(record, r.IdsUsed | r.JobsForgotten):
            continue
        if isinstance(
            record,
            # Each run's start stays: workers of an earlier run that never came back are not
            # taken for workers that may come back (`Replay.live_workers`).
            r.ServerStarted
            | r.QueueAdded
            | r.AllocationPlanned
            | r.AllocEventLogged
            | r.AllocationDraining
            | r.PoolChanged
            | r.WorkerJoined
            | r.WorkerLeft,
        ):
            kept.append(record)
            continue
        if isinstance(record, r.JobSubmitted | r.JobOpened):
            if record.job_id in alive:
                close_updates()
                kept.append(record)
            continue
        ids = alive_ids(record.selector)
        if ids is not None:
            close_updates()
            kept.append(attrs.evolve(record, selector=ids))
    close_updates()
    kept.append(r.IdsUsed(state.next_job_id, state.next_group_id))
    journal_file.write_atomically(path, kept)
    return len(loaded.records), len(kept)


# ---------------------------------------------------------------------------------------------
# The allocator: queues, allocations and their events


ENDED_KINDS = {
    AllocEventKind.ALLOCATION_FINISHED: AllocationState.FINISHED,
    AllocEventKind.ALLOCATION_WITHDRAWN: AllocationState.FINISHED,
    AllocEventKind.ALLOCATION_FAILED: AllocationState.FAILED,
}


class AllocJournal:
    """Queues are durable before `alloc add` (and pause, resume, remove) answer; an allocation
    before it is submitted (`AllocationPlanned`); every queue event is appended as it happens."""

    def __init__(self, service: AutoAllocService, writer: JournalWriter) -> None:
        self.service = service
        self.writer = writer
        self.requests = AllocRequests(service)

    def install(self, hub: EventHub) -> HandlerTable:
        hub.subscribe(AllocEventRecorded, self._on_event)
        self.service.process.before_submit = self._before_submit
        self.service.drains.on_start = self._on_drain
        return {
            m.AllocAddRequest: self.add,
            m.AllocQueueRequest: self.queue_action,
            m.AllocLoadRequest: self.load,
            m.AllocDrainRequest: self.drain,
        }

    def _on_drain(self, queue_id: int, allocation_id: str, grace: float) -> None:
        self.writer.append(r.AllocationDraining(queue_id, allocation_id, grace, time.time()))

    async def drain(self, req: m.AllocDrainRequest) -> m.OkResponse:
        """`hq alloc drain` answers once the drain is durable (a restart goes on with it)."""
        resp = await self.requests.drain(req)
        try:
            await self.writer.durable()
        except JournalWriteError as e:
            raise RequestError(f"{e}; the drain started but is not durable") from None
        return resp

    def _on_event(self, event: AllocEventRecorded) -> None:
        self.writer.append(
            r.AllocEventLogged(
                event.time, str(event.kind), event.queue_id, event.allocation_id, event.message
            )
        )

    async def _before_submit(self, queue_id: int, seq: int, workers: int, workdir: Path) -> None:
        await self.writer.durable(
            self.writer.append(r.AllocationPlanned(queue_id, seq, workers, str(workdir)))
        )

    async def add(self, req: m.AllocAddRequest) -> m.QueueCreatedResponse:
        # The queue is journaled before its first submission can start (same trio step).
        resp = await self.requests.add(req)
        queue = self.service.state.queues[resp.queue_id]
        seq = self.writer.append(r.QueueAdded(queue.id, queue.params, time.time()))
        try:
            await self.writer.durable(seq)
        except JournalWriteError as e:
            raise RequestError(f"{e}; the queue was added but is not durable") from None
        return resp

    async def load(self, req: m.AllocLoadRequest) -> m.AllocQueuesResponse:
        """`hq alloc load`: every queue of the file is journaled as `alloc add` journals one."""
        resp = await self.requests.load(req)
        await self.queues_added(resp.queue_ids)
        return resp

    async def queues_added(self, queue_ids: tuple[int, ...]) -> None:
        seq = None
        for queue_id in queue_ids:
            queue = self.service.state.queues[queue_id]
            seq = self.writer.append(r.QueueAdded(queue.id, queue.params, time.time()))
        if seq is None:
            return
        try:
            await self.writer.durable(seq)
        except JournalWriteError as e:
            raise RequestError(f"{e}; the queues were added but are not durable") from None

    async def queue_action(self, req: m.AllocQueueRequest) -> m.OkResponse:
        try:
            return await self.requests.queue_action(req)
        finally:
            await self.writer.durable()


def restore_allocator(
    service: AutoAllocService, records: list[r.Record], max_allocation_fails: int
) -> list[r.AllocationPlanned]:
    """Queues with their settings and events, and the allocations that were queued or running
    (the allocator then asks the batch system about them: the ones that ended meanwhile are
    recorded as ended). Returns the allocations whose submission was never confirmed (for
    `resolve_unconfirmed`)."""
    st = service.state
    planned: dict[int, r.AllocationPlanned] = {}
    early: dict[int, list[r.AllocEventLogged]] = {}
    """Events of a queue logged before its `QueueAdded` (its `queue-created`)."""
    for record in records:
        if isinstance(record, r.QueueAdded):
            st.next_queue_id = record.queue_id
            queue = st.add_queue(record.params, max_allocation_fails)
            queue.events.clear()
            queue.event_count = 0
            for event in early.pop(record.queue_id, []):
                _apply_alloc_event(st, event, planned)
        elif isinstance(record, r.AllocEventLogged) and record.queue_id not in st.queues:
            early.setdefault(record.queue_id, []).append(record)
        elif isinstance(record, r.AllocationPlanned):
            q = st.queues.get(record.queue_id)
            if q is not None:
                planned[record.queue_id] = record
                q.next_seq = max(q.next_seq, record.seq + 1)
        elif isinstance(record, r.AllocEventLogged):
            _apply_alloc_event(st, record, planned)
    return list(planned.values())


def resolve_unconfirmed(service: AutoAllocService, planned: list[r.AllocationPlanned]) -> None:
    """Allocations journaled but whose submission was never confirmed: adopted when the batch
    system's id was written to their work dir, else a `submit-failed` event names them (called
    once the journal listens, so these events are journaled too)."""
    st = service.state
    for plan in planned:
        queue = st.queues[plan.queue_id]
        name = allocation_name(plan.queue_id, plan.seq, queue.params.name)
        try:
            allocation_id = (Path(plan.workdir) / JOBID_NAME).read_text().strip()[:200]
        except OSError:
            allocation_id = ""
        if allocation_id and allocation_id not in st.allocation_queue:
            log.warning(
                "Queue %d: allocation %s was submitted as %s just before the server stopped; "
                "adopted",
                queue.id,
                name,
                allocation_id,
            )
            alloc = Allocation(
                allocation_id, queue.id, plan.seq, plan.workers, Path(plan.workdir), time.time()
            )
            st.add_allocation(queue, alloc)
        else:
            st.record(
                queue,
                AllocEventKind.SUBMIT_FAILED,
                None,
                f"the server stopped while allocation {name} was being submitted and its "
                f"submission was never confirmed; if the batch system has an allocation named "
                f"{name}, cancel it",
            )


def restored_drains(
    records: list[r.Record], clock: Callable[[], float] = time.time
) -> list[tuple[str, float]]:
    """Drains journaled (`hq alloc drain`), with the grace each has left now (at least 0);
    `resume_drains` goes on with those whose allocation is still active."""
    out: dict[str, tuple[str, float]] = {}
    now = clock()
    for record in records:
        if isinstance(record, r.AllocationDraining):
            left = max(0.0, record.at + record.grace - now)
            out[record.allocation_id] = (record.allocation_id, left)
    return list(out.values())


def resume_drains(
    service: AutoAllocService, drains: list[tuple[str, float]], reconnect_window: float
) -> None:
    """Once the allocator runs: a draining allocation stays draining across a restart."""
    for allocation_id, left in drains:
        service.drains.resume(allocation_id, left, min(left, reconnect_window))


def expect_workers_back(service: AutoAllocService, reconnect_window: float) -> None:
    """After `restore_allocator` and `resolve_unconfirmed`: the allocator cancels those of the
    restored allocations that run but whose workers do not come back within the window."""
    ids = [a.id for queue in service.state.queues.values() for a in queue.active()]
    if ids:
        service.process.expect_workers_back(ids, reconnect_window)


def _apply_alloc_event(
    st: AutoAllocState, rec: r.AllocEventLogged, planned: dict[int, r.AllocationPlanned]
) -> None:
    queue = st.queues.get(rec.queue_id)
    if queue is None:
        return
    try:
        kind = AllocEventKind(rec.kind)
    except ValueError:
        return
    queue.events.append(AllocEvent(rec.time, kind, rec.queue_id, rec.allocation_id, rec.message))
    queue.event_count += 1
    alloc = None if rec.allocation_id is None else queue.allocations.get(rec.allocation_id)
    if kind is AllocEventKind.QUEUE_PAUSED:
        queue.state = QueueState.PAUSED
        queue.pause_reason = rec.message
    elif kind is AllocEventKind.QUEUE_RESUMED:
        queue.state = QueueState.ACTIVE
        queue.pause_reason = None
    elif kind is AllocEventKind.QUEUE_REMOVED:
        queue.removed = True
    elif kind is AllocEventKind.PREALLOC_STOPPED:
        queue.prealloc_stopped = True
        queue.prealloc_started = False
    elif kind is AllocEventKind.PREALLOC_STARTED:
        queue.prealloc_stopped = False
    elif kind is AllocEventKind.SUBMIT_FAILED:
        planned.pop(rec.queue_id, None)
    elif kind is AllocEventKind.ALLOCATION_QUEUED and rec.allocation_id is not None:
        plan = planned.pop(rec.queue_id, None)
        seq, workers, workdir = (
            (plan.seq, plan.workers, Path(plan.workdir)) if plan is not None else (0, 1, Path())
        )
        new = Allocation(rec.allocation_id, rec.queue_id, seq, workers, workdir, rec.time)
        queue.allocations[new.id] = new
        st.allocation_queue[new.id] = queue.id
    elif alloc is not None and kind is AllocEventKind.ALLOCATION_STARTED:
        alloc.state = AllocationState.RUNNING
        alloc.started_at = rec.time
    elif alloc is not None and kind in ENDED_KINDS:
        alloc.state = ENDED_KINDS[kind]
        alloc.finished_at = rec.time


def continue_allocation_ids(service: AutoAllocService) -> None:
    """Before the allocator runs: the local backend numbers its allocations itself, so it goes
    on after the restored ones, and follows those still active (their process groups); told
    as the backend is made, before it is asked anything."""

    def on_new_backend(manager: str, backend: BatchBackend) -> None:
        if not isinstance(backend, LocalBackend):
            return
        for queue in service.state.queues.values():
            if queue.params.manager == manager and queue.allocations:
                active = [
                    EarlierAllocation(a.id, a.workdir, a.state is AllocationState.RUNNING)
                    for a in queue.active()
                ]
                backend.continue_after(list(queue.allocations), active)

    service.process.on_new_backend = on_new_backend
