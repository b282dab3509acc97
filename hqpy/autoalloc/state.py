"""Queues, allocations and their state machines, the rate limiter and the event log. No I/O.

QUEUED --(first worker registers, or the batch system says running)--> RUNNING
QUEUED/RUNNING --(all its workers gone, or the batch system says it ended)--> FINISHED | FAILED
QUEUED/RUNNING --(its script reported its end, no worker connected)--> FINISHED | FAILED (exit code)
QUEUED/RUNNING --(hqpy cancelled it and the batch system confirmed)--> FINISHED (`canceled: ...`)
QUEUED --(no demand for a grace period, cancel confirmed)--> FINISHED (`allocation-withdrawn`)
QUEUED/RUNNING --(status unreadable > 10 / > 20 times)--> FAILED / FINISHED (no back-off)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from hqpy.autoalloc.backends.base import ExternalState, ExternalStatus
from hqpy.common.resources import ResourceDescriptorItem
from hqpy.common.states import AllocationState, AllocEventKind, QueueState
from hqpy.protocol.messages import QueueParams

SUBMISSION_DELAYS = (0.0, 60.0, 15 * 60.0, 30 * 60.0, 60 * 60.0)
"""Waits between submission attempts after consecutive failures (HyperQueue's steps)."""
MAX_SUBMISSION_FAILS = 10
MAX_QUEUED_STATUS_ERRORS = 10
MAX_RUNNING_STATUS_ERRORS = 20
CRASH_LIFETIME = 60.0
"""A worker that dies this soon after it started counts as a crash of its allocation."""
MAX_EVENTS_PER_QUEUE = 10_000
MAX_TAIL_LINES = 20
"""Lines of a failed allocation's stderr tail kept in its `allocation-failed` event."""


@attrs.frozen
class AllocEvent:
    time: float
    event: AllocEventKind
    queue_id: int
    allocation_id: str | None
    message: str


@attrs.define
class Allocation:
    id: str
    queue_id: int
    seq: int
    worker_count: int
    workdir: Path
    queued_at: float
    state: AllocationState = AllocationState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    connected: set[int] = attrs.Factory(set)
    disconnected: list[tuple[int, float, bool]] = attrs.Factory(list)
    """(worker id, lifetime in seconds, whether it was lost by a failure)."""
    status_errors: int = 0
    cancel_reason: str | None = None
    """Set when hqpy cancels it, so the loss of its workers is not taken for a crash. It stays
    set when the batch system did not confirm the cancel: a later status that says the
    allocation ended then confirms it."""
    withdrawing: bool = False
    """The cancel under way is a withdrawal (no demand left for it)."""
    unneeded_since: float | None = None
    """When a pass first found no demand for this queued allocation (None: it is needed)."""
    pending_reason: str | None = None
    """Why it waits in the batch queue, as the batch system last said (None once it runs)."""

    @property
    def is_active(self) -> bool:
        return self.state.is_active


@attrs.define
class RateLimiter:
    """Backs off after failures and tells when a queue should pause itself."""

    delays: tuple[float, ...] = SUBMISSION_DELAYS
    max_submission_fails: int = MAX_SUBMISSION_FAILS
    max_allocation_fails: int = 3
    submission_fails: int = 0
    allocation_fails: int = 0
    step: int = 0
    last_attempt: float | None = None

    def next_attempt_at(self) -> float:
        if self.last_attempt is None:
            return 0.0
        return self.last_attempt + self.delays[min(self.step, len(self.delays) - 1)]

    def can_submit(self, now: float) -> bool:
        return now >= self.next_attempt_at()

    def on_attempt(self, now: float) -> None:
        self.last_attempt = now

    def on_submission_success(self) -> None:
        self.submission_fails = 0
        if self.allocation_fails == 0:
            self.step = 0

    def on_submission_fail(self) -> None:
        self.submission_fails += 1
        self.step = min(self.step + 1, len(self.delays) - 1)

    def on_allocation_success(self) -> None:
        self.allocation_fails = 0
        self.step = 0

    def on_allocation_fail(self) -> None:
        self.allocation_fails += 1
        self.step = min(self.step + 1, len(self.delays) - 1)

    def pause_reason(self) -> str | None:
        if self.submission_fails >= self.max_submission_fails:
            return f"{self.submission_fails} submissions in a row failed"
        if self.allocation_fails >= self.max_allocation_fails:
            return f"{self.allocation_fails} allocations in a row failed"
        return None

    def reset(self) -> None:
        """Forget past failures (on `hq alloc resume`, so a resumed queue really resumes)."""
        self.submission_fails = 0
        self.allocation_fails = 0
        self.step = 0
        self.last_attempt = None


@attrs.define
class AllocationQueue:
    id: int
    params: QueueParams
    dir_name: str
    """`<id>` or `<id>-<name>`: the queue's folder under `autoalloc/`."""
    limiter: RateLimiter
    state: QueueState = QueueState.ACTIVE
    allocations: dict[str, Allocation] = attrs.Factory(dict)
    next_seq: int = 1
    known_resources: tuple[ResourceDescriptorItem, ...] | None = None
    """Resources of the latest worker that registered from this queue."""
    events: deque[AllocEvent] = attrs.Factory(lambda: deque(maxlen=MAX_EVENTS_PER_QUEUE))
    event_count: int = 0
    """Events ever recorded (also those dropped from the front of `events`)."""
    removed: bool = False
    pause_reason: str | None = None
    in_flight: list[int] = attrs.Factory(list)
    """Worker counts of the submissions under way: they count as queued allocations, so a
    pass that runs meanwhile neither submits for the same work nor hands it to the next queue."""
    prealloc_started: bool = False
    """A pool (`--preallocate N`) keeps its N allocations up: set from creation with
    `--persist`, or by `hq alloc preallocate` (a pool without `--persist`: until its N are
    submitted)."""
    prealloc_stopped: bool = False
    """Set by `hq alloc stop --preallocated`: the pool submits nothing until started again."""
    prealloc_up: bool = False
    """The pool reached its N once since it was started: a later submission replaces one."""

    def active(self) -> Iterator[Allocation]:
        return (a for a in self.allocations.values() if a.is_active)

    def queued(self) -> list[Allocation]:
        return [a for a in self.allocations.values() if a.state is AllocationState.QUEUED]

    def running(self) -> list[Allocation]:
        return [a for a in self.allocations.values() if a.state is AllocationState.RUNNING]

    def active_worker_count(self) -> int:
        """Workers that queued and running allocations stand for (their target counts)."""
        return sum(a.worker_count for a in self.active())

    def worker_time_limit(self) -> float:
        p = self.params
        return p.worker_time_limit if p.worker_time_limit is not None else p.time_limit


class AutoAllocState:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.queues: dict[int, AllocationQueue] = {}
        self.next_queue_id = 1
        self.allocation_queue: dict[str, int] = {}
        """Allocation id -> queue id, for workers that register with an allocation id."""
        self.worker_allocation: dict[int, str] = {}
        self.on_event: Callable[[AllocEvent], None] = lambda event: None

    def record(
        self,
        queue: AllocationQueue,
        event: AllocEventKind,
        allocation_id: str | None,
        message: str,
    ) -> AllocEvent:
        ev = AllocEvent(self.clock(), event, queue.id, allocation_id, message)
        queue.events.append(ev)
        queue.event_count += 1
        self.on_event(ev)
        return ev

    def live_queues(self) -> list[AllocationQueue]:
        return [q for q in self.queues.values() if not q.removed]

    def get_live(self, queue_id: int) -> AllocationQueue | None:
        q = self.queues.get(queue_id)
        return None if q is None or q.removed else q

    def add_queue(self, params: QueueParams, max_allocation_fails: int) -> AllocationQueue:
        qid = self.next_queue_id
        self.next_queue_id += 1
        dir_name = f"{qid}-{params.name}" if params.name else str(qid)
        queue = AllocationQueue(
            qid, params, dir_name, RateLimiter(max_allocation_fails=max_allocation_fails)
        )
        queue.prealloc_started = params.preallocate > 0 and params.persist
        self.queues[qid] = queue
        self.record(
            queue,
            AllocEventKind.QUEUE_CREATED,
            None,
            f"{params.manager} queue, {_describe(params)}",
        )
        return queue

    def add_allocation(self, queue: AllocationQueue, alloc: Allocation) -> None:
        queue.allocations[alloc.id] = alloc
        self.allocation_queue[alloc.id] = queue.id
        self.record(
            queue,
            AllocEventKind.ALLOCATION_QUEUED,
            alloc.id,
            f"{alloc.worker_count} worker(s) requested",
        )

    def find_allocation(self, allocation_id: str) -> tuple[AllocationQueue, Allocation] | None:
        qid = self.allocation_queue.get(allocation_id)
        if qid is None:
            return None
        queue = self.queues[qid]
        alloc = queue.allocations.get(allocation_id)
        return None if alloc is None else (queue, alloc)

    # -----------------------------------------------------------------------------------------
    # Transitions

    def start(self, queue: AllocationQueue, alloc: Allocation, message: str) -> None:
        if alloc.state is not AllocationState.QUEUED:
            return
        alloc.state = AllocationState.RUNNING
        alloc.started_at = self.clock()
        alloc.pending_reason = None
        self.record(queue, AllocEventKind.ALLOCATION_STARTED, alloc.id, message)

    def end(
        self,
        queue: AllocationQueue,
        alloc: Allocation,
        failed: bool,
        message: str,
        *,
        counts: bool = True,
        kind: AllocEventKind | None = None,
    ) -> None:
        """End an active allocation. A failure counts towards the back-off and the self-pause
        (unless `counts` is False); a normal end of a started allocation resets them; an
        allocation that never started and ended normally leaves them as they are."""
        if not alloc.is_active:
            return
        alloc.state = AllocationState.FAILED if failed else AllocationState.FINISHED
        alloc.finished_at = self.clock()
        if counts:
            if failed:
                queue.limiter.on_allocation_fail()
            elif alloc.started_at is not None:
                queue.limiter.on_allocation_success()
        if kind is None:
            kind = (
                AllocEventKind.ALLOCATION_FAILED if failed else AllocEventKind.ALLOCATION_FINISHED
            )
        self.record(queue, kind, alloc.id, message)

    def end_canceled(self, queue: AllocationQueue, alloc: Allocation) -> None:
        """The batch system confirmed hqpy's cancel (or says the allocation is gone)."""
        if alloc.withdrawing:
            self.end(
                queue,
                alloc,
                False,
                "no waiting task needed it; cancelled in the batch system",
                kind=AllocEventKind.ALLOCATION_WITHDRAWN,
            )
        else:
            self.end(queue, alloc, False, f"canceled: {alloc.cancel_reason}")

    def on_external_status(
        self, queue: AllocationQueue, alloc: Allocation, status: ExternalStatus
    ) -> None:
        """What the batch system says of an allocation. One that ended normally is FINISHED even
        if no worker ever registered (a walltime end too); only a failure counts."""
        if not alloc.is_active:
            return
        alloc.status_errors = 0
        queued = status.state is ExternalState.QUEUED
        alloc.pending_reason = status.reason if queued else None
        ended = status.state in (ExternalState.FINISHED, ExternalState.FAILED)
        if alloc.cancel_reason is not None:
            # hqpy is cancelling it: its end is hqpy's doing, not a failure.
            if ended:
                self.end_canceled(queue, alloc)
            return
        if status.state is ExternalState.RUNNING:
            self.start(queue, alloc, f"the batch system reports it running ({status.raw})")
        elif ended:
            why = f"the batch system reports it ended ({status.raw or status.state.value})"
            if status.reason:
                why += f": {status.reason}"
            if alloc.started_at is None and not alloc.disconnected:
                why += " before any worker registered"
            self.end(queue, alloc, status.state is ExternalState.FAILED, why)

    def on_end_reported(
        self, queue: AllocationQueue, alloc: Allocation, exit_code: int, stderr_tail: str
    ) -> None:
        """The allocation's script reported its end (its exit trap). With workers still
        connected, their losses end it (they are the truth); otherwise it ends now: FAILED
        on a non-zero exit code (counting towards back-off and pause), else FINISHED."""
        if not alloc.is_active:
            return
        if alloc.cancel_reason is not None:
            self.end_canceled(queue, alloc)
            return
        if alloc.connected:
            return
        why = f"its script exited with code {exit_code}"
        if not alloc.disconnected:
            why += " before any worker registered"
        tail = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
        if exit_code != 0 and tail:
            why += "; stderr: " + " | ".join(tail[-MAX_TAIL_LINES:])
        self.end(queue, alloc, exit_code != 0, why)

    def on_status_error(self, queue: AllocationQueue, alloc: Allocation) -> bool:
        """One more failed status read. A queued allocation that collected more than
        `MAX_QUEUED_STATUS_ERRORS` fails, a running one after `MAX_RUNNING_STATUS_ERRORS`
        finishes; neither counts towards the back-off, so its replacement comes at the next
        pass. True when it ended so and should be cancelled in the batch system (it may still
        exist there): not while workers of it are connected, since they are the truth."""
        if not alloc.is_active or alloc.cancel_reason is not None:
            return False
        alloc.status_errors += 1
        queued = alloc.state is AllocationState.QUEUED
        limit = MAX_QUEUED_STATUS_ERRORS if queued else MAX_RUNNING_STATUS_ERRORS
        if alloc.status_errors <= limit:
            return False
        message = f"its status could not be read {alloc.status_errors} times in a row"
        self.end(queue, alloc, queued, message, counts=False)
        return not alloc.connected

    def mark_unneeded(
        self, queue: AllocationQueue, needed_workers: int, now: float, grace: float
    ) -> list[Allocation]:
        """Queued allocations the demand no longer needs for `grace` seconds (to withdraw).

        The oldest queued allocations (closest to starting) are kept until their workers cover
        `needed_workers`; the others are unneeded since this pass, or since an earlier one."""
        due: list[Allocation] = []
        covered = 0
        for alloc in sorted(queue.queued(), key=lambda a: a.seq):
            if alloc.cancel_reason is not None:
                continue
            if covered < needed_workers:
                covered += alloc.worker_count
                alloc.unneeded_since = None
            elif alloc.unneeded_since is None:
                alloc.unneeded_since = now
            elif now - alloc.unneeded_since >= grace:
                due.append(alloc)
        return due

    def pause_if_failing(self, queue: AllocationQueue) -> bool:
        """Pause a queue whose submissions or allocations keep failing; True if it is so."""
        reason = queue.limiter.pause_reason()
        if reason is None:
            return False
        self.pause(
            queue, f"paused itself: {reason}; fix the cause, then `hq alloc resume {queue.id}`"
        )
        return True

    def on_worker_connected(
        self, worker_id: int, allocation_id: str, resources: tuple[ResourceDescriptorItem, ...]
    ) -> bool:
        """A worker registered from an allocation; False if the allocation is not ours."""
        found = self.find_allocation(allocation_id)
        if found is None:
            return False
        queue, alloc = found
        alloc.connected.add(worker_id)
        self.worker_allocation[worker_id] = allocation_id
        queue.known_resources = resources
        self.start(queue, alloc, f"worker {worker_id} registered")
        return True

    def on_worker_lost(
        self, worker_id: int, lifetime: float, failure: bool, reason: str
    ) -> str | None:
        """A worker of an allocation left. Returns the allocation's id when this ended it and
        some worker of it was lost (not stopped): its batch job may live on without workers
        (a dead node, a hung worker), so the caller cancels it."""
        allocation_id = self.worker_allocation.pop(worker_id, None)
        if allocation_id is None:
            return None
        found = self.find_allocation(allocation_id)
        if found is None:
            return None
        queue, alloc = found
        alloc.connected.discard(worker_id)
        alloc.disconnected.append((worker_id, lifetime, failure))
        if alloc.cancel_reason is not None:
            if not alloc.connected:
                self.end(queue, alloc, False, f"canceled: {alloc.cancel_reason}")
            return None
        if alloc.connected or len(alloc.disconnected) < alloc.worker_count or not alloc.is_active:
            return None
        crashed = all(f and life <= CRASH_LIFETIME for _, life, f in alloc.disconnected)
        if crashed:
            self.end(queue, alloc, True, f"all its workers crashed (last: {reason.lower()})")
        else:
            self.end(queue, alloc, False, f"all its workers ended (last: {reason.lower()})")
        return alloc.id if any(f for _, _, f in alloc.disconnected) else None

    def pause(self, queue: AllocationQueue, reason: str) -> None:
        if queue.state is QueueState.PAUSED:
            return
        queue.state = QueueState.PAUSED
        queue.pause_reason = reason
        self.record(queue, AllocEventKind.QUEUE_PAUSED, None, reason)

    def resume(self, queue: AllocationQueue) -> None:
        queue.limiter.reset()
        if queue.state is QueueState.ACTIVE:
            return
        queue.state = QueueState.ACTIVE
        queue.pause_reason = None
        self.record(queue, AllocEventKind.QUEUE_RESUMED, None, "failure counters reset")

    def remove(self, queue: AllocationQueue) -> None:
        queue.removed = True
        self.record(queue, AllocEventKind.QUEUE_REMOVED, None, "")


def _describe(p: QueueParams) -> str:
    from hqpy.common.durations import format_duration

    parts = [
        f"time limit {format_duration(p.time_limit)}",
        f"backlog {p.backlog}",
        f"{p.workers_per_alloc} worker(s) per allocation",
    ]
    if p.max_worker_count is not None:
        parts.append(f"at most {p.max_worker_count} workers")
    if p.preallocate > 0:
        parts.append(f"preallocate {p.preallocate}{' persistent' if p.persist else ''}")
    if p.filter_tags:
        parts.append(f"filter tags {', '.join(p.filter_tags)}")
    return ", ".join(parts)
