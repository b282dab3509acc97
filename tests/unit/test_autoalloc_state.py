"""Allocation state machine, rate limiter, event log and pause/resume of queues (pure).

The cases follow HyperQueue's `state.rs` and `process.rs` tests
(`bump_fail_counter_if_worker_fails_quick`, `pause_queue_when_*_fails_too_many_times`,
`respect_rate_limiter`) and the behaviour in design.md §7; `resume` resetting the limiter is
hqpy's answer to HyperQueue issue #861 (a self-paused queue could not be resumed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hqpy.autoalloc.backends.base import ExternalState, ExternalStatus
from hqpy.autoalloc.state import (
    CRASH_LIFETIME,
    MAX_EVENTS_PER_QUEUE,
    MAX_SUBMISSION_FAILS,
    SUBMISSION_DELAYS,
    Allocation,
    AllocationQueue,
    AutoAllocState,
    RateLimiter,
)
from hqpy.common.resources import ResourceDescriptorItem, parse_descriptor
from hqpy.common.states import AllocationState, AllocEventKind, QueueState
from hqpy.protocol.messages import QueueParams

EVENT_NAMES = {
    "queue-created",
    "allocation-queued",
    "allocation-started",
    "allocation-finished",
    "allocation-failed",
    "submit-failed",
    "status-error",
    "queue-paused",
    "queue-resumed",
    "queue-removed",
}
"""design.md §7: the only event names there are."""


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> AutoAllocState:
    return AutoAllocState(clock)


RESOURCES: tuple[ResourceDescriptorItem, ...] = (parse_descriptor("cpus", "4"),)


def params(**kw: object) -> QueueParams:
    values: dict[str, object] = {"manager": "slurm", "time_limit": 3600.0}
    values.update(kw)
    return QueueParams(**values)  # type: ignore[arg-type]


def add_queue(state: AutoAllocState, **kw: object) -> AllocationQueue:
    return state.add_queue(params(**kw), max_allocation_fails=3)


def add_allocation(
    state: AutoAllocState, queue: AllocationQueue, allocation_id: str = "1.job", workers: int = 1
) -> Allocation:
    seq = queue.next_seq
    queue.next_seq += 1
    alloc = Allocation(
        allocation_id, queue.id, seq, workers, Path(f"/tmp/{seq:03}"), queued_at=state.clock()
    )
    state.add_allocation(queue, alloc)
    return alloc


def state_of(alloc: Allocation) -> AllocationState:
    """The allocation's state, read afresh (mypy would keep an earlier `assert` narrowing)."""
    return alloc.state


def events(queue: AllocationQueue) -> list[tuple[str, str | None]]:
    return [(e.event, e.allocation_id) for e in queue.events]


# --- queues -------------------------------------------------------------------------------------


def test_queue_ids_count_from_one_and_name_their_directory(state: AutoAllocState) -> None:
    first = add_queue(state)
    second = add_queue(state, name="foo")
    assert (first.id, first.dir_name) == (1, "1")
    assert (second.id, second.dir_name) == (2, "2-foo")
    assert [q.id for q in state.live_queues()] == [1, 2]


def test_new_queue_is_active_and_records_queue_created(state: AutoAllocState) -> None:
    queue = add_queue(state, backlog=2, workers_per_alloc=4)
    assert queue.state is QueueState.ACTIVE
    [event] = queue.events
    assert (event.event, event.queue_id, event.allocation_id) == ("queue-created", 1, None)
    assert "backlog 2" in event.message
    assert event.time == 1000.0


def test_worker_time_limit_defaults_to_queue_time_limit(state: AutoAllocState) -> None:
    assert add_queue(state, time_limit=3600.0).worker_time_limit() == 3600.0
    assert add_queue(state, time_limit=3600.0, worker_time_limit=600.0).worker_time_limit() == 600


