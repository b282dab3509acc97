"""The pure scheduler: which waiting task goes to which worker."""

from __future__ import annotations

import itertools

import pytest

from hqpy.common.idset import IdSet
from hqpy.common.resources import (
    ALL,
    FRACTIONS,
    ResourceAmountRequest,
    ResourceRequest,
)
from hqpy.common.states import TaskState
from hqpy.protocol.messages import TaskBody
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.scheduler import (
    MAX_PREFILL_ROUNDS,
    PREFILL_SHARE_PARTS,
    prefill_rounds,
    schedule,
)
from hqpy.server.workers import Worker
from tests.factories import cpu_resources, worker_config

_group_ids = itertools.count(1)


def request(
    cpus: float | None = 1, n_nodes: int = 0, min_time: float = 0.0, **resources: float
) -> ResourceRequest:
    """A request in whole units (`cpus=0.5` is 5,000); `ALL` passes through."""
    entries = []
    amounts = {**resources, **({} if cpus is None else {"cpus": cpus})}
    for name, amount in amounts.items():
        units = ALL if amount == ALL else round(amount * FRACTIONS)
        entries.append(ResourceAmountRequest(name, units))
    return ResourceRequest(tuple(entries), n_nodes=n_nodes, min_time=min_time)


def make_job(job_id: int = 1) -> Job:
    return Job(job_id, f"job{job_id}", None, False, now=0.0)


def add_group(
    job: Job,
    ids: str | range = range(10),
    req: ResourceRequest | None = None,
    priority: int = 0,
    mean_duration: float | None = None,
) -> TaskGroup:
    """Add a submit to `job` as `ServerState.submit` does; `mean_duration` fakes finished tasks."""
    body = TaskBody(
        group_id=next(_group_ids),
        job_id=job.id,
        args=("true",),
        env={},
        cwd="/",
        stdout=None,
        stderr=None,
        submit_dir="/",
        request=req or request(),
        priority=priority,
    )
    id_set = (
        IdSet(ids) if isinstance(ids, range) else IdSet.from_ids(int(i) for i in ids.split(","))
    )
    group = TaskGroup(body, id_set, None, 5, len(job.groups))
    job.groups.append(group)
    job.counts[TaskState.WAITING] += len(id_set)
    if mean_duration is not None:
        group.duration_sum = mean_duration * 10
        group.duration_count = 10
    return group


def make_worker(
    worker_id: int = 1,
    cpus: int = 4,
    time_limit: float | None = None,
    now: float = 0.0,
    **resources: int,
) -> Worker:
    config = worker_config(
        hostname=f"w{worker_id}",
        time_limit=time_limit,
        resources=cpu_resources(cpus, **resources),
    )
    return Worker(worker_id, config, now)


def job_ids(tasks: list[Task]) -> list[int]:
    return [t.group.body.job_id for t in tasks]


# --- order ---------------------------------------------------------------------------------------


def test_no_workers_assigns_nothing() -> None:
    job = make_job()
    group = add_group(job)
    assert schedule([(job, group)], [], now=0.0) == {}
    assert len(job.tasks) == 0


def test_higher_priority_group_is_assigned_first() -> None:
    low, high = make_job(1), make_job(2)
    low_group = add_group(low, priority=0)
    high_group = add_group(high, priority=5)
    out = schedule([(low, low_group), (high, high_group)], [make_worker(cpus=4)], now=0.0)
    assert job_ids(out[1]) == [2, 2, 2, 2]


def test_negative_priority_goes_after_default_priority() -> None:
    first, second = make_job(1), make_job(2)
    groups = [(first, add_group(first, priority=-1)), (second, add_group(second, priority=0))]
    out = schedule(groups, [make_worker(cpus=2)], now=0.0)
    assert job_ids(out[1]) == [2, 2]


def test_equal_priority_goes_in_submission_order() -> None:
    first, second = make_job(1), make_job(2)
    groups = [(second, add_group(second)), (first, add_group(first))]
    out = schedule(groups, [make_worker(cpus=4)], now=0.0)
    assert job_ids(out[1]) == [1, 1, 1, 1]


def test_earlier_submit_of_a_job_goes_first() -> None:
    job = make_job()
    earlier = add_group(job, ids=range(0, 10))
    later = add_group(job, ids=range(10, 20))
    out = schedule([(job, later), (job, earlier)], [make_worker(cpus=3)], now=0.0)
    assert [t.id for t in out[1]] == [0, 1, 2]


