"""The planner for multi-node tasks: allocations at least N workers wide, one per task."""

from __future__ import annotations

from hqpy.autoalloc import multinode
from hqpy.autoalloc.planner import plan_queue
from hqpy.common.demand import WaitingWork
from tests.unit.test_planner import cpus, queue_with, queued_allocation, request

HOUR = 3600.0


def mn(n: int, count: int = 1, min_time: float = 0.0) -> WaitingWork:
    return WaitingWork(request(n_nodes=n, min_time=min_time), count)


def test_only_queues_wide_enough_satisfy_a_multi_node_task() -> None:
    assert multinode.satisfiable([mn(2, 3), mn(4)], widest=2, time_limit=HOUR) == [2, 2, 2]
    assert multinode.satisfiable([mn(2)], widest=1, time_limit=HOUR) == []


def test_time_request_must_fit_the_worker_time_limit() -> None:
    assert multinode.satisfiable([mn(2, min_time=2 * HOUR)], widest=4, time_limit=HOUR) == []
    assert multinode.satisfiable([mn(2, min_time=HOUR)], widest=4, time_limit=HOUR) == [2]


def test_each_task_gets_one_allocation_as_wide_as_it_needs() -> None:
    plan = multinode.plan([3, 2], queued_sizes=[], slots=5, budget=None, size_for=None)
    assert plan.sizes == [3, 2]
    assert plan.covered == 2


def test_a_wide_enough_queued_allocation_covers_one_task() -> None:
    plan = multinode.plan([2, 2], queued_sizes=[1, 2], slots=5, budget=None, size_for=None)
    assert plan.sizes == [2]
    assert plan.needed_workers == 2


def test_backlog_and_budget_cut_the_plan() -> None:
    assert multinode.plan([2, 2, 2], [], slots=2, budget=None, size_for=None).sizes == [2, 2]
    assert multinode.plan([2, 2, 2], [], slots=5, budget=5, size_for=None).sizes == [2, 2]
    assert multinode.plan([2], [], slots=5, budget=None, size_for=4).sizes == [4]


def test_queue_submits_a_two_worker_allocation_for_a_two_node_task() -> None:
    queue = queue_with(backlog=2, workers_per_alloc=2)
    plan = plan_queue(queue, [mn(2)])
    assert plan.sizes == [2]
    assert plan.rest == []
    assert plan.needed_workers == 0


def test_queue_too_narrow_submits_nothing_and_leaves_the_task_to_others() -> None:
    queue = queue_with(backlog=2, workers_per_alloc=1)
    plan = plan_queue(queue, [mn(2)])
    assert plan.sizes == []
    assert plan.rest == [mn(2)]


def test_queued_allocation_for_a_multi_node_task_is_still_needed() -> None:
    queue = queue_with(backlog=2, workers_per_alloc=2)
    queued_allocation(queue, "1.job", workers=2)
    plan = plan_queue(queue, [mn(2)])
    assert plan.sizes == []
    assert plan.needed_workers == 2


def test_multi_node_allocations_come_first_and_share_the_backlog() -> None:
    queue = queue_with(backlog=2, workers_per_alloc=2)
    plan = plan_queue(queue, [mn(2), WaitingWork(cpus(1), 10)])
    assert plan.sizes == [2, 2]
    plan = plan_queue(queue_with(backlog=1, workers_per_alloc=2), [mn(2), WaitingWork(cpus(1), 1)])
    assert plan.sizes == [2]