def test_removed_queue_is_no_longer_live(state: AutoAllocState) -> None:
    queue = add_queue(state)
    state.remove(queue)
    assert queue.removed
    assert state.live_queues() == []
    assert state.get_live(queue.id) is None
    assert events(queue)[-1] == ("queue-removed", None)


# --- allocation state machine -------------------------------------------------------------------


def test_new_allocation_is_queued(state: AutoAllocState) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    assert state_of(alloc) is AllocationState.QUEUED
    assert queue.queued() == [alloc]
    assert state.find_allocation("1.job") == (queue, alloc)
    assert events(queue)[-1] == ("allocation-queued", "1.job")


def test_first_worker_starts_the_allocation(state: AutoAllocState, clock: FakeClock) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    clock.advance(30)
    assert state.on_worker_connected(1, "1.job", RESOURCES)
    assert state_of(alloc) is AllocationState.RUNNING
    assert alloc.started_at == 1030.0
    assert queue.known_resources == RESOURCES
    clock.advance(5)
    assert state.on_worker_connected(2, "1.job", RESOURCES)
    assert alloc.started_at == 1030.0
    assert alloc.connected == {1, 2}
    assert [e for e, _ in events(queue)].count("allocation-started") == 1


def test_worker_of_unknown_allocation_is_ignored(state: AutoAllocState) -> None:
    queue = add_queue(state)
    add_allocation(state, queue)
    assert not state.on_worker_connected(1, "999.job", RESOURCES)
    assert queue.known_resources is None
    # Losing a worker that belongs to no allocation changes nothing either.
    state.on_worker_lost(7, 10.0, True, "CONNECTION LOST")
    assert events(queue)[-1] == ("allocation-queued", "1.job")


