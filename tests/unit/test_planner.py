"""The planner: how many allocations of how many workers a queue submits now (pure).

The permit cases follow HyperQueue's `compute_submission_permit` tests
(`crates/hyperqueue/src/server/autoalloc/process.rs`); the demand cases follow its worked
example (a `--cpus 4` queue: tasks needing 8 cpus cause nothing, tasks needing 2 do) and its
time-request tests (`test_too_high_time_request`, `test_submit_time_request_equal_to_time_limit`).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hqpy.autoalloc.backends.local import LocalShare
from hqpy.autoalloc.planner import (
    WorkerShape,
    any_runnable,
    compute_submission_permit,
    consume,
    max_workers,
    plan_queue,
    shape_of,
    tasks_per_worker,
    workers_wanted,
)
from hqpy.autoalloc.state import Allocation, AllocationQueue, RateLimiter
from hqpy.common.demand import WaitingWork
from hqpy.common.resources import (
    ALL,
    FRACTIONS,
    ResourceAmountRequest,
    ResourceDescriptorItem,
    ResourceRequest,
    parse_descriptor,
)
from hqpy.common.states import AllocationState
from hqpy.protocol.messages import QueueParams

HOUR = 3600.0


def permit(
    wanted: int,
    *,
    backlog: int = 1,
    workers_per_alloc: int = 1,
    max_worker_count: int | None = None,
    queued: list[int] | None = None,
    running: list[int] | None = None,
) -> list[int]:
    """The permit of a queue whose queued/running allocations have these target worker counts
    (the running ones have all their workers connected, so they bring none)."""
    queued = queued or []
    running = running or []
    return compute_submission_permit(
        wanted_workers=wanted,
        coming_workers=sum(queued),
        queued_allocations=len(queued),
        backlog=backlog,
        workers_per_alloc=workers_per_alloc,
        active_workers=sum(queued) + sum(running),
        max_worker_count=max_worker_count,
    )


def request(
    *entries: tuple[str, float | int], n_nodes: int = 0, min_time: float = 0.0
) -> ResourceRequest:
    """`request(("cpus", 2), ("gpus", ALL))`: amounts in whole units, or `ALL`."""
    return ResourceRequest(
        tuple(
            ResourceAmountRequest(name, ALL if amount == ALL else round(amount * FRACTIONS))
            for name, amount in entries
        ),
        n_nodes=n_nodes,
        min_time=min_time,
    )


def cpus(n: int) -> ResourceRequest:
    return request(("cpus", n))


def items(**defs: str) -> list[ResourceDescriptorItem]:
    """Worker resources as `--cpus`/`--resource` would describe them: `items(cpus="4")`."""
    return [parse_descriptor(name, text) for name, text in defs.items()]


def partial(**defs: str) -> WorkerShape:
    shape = shape_of(items(**defs), None)
    assert shape is not None
    return shape


def exact(**defs: str) -> WorkerShape:
    shape = shape_of([], tuple(items(**defs)))
    assert shape is not None
    return shape


# --- compute_submission_permit ------------------------------------------------------------------


def test_permit_respects_backlog() -> None:
    assert permit(3, backlog=2) == [1, 1]


def test_permit_is_less_than_workers_per_alloc_when_demand_is_small() -> None:
    assert permit(1, backlog=4, workers_per_alloc=2) == [1]


def test_permit_respects_max_worker_count() -> None:
    assert permit(4, backlog=4, max_worker_count=3) == [1, 1, 1]


def test_permit_respects_max_worker_count_with_more_workers_per_alloc() -> None:
    assert permit(4, backlog=4, workers_per_alloc=2, max_worker_count=3) == [2, 1]


def test_permit_cuts_demand_into_full_allocations_and_a_remainder() -> None:
    assert permit(5, backlog=4, workers_per_alloc=2) == [2, 2, 1]
    assert permit(6, backlog=4, workers_per_alloc=3) == [3, 3]


def test_permit_subtracts_queued_allocations_from_demand() -> None:
    assert permit(2, backlog=4, queued=[1, 1]) == []
    assert permit(3, backlog=4, queued=[1, 1]) == [1]
    # A queued allocation counts for its whole target worker count.
    assert permit(5, backlog=4, workers_per_alloc=3, queued=[3]) == [2]


def test_permit_counts_queued_allocations_against_backlog() -> None:
    assert permit(10, backlog=2, queued=[1]) == [1]
    assert permit(10, backlog=2, queued=[1, 1]) == []


def test_permit_does_not_subtract_running_allocations_from_demand() -> None:
    # Their workers are real: the scheduler already gave them what they can run, so what is
    # still waiting is demand on top of them.
    assert permit(2, backlog=4, running=[1, 1]) == [1, 1]


def test_permit_counts_running_allocations_against_max_worker_count() -> None:
    assert permit(5, backlog=4, max_worker_count=3, running=[1, 1]) == [1]
    assert permit(5, backlog=4, max_worker_count=3, running=[2, 1]) == []
    assert permit(5, backlog=4, max_worker_count=3, queued=[1], running=[2]) == []


def test_permit_is_empty_without_demand() -> None:
    assert permit(0, backlog=4, workers_per_alloc=2) == []
    assert permit(0, backlog=4, max_worker_count=10) == []


def test_permit_is_empty_when_queued_workers_cover_the_demand() -> None:
    assert (
        compute_submission_permit(
            wanted_workers=3,
            coming_workers=5,
            queued_allocations=1,
            backlog=4,
            workers_per_alloc=5,
            active_workers=5,
            max_worker_count=None,
        )
        == []
    )


@given(
    wanted=st.integers(0, 200),
    queued=st.lists(st.integers(1, 8), max_size=6),
    running=st.lists(st.integers(1, 8), max_size=6),
    backlog=st.integers(1, 8),
    workers_per_alloc=st.integers(1, 8),
    max_worker_count=st.none() | st.integers(1, 60),
)
def test_permit_never_exceeds_the_queue_limits(
    wanted: int,
    queued: list[int],
    running: list[int],
    backlog: int,
    workers_per_alloc: int,
    max_worker_count: int | None,
) -> None:
    sizes = permit(
        wanted,
        backlog=backlog,
        workers_per_alloc=workers_per_alloc,
        max_worker_count=max_worker_count,
        queued=queued,
        running=running,
    )
    assert len(sizes) <= max(0, backlog - len(queued))
    assert all(1 <= size <= workers_per_alloc for size in sizes)
    assert sum(sizes) <= max(0, wanted - sum(queued))
    if max_worker_count is not None:
        assert sum(sizes) <= max(0, max_worker_count - sum(queued) - sum(running))
    # Nothing is held back that the limits allow: full allocations first, one remainder last.
    assert all(size == workers_per_alloc for size in sizes[:-1])
    budget = max(0, wanted - sum(queued))
    if max_worker_count is not None:
        budget = min(budget, max(0, max_worker_count - sum(queued) - sum(running)))
    assert sum(sizes) == min(budget, max(0, backlog - len(queued)) * workers_per_alloc)


# --- shape_of -----------------------------------------------------------------------------------


def test_shape_is_unknown_without_resources_or_a_worker() -> None:
    assert shape_of([], None) is None


def test_shape_from_queue_options_is_partial() -> None:
    shape = shape_of(items(cpus="4", mem="sum(1000)"), None)
    assert shape == WorkerShape({"cpus": 4 * FRACTIONS, "mem": 1000 * FRACTIONS}, exact=False)


def test_shape_from_a_worker_is_exact_and_wins_over_queue_options() -> None:
    shape = shape_of(items(cpus="4"), tuple(items(cpus="2x8", gpus="[0,1]")))
    assert shape == WorkerShape({"cpus": 16 * FRACTIONS, "gpus": 2 * FRACTIONS}, exact=True)


# --- tasks_per_worker ---------------------------------------------------------------------------


def test_tasks_per_worker_divides_the_worker() -> None:
    shape = partial(cpus="4")
    assert tasks_per_worker(cpus(1), shape) == 4
    assert tasks_per_worker(cpus(2), shape) == 2
    assert tasks_per_worker(cpus(3), shape) == 1
    assert tasks_per_worker(cpus(4), shape) == 1
    assert tasks_per_worker(request(("cpus", 0.5)), shape) == 8


def test_task_larger_than_the_worker_fits_zero_times() -> None:
    assert tasks_per_worker(cpus(8), partial(cpus="4")) == 0
    assert tasks_per_worker(cpus(8), exact(cpus="4")) == 0


def test_the_scarcest_resource_decides() -> None:
    shape = exact(cpus="8", gpus="[0,1]")
    assert tasks_per_worker(request(("cpus", 1), ("gpus", 1)), shape) == 2
    assert tasks_per_worker(request(("cpus", 4), ("gpus", 1)), shape) == 2
    assert tasks_per_worker(request(("cpus", 6), ("gpus", 1)), shape) == 1


def test_unknown_resource_is_unlimited_for_a_partial_shape() -> None:
    # `--cpus 4` says nothing about gpus: a worker may have them (HyperQueue: probing).
    shape = partial(cpus="4")
    assert tasks_per_worker(request(("cpus", 2), ("gpus", 1)), shape) == 2
    assert tasks_per_worker(request(("gpus", 1)), shape) == 1


def test_unknown_resource_is_absent_for_an_exact_shape() -> None:
    # A real worker without gpus has none.
    shape = exact(cpus="4")
    assert tasks_per_worker(request(("cpus", 2), ("gpus", 1)), shape) == 0


def test_all_request_takes_a_whole_worker() -> None:
    shape = exact(cpus="4", gpus="[0,1]")
    assert tasks_per_worker(request(("cpus", ALL)), shape) == 1
    assert tasks_per_worker(request(("cpus", 1), ("gpus", ALL)), shape) == 1
    assert tasks_per_worker(request(("cpus", 1), ("gpus", ALL)), exact(cpus="4")) == 0
    assert tasks_per_worker(request(("cpus", 1), ("gpus", ALL)), partial(cpus="4")) == 4


def test_multi_node_task_fits_no_single_worker() -> None:
    assert tasks_per_worker(request(n_nodes=2), partial(cpus="4")) == 0
    assert tasks_per_worker(request(n_nodes=1), exact(cpus="4")) == 0


# --- workers_wanted -----------------------------------------------------------------------------


def test_workers_wanted_packs_tasks_onto_workers() -> None:
    shape = partial(cpus="4")
    assert workers_wanted([WaitingWork(cpus(1), 10)], shape, HOUR) == 3
    assert workers_wanted([WaitingWork(cpus(2), 10)], shape, HOUR) == 5
    assert workers_wanted([WaitingWork(cpus(1), 10), WaitingWork(cpus(4), 2)], shape, HOUR) == 5


def test_workers_wanted_ignores_tasks_too_big_for_the_queue() -> None:
    # HyperQueue's worked example: a `--cpus 4` queue and tasks needing 8 cpus.
    shape = partial(cpus="4")
    assert workers_wanted([WaitingWork(cpus(8), 100)], shape, HOUR) == 0
    assert workers_wanted([WaitingWork(cpus(8), 100), WaitingWork(cpus(2), 3)], shape, HOUR) == 2


def test_workers_wanted_ignores_time_request_above_worker_time_limit() -> None:
    shape = partial(cpus="4")
    too_long = request(("cpus", 1), min_time=HOUR + 1)
    assert workers_wanted([WaitingWork(too_long, 10)], shape, HOUR) == 0


def test_workers_wanted_counts_time_request_equal_to_worker_time_limit() -> None:
    shape = partial(cpus="4")
    equal = request(("cpus", 1), min_time=HOUR)
    assert workers_wanted([WaitingWork(equal, 10)], shape, HOUR) == 3


def test_workers_wanted_ignores_multi_node_tasks() -> None:
    shape = partial(cpus="4")
    assert workers_wanted([WaitingWork(request(n_nodes=2), 5)], shape, HOUR) == 0


def test_workers_wanted_is_zero_without_waiting_tasks() -> None:
    shape = partial(cpus="4")
    assert workers_wanted([], shape, HOUR) == 0
    assert workers_wanted([WaitingWork(cpus(1), 0)], shape, HOUR) == 0


def test_probing_counts_anything_whose_time_request_fits() -> None:
    assert any_runnable([WaitingWork(cpus(64), 1)], HOUR)
    assert any_runnable([WaitingWork(request(("cpus", 1), min_time=HOUR), 1)], HOUR)
    assert not any_runnable([WaitingWork(request(("cpus", 1), min_time=HOUR + 1), 1)], HOUR)
    assert not any_runnable([WaitingWork(cpus(1), 0)], HOUR)
    assert not any_runnable([], HOUR)


@given(
    counts=st.lists(st.integers(0, 50), max_size=5),
    size=st.integers(1, 8),
    worker_cpus=st.integers(1, 16),
)
def test_workers_wanted_is_enough_and_not_more_than_one_per_task(
    counts: list[int], size: int, worker_cpus: int
) -> None:
    shape = partial(cpus=str(worker_cpus))
    work = [WaitingWork(cpus(size), n) for n in counts]
    wanted = workers_wanted(work, shape, HOUR)
    if size > worker_cpus:
        assert wanted == 0
        return
    per = worker_cpus // size
    assert wanted <= sum(counts)
    assert wanted * per >= sum(counts)


# --- consume: queues share the demand ------------------------------------------------------------


def test_consume_takes_what_the_workers_run() -> None:
    shape = partial(cpus="4")
    assert consume([WaitingWork(cpus(1), 10)], shape, 2, HOUR) == [WaitingWork(cpus(1), 2)]
    assert consume([WaitingWork(cpus(1), 10)], shape, 3, HOUR) == []
    assert consume([WaitingWork(cpus(1), 10)], shape, 0, HOUR) == [WaitingWork(cpus(1), 10)]


def test_consume_goes_through_the_groups_in_order() -> None:
    shape = partial(cpus="4")
    work = [WaitingWork(cpus(4), 3), WaitingWork(cpus(1), 8)]
    assert consume(work, shape, 4, HOUR) == [WaitingWork(cpus(1), 4)]


def test_consume_leaves_what_the_workers_cannot_run() -> None:
    shape = partial(cpus="4")
    too_big = WaitingWork(cpus(8), 5)
    too_long = WaitingWork(request(("cpus", 1), min_time=HOUR + 1), 5)
    assert consume([too_big, too_long], shape, 10, HOUR) == [too_big, too_long]


def test_consume_by_probing_workers_takes_one_task_each() -> None:
    assert consume([WaitingWork(cpus(1), 5)], None, 2, HOUR) == [WaitingWork(cpus(1), 3)]


@given(
    counts=st.lists(st.integers(0, 30), max_size=4),
    sizes=st.lists(st.integers(1, 6), min_size=4, max_size=4),
    worker_cpus=st.integers(1, 8),
    workers=st.integers(0, 40),
)
def test_consume_never_adds_work_and_frees_at_most_its_workers(
    counts: list[int], sizes: list[int], worker_cpus: int, workers: int
) -> None:
    shape = partial(cpus=str(worker_cpus))
    work = [WaitingWork(cpus(size), n) for n, size in zip(counts, sizes, strict=False)]
    left = consume(work, shape, workers, HOUR)
    assert sum(w.count for w in left) <= sum(w.count for w in work)
    before = workers_wanted(work, shape, HOUR)
    after = workers_wanted(left, shape, HOUR)
    assert after <= before
    # Each worker takes at most what it can run, so at most a few rounding workers are lost.
    assert before - after <= workers


# --- plan_queue: one queue's decision in a pass -------------------------------------------------


def queue_with(**kw: object) -> AllocationQueue:
    values: dict[str, object] = {"manager": "slurm", "time_limit": HOUR, "cpus": "1"}
    values.update(kw)
    return AllocationQueue(1, QueueParams(**values), "1", RateLimiter())  # type: ignore[arg-type]


def queued_allocation(queue: AllocationQueue, allocation_id: str, workers: int = 1) -> None:
    seq = queue.next_seq
    queue.next_seq += 1
    queue.allocations[allocation_id] = Allocation(
        allocation_id, queue.id, seq, workers, Path("/tmp"), 0.0
    )


def test_plan_submits_for_the_demand_and_leaves_the_rest() -> None:
    queue = queue_with(backlog=2)
    plan = plan_queue(queue, [WaitingWork(cpus(1), 5)])
    assert plan.sizes == [1, 1]
    assert plan.rest == [WaitingWork(cpus(1), 3)]
    assert plan.needed_workers == 5


def test_plan_counts_submissions_under_way_as_queued_allocations() -> None:
    queue = queue_with(backlog=3)
    queue.in_flight = [1, 1]
    plan = plan_queue(queue, [WaitingWork(cpus(1), 5)])
    assert plan.sizes == [1], "the backlog has room for one more, not three"
    assert plan.rest == [WaitingWork(cpus(1), 2)]


def test_plan_of_a_busy_queue_submits_nothing_but_takes_its_share() -> None:
    queue = queue_with(backlog=3)
    queue.in_flight = [1]
    plan = plan_queue(queue, [WaitingWork(cpus(1), 5)], may_submit=False)
    assert plan.sizes == []
    assert plan.rest == [WaitingWork(cpus(1), 4)]


def test_plan_needs_only_what_running_allocations_do_not_bring() -> None:
    queue = queue_with(backlog=3, workers_per_alloc=2)
    queued_allocation(queue, "1.job", workers=2)
    queue.allocations["1.job"].state = AllocationState.RUNNING  # no worker registered yet
    queued_allocation(queue, "2.job", workers=2)
    plan = plan_queue(queue, [WaitingWork(cpus(1), 3)])
    assert plan.needed_workers == 1
    assert plan.sizes == []


def test_plan_of_a_probing_queue_needs_its_queued_allocation_while_anything_waits() -> None:
    queue = queue_with(cpus=None, backlog=3)
    queued_allocation(queue, "1.job")
    assert plan_queue(queue, [WaitingWork(cpus(1), 5)]).needed_workers == 1
    assert plan_queue(queue, []).needed_workers == 0


def test_local_queue_divides_the_host_cpus() -> None:
    # The local backend's share of this machine (`SharesHost`), as the planner sees it.
    share = LocalShare(host_cpus=8)
    params = QueueParams("local", HOUR, workers_per_alloc=2)
    assert share.worker_cpus(params) == "4"
    assert LocalShare(host_cpus=1).worker_cpus(params) == "1"
    shape = partial(cpus="4")
    assert max_workers(params, shape, share) == 2
    assert max_workers(params, shape, None) is None
    with_cpus = QueueParams("local", HOUR, cpus="1")
    assert share.worker_cpus(with_cpus) is None
    assert max_workers(with_cpus, partial(cpus="1"), share) is None
    capped = QueueParams("local", HOUR, max_worker_count=5)
    assert max_workers(capped, shape, share) == 5


def test_plan_of_a_local_queue_takes_its_cpus_from_the_share() -> None:
    # 8 cpus, 2 workers per allocation: 4 cpus each, and 2 workers fill the machine.
    queue = queue_with(manager="local", cpus=None, backlog=10, workers_per_alloc=2)
    plan = plan_queue(queue, [WaitingWork(cpus(1), 10)], LocalShare(host_cpus=8))
    assert plan.sizes == [2]
    assert plan.rest == [WaitingWork(cpus(1), 2)], "the 2 workers take 8 of the 10 tasks"