def test_tasks_of_a_group_go_in_id_order() -> None:
    job = make_job()
    group = add_group(job, ids="7,3,100,42")
    out = schedule([(job, group)], [make_worker(cpus=4)], now=0.0)
    assert [t.id for t in out[1]] == [3, 7, 42, 100]


def test_lower_priority_group_uses_capacity_the_higher_one_cannot() -> None:
    gpu_job, cpu_job = make_job(1), make_job(2)
    gpu_group = add_group(gpu_job, req=request(gpus=1), priority=10)
    cpu_group = add_group(cpu_job)
    out = schedule([(gpu_job, gpu_group), (cpu_job, cpu_group)], [make_worker(cpus=2)], now=0.0)
    assert job_ids(out[1]) == [2, 2]


def test_requeued_task_goes_before_untouched_ones() -> None:
    job = make_job()
    group = add_group(job, ids=range(10))
    lost_worker = make_worker(1, cpus=2)
    [_, requeued] = schedule([(job, group)], [lost_worker], now=0.0)[1]
    lost_worker.release(requeued, now=1.0)
    requeued.instance_id = 1
    group.requeued.append(requeued)
    out = schedule([(job, group)], [make_worker(2, cpus=2)], now=1.0)
    assert [(t.id, t.instance_id) for t in out[2]] == [(1, 1), (2, 0)]


# --- resources -----------------------------------------------------------------------------------


def test_tasks_fill_a_worker_up_to_its_cpus() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=2))
    out = schedule([(job, group)], [make_worker(cpus=5)], now=0.0)
    assert len(out[1]) == 2


def test_fractional_cpu_requests_share_a_cpu() -> None:
    job = make_job()
    group = add_group(job, ids=range(100), req=request(cpus=0.25))
    out = schedule([(job, group)], [make_worker(cpus=2)], now=0.0)
    assert len(out[1]) == 8


def test_task_never_goes_to_a_worker_with_too_few_cpus() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=8))
    small, big = make_worker(1, cpus=4), make_worker(2, cpus=8)
    out = schedule([(job, group)], [small, big], now=0.0)
    assert 1 not in out
    assert len(out[2]) == 1


def test_task_never_goes_to_a_worker_lacking_the_resource() -> None:
    job = make_job()
    group = add_group(job, req=request(gpus=1))
    plain, gpu = make_worker(1, cpus=4), make_worker(2, cpus=4, gpus=2)
    out = schedule([(job, group)], [plain, gpu], now=0.0)
    assert 1 not in out
    assert len(out[2]) == 2


def test_task_waits_when_no_worker_has_the_resource() -> None:
    job = make_job()
    group = add_group(job, req=request(gpus=1))
    assert schedule([(job, group)], [make_worker(cpus=4)], now=0.0) == {}
    assert group.has_waiting()
    assert len(job.tasks) == 0


def test_scarcest_resource_limits_the_number_of_tasks() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=1, gpus=1))
    out = schedule([(job, group)], [make_worker(cpus=8, gpus=3)], now=0.0)
    assert len(out[1]) == 3


def test_busy_worker_only_gets_its_free_capacity() -> None:
    job = make_job()
    first = add_group(job, ids=range(3), req=request(cpus=1))
    worker = make_worker(cpus=4)
    schedule([(job, first)], [worker], now=0.0)
    second_job = make_job(2)
    second = add_group(second_job, req=request(cpus=1))
    out = schedule([(second_job, second)], [worker], now=0.0)
    assert len(out[1]) == 1


def test_multi_node_request_never_goes_to_a_single_worker() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=None, n_nodes=2))
    assert schedule([(job, group)], [make_worker(cpus=64)], now=0.0) == {}


# --- ALL requests --------------------------------------------------------------------------------


def test_all_request_takes_the_whole_worker() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=ALL))
    worker = make_worker(cpus=4)
    out = schedule([(job, group)], [worker], now=0.0)
    assert len(out[1]) == 1
    assert worker.assigned["cpus"] == 4 * FRACTIONS


def test_all_request_leaves_no_room_for_other_tasks() -> None:
    whole, other = make_job(1), make_job(2)
    whole_group = add_group(whole, req=request(cpus=ALL), priority=1)
    other_group = add_group(other)
    out = schedule([(whole, whole_group), (other, other_group)], [make_worker(cpus=4)], now=0.0)
    assert job_ids(out[1]) == [1]


