"""The pure rules of preallocated pools and queue filter tags (planner and params)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hqpy.autoalloc.params import AllocError, memory_args, validate_params, worker_params
from hqpy.autoalloc.planner import (
    WorkerShape,
    any_runnable,
    consume,
    declared_resources,
    plan_queue,
    pool_on,
    preallocation_permit,
    workers_wanted,
)
from hqpy.autoalloc.state import Allocation, AllocationQueue, RateLimiter
from hqpy.common.demand import WaitingWork
from hqpy.common.resources import FRACTIONS, ResourceAmountRequest, ResourceRequest
from hqpy.protocol.messages import QueueParams

ONE_CPU = ResourceRequest((ResourceAmountRequest("cpus", FRACTIONS),))
SHAPE = WorkerShape({"cpus": 4 * FRACTIONS}, exact=False)


def params(**kw: object) -> QueueParams:
    values: dict[str, object] = {"manager": "slurm", "time_limit": 3600.0, "cpus": "4"}
    values.update(kw)
    return QueueParams(**values)  # type: ignore[arg-type]


def queue(**kw: object) -> AllocationQueue:
    return AllocationQueue(1, params(**kw), "1", RateLimiter(max_allocation_fails=3))


def test_permit_submits_every_missing_allocation_at_once() -> None:
    got = preallocation_permit(
        pool=4, allocations=1, workers_per_alloc=2, active_workers=2, max_worker_count=None
    )
    assert got == [2, 2, 2]


def test_permit_stops_at_the_worker_cap() -> None:
    got = preallocation_permit(
        pool=4, allocations=0, workers_per_alloc=2, active_workers=0, max_worker_count=5
    )
    assert got == [2, 2, 1]
    assert (
        preallocation_permit(
            pool=4, allocations=2, workers_per_alloc=2, active_workers=4, max_worker_count=4
        )
        == []
    )


def test_permit_is_empty_when_the_pool_is_full() -> None:
    assert (
        preallocation_permit(
            pool=2, allocations=2, workers_per_alloc=1, active_workers=2, max_worker_count=None
        )
        == []
    )


@pytest.mark.parametrize(
    ("kw", "started", "stopped", "work", "expected"),
    [
        ({}, False, False, True, False),  # not a pool
        ({"preallocate": 2}, False, False, False, False),
        ({"preallocate": 2}, False, False, True, True),
        ({"preallocate": 2}, True, False, False, True),
        ({"preallocate": 2, "persist": True}, False, False, False, True),
        ({"preallocate": 2, "persist": True}, True, True, True, False),
    ],
)
def test_pool_on(
    kw: dict[str, object], started: bool, stopped: bool, work: bool, expected: bool
) -> None:
    assert pool_on(params(**kw), started, stopped, work) is expected


def test_filter_tags_limit_demand() -> None:
    plain = WaitingWork(ONE_CPU, 8)
    tagged = WaitingWork(ONE_CPU, 8, frozenset({"gpu", "x=1"}))
    gpu = frozenset({"gpu"})
    assert workers_wanted([plain, tagged], SHAPE, 3600.0, gpu) == 2
    assert workers_wanted([plain, tagged], SHAPE, 3600.0) == 4
    assert not any_runnable([plain], 3600.0, gpu)
    assert any_runnable([tagged], 3600.0, gpu)


def test_consume_keeps_tags_and_leaves_what_the_queue_cannot_run() -> None:
    tagged = WaitingWork(ONE_CPU, 8, frozenset({"gpu"}))
    plain = WaitingWork(ONE_CPU, 3)
    left = consume([tagged, plain], SHAPE, 1, 3600.0, frozenset({"gpu"}))
    assert left == [WaitingWork(ONE_CPU, 4, frozenset({"gpu"})), plain]


def test_plan_of_a_pool_ignores_the_backlog() -> None:
    q = queue(preallocate=3, backlog=1)
    plan = plan_queue(q, [WaitingWork(ONE_CPU, 1)])
    assert plan.sizes == [1, 1, 1]
    assert plan.pool_on


def test_plan_of_a_pool_without_work_its_workers_can_run() -> None:
    q = queue(preallocate=3, filter_tags=("small",))
    plan = plan_queue(q, [WaitingWork(ONE_CPU, 5)])
    assert plan.sizes == [] and not plan.pool_on
    assert plan.rest == [WaitingWork(ONE_CPU, 5)]


def test_plan_of_a_started_pool_without_persist_does_not_replace() -> None:
    q = queue(preallocate=2)
    q.prealloc_started = True
    assert plan_queue(q, []).sizes == [1, 1]
    q.prealloc_up = True
    q.allocations["1.job"] = Allocation("1.job", 1, 1, 1, Path(), 0.0)
    plan = plan_queue(q, [])
    assert plan.sizes == []
    assert plan.needed_workers == 1  # its queued allocation is kept


def test_memory_is_the_workers_mem_in_mib() -> None:
    p = params(memory=16 * 2**30)
    assert [r.name for r in declared_resources(p)] == ["cpus", "mem"]
    assert worker_params(p).resources == ("mem=sum(16384)",)
    own = params(memory=2**30, resources=("mem=sum(10)",))
    assert worker_params(own).resources == ("mem=sum(10)",)


@pytest.mark.parametrize(
    ("manager", "expected"),
    [
        ("slurm", ("--mem=16384M",)),
        ("pbs", ("-l mem=16384mb",)),
        ("lsf", ("-R rusage[mem=16384]",)),
        ("htcondor", ("request_memory = 16384",)),
        ("sge", ("-l h_vmem=16384M,mem_free=16384M",)),
        ("local", ()),
    ],
)
def test_memory_in_each_batch_systems_syntax(manager: str, expected: tuple[str, ...]) -> None:
    assert memory_args(manager, 16 * 2**30) == expected
    assert memory_args(manager, None) == ()


def test_persistent_workers_get_their_time_limit_as_idle_timeout() -> None:
    p = params(preallocate=1, persist=True, idle_timeout=60.0, worker_time_limit=1800.0)
    assert worker_params(p).idle_timeout == 1800.0
    assert worker_params(attrs.evolve(p, persist=False)).idle_timeout == 60.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"persist": True}, "--persist needs --preallocate"),
        ({"preallocate": -1}, "Preallocate has to be at least 0"),
        ({"memory": 1000}, "Memory has to be at least 1 MiB"),
        ({"filter_tags": ("a b",)}, "Invalid filter tag"),
    ],
)
def test_invalid_pool_options(kw: dict[str, object], message: str) -> None:
    with pytest.raises(AllocError, match=message):
        validate_params(params(**kw))
