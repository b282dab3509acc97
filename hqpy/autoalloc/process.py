"""The allocator loop (HyperQueue's `process`): decides what to submit, submits, follows and
cancels allocations. Client requests do not come here directly: they go through the handle,
`service.AutoAllocService`.

It wakes on events (job submitted, worker connected or lost, queue added or resumed) within
milliseconds, debounced so that a burst of events makes one pass, and otherwise on a tick.
A **pass** reads the demand once and decides for every queue in order (pure: `planner`); what
needs the batch system then runs as a **step** of that queue in the loop's nursery, so one
queue whose `sbatch` or `squeue` hangs never holds up another. A queue whose previous step is
still running is skipped by the pass (its submissions under way count as queued allocations, so
the next queues do not submit for the same work), and a pass follows when the step ends.

Worker registration (the allocation id a worker reports) is the main source of truth about
allocations; polling the batch system is a slower safety net. Everything runs on the server's
trio thread: after every `await`, queues and allocations are looked up again by id, since they
may have changed or gone meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

from hqpy.autoalloc.backends import registry
from hqpy.autoalloc.backends.base import (
    BackendError,
    BatchBackend,
    CancelsAll,
    CancelTarget,
    SharesHost,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.cancels import cancel_bound, cancel_with_retries, unconfirmed
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.params import allocation_request
from hqpy.autoalloc.planner import QueuePlan, plan_queue
from hqpy.autoalloc.state import Allocation, AllocationQueue, AutoAllocState
from hqpy.autoalloc.templates import render_allocation_script
from hqpy.common.demand import DemandSource
from hqpy.common.events import AllocationSubmitted, EventHub
from hqpy.common.states import AllocationState, AllocEventKind, QueueState
from hqpy.protocol.messages import QueueParams

log = logging.getLogger(__name__)

BackendFactory = Callable[[str, trio.Nursery, float], BatchBackend]
"""`make_backend(manager, nursery, command_timeout)`: how tests put a fake batch system in."""

WITHDRAW_REASON = "no waiting task needs it"
RESTART_REASON = "no worker came back after the server restart"
"""Why a restored allocation that runs without a worker is cancelled (`expect_workers_back`)."""


def worker_cpus(backend: BatchBackend, params: QueueParams) -> str | None:
    """`--cpus` the backend gives workers of a queue without one (local: its share)."""
    return backend.worker_cpus(params) if isinstance(backend, SharesHost) else None


class AllocatorProcess:
    """The loop and the per-queue steps it starts; owns the backends."""

    def __init__(
        self,
        state: AutoAllocState,
        demand: DemandSource,
        hub: EventHub,
        instance_dir: Path,
        config: AutoAllocConfig,
        make_backend: BackendFactory | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.demand = demand
        self.hub = hub
        self.instance_dir = instance_dir
        self.config = config
        self.clock = clock
        self.cancel_bound = cancel_bound(config.command_timeout)
        self._make_backend = make_backend
        self._backends: dict[str, BatchBackend] = {}
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._last_pass = 0.0
        self._last_refresh: dict[int, float] = {}
        self._last_queued_refresh: dict[int, float] = {}
        self._stopping = False
        self._submitting: set[int] = set()
        """Queues with a submission step under way."""
        self.before_submit: Callable[[int, int, int, Path], Awaitable[None]] | None = None
        """Awaited before each submission (queue id, seq, workers, workdir); an OSError
        from it fails the submission."""
        self._skipped: set[int] = set()
        """Queues a pass skipped because of that step: a pass follows its end."""
        self._refreshing: set[int] = set()
        self._withdrawing: set[int] = set()
        self._submissions_done = trio.Event()
        self._submissions_done.set()
        self.reconnect_window = 0.0
        """After a restore: how long workers of restored allocations may take to come back (the
        longest `--server-lost-grace` of the workers registered when the server went; the
        server holds their tasks as long)."""
        self.on_new_backend: Callable[[str, BatchBackend], None] | None = None
        """Told of each backend when it is made, before it is used (a restore hands the local
        backend the allocations of the server before)."""
        self._restored: dict[str, float] = {}
        """Restored allocations not yet seen with a worker, with when their window opened."""

    # -----------------------------------------------------------------------------------------
    # Life cycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._refresh_loop)
            if self._restored:
                nursery.start_soon(self._cancel_unreturned)
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
                    self.submit_pass()

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
                    manager,
                    nursery=self._nursery,
                    timeout=self.config.command_timeout,
                    observer=self.hub.publish,
                )
            self._backends[manager] = backend
            if self.on_new_backend is not None:
                self.on_new_backend(manager, backend)
        return backend

    def share(self, params: QueueParams) -> SharesHost | None:
        """The queue's backend, when it shares this machine's cpus among its workers."""
        backend = self.backend(params.manager)
        return backend if isinstance(backend, SharesHost) else None

    def existing_backend(self, manager: str) -> BatchBackend | None:
        return self._backends.get(manager)

    def _start(self, name: str, step: Callable[[int], Awaitable[None]], queue_id: int) -> None:
        """Run one step of a queue in the loop's nursery, beside every other queue's."""
        assert self._nursery is not None, "the allocator is not running"
        self._nursery.start_soon(step, queue_id, name=f"queue {queue_id} {name}")

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
    # The pass: decide for every queue, start the steps

    def submit_pass(self) -> None:
        """Read the demand once, decide for each queue in order, start what needs commands."""
        if self._stopping:
            return
        now = self.clock()
        self._last_pass = now
        # Let the scheduler place what it can first: only what is left waiting is demand.
        self.demand.schedule_now()
        work = self.demand.waiting_work()
        for queue in self.state.live_queues():
            busy = queue.id in self._submitting
            plan = plan_queue(queue, work, self.share(queue.params), may_submit=not busy)
            self._withdraw_unneeded(queue, plan.needed_workers, now)
            if queue.state is not QueueState.ACTIVE or self.state.pause_if_failing(queue):
                continue
            if busy:
                self._skipped.add(queue.id)
                work = plan.rest
                continue
            if not queue.limiter.can_submit(now):
                log.debug("Queue %d: backing off after failures", queue.id)
                continue
            work = plan.rest
            self._note_pool(queue, plan)
            if not plan.sizes:
                continue
            queue.limiter.on_attempt(now)
            queue.in_flight = list(plan.sizes)
            if not self._submitting:
                self._submissions_done = trio.Event()
            self._submitting.add(queue.id)
            self._start("submit", self._submit_step, queue.id)

    def _note_pool(self, queue: AllocationQueue, plan: QueuePlan) -> None:
        """Record a pool's steps: started (all N at once) or an ended allocation replaced. A
        pool is *up* once a pass finds nothing missing; submissions before that (also retries
        after a failure) belong to its start."""
        p = queue.params
        if p.preallocate <= 0:
            return
        if not plan.pool_on:
            queue.prealloc_up = False
            return
        if plan.sizes:
            kind = (
                AllocEventKind.PREALLOC_REPLACED
                if queue.prealloc_up
                else AllocEventKind.PREALLOC_STARTED
            )
            self.state.record(
                queue,
                kind,
                None,
                f"submitting {len(plan.sizes)} allocation(s) to keep {p.preallocate} up"
                f"{' (persistent)' if p.persist else ''}",
            )
        elif (
            not p.persist
            and queue.prealloc_up
            and not queue.in_flight
            and not any(True for _ in queue.active())
        ):
            # `hq alloc preallocate` of a pool without `--persist` is one start: it ends
            # once all its allocations have.
            queue.prealloc_started = False
        if not plan.sizes:
            # Full (or at its worker cap): a later submission replaces an ended allocation.
            queue.prealloc_up = True

    # -----------------------------------------------------------------------------------------
    # Submission steps

    async def _submit_step(self, queue_id: int) -> None:
        """Submit the queue's planned allocations one after another; the first failure ends
        the step (the rate limiter decides when the queue tries again)."""
        try:
            while not self._stopping:
                queue = self.state.get_live(queue_id)
                if queue is None or queue.state is not QueueState.ACTIVE or not queue.in_flight:
                    break
                if not await self._submit_allocation(queue_id, queue.in_flight[0]):
                    break
        finally:
            queue = self.state.queues.get(queue_id)
            if queue is not None:
                queue.in_flight.clear()
            self._submitting.discard(queue_id)
            if not self._submitting:
                self._submissions_done.set()
        queue = self.state.get_live(queue_id)
        if queue is not None:
            self.state.pause_if_failing(queue)
        if queue_id in self._skipped:
            self._skipped.discard(queue_id)
            self.notify()

    async def _submit_allocation(self, queue_id: int, workers: int) -> bool:
        queue = self.state.queues[queue_id]
        seq = queue.next_seq
        queue.next_seq += 1
        workdir = self.instance_dir / "autoalloc" / queue.dir_name / f"{seq:03}"
        manager = queue.params.manager
        backend = self.backend(manager)
        request = allocation_request(
            queue.params,
            queue_id,
            seq,
            workers,
            workdir,
            instance_dir=self.instance_dir,
            cpus_override=worker_cpus(backend, queue.params),
        )
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            script = write_script(request, render_allocation_script(backend, request, queue.params))
            if self.before_submit is not None:
                # The journal: durable before the batch system hears of it.
                await self.before_submit(queue_id, seq, workers, workdir)
            allocation_id = await backend.submit(request, script)
        except (BackendError, OSError) as e:
            queue = self.state.queues[queue_id]
            if queue.in_flight:
                queue.in_flight.pop(0)
            queue.limiter.on_submission_fail()
            self.state.record(queue, AllocEventKind.SUBMIT_FAILED, None, str(e))
            self.hub.publish(AllocationSubmitted(queue_id, manager, False))
            return False
        queue = self.state.queues[queue_id]
        if queue.in_flight:
            queue.in_flight.pop(0)
        alloc = Allocation(allocation_id, queue_id, seq, workers, workdir, self.clock())
        self.state.add_allocation(queue, alloc)
        queue.limiter.on_submission_success()
        self.hub.publish(AllocationSubmitted(queue_id, manager, True))
        if queue.removed or self._stopping:
            why = "its queue was removed" if queue.removed else "the server stopped"
            await self.cancel_allocations(
                queue_id, [allocation_id], why, trio.current_time() + self.cancel_bound
            )
        return True

    # -----------------------------------------------------------------------------------------
    # Withdrawing queued allocations no task needs

    def _withdraw_unneeded(self, queue: AllocationQueue, needed_workers: int, now: float) -> None:
        due = self.state.mark_unneeded(queue, needed_workers, now, self.config.withdraw_grace)
        if not due or queue.id in self._withdrawing or self._stopping:
            return
        self._withdrawing.add(queue.id)
        ids = [a.id for a in due]

        async def step(queue_id: int) -> None:
            try:
                failures = await self.cancel_allocations(
                    queue_id,
                    ids,
                    WITHDRAW_REASON,
                    trio.current_time() + self.cancel_bound,
                    withdraw=True,
                )
            finally:
                self._withdrawing.discard(queue_id)
            # Not withdrawn: it stays an ordinary queued allocation; another try after the
            # grace period, if nothing needs it by then.
            current = self.state.queues[queue_id]
            for allocation_id in failures:
                alloc = current.allocations.get(allocation_id)
                if alloc is not None and alloc.is_active:
                    alloc.cancel_reason = None
                    alloc.withdrawing = False
                    alloc.unneeded_since = self.clock()

        self._start("withdraw", step, queue.id)

    # -----------------------------------------------------------------------------------------
    # Cancelling

    def cancel_lost(self, allocation_id: str) -> None:
        """Cancel, in the batch system, an allocation that ended because its workers were lost
        (connection broken, heartbeats missed). Its job may live on without them: on a dead
        node Slurm keeps it RUNNING, or requeues it (`JobRequeue=1`) to run again later, and a
        hung worker's job holds its nodes to the time limit. Nobody would use either."""
        found = self.state.find_allocation(allocation_id)
        if found is None or self._stopping or self._nursery is None:
            return
        log.info(
            "Queue %d: allocation %s lost all its workers; cancelling it in the batch system",
            found[0].id,
            allocation_id,
        )

        async def step(queue_id: int) -> None:
            await self.cancel_allocations(
                queue_id,
                [allocation_id],
                "all its workers were lost",
                trio.current_time() + self.cancel_bound,
            )

        self._start("cancel lost", step, found[0].id)

    async def cancel_allocations(
        self,
        queue_id: int,
        ids: Sequence[str],
        why: str,
        deadline: float,
        *,
        withdraw: bool = False,
    ) -> dict[str, str]:
        """Cancel allocations of one queue in the batch system (one `cancel_many`, retried),
        until the trio time `deadline`. An active allocation ends as canceled only when the
        batch system confirmed it; the others stay as they are, with a `cancel-failed` event.
        Returns the errors of those not confirmed (by allocation id)."""
        queue = self.state.queues[queue_id]
        targets: list[CancelTarget] = []
        for allocation_id in ids:
            alloc = queue.allocations.get(allocation_id)
            if alloc is None:
                continue
            if alloc.is_active:
                alloc.cancel_reason = why
                alloc.withdrawing = withdraw
            targets.append(CancelTarget(allocation_id, alloc.workdir))
        if not targets:
            return {}
        backend = self.backend(queue.params.manager)
        outcome = unconfirmed(targets, max(0.0, deadline - trio.current_time()))
        with trio.move_on_at(deadline):
            await cancel_with_retries(backend, targets, outcome)
        queue = self.state.queues[queue_id]
        failures = {i: error for i, error in outcome.items() if error is not None}
        for target in targets:
            alloc = queue.allocations.get(target.allocation_id)
            if target.allocation_id not in failures and alloc is not None and alloc.is_active:
                self.state.end_canceled(queue, alloc)
        by_error: dict[str, list[str]] = {}
        for allocation_id, error in failures.items():
            by_error.setdefault(error, []).append(allocation_id)
        for error, failed_ids in by_error.items():
            self.state.record(
                queue,
                AllocEventKind.CANCEL_FAILED,
                failed_ids[0] if len(failed_ids) == 1 else None,
                f"could not cancel {', '.join(failed_ids)}: {error}",
            )
        return failures

    async def cancel_all(self) -> None:
        """On server stop: submit nothing more and cancel every queued and running allocation,
        all queues in parallel, under one bound (`cancel_bound`); also the ones whose
        submission was under way. What could not be cancelled is logged and has its
        `cancel-failed` event."""
        self._stopping = True
        deadline = trio.current_time() + self.cancel_bound
        async with trio.open_nursery() as nursery:
            for queue in list(self.state.queues.values()):
                ids = [a.id for a in queue.active()]
                if ids:
                    nursery.start_soon(
                        self.cancel_allocations, queue.id, ids, "the server stopped", deadline
                    )
        with trio.move_on_at(deadline):
            # Submissions under way cancel what they make themselves (they see `stopping`).
            await self._submissions_done.wait()
            for backend in self._backends.values():
                if isinstance(backend, CancelsAll):
                    await backend.cancel_all()
        for queue in self.state.queues.values():
            left = [a.id for a in queue.active()]
            if left:
                log.warning(
                    "Queue %d: allocations %s could not be cancelled; cancel them with the "
                    "batch system (`hq alloc events %d` says why)",
                    queue.id,
                    ", ".join(left),
                    queue.id,
                )

    # -----------------------------------------------------------------------------------------
    # Allocations restored from a journal

    def expect_workers_back(self, allocation_ids: Sequence[str], window: float) -> None:
        """Restored allocations whose workers may come back within `window` seconds (call
        before `run`). One found running without a connected worker once the window has passed
        (counted from the restore, or from when it started if it was still queued) is
        cancelled: a batch job whose workers are gone only holds nodes. One still queued is
        kept: its workers connect when it starts."""
        now = self.clock()
        self.reconnect_window = window
        for allocation_id in allocation_ids:
            self._restored[allocation_id] = now

    def _restored_due(self, now: float) -> tuple[dict[int, list[str]], float]:
        """Restored allocations due for cancelling (by queue), and when to look again; drops
        those that ended, are being cancelled or have a worker back."""
        due: dict[int, list[str]] = {}
        next_at = now + self.config.tick_interval
        for allocation_id, since in list(self._restored.items()):
            found = self.state.find_allocation(allocation_id)
            alloc = None if found is None else found[1]
            if alloc is None or not alloc.is_active or alloc.connected or alloc.cancel_reason:
                del self._restored[allocation_id]
                continue
            if alloc.state is AllocationState.QUEUED:
                continue
            deadline = max(since, alloc.started_at or since) + self.reconnect_window
            if deadline <= now:
                due.setdefault(alloc.queue_id, []).append(allocation_id)
            else:
                next_at = min(next_at, deadline)
        return due, next_at

    async def _cancel_unreturned(self) -> None:
        """Cancel restored allocations that run but whose workers did not come back in time
        (`expect_workers_back`); ends once every restored allocation has a worker or ended."""
        while self._restored:
            due, next_at = self._restored_due(self.clock())
            if due:
                # What the batch system says now: one that ended meanwhile needs no cancel.
                await self.refresh(force=True)
                due, next_at = self._restored_due(self.clock())
            for queue_id, ids in due.items():
                for allocation_id in ids:
                    del self._restored[allocation_id]
                log.info("Queue %d: cancelling %s: %s", queue_id, ", ".join(ids), RESTART_REASON)
                self._start("restart cancel", partial(self._cancel_restored, ids), queue_id)
            await trio.sleep(max(0.0, next_at - self.clock()))

    async def _cancel_restored(self, ids: list[str], queue_id: int) -> None:
        await self.cancel_allocations(
            queue_id, ids, RESTART_REASON, trio.current_time() + self.cancel_bound
        )

    # -----------------------------------------------------------------------------------------
    # Following allocations

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval)
            for queue_id, queued_only in self._due_refreshes(force=False):
                assert self._nursery is not None, "the allocator is not running"
                self._nursery.start_soon(
                    self._refresh_step, queue_id, queued_only, name=f"queue {queue_id} status"
                )

    async def refresh(self, force: bool) -> None:
        """Ask the batch systems about active allocations now (each due queue in parallel) and
        return when all answered. The local backend is asked on every tick."""
        async with trio.open_nursery() as nursery:
            for queue_id, queued_only in self._due_refreshes(force):
                nursery.start_soon(self._refresh_step, queue_id, queued_only)

    def _due_refreshes(self, force: bool) -> list[tuple[int, bool]]:
        """Queues to poll now, and whether only their queued allocations are due (every
        `queued_refresh_interval`; all of them every `refresh_interval`). Each is marked
        refreshing until its poll ends. A removed queue's allocations whose cancel was not
        confirmed are still followed."""
        now = self.clock()
        due = []
        for queue in self.state.queues.values():
            if queue.id in self._refreshing or not any(True for _ in queue.active()):
                continue
            cheap = queue.params.manager == "local"
            last = self._last_refresh.get(queue.id, 0.0)
            if force or cheap or now - last >= self.config.refresh_interval:
                self._last_refresh[queue.id] = now
                self._last_queued_refresh[queue.id] = now
                queued_only = False
            elif queue.queued() and (
                now - self._last_queued_refresh.setdefault(queue.id, now)
                >= self.config.queued_refresh_interval
            ):
                self._last_queued_refresh[queue.id] = now
                queued_only = True
            else:
                continue
            self._refreshing.add(queue.id)
            due.append((queue.id, queued_only))
        return due

    async def _refresh_step(self, queue_id: int, queued_only: bool = False) -> None:
        try:
            queue = self.state.queues[queue_id]
            allocations = queue.queued() if queued_only else list(queue.active())
            ids = [a.id for a in allocations]
            if not ids:
                return
            backend = self.backend(queue.params.manager)
            try:
                statuses = await backend.query(ids)
            except BackendError as e:
                await self._on_status_error(queue_id, ids, str(e))
                return
            queue = self.state.queues[queue_id]
            for allocation_id, status in statuses.items():
                alloc = queue.allocations.get(allocation_id)
                if alloc is not None:
                    self.state.on_external_status(queue, alloc, status)
        finally:
            self._refreshing.discard(queue_id)
            self.notify()

    async def _on_status_error(self, queue_id: int, ids: list[str], error: str) -> None:
        queue = self.state.queues[queue_id]
        self.state.record(queue, AllocEventKind.STATUS_ERROR, None, error)
        ended = [
            allocation_id
            for allocation_id in ids
            if (alloc := queue.allocations.get(allocation_id)) is not None
            and self.state.on_status_error(queue, alloc)
        ]
        if ended:
            # It may still exist in the batch system: make sure it does not run unseen.
            self.notify()
            await self.cancel_allocations(
                queue_id,
                ended,
                "its status could not be read",
                trio.current_time() + self.cancel_bound,
            )
