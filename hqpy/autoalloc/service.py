"""The allocator loop: submit allocations when tasks wait, follow them until they end.

It wakes on events (job submitted, worker connected or lost, queue added or resumed) within
milliseconds, debounced so that a burst of events makes one pass, and otherwise on a tick.
Worker registration (the allocation id a worker reports) is the main source of truth about
allocations; polling the batch system is a slower safety net. Everything runs on the server's
trio thread: after every `await`, queues and allocations are looked up again by id, since they
may have changed or gone meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hqpy.autoalloc.backends import registry
from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BackendError,
    BatchBackend,
    StatusQueryError,
)
from hqpy.autoalloc.backends.common import allocation_name, build_worker_command, write_script
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.planner import (
    WorkerShape,
    any_runnable,
    compute_submission_permit,
    consume,
    shape_of,
    workers_wanted,
)
from hqpy.autoalloc.state import (
    MAX_QUEUED_STATUS_ERRORS,
    MAX_RUNNING_STATUS_ERRORS,
    Allocation,
    AllocationQueue,
    AllocEvent,
    AutoAllocState,
    RateLimiter,
)
from hqpy.common.demand import DemandSource, WaitingWork
from hqpy.common.errors import RequestError
from hqpy.common.events import (
    AllocationSubmitted,
    AllocEventRecorded,
    EventHub,
    JobSubmitted,
    WorkerConnected,
    WorkerLost,
)
from hqpy.common.resources import (
    FRACTIONS,
    ResourceDescriptorItem,
    parse_descriptor,
    parse_resource_arg,
)
from hqpy.common.states import AllocationState, AllocEventKind, QueueState
from hqpy.protocol import messages as m
from hqpy.protocol.messages import QueueParams

log = logging.getLogger(__name__)

CANCEL_ALL_TIMEOUT = 30.0
MANAGERS = ("slurm", "pbs", "local")


class AllocError(RequestError):
    """A request about queues that cannot be done; the message is shown to the user."""


def hq_argv() -> list[str]:
    """How a worker started by an allocation runs this same `hq`."""
    argv0 = sys.argv[0]
    if not argv0 or argv0.endswith("__main__.py") or argv0 == "-m":
        return [sys.executable, "-m", "hqpy"]
    return [os.path.abspath(argv0)]


def declared_resources(params: QueueParams) -> list[ResourceDescriptorItem]:
    """The worker resources a queue's options describe (`--cpus`, `--resource`)."""
    items = []
    if params.cpus is not None:
        items.append(parse_descriptor("cpus", params.cpus))
    for text in params.resources:
        name, definition = parse_resource_arg(text)
        items.append(parse_descriptor(name, definition))
    return items