def test_allocation_finishes_when_all_its_workers_are_gone(
    state: AutoAllocState, clock: FakeClock
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    state.on_worker_connected(1, "1.job", RESOURCES)
    state.on_worker_connected(2, "1.job", RESOURCES)
    clock.advance(200)
    state.on_worker_lost(1, 200.0, False, "IDLE TIMEOUT")
    assert state_of(alloc) is AllocationState.RUNNING
    state.on_worker_lost(2, 200.0, False, "IDLE TIMEOUT")
    assert state_of(alloc) is AllocationState.FINISHED
    assert alloc.finished_at == 1200.0
    assert events(queue)[-1] == ("allocation-finished", "1.job")
    assert queue.queued() == [] and queue.running() == []


def test_allocation_waits_for_all_its_target_workers(state: AutoAllocState) -> None:
    # Only one of its two workers has come and gone: the other may still come.
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    state.on_worker_connected(1, "1.job", RESOURCES)
    state.on_worker_lost(1, 200.0, False, "STOPPED")
    assert state_of(alloc) is AllocationState.RUNNING
    state.on_worker_connected(2, "1.job", RESOURCES)
    state.on_worker_lost(2, 200.0, False, "STOPPED")
    assert state_of(alloc) is AllocationState.FINISHED


def test_allocation_fails_when_all_its_workers_crashed_within_a_minute(
    state: AutoAllocState,
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    state.on_worker_connected(1, "1.job", RESOURCES)
    state.on_worker_connected(2, "1.job", RESOURCES)
    state.on_worker_lost(1, 5.0, True, "CONNECTION LOST")
    state.on_worker_lost(2, CRASH_LIFETIME, True, "HEARTBEAT LOST")
    assert state_of(alloc) is AllocationState.FAILED
    assert events(queue)[-1] == ("allocation-failed", "1.job")
    assert "crashed" in queue.events[-1].message
    assert queue.limiter.allocation_fails == 1


@pytest.mark.parametrize(
    "losses",
    [
        pytest.param([(5.0, True), (CRASH_LIFETIME + 1, True)], id="one-lived-long"),
        pytest.param([(5.0, True), (5.0, False)], id="one-ended-normally"),
        pytest.param([(5.0, False), (5.0, False)], id="short-but-normal"),
    ],
)
def test_allocation_is_not_failed_unless_every_worker_crashed_quickly(
    state: AutoAllocState, losses: list[tuple[float, bool]]
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    for worker_id, (lifetime, failure) in enumerate(losses, 1):
        state.on_worker_connected(worker_id, "1.job", RESOURCES)
        state.on_worker_lost(worker_id, lifetime, failure, "X")
    assert state_of(alloc) is AllocationState.FINISHED
    assert queue.limiter.allocation_fails == 0


def test_canceled_allocation_ends_finished_even_if_its_workers_die_badly(
    state: AutoAllocState,
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue, workers=2)
    state.on_worker_connected(1, "1.job", RESOURCES)
    state.on_worker_connected(2, "1.job", RESOURCES)
    alloc.cancel_reason = "its queue was removed"
    state.on_worker_lost(1, 1.0, True, "CONNECTION LOST")
    assert state_of(alloc) is AllocationState.RUNNING
    state.on_worker_lost(2, 1.0, True, "CONNECTION LOST")
    assert state_of(alloc) is AllocationState.FINISHED
    assert queue.events[-1].event == "allocation-finished"
    assert queue.events[-1].message.startswith("canceled:")
    assert "its queue was removed" in queue.events[-1].message
    assert queue.limiter.allocation_fails == 0


def test_ended_allocation_does_not_change_again(state: AutoAllocState) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    state.end(queue, alloc, True, "gone")
    assert state_of(alloc) is AllocationState.FAILED
    count = queue.event_count
    state.end(queue, alloc, False, "again")
    state.start(queue, alloc, "late")
    assert state_of(alloc) is AllocationState.FAILED
    assert queue.event_count == count
    # A worker that still reports from it does not bring it back.
    state.on_worker_connected(1, "1.job", RESOURCES)
    assert state_of(alloc) is AllocationState.FAILED


def test_successful_allocation_resets_the_allocation_fail_count(state: AutoAllocState) -> None:
    queue = add_queue(state)
    first = add_allocation(state, queue, "1.job")
    state.end(queue, first, True, "crashed")
    assert queue.limiter.allocation_fails == 1
    second = add_allocation(state, queue, "2.job")
    state.on_worker_connected(1, "2.job", RESOURCES)
    state.on_worker_lost(1, 600.0, False, "IDLE TIMEOUT")
    assert state_of(second) is AllocationState.FINISHED
    assert queue.limiter.allocation_fails == 0
    assert queue.limiter.step == 0


def test_active_worker_count_is_the_target_of_queued_and_running(state: AutoAllocState) -> None:
    queue = add_queue(state)
    add_allocation(state, queue, "1.job", workers=2)
    add_allocation(state, queue, "2.job", workers=3)
    done = add_allocation(state, queue, "3.job", workers=4)
    state.on_worker_connected(1, "2.job", RESOURCES)
    state.end(queue, done, False, "done")
    assert queue.active_worker_count() == 5


# --- rate limiter -------------------------------------------------------------------------------


def test_rate_limiter_delays_follow_hyperqueue_steps() -> None:
    assert SUBMISSION_DELAYS == (0.0, 60.0, 900.0, 1800.0, 3600.0)
    limiter = RateLimiter()
    assert limiter.can_submit(0.0)
    now = 1000.0
    waits = []
    for _ in range(7):
        assert limiter.can_submit(now)
        limiter.on_attempt(now)
        limiter.on_submission_fail()
        wait = limiter.next_attempt_at() - now
        waits.append(wait)
        assert not limiter.can_submit(now + wait - 1)
        now += wait
    assert waits == [60.0, 900.0, 1800.0, 3600.0, 3600.0, 3600.0, 3600.0]


def test_rate_limiter_first_attempt_is_immediate() -> None:
    limiter = RateLimiter()
    limiter.on_attempt(1000.0)
    assert limiter.can_submit(1000.0)
    limiter.on_submission_success()
    assert limiter.can_submit(1000.0)


def test_submission_success_resets_the_delay() -> None:
    limiter = RateLimiter()
    limiter.on_attempt(1000.0)
    limiter.on_submission_fail()
    limiter.on_submission_fail()
    limiter.on_submission_success()
    assert limiter.submission_fails == 0
    assert limiter.can_submit(1000.0)


def test_submission_success_keeps_the_delay_while_allocations_fail() -> None:
    limiter = RateLimiter()
    limiter.on_attempt(1000.0)
    limiter.on_allocation_fail()
    limiter.on_submission_success()
    assert limiter.next_attempt_at() == 1060.0
    limiter.on_allocation_success()
    assert limiter.allocation_fails == 0
    assert limiter.can_submit(1000.0)


def test_allocation_failures_back_off_too() -> None:
    limiter = RateLimiter()
    limiter.on_attempt(1000.0)
    limiter.on_allocation_fail()
    limiter.on_allocation_fail()
    assert limiter.allocation_fails == 2
    assert limiter.next_attempt_at() == 1900.0


def test_pause_reason_after_ten_failed_submissions() -> None:
    limiter = RateLimiter()
    for _ in range(MAX_SUBMISSION_FAILS - 1):
        limiter.on_submission_fail()
    assert limiter.pause_reason() is None
    limiter.on_submission_fail()
    assert limiter.pause_reason() == "10 submissions in a row failed"


def test_pause_reason_after_three_failed_allocations() -> None:
    limiter = RateLimiter()
    limiter.on_allocation_fail()
    limiter.on_allocation_fail()
    assert limiter.pause_reason() is None
    limiter.on_allocation_fail()
    assert limiter.pause_reason() == "3 allocations in a row failed"


def test_allocation_fail_limit_is_configurable() -> None:
    # HQ_AUTOALLOC_MAX_ALLOCATION_FAILS, for preemptible queues (HyperQueue issue #937).
    limiter = RateLimiter(max_allocation_fails=5)
    for _ in range(4):
        limiter.on_allocation_fail()
    assert limiter.pause_reason() is None
    limiter.on_allocation_fail()
    assert limiter.pause_reason() == "5 allocations in a row failed"


def test_rate_limiter_reset_forgets_everything() -> None:
    limiter = RateLimiter()
    limiter.on_attempt(1000.0)
    for _ in range(MAX_SUBMISSION_FAILS):
        limiter.on_submission_fail()
    for _ in range(3):
        limiter.on_allocation_fail()
    limiter.reset()
    assert limiter.pause_reason() is None
    assert (limiter.submission_fails, limiter.allocation_fails, limiter.step) == (0, 0, 0)
    assert limiter.last_attempt is None
    assert limiter.can_submit(1000.0)


# --- events -------------------------------------------------------------------------------------


def test_events_use_the_names_of_the_design(state: AutoAllocState) -> None:
    queue = add_queue(state)
    seen: list[str] = []
    state.on_event = lambda event: seen.append(event.event)
    alloc = add_allocation(state, queue, "1.job")
    state.on_worker_connected(1, "1.job", RESOURCES)
    state.on_worker_lost(1, 5.0, True, "CONNECTION LOST")
    assert state_of(alloc) is AllocationState.FAILED
    done = add_allocation(state, queue, "2.job")
    state.end(queue, done, False, "the batch system reports it ended (COMPLETED)")
    state.record(queue, AllocEventKind.SUBMIT_FAILED, None, "sbatch: error")
    state.record(queue, AllocEventKind.STATUS_ERROR, None, "squeue: error")
    state.pause(queue, "paused by `hq alloc pause`")
    state.resume(queue)
    state.remove(queue)
    names = [e.event for e in queue.events]
    assert set(names) == EVENT_NAMES
    assert names[0] == "queue-created"
    assert seen == names[1:]
    assert all(e.queue_id == queue.id for e in queue.events)


def test_allocation_events_come_in_life_order(state: AutoAllocState, clock: FakeClock) -> None:
    queue = add_queue(state)
    add_allocation(state, queue)
    clock.advance(1)
    state.on_worker_connected(1, "1.job", RESOURCES)
    clock.advance(1)
    state.on_worker_lost(1, 300.0, False, "IDLE TIMEOUT")
    assert events(queue) == [
        ("queue-created", None),
        ("allocation-queued", "1.job"),
        ("allocation-started", "1.job"),
        ("allocation-finished", "1.job"),
    ]
    assert [e.time for e in queue.events] == [1000.0, 1000.0, 1001.0, 1002.0]


def test_events_are_capped_per_queue(state: AutoAllocState) -> None:
    queue = add_queue(state)
    other = add_queue(state)
    for i in range(MAX_EVENTS_PER_QUEUE + 4):
        state.record(queue, AllocEventKind.STATUS_ERROR, None, f"error {i}")
    assert MAX_EVENTS_PER_QUEUE == 10_000
    assert len(queue.events) == MAX_EVENTS_PER_QUEUE
    assert queue.event_count == MAX_EVENTS_PER_QUEUE + 5
    # The oldest are dropped: queue-created and the first four errors.
    assert queue.events[0].message == "error 4"
    assert queue.events[-1].message == f"error {MAX_EVENTS_PER_QUEUE + 3}"
    assert [e.event for e in other.events] == ["queue-created"]


# --- pause and resume ---------------------------------------------------------------------------


def test_pause_records_the_reason_once(state: AutoAllocState) -> None:
    queue = add_queue(state)
    state.pause(queue, "paused by `hq alloc pause`")
    state.pause(queue, "again")
    assert queue.state is QueueState.PAUSED
    assert queue.pause_reason == "paused by `hq alloc pause`"
    assert [e for e, _ in events(queue)] == ["queue-created", "queue-paused"]
    assert queue.events[-1].message == "paused by `hq alloc pause`"


def test_resume_reactivates_and_resets_the_rate_limiter(state: AutoAllocState) -> None:
    # HyperQueue #861: a queue that paused itself paused again at once after `resume`,
    # because its failure counters survived.
    queue = add_queue(state)
    queue.limiter.on_attempt(1000.0)
    for _ in range(MAX_SUBMISSION_FAILS):
        queue.limiter.on_submission_fail()
    reason = queue.limiter.pause_reason()
    assert reason is not None
    state.pause(queue, reason)
    state.resume(queue)
    assert queue.state is QueueState.ACTIVE
    assert queue.pause_reason is None
    assert queue.limiter.pause_reason() is None
    assert queue.limiter.can_submit(1000.0)
    assert events(queue)[-1] == ("queue-resumed", None)


def test_resume_of_an_active_queue_records_nothing(state: AutoAllocState) -> None:
    queue = add_queue(state)
    queue.limiter.on_allocation_fail()
    state.resume(queue)
    assert queue.state is QueueState.ACTIVE
    assert events(queue) == [("queue-created", None)]
    assert queue.limiter.allocation_fails == 0


# --- batch system status, status errors, withdrawal (hq #14.2, #14.3, #13.2) --------------------


def status(state: ExternalState, raw: str) -> ExternalStatus:
    return ExternalStatus(state, raw=raw)


@pytest.mark.parametrize("raw", ["COMPLETED", "TIMEOUT", "F"])
def test_normal_end_before_any_worker_is_finished_and_leaves_the_limiter(
    state: AutoAllocState, raw: str
) -> None:
    queue = add_queue(state)
    queue.limiter.on_allocation_fail()
    alloc = add_allocation(state, queue)
    state.on_external_status(queue, alloc, status(ExternalState.FINISHED, raw))
    assert state_of(alloc) is AllocationState.FINISHED
    assert queue.events[-1].message == (
        f"the batch system reports it ended ({raw}) before any worker registered"
    )
    # Neither a failure nor a success: the earlier failure still counts, no more.
    assert (queue.limiter.allocation_fails, queue.limiter.step) == (1, 1)


def test_failed_end_before_any_worker_counts(state: AutoAllocState) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    state.on_external_status(queue, alloc, status(ExternalState.FAILED, "CANCELLED"))
    assert state_of(alloc) is AllocationState.FAILED
    assert queue.limiter.allocation_fails == 1


def test_status_of_an_allocation_being_cancelled_confirms_the_cancel(
    state: AutoAllocState,
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    alloc.cancel_reason = "the server stopped"
    state.on_external_status(queue, alloc, status(ExternalState.RUNNING, "RUNNING"))
    assert state_of(alloc) is AllocationState.QUEUED
    state.on_external_status(queue, alloc, status(ExternalState.FAILED, "CANCELLED"))
    assert state_of(alloc) is AllocationState.FINISHED
    assert queue.events[-1].message == "canceled: the server stopped"
    assert queue.limiter.allocation_fails == 0


def test_queued_allocation_fails_after_more_than_ten_status_errors_without_back_off(
    state: AutoAllocState,
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    assert not any(state.on_status_error(queue, alloc) for _ in range(10))
    assert state_of(alloc) is AllocationState.QUEUED
    assert state.on_status_error(queue, alloc), "it should be cancelled in the batch system"
    assert state_of(alloc) is AllocationState.FAILED
    assert (queue.limiter.allocation_fails, queue.limiter.step) == (0, 0)
    assert not state.on_status_error(queue, alloc)


def test_running_allocation_finishes_after_more_than_twenty_status_errors(
    state: AutoAllocState,
) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    state.on_worker_connected(1, "1.job", RESOURCES)
    assert not any(state.on_status_error(queue, alloc) for _ in range(20))
    assert state_of(alloc) is AllocationState.RUNNING
    # Its worker is still connected: ended, but not cancelled under that worker.
    assert not state.on_status_error(queue, alloc)
    assert state_of(alloc) is AllocationState.FINISHED


def test_good_status_resets_the_status_error_count(state: AutoAllocState) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    for _ in range(10):
        state.on_status_error(queue, alloc)
    state.on_external_status(queue, alloc, status(ExternalState.QUEUED, "PENDING"))
    assert alloc.status_errors == 0


def test_unneeded_queued_allocations_are_due_after_the_grace_period(
    state: AutoAllocState, clock: FakeClock
) -> None:
    queue = add_queue(state)
    first = add_allocation(state, queue, "1.job", workers=2)
    second = add_allocation(state, queue, "2.job", workers=2)
    third = add_allocation(state, queue, "3.job", workers=2)
    running = add_allocation(state, queue, "4.job")
    state.on_worker_connected(1, "4.job", RESOURCES)
    assert state.mark_unneeded(queue, 3, clock(), 60.0) == []
    assert (first.unneeded_since, second.unneeded_since) == (None, None)
    assert third.unneeded_since == clock()
    assert running.unneeded_since is None
    clock.advance(59)
    assert state.mark_unneeded(queue, 3, clock(), 60.0) == []
    clock.advance(1)
    assert state.mark_unneeded(queue, 0, clock(), 60.0) == [third]
    assert second.unneeded_since == clock()
    # Needed again: the clock starts over.
    assert state.mark_unneeded(queue, 6, clock(), 60.0) == []
    assert third.unneeded_since is None


def test_withdrawn_allocation_ends_finished_with_its_own_event(state: AutoAllocState) -> None:
    queue = add_queue(state)
    alloc = add_allocation(state, queue)
    alloc.cancel_reason = "no waiting task needs it"
    alloc.withdrawing = True
    state.end_canceled(queue, alloc)
    assert state_of(alloc) is AllocationState.FINISHED
    assert (queue.events[-1].event, queue.events[-1].allocation_id) == (
        "allocation-withdrawn",
        "1.job",
    )
    assert queue.limiter.allocation_fails == 0