def test_all_request_waits_for_a_partly_busy_worker() -> None:
    busy, whole = make_job(1), make_job(2)
    busy_group = add_group(busy, ids=range(1))
    worker = make_worker(cpus=4)
    schedule([(busy, busy_group)], [worker], now=0.0)
    whole_group = add_group(whole, req=request(cpus=ALL))
    assert schedule([(whole, whole_group)], [worker], now=0.0) == {}


def test_all_request_of_a_missing_resource_never_fits() -> None:
    job = make_job()
    group = add_group(job, req=request(gpus=ALL))
    assert schedule([(job, group)], [make_worker(cpus=4)], now=0.0) == {}


def test_all_request_goes_to_each_worker_whatever_its_size() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=ALL))
    out = schedule([(job, group)], [make_worker(1, cpus=2), make_worker(2, cpus=16)], now=0.0)
    assert len(out[1]) == 1
    assert len(out[2]) == 1


def test_releasing_an_all_task_frees_the_worker() -> None:
    job = make_job()
    group = add_group(job, req=request(cpus=ALL))
    worker = make_worker(cpus=4)
    [task] = schedule([(job, group)], [worker], now=0.0)[1]
    worker.release(task, now=1.0)
    assert worker.assigned["cpus"] == 0
    assert len(schedule([(job, group)], [worker], now=1.0)[1]) == 1


# --- time requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_time", "fits"), [(59.0, True), (60.0, True), (60.5, False)])
def test_time_request_must_fit_the_workers_remaining_lifetime(min_time: float, fits: bool) -> None:
    job = make_job()
    group = add_group(job, req=request(min_time=min_time))
    worker = make_worker(cpus=1, time_limit=100.0, now=0.0)
    out = schedule([(job, group)], [worker], now=40.0)
    assert (1 in out) is fits


def test_time_request_fits_a_worker_without_time_limit() -> None:
    job = make_job()
    group = add_group(job, req=request(min_time=10**6))
    out = schedule([(job, group)], [make_worker(cpus=1, time_limit=None)], now=0.0)
    assert len(out[1]) == 1


def test_time_request_goes_to_the_worker_that_lives_long_enough() -> None:
    job = make_job()
    group = add_group(job, req=request(min_time=3600))
    short = make_worker(1, cpus=2, time_limit=600.0)
    long = make_worker(2, cpus=2, time_limit=7200.0)
    out = schedule([(job, group)], [short, long], now=0.0)
    assert list(out) == [2]


def test_task_without_time_request_goes_to_a_worker_about_to_end() -> None:
    job = make_job()
    group = add_group(job)
    out = schedule([(job, group)], [make_worker(cpus=1, time_limit=10.0)], now=9.99)
    assert len(out[1]) == 1


# --- prefill -------------------------------------------------------------------------------------


def test_prefill_rounds_are_zero_without_a_known_duration() -> None:
    job = make_job()
    assert prefill_rounds(add_group(job)) == 0


@pytest.mark.parametrize(
    ("mean", "rounds"), [(1.0, 0), (0.25, 1), (0.05, 5), (0.0, MAX_PREFILL_ROUNDS)]
)
def test_prefill_rounds_grow_as_tasks_get_shorter(mean: float, rounds: int) -> None:
    job = make_job()
    assert prefill_rounds(add_group(job, mean_duration=mean)) == rounds


def test_group_without_known_duration_is_not_prefilled() -> None:
    job = make_job()
    group = add_group(job, ids=range(100))
    out = schedule([(job, group)], [make_worker(cpus=2)], now=0.0)
    assert len(out[1]) == 2


def test_group_of_long_tasks_is_not_prefilled() -> None:
    job = make_job()
    group = add_group(job, ids=range(100), mean_duration=5.0)
    out = schedule([(job, group)], [make_worker(cpus=2)], now=0.0)
    assert len(out[1]) == 2


def test_group_of_short_tasks_is_prefilled_for_its_rounds() -> None:
    job = make_job()
    group = add_group(job, ids=range(100), mean_duration=0.05)
    out = schedule([(job, group)], [make_worker(cpus=2)], now=0.0)
    assert len(out[1]) == 2 * (1 + 5)