def max_workers(params: QueueParams, shape: WorkerShape | None) -> int | None:
    """The queue's worker cap. When hqpy divides this machine's cpus among local workers (no
    `--cpus`), their workers together get as many cpus as it has, not more, unless
    `--max-worker-count` says otherwise."""
    if params.max_worker_count is not None or local_cpus(params) is None or shape is None:
        return params.max_worker_count
    per_worker = shape.capacity.get("cpus", 0) // FRACTIONS
    if per_worker <= 0:
        return None
    return max(1, len(os.sched_getaffinity(0)) // per_worker)


def local_cpus(params: QueueParams) -> str | None:
    """Local allocations share this machine: each worker gets its part of the cpus."""
    if params.manager != "local" or params.cpus is not None:
        return None
    return str(max(1, (len(os.sched_getaffinity(0))) // max(1, params.workers_per_alloc)))


class AutoAllocService:
    """The allocator: reads demand from the server through `DemandSource`, hears of jobs and
    workers through the event hub, and tells of its own steps through the hub too."""

    def __init__(
        self,
        demand: DemandSource,
        hub: EventHub,
        instance_dir: Path,
        config: AutoAllocConfig,
        make_backend: Callable[[str, trio.Nursery, float], BatchBackend] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.demand = demand
        self.hub = hub
        self.instance_dir = instance_dir
        self.config = config
        self.clock = clock
        self.state = AutoAllocState(clock)
        self.state.on_event = self._on_event
        self._make_backend = make_backend
        self._backends: dict[str, BatchBackend] = {}
        self._wakeup = trio.Event()
        self._events_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_pass = 0.0
        self._last_refresh: dict[int, float] = {}
        self._dry_runs = 0
        self._stopping = False
        self._submitting = 0
        """Submissions under way; `cancel_all` waits for them to cancel what they made."""
        hub.subscribe(JobSubmitted, lambda event: self.notify())
        hub.subscribe(WorkerConnected, self._on_worker_connected)
        hub.subscribe(WorkerLost, self._on_worker_lost)

    # -----------------------------------------------------------------------------------------
    # Life cycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._refresh_loop)
            task_status.started()
            while True:
                with trio.move_on_after(self.config.tick_interval):
                    await self._wakeup.wait()
                woken = self._wakeup.is_set()
                if woken:
                    self._wakeup = trio.Event()
                    await trio.sleep(self.config.debounce)
                due = self.clock() - self._last_pass >= self.config.max_schedule_delay
                if woken or due or self._backoff_expired():
                    await self.submit_pass()

    def notify(self) -> None:
        """Something happened that may call for allocations; a pass follows within ms."""
        self._wakeup.set()

    def backend(self, manager: str) -> BatchBackend:
        backend = self._backends.get(manager)
        if backend is None:
            assert self._nursery is not None, "the allocator is not running"
            if self._make_backend is not None:
                backend = self._make_backend(manager, self._nursery, self.config.command_timeout)
            else:
                backend = registry.make_backend(
                    manager, nursery=self._nursery, timeout=self.config.command_timeout
                )
            self._backends[manager] = backend
        return backend

    def _on_event(self, event: AllocEvent) -> None:
        log.info(
            "Queue %d: %s%s%s",
            event.queue_id,
            event.event,
            f" {event.allocation_id}" if event.allocation_id else "",
            f": {event.message}" if event.message else "",
        )
        self._events_changed.set()
        self._events_changed = trio.Event()
        queue = self.state.queues[event.queue_id]
        wait = None
        if event.event is AllocEventKind.ALLOCATION_STARTED and event.allocation_id is not None:
            alloc = queue.allocations.get(event.allocation_id)
            if alloc is not None and alloc.started_at is not None:
                wait = max(0.0, alloc.started_at - alloc.queued_at)
        self.hub.publish(
            AllocEventRecorded(
                event.time,
                event.event,
                event.queue_id,
                queue.params.manager,
                event.allocation_id,
                event.message,
                wait,
            )
        )

    def _backoff_expired(self) -> bool:
        now = self.clock()
        return any(
            q.state is QueueState.ACTIVE
            and q.limiter.last_attempt is not None
            and q.limiter.last_attempt < q.limiter.next_attempt_at() <= now
            and q.limiter.next_attempt_at() > self._last_pass
            for q in self.state.live_queues()
        )

    # -----------------------------------------------------------------------------------------
    # Worker events

    def _on_worker_connected(self, event: WorkerConnected) -> None:
        self.on_worker_connected(event.worker_id, event.allocation_id, event.resources)

    def _on_worker_lost(self, event: WorkerLost) -> None:
        self.on_worker_lost(event.worker_id, event.lifetime, event.failure, event.state)

    def on_worker_connected(
        self,
        worker_id: int,
        allocation_id: str | None,
        resources: tuple[ResourceDescriptorItem, ...],
    ) -> None:
        if allocation_id is not None:
            if self.state.on_worker_connected(worker_id, allocation_id, resources):
                found = self.state.find_allocation(allocation_id)
                backend = None if found is None else self._backends.get(found[0].params.manager)
                mark_started = getattr(backend, "mark_started", None)
                if mark_started is not None:
                    mark_started(allocation_id)
            else:
                log.debug("Worker %d is from allocation %s of no queue", worker_id, allocation_id)
        self.notify()

    def on_worker_lost(self, worker_id: int, lifetime: float, failure: bool, reason: str) -> None:
        self.state.on_worker_lost(worker_id, lifetime, failure, reason)
        self.notify()

    # -----------------------------------------------------------------------------------------
    # Submitting

    def plan(
        self, queue: AllocationQueue, work: list[WaitingWork]
    ) -> tuple[list[int], list[WaitingWork]]:
        """Worker counts of the allocations this queue should submit now, and the work that
        is left for the next queues once this queue's coming workers took their part."""
        p = queue.params
        time_limit = queue.worker_time_limit()
        declared = declared_resources(p)
        override = local_cpus(p)
        if override is not None:
            declared.append(parse_descriptor("cpus", override))
        shape = shape_of(declared, queue.known_resources)
        queued = queue.queued()
        coming = sum(a.worker_count for a in queued) + sum(
            max(0, a.worker_count - len(a.connected) - len(a.disconnected)) for a in queue.running()
        )
        if shape is None:
            # Probing: one allocation at a time until a worker tells what workers look like.
            if not any_runnable(work, time_limit) or any(True for _ in queue.active()):
                wanted = 0
            else:
                wanted = p.workers_per_alloc
        else:
            wanted = workers_wanted(work, shape, time_limit)
        sizes = compute_submission_permit(
            wanted_workers=wanted,
            coming_workers=coming,
            queued_allocations=len(queued),
            backlog=p.backlog,
            workers_per_alloc=p.workers_per_alloc,
            active_workers=queue.active_worker_count(),
            max_worker_count=max_workers(p, shape),
        )
        log.debug(
            "Queue %d: %d waiting task groups, shape %s, wanted %d workers, coming %d, "
            "queued %d/%d -> submit %s",
            queue.id,
            len(work),
            shape,
            wanted,
            coming,
            len(queued),
            p.backlog,
            sizes,
        )
        if shape is None:
            coming = sum(a.worker_count for a in queue.active())
        return sizes, consume(work, shape, coming + sum(sizes), time_limit)

    async def submit_pass(self) -> None:
        if self._stopping:
            return
        self._last_pass = self.clock()
        # Let the scheduler place what it can first: only what is left waiting is demand.
        self.demand.schedule_now()
        work = self.demand.waiting_work()
        for queue_id in [q.id for q in self.state.live_queues()]:
            queue = self.state.get_live(queue_id)
            if queue is None or queue.state is not QueueState.ACTIVE:
                continue
            if self._pause_if_failing(queue):
                continue
            now = self.clock()
            if not queue.limiter.can_submit(now):
                log.debug("Queue %d: backing off after failures", queue.id)
                continue
            sizes, work = self.plan(queue, work)
            if not sizes:
                continue
            queue.limiter.on_attempt(now)
            for size in sizes:
                if not await self._submit_one(queue_id, size):
                    break
                current = self.state.get_live(queue_id)
                if current is None or current.state is not QueueState.ACTIVE:
                    break
            current = self.state.get_live(queue_id)
            if current is not None:
                self._pause_if_failing(current)

    def _pause_if_failing(self, queue: AllocationQueue) -> bool:
        reason = queue.limiter.pause_reason()
        if reason is None:
            return False
        self.state.pause(
            queue, f"paused itself: {reason}; fix the cause, then `hq alloc resume {queue.id}`"
        )
        return True

    def allocation_request(
        self, queue: AllocationQueue, seq: int, workers: int, workdir: Path, dry_run: bool = False
    ) -> AllocationRequest:
        p = queue.params
        command = build_worker_command(
            p,
            hq_argv=hq_argv(),
            server_dir=self.instance_dir,
            manager=p.manager,
            hqpy_log=os.environ.get("HQPY_LOG"),
            cpus_override=local_cpus(p),
        )
        return AllocationRequest(
            queue_id=queue.id,
            seq=seq,
            name=allocation_name(queue.id, seq, p.name),
            worker_count=workers,
            time_limit=p.time_limit,
            additional_args=p.additional_args,
            worker_command=command,
            workdir=workdir,
            dry_run=dry_run,
        )

    async def _submit_one(self, queue_id: int, workers: int) -> bool:
        self._submitting += 1
        try:
            return await self._submit_allocation(queue_id, workers)
        finally:
            self._submitting -= 1

    async def _submit_allocation(self, queue_id: int, workers: int) -> bool:
        queue = self.state.get_live(queue_id)
        if queue is None:
            return False
        seq = queue.next_seq
        queue.next_seq += 1
        workdir = self.instance_dir / "autoalloc" / queue.dir_name / f"{seq:03}"
        backend = self.backend(queue.params.manager)
        request = self.allocation_request(queue, seq, workers, workdir)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            script = write_script(request, backend.render_script(request))
            allocation_id = await backend.submit(script, workdir)
        except (BackendError, OSError) as e:
            queue = self.state.queues[queue_id]
            queue.limiter.on_submission_fail()
            self.state.record(queue, AllocEventKind.SUBMIT_FAILED, None, str(e))
            self.hub.publish(AllocationSubmitted(queue_id, queue.params.manager, False))
            return False
        queue = self.state.queues[queue_id]
        alloc = Allocation(allocation_id, queue_id, seq, workers, workdir, self.clock())
        self.state.add_allocation(queue, alloc)
        queue.limiter.on_submission_success()
        self.hub.publish(AllocationSubmitted(queue_id, queue.params.manager, True))
        if queue.removed:
            await self._cancel(queue_id, allocation_id, "its queue was removed")
        elif self._stopping:
            await self._cancel(queue_id, allocation_id, "the server stopped")
        return True

    # -----------------------------------------------------------------------------------------
    # Following allocations

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval)
            await self.refresh(force=False)

    async def refresh(self, force: bool) -> None:
        """Ask the batch systems about active allocations (the local one on every tick)."""
        now = self.clock()
        for queue in self.state.live_queues():
            ids = [a.id for a in queue.active()]
            if not ids:
                continue
            cheap = queue.params.manager == "local"
            last = self._last_refresh.get(queue.id, 0.0)
            if not (force or cheap or now - last >= self.config.refresh_interval):
                continue
            self._last_refresh[queue.id] = now
            await self._refresh_queue(queue.id, ids)

    async def _refresh_queue(self, queue_id: int, ids: list[str]) -> None:
        queue = self.state.queues[queue_id]
        backend = self.backend(queue.params.manager)
        try:
            statuses = await backend.query(ids)
        except StatusQueryError as e:
            self._on_status_error(queue_id, ids, str(e))
            return
        queue = self.state.queues[queue_id]
        for allocation_id, status in statuses.items():
            alloc = queue.allocations.get(allocation_id)
            if alloc is None or not alloc.is_active or alloc.cancel_reason is not None:
                continue
            alloc.status_errors = 0
            ext = status.state.value
            if ext == "running" and alloc.state is AllocationState.QUEUED:
                self.state.start(
                    queue, alloc, f"the batch system reports it running ({status.raw})"
                )
            elif ext in ("finished", "failed"):
                never_started = alloc.started_at is None and not alloc.disconnected
                failed = ext == "failed" or never_started
                why = f"the batch system reports it ended ({status.raw or ext})"
                if never_started and ext == "finished":
                    why += " before any worker registered"
                self.state.end(queue, alloc, failed, why)
        self.notify()

    def _on_status_error(self, queue_id: int, ids: list[str], error: str) -> None:
        queue = self.state.queues[queue_id]
        self.state.record(queue, AllocEventKind.STATUS_ERROR, None, error)
        for allocation_id in ids:
            alloc = queue.allocations.get(allocation_id)
            if alloc is None or not alloc.is_active or alloc.cancel_reason is not None:
                continue
            alloc.status_errors += 1
            if (
                alloc.state is AllocationState.QUEUED
                and alloc.status_errors > MAX_QUEUED_STATUS_ERRORS
            ):
                self.state.end(queue, alloc, True, "its status could not be read too many times")
            elif alloc.status_errors > MAX_RUNNING_STATUS_ERRORS:
                self.state.end(queue, alloc, False, "its status could not be read too many times")

    # -----------------------------------------------------------------------------------------
    # Requests from clients

    async def add_queue(self, params: QueueParams, dry_run: bool) -> AllocationQueue:
        validate_params(params)
        if dry_run:
            await self.dry_run(params)
        self.backend(params.manager)  # ready before the first submission, which is timed
        queue = self.state.add_queue(params, self.config.max_allocation_fails)
        self.notify()
        return queue

    async def dry_run(self, params: QueueParams) -> None:
        """Submit a trial allocation and cancel it at once, so a bad option shows now."""
        validate_params(params)
        self._dry_runs += 1
        workdir = self.instance_dir / "autoalloc" / f"dry-run-{self._dry_runs}"
        probe = AllocationQueue(0, params, "dry-run", RateLimiter())
        request = self.allocation_request(probe, 1, params.workers_per_alloc, workdir, dry_run=True)
        backend = self.backend(params.manager)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            script = write_script(request, backend.render_script(request))
        except OSError as e:
            raise AllocError(f"Could not submit allocation: cannot write {workdir}: {e}") from None
        check = getattr(backend, "check_script", None)
        if check is not None:
            try:
                await check(script)
            except BackendError as e:
                raise AllocError(f"Could not submit allocation: {e}") from None
            shutil.rmtree(workdir, ignore_errors=True)
            return
        try:
            allocation_id = await backend.submit(script, workdir)
        except BackendError as e:
            raise AllocError(f"Could not submit allocation: {e}") from None
        try:
            await backend.cancel(allocation_id, workdir)
        except BackendError as e:
            raise AllocError(f"Could not cancel allocation {allocation_id}: {e}") from None
        shutil.rmtree(workdir, ignore_errors=True)

    def get_queue(self, queue_id: int) -> AllocationQueue:
        queue = self.state.get_live(queue_id)
        if queue is None:
            raise AllocError(f"Allocation queue {queue_id} not found")
        return queue

    def pause(self, queue_id: int) -> None:
        self.state.pause(self.get_queue(queue_id), "paused by `hq alloc pause`")

    def resume(self, queue_id: int) -> None:
        self.state.resume(self.get_queue(queue_id))
        self.notify()

    async def remove(self, queue_id: int, force: bool) -> None:
        queue = self.get_queue(queue_id)
        if queue.running() and not force:
            raise AllocError(
                "Allocation queue has running jobs, so it will not be removed. "
                "Use `--force` if you want to remove the queue anyway"
            )
        queue.removed = True
        for alloc in list(queue.active()):
            await self._cancel(queue_id, alloc.id, "its queue was removed")
        # Recorded last, so a follower of the events sees the cancellations before the end.
        self.state.remove(self.state.queues[queue_id])

    async def _cancel(self, queue_id: int, allocation_id: str, why: str) -> None:
        queue = self.state.queues[queue_id]
        alloc = queue.allocations.get(allocation_id)
        if alloc is None:
            return
        alloc.cancel_reason = why
        backend = self.backend(queue.params.manager)
        try:
            await backend.cancel(allocation_id, alloc.workdir)
        except BackendError as e:
            self.state.record(
                queue, AllocEventKind.STATUS_ERROR, allocation_id, f"cancel failed: {e}"
            )
        queue = self.state.queues[queue_id]
        alloc = queue.allocations.get(allocation_id)
        if alloc is not None and alloc.is_active:
            self.state.end(queue, alloc, False, f"canceled: {why}")

    async def cancel_all(self) -> None:
        """On server stop: submit nothing more and cancel every queued and running allocation
        (also one whose submission was under way)."""
        self._stopping = True
        with trio.move_on_after(CANCEL_ALL_TIMEOUT):
            while True:
                active = [
                    (queue.id, alloc.id)
                    for queue in self.state.queues.values()
                    for alloc in queue.active()
                    if alloc.cancel_reason is None
                ]
                if not active and not self._submitting:
                    return
                for queue_id, allocation_id in active:
                    await self._cancel(queue_id, allocation_id, "the server stopped")
                if self._submitting:
                    await trio.sleep(0.05)

    async def wait_for_events(self, queue_id: int, after: int) -> None:
        """Return once the queue has more than `after` events (for `alloc events --follow`)."""
        while True:
            queue = self.state.queues.get(queue_id)
            if queue is None or queue.event_count > after:
                return
            await self._events_changed.wait()

    # -----------------------------------------------------------------------------------------
    # Read model (`AllocatorReadModel`): what clients, metrics and the status page see

    def queue_views(self, include_removed: bool = False) -> list[m.QueueView]:
        queues = self.state.queues.values() if include_removed else self.state.live_queues()
        return [queue_view(q) for q in queues]

    def allocation_views(self, queue_id: int) -> list[m.AllocationView]:
        queue = self.state.queues.get(queue_id)
        if queue is None:
            return []
        return [allocation_view(a) for a in queue.allocations.values()]

    def event_views(self, queue_id: int, after: int = 0) -> list[m.AllocEventView]:
        queue = self.state.queues.get(queue_id)
        if queue is None:
            return []
        first_kept = queue.event_count - len(queue.events)
        skip = max(0, after - first_kept)
        return [
            m.AllocEventView(e.time, e.event, e.queue_id, e.allocation_id, e.message)
            for e in itertools.islice(queue.events, skip, None)
        ]


def queue_view(queue: AllocationQueue) -> m.QueueView:
    return m.QueueView(
        id=queue.id,
        params=queue.params,
        state=queue.state,
        known_resources=queue.known_resources,
        pause_reason=queue.pause_reason,
        self_paused=queue.state is QueueState.PAUSED and queue.limiter.pause_reason() is not None,
        removed=queue.removed,
        event_count=queue.event_count,
    )


def allocation_view(a: Allocation) -> m.AllocationView:
    return m.AllocationView(
        id=a.id,
        state=a.state,
        workdir=str(a.workdir),
        worker_count=a.worker_count,
        queued_at=a.queued_at,
        started_at=a.started_at,
        ended_at=a.finished_at,
        connected_workers=len(a.connected),
    )


def validate_params(params: QueueParams) -> None:
    if params.manager not in MANAGERS:
        raise AllocError(f"Unknown manager `{params.manager}`; use one of {', '.join(MANAGERS)}")
    if params.backlog < 1:
        raise AllocError("Backlog has to be at least 1")
    if params.workers_per_alloc < 1:
        raise AllocError("Workers per allocation has to be at least 1")
    if params.max_worker_count is not None and params.max_worker_count < 1:
        raise AllocError("Max worker count has to be at least 1")
    if params.time_limit <= 0:
        raise AllocError("Time limit has to be positive")
    if params.worker_time_limit is not None and params.worker_time_limit > params.time_limit:
        raise AllocError("Worker time limit cannot be larger than queue time limit")
    try:
        declared_resources(params)
    except ValueError as e:
        raise AllocError(f"Invalid worker resources: {e}") from None
