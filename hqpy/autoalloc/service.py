"""The allocator's handle (HyperQueue's `service`): what the rest of the server uses.

The composition root builds one `AutoAllocService`, runs it (`run`, which is the loop of
`process.AllocatorProcess`) and cancels its allocations on stop (`cancel_all`). Worker events
come in through the event hub; client requests (`hq alloc ...`, see `requests`) call the typed
methods here; readers (metrics, status page) use the `AllocatorReadModel` views.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import trio

from hqpy.autoalloc import partitions
from hqpy.autoalloc.backends.base import (
    BackendError,
    CancelTarget,
    ChecksScripts,
    TracksWorkers,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.cancels import cancel_bound, cancel_with_retries, unconfirmed
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.drain import Drains
from hqpy.autoalloc.params import AllocError, allocation_request, validate_params
from hqpy.autoalloc.planner import declared_resources, shape_of
from hqpy.autoalloc.process import AllocatorProcess, BackendFactory, worker_cpus
from hqpy.autoalloc.state import AllocationQueue, AllocEvent, AutoAllocState
from hqpy.autoalloc.templates import render_allocation_script
from hqpy.autoalloc.views import AllocatorViews
from hqpy.common import drain as reasons
from hqpy.common.demand import DemandSource, QueueOffer
from hqpy.common.drain import AllocationControl
from hqpy.common.events import (
    AllocationEndReported,
    AllocEventRecorded,
    EventHub,
    JobSubmitted,
    TasksUnfittable,
    WorkerConnected,
    WorkerLost,
)
from hqpy.common.resources import parse_descriptor
from hqpy.common.states import AllocationState, AllocEventKind, QueueState
from hqpy.protocol import messages as m
from hqpy.protocol.messages import QueueParams

__all__ = ["AllocError", "AutoAllocService"]

log = logging.getLogger(__name__)


class AutoAllocService:
    """The allocator: reads demand from the server through `DemandSource`, hears of jobs and
    workers through the event hub, and tells of its own steps through the hub too."""

    def __init__(
        self,
        demand: DemandSource,
        hub: EventHub,
        instance_dir: Path,
        config: AutoAllocConfig,
        make_backend: BackendFactory | None = None,
        clock: Callable[[], float] = time.time,
        control: AllocationControl | None = None,
    ) -> None:
        self.hub = hub
        self.control = control
        """How the allocator stops an allocation's workers without losing their tasks."""
        self.instance_dir = instance_dir
        self.config = config
        self.clock = clock
        self.state = AutoAllocState(clock)
        self.state.on_event = self._on_event
        self._events_changed = trio.Event()
        self.process = AllocatorProcess(
            self.state,
            demand,
            hub,
            instance_dir,
            config,
            make_backend,
            clock,
        )
        self.views = AllocatorViews(self.state, self.default_worker_cpus)
        self.cancel_bound = cancel_bound(config.command_timeout)
        self.drains = Drains(self.state, self.process, control, self.cancel_bound, hub)
        self._dry_runs = 0
        hub.subscribe(JobSubmitted, lambda event: self.notify())
        hub.subscribe(WorkerConnected, self._on_worker_connected)
        hub.subscribe(WorkerLost, self._on_worker_lost)
        hub.subscribe(AllocationEndReported, self._on_end_reported)
        hub.subscribe(TasksUnfittable, self._on_tasks_unfittable)

    # -----------------------------------------------------------------------------------------
    # Life cycle (the composition root)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.process.run(task_status=task_status)

    async def cancel_all(self) -> None:
        """On server stop: cancel every queued and running allocation (see the process)."""
        await self.process.cancel_all()

    def notify(self) -> None:
        """Something happened that may call for allocations; a pass follows within ms."""
        self.process.notify()

    async def refresh(self, force: bool) -> None:
        await self.process.refresh(force)

    def _on_tasks_unfittable(self, event: TasksUnfittable) -> None:
        """Tasks that fit no queue: every queue records it, so `alloc events` shows why they
        start no allocation (the submit already warned; the reason names the closest queue)."""
        tasks = "1 task" if event.count == 1 else f"{event.count} tasks"
        for queue in self.state.live_queues():
            self.state.record(
                queue,
                AllocEventKind.TASKS_UNFITTABLE,
                None,
                f"{tasks} of job {event.job_id} fit no queue: {event.reason}",
            )

    def _on_event(self, event: AllocEvent) -> None:
        """Every allocator event goes to the log, to `alloc events --follow` waiters and to the
        hub (metrics, status page)."""
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

    # -----------------------------------------------------------------------------------------
    # Worker events

    def _on_worker_connected(self, event: WorkerConnected) -> None:
        allocation_id = event.allocation_id
        if allocation_id is not None:
            if self.state.on_worker_connected(event.worker_id, allocation_id, event.resources):
                found = self.state.find_allocation(allocation_id)
                manager = None if found is None else found[0].params.manager
                backend = None if manager is None else self.process.existing_backend(manager)
                if isinstance(backend, TracksWorkers):
                    backend.mark_started(allocation_id)
            else:
                log.debug(
                    "Worker %d is from allocation %s of no queue", event.worker_id, allocation_id
                )
        self.notify()

    def _on_worker_lost(self, event: WorkerLost) -> None:
        lost = self.state.on_worker_lost(
            event.worker_id, event.lifetime, event.failure, event.state
        )
        if lost is not None:
            self.process.cancel_lost(lost)
        self.notify()

    def _on_end_reported(self, event: AllocationEndReported) -> None:
        found = self.state.find_allocation(event.allocation_id)
        if found is None:
            log.debug("Allocation %s of no queue reported its end", event.allocation_id)
            return
        queue, alloc = found
        self.state.on_end_reported(queue, alloc, event.exit_code, event.stderr_tail)
        self.notify()

    # -----------------------------------------------------------------------------------------
    # Requests from clients

    async def add_queue(self, params: QueueParams, dry_run: bool) -> AllocationQueue:
        validate_params(params)
        if dry_run:
            await self.dry_run(params)
        self.process.backend(params.manager)  # ready before the first submission, which is timed
        queue = self.state.add_queue(params, self.config.max_allocation_fails)
        self.notify()
        return queue

    async def dry_run(self, params: QueueParams, print_script: bool = False) -> Path | None:
        """Submit a trial allocation and cancel it at once, so a bad option shows now (a
        backend that can check its script without submitting, as local does, only checks).
        With `print_script`, only render the script and return its allocation dir (kept, so
        that the client can print `hq-submit.sh`)."""
        validate_params(params)
        self._dry_runs += 1
        workdir = self.instance_dir / "autoalloc" / f"dry-run-{self._dry_runs}"
        backend = self.process.backend(params.manager)
        request = allocation_request(
            params,
            0,
            1,
            params.workers_per_alloc,
            workdir,
            instance_dir=self.instance_dir,
            cpus_override=worker_cpus(backend, params),
            dry_run=True,
        )
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            script = write_script(request, render_allocation_script(backend, request, params))
        except OSError as e:
            raise AllocError(f"Could not submit allocation: cannot write {workdir}: {e}") from None
        except BackendError as e:
            raise AllocError(f"Could not submit allocation: {e}") from None
        if print_script:
            return workdir
        if isinstance(backend, ChecksScripts):
            try:
                await backend.check_script(script)
            except BackendError as e:
                raise AllocError(f"Could not submit allocation: {e}") from None
            shutil.rmtree(workdir, ignore_errors=True)
            return None
        try:
            allocation_id = await backend.submit(request, script)
        except BackendError as e:
            raise AllocError(f"Could not submit allocation: {e}") from None
        targets = [CancelTarget(allocation_id, workdir)]
        outcome = unconfirmed(targets, self.cancel_bound)
        with trio.move_on_after(self.cancel_bound):
            await cancel_with_retries(backend, targets, outcome)
        error = outcome[allocation_id]
        if error is not None:
            raise AllocError(f"Could not cancel allocation {allocation_id}: {error}")
        shutil.rmtree(workdir, ignore_errors=True)
        return None

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
        """Remove a queue and cancel its queued (and, with `force`, running) allocations.

        Raises:
            AllocError: running allocations without `force`; or some allocations could not be
                cancelled (the queue is removed all the same; they stay active, and server
                stop tries again).
        """
        queue = self.get_queue(queue_id)
        if queue.running() and not force:
            raise AllocError(
                "Allocation queue has running jobs, so it will not be removed. "
                "Use `--force` if you want to remove the queue anyway"
            )
        queue.removed = True  # submits nothing more, also while the cancels run
        if self.control is not None:
            # The cancel ends their workers; their tasks go back to waiting, not as crashes.
            for alloc in queue.running():
                self.control.hand_back(alloc.id, reasons.REMOVED, stop=False)
        ids = [a.id for a in queue.active()]
        failures = await self.process.cancel_allocations(
            queue_id, ids, "its queue was removed", trio.current_time() + self.cancel_bound
        )
        # Recorded last, so a follower of the events sees the cancellations before the end.
        self.state.remove(self.state.queues[queue_id])
        if failures:
            first = next(iter(failures.values())).strip().splitlines()
            raise AllocError(
                f"Allocation queue {queue_id} was removed, but allocations "
                f"{', '.join(failures)} could not be cancelled"
                f"{': ' + first[0] if first else ''}; cancel them with the batch system "
                f"(`hq alloc events {queue_id}` has the details)"
            )

    def drain(self, allocation_id: str, grace: float) -> None:
        """`hq alloc drain`: see `drain.Drains`.

        Raises:
            AllocError: no such allocation, or it has ended or is draining already.
        """
        self.drains.start(allocation_id, grace)

    def find_queues(self, names: tuple[str, ...]) -> list[AllocationQueue]:
        """Queues by id or name; a name that matches none is an error."""
        out: list[AllocationQueue] = []
        for name in names:
            found = [
                q for q in self.state.live_queues() if str(q.id) == name or q.params.name == name
            ]
            if not found:
                raise AllocError(
                    f"Allocation queue `{name}` not found; `hq alloc list` shows the queues"
                )
            out.extend(q for q in found if q not in out)
        return out

    def _pools(self, names: tuple[str, ...], persistent_only: bool) -> list[AllocationQueue]:
        queues = self.find_queues(names) if names else self.state.live_queues()
        for q in queues:
            if names and q.params.preallocate <= 0:
                raise AllocError(
                    f"Allocation queue {q.id} is not a pool; "
                    "add one with `hq alloc add ... --preallocate N`"
                )
        pools = [q for q in queues if q.params.preallocate > 0]
        if persistent_only and not names:
            pools = [q for q in pools if q.params.persist or q.prealloc_started]
        return pools

    def preallocate(self, names: tuple[str, ...]) -> list[int]:
        """`hq alloc preallocate`: start the pools' allocations now (also a stopped one)."""
        pools = self._pools(names, persistent_only=False)
        for q in pools:
            q.prealloc_started = True
            q.prealloc_stopped = False
        self.notify()
        return [q.id for q in pools]

    async def stop_preallocated(self, names: tuple[str, ...], now: bool) -> list[int]:
        """`hq alloc stop --preallocated`: the pools stop keeping their allocations up; queued
        ones are cancelled, running ones are drained (their workers take no new task and stop
        when their running tasks have finished; `now`: cancelled at once)."""
        pools = self._pools(names, persistent_only=True)
        control = self.control
        for q in pools:
            q.prealloc_started = False
            q.prealloc_stopped = True
            q.prealloc_up = False
            ids = [a.id for a in q.active() if a.state is AllocationState.QUEUED]
            drained: list[str] = []
            for a in q.running():
                if now or not a.connected or control is None:
                    ids.append(a.id)
                else:
                    drained.append(a.id)
            how = (
                "cancelling all its allocations"
                if now
                else "its workers finish their running tasks and stop"
            )
            self.state.record(q, AllocEventKind.PREALLOC_STOPPED, None, how)
            if control is not None:
                for allocation_id in drained:
                    control.drain(allocation_id)
            if ids:
                await self.process.cancel_allocations(
                    q.id,
                    ids,
                    "its pool was stopped",
                    trio.current_time() + self.cancel_bound,
                )
        self.notify()
        return [q.id for q in pools]

    async def load_queues(self, queues: tuple[QueueParams, ...]) -> list[int]:
        """Add the queues of a configuration: all checked first, then all added (a bad one
        adds none)."""
        for i, params in enumerate(queues):
            try:
                validate_params(params)
            except AllocError as e:
                label = params.name or f"#{i + 1}"
                raise AllocError(f"queue {label}: {e}; no queue was added") from None
        for params in queues:
            self.process.backend(params.manager)
        ids = [self.state.add_queue(p, self.config.max_allocation_fails).id for p in queues]
        self.notify()
        return ids

    def queue_offers(self) -> list[QueueOffer]:
        """`QueueOffers`: what each queue's workers could give a task (the fit check)."""
        out = []
        for q in sorted(self.state.live_queues(), key=lambda q: q.id):
            p = q.params
            declared = declared_resources(p)
            cpus = None if p.cpus is not None else self.default_worker_cpus(p)
            if cpus is not None:
                declared.append(parse_descriptor("cpus", cpus))
            shape = shape_of(declared, q.known_resources)
            out.append(
                QueueOffer(
                    queue_id=q.id,
                    name=p.name or str(q.id),
                    manager=p.manager,
                    capacity=None if shape is None else dict(shape.capacity),
                    exact=shape is not None and shape.exact,
                    time_limit=q.worker_time_limit(),
                    workers_per_alloc=partitions.widest_group(p.splits, p.workers_per_alloc),
                    filter_tags=frozenset(p.filter_tags),
                    paused=q.state is not QueueState.ACTIVE,
                )
            )
        return out

    async def wait_for_events(self, queue_id: int, after: int) -> None:
        """Return once the queue has more than `after` events (for `alloc events --follow`)."""
        while True:
            queue = self.state.queues.get(queue_id)
            if queue is None or queue.event_count > after:
                return
            await self._events_changed.wait()

    def default_worker_cpus(self, params: QueueParams) -> str | None:
        """`--cpus` the queue's workers get when it sets none (a local queue's share)."""
        backend = self.process.existing_backend(params.manager)
        return None if backend is None else worker_cpus(backend, params)

    # -----------------------------------------------------------------------------------------
    # Read model (`AllocatorReadModel`): what clients, metrics and the status page see

    def queue_views(self, include_removed: bool = False) -> list[m.QueueView]:
        return self.views.queue_views(include_removed)

    def allocation_views(self, queue_id: int) -> list[m.AllocationView]:
        return self.views.allocation_views(queue_id)

    def event_views(self, queue_id: int, after: int = 0) -> list[m.AllocEventView]:
        return self.views.event_views(queue_id, after)