def test_every_worker_is_filled_before_any_is_prefilled() -> None:
    job = make_job()
    group = add_group(job, ids=range(5), mean_duration=0.01)
    out = schedule([(job, group)], [make_worker(1, cpus=2), make_worker(2, cpus=2)], now=0.0)
    assert len(out[2]) == 2
    assert len(out[1]) == 3


def test_long_group_gets_free_capacity_before_a_short_group_is_prefilled() -> None:
    short, long = make_job(1), make_job(2)
    short_group = add_group(short, ids=range(100), req=request(cpus=2), priority=10)
    short_group.duration_sum, short_group.duration_count = 0.1, 10
    long_group = add_group(long, ids=range(10), req=request(cpus=1), mean_duration=60.0)
    out = schedule([(short, short_group), (long, long_group)], [make_worker(cpus=3)], now=0.0)
    assert job_ids(out[1]).count(2) == 1
    assert job_ids(out[1]).count(1) > 1


def test_prefill_never_takes_more_than_the_waiting_tasks() -> None:
    job = make_job()
    group = add_group(job, ids=range(7), mean_duration=0.0)
    out = schedule([(job, group)], [make_worker(cpus=2)], now=0.0)
    assert sorted(t.id for t in out[1]) == list(range(7))
    assert not group.has_waiting()


def test_prefill_deals_the_waiting_tasks_out_in_equal_shares() -> None:
    job = make_job()
    group = add_group(job, ids=range(1000), mean_duration=0.0001)
    workers = [make_worker(i, cpus=2) for i in range(1, 5)]
    out = schedule([(job, group)], workers, now=0.0)
    # Filled to capacity (2 each), then a part of each one's share of the other 992.
    part = -(-992 // (4 * PREFILL_SHARE_PARTS))
    assert [len(out[w.id]) for w in workers] == [2 + part] * 4
    # The next passes deal the rest the same way, each worker as much as the others.
    for _ in range(200):
        more = schedule([(job, group)], workers, now=0.0)
        for worker in workers:
            for task in more.get(worker.id, []):
                out[worker.id].append(task)
                worker.release(task, 0.0)
        for worker in workers:
            for task in list(worker.tasks.values()):
                worker.release(task, 0.0)
    sizes = [len(out[w.id]) for w in workers]
    assert sum(sizes) == 1000 and max(sizes) - min(sizes) <= part


# --- bookkeeping ---------------------------------------------------------------------------------


def test_assigned_tasks_are_materialised_and_bound_to_their_worker() -> None:
    job = make_job()
    group = add_group(job, ids=range(1_000_000))
    worker = make_worker(7, cpus=3)
    out = schedule([(job, group)], [worker], now=0.0)
    assert len(job.tasks) == 3
    assert all(t.worker_id == 7 and t.state is TaskState.WAITING for t in out[7])
    assert set(worker.tasks) == {(1, 0), (1, 1), (1, 2)}
    assert group.untouched == 1_000_000 - 3


def test_a_pass_stops_looking_at_groups_once_every_worker_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100,000 waiting task groups (one per tag set) made each pass check every group against
    every worker although the workers were full: the pass now skips them, and still finds the
    multi-node groups (their reservation must not be lost) and work for a worker that frees up."""
    from hqpy.server import scheduler

    job = make_job()
    groups = [add_group(job, ids=range(i, i + 1)) for i in range(1000)]
    wide = add_group(job, ids=range(1000, 1001), req=request(cpus=None, n_nodes=2))
    workers = [make_worker(1, cpus=2), make_worker(2, cpus=2)]
    checked = 0
    real = scheduler.fits_worker

    def counting(*args: object, **kw: object) -> bool:
        nonlocal checked
        checked += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler, "fits_worker", counting)
    pairs = [(job, g) for g in [*groups, wide]]
    reserved: set[int] = set()
    out = schedule(pairs, workers, now=0.0, reserved=reserved)
    assert sum(len(t) for t in out.values()) == 4
    assert checked <= 4 * len(workers)
    assert reserved  # the multi-node task behind the full workers still reserved its workers
    checked = 0
    assert schedule(pairs, workers, now=0.0) == {}
    assert checked == 0
    # A worker that frees a slot takes the next task.
    task = next(iter(workers[0].tasks.values()))
    workers[0].release(task, 1.0)
    out = schedule(pairs, workers, now=1.0)
    assert [len(t) for t in out.values()] == [1]
