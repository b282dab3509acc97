"""Multi-node tasks in the pure scheduler: whole workers of one group, reservation, starvation."""

from __future__ import annotations

from hqpy.common.resources import ResourceRequest
from hqpy.server import multinode
from hqpy.server.jobs import Job, TaskGroup
from hqpy.server.scheduler import schedule
from hqpy.server.workers import Worker
from tests.factories import cpu_resources, worker_config
from tests.unit.test_scheduler import add_group, make_job, request


def worker(worker_id: int, group: str, cpus: int = 2, time_limit: float | None = None) -> Worker:
    config = worker_config(
        hostname=f"n{worker_id}.cluster",
        resources=cpu_resources(cpus),
        group=group,
        time_limit=time_limit,
    )
    return Worker(worker_id, config, 0.0)


def nodes(n: int, min_time: float = 0.0) -> ResourceRequest:
    return request(cpus=None, n_nodes=n, min_time=min_time)


def mn_job(n: int, job_id: int = 1, count: int = 1, priority: int = 0) -> tuple[Job, TaskGroup]:
    job = make_job(job_id)
    return job, add_group(job, ids=range(count), req=nodes(n), priority=priority)


def test_task_takes_n_idle_workers_of_one_group_and_runs_on_the_first() -> None:
    job, group = mn_job(2)
    workers = [worker(1, "a"), worker(2, "b"), worker(3, "b")]
    out = schedule([(job, group)], workers, now=0.0)
    assert list(out) == [2]
    task = out[2][0]
    assert task.nodes == ((2, "n2.cluster"), (3, "n3.cluster"))
    assert multinode.host_rows(task) == ["n2.cluster", "n3.cluster"]
    assert workers[1].mn_task == workers[2].mn_task == (1, 0)
    assert workers[0].mn_task is None
    assert workers[2].idle_since is None


def test_no_group_wide_enough_starts_nothing() -> None:
    job, group = mn_job(3)
    workers = [worker(1, "a"), worker(2, "a"), worker(3, "b")]
    assert schedule([(job, group)], workers, now=0.0) == {}
    assert all(w.mn_task is None for w in workers)


def test_held_workers_get_no_single_node_task_until_it_ends() -> None:
    job, group = mn_job(2)
    workers = [worker(1, "a"), worker(2, "a")]
    out = schedule([(job, group)], workers, now=0.0)
    task = out[1][0]
    other = make_job(2)
    single = add_group(other, ids=range(4), req=request(cpus=1))
    assert schedule([(other, single)], workers, now=0.0) == {}
    workers[0].release(task, 1.0)
    multinode.release(task, {w.id: w for w in workers}, 1.0)
    assert workers[1].idle_since == 1.0
    out = schedule([(other, single)], workers, now=1.0)
    assert sorted(out) == [1, 2]


def test_two_tasks_fill_two_groups() -> None:
    job, group = mn_job(2, count=2)
    workers = [worker(i, "a" if i <= 2 else "b") for i in range(1, 5)]
    out = schedule([(job, group)], workers, now=0.0)
    assert sorted(out) == [1, 3]


def test_group_with_most_idle_workers_is_chosen() -> None:
    busy_job = make_job(9)
    busy = add_group(busy_job, ids=range(1), req=request(cpus=1))
    workers = [worker(1, "a"), worker(2, "a"), worker(3, "b"), worker(4, "b")]
    schedule([(busy_job, busy)], [workers[0]], now=0.0)
    job, group = mn_job(2)
    out = schedule([(job, group)], workers, now=0.0)
    assert list(out) == [3]


def test_time_request_must_fit_every_worker_of_the_group() -> None:
    job = make_job()
    group = add_group(job, ids=range(1), req=nodes(2, min_time=100.0))
    workers = [worker(1, "a", time_limit=50.0), worker(2, "a", time_limit=500.0)]
    assert schedule([(job, group)], workers, now=0.0) == {}
    workers.append(worker(3, "a", time_limit=500.0))
    out = schedule([(job, group)], workers, now=0.0)
    assert list(out) == [2]


def test_reserved_workers_are_not_given_later_single_node_tasks() -> None:
    """Starvation: a stream of later single-node tasks must not keep the group busy for ever."""
    workers = [worker(1, "a", cpus=1), worker(2, "a", cpus=1)]
    first = make_job(1)
    running = add_group(first, ids=range(1), req=request(cpus=1))
    schedule([(first, running)], workers, now=0.0)
    assert workers[0].tasks and not workers[1].tasks
    job, group = mn_job(2, job_id=2)
    later = make_job(3)
    stream = add_group(later, ids=range(100), req=request(cpus=1))
    groups = [(job, group), (later, stream)]
    # Worker 2 is idle, but it is reserved for the 2-node task: the stream does not get it.
    assert schedule(groups, workers, now=0.0) == {}
    # Once worker 1's task ends, both are idle and the multi-node task starts.
    (task,) = workers[0].tasks.values()
    workers[0].release(task, 1.0)
    out = schedule(groups, workers, now=1.0)
    assert list(out) == [1]
    assert out[1][0].group is group


def test_higher_priority_single_node_tasks_still_go_first() -> None:
    workers = [worker(1, "a", cpus=1), worker(2, "a", cpus=1)]
    job, group = mn_job(2, job_id=1)
    urgent_job = make_job(2)
    urgent = add_group(urgent_job, ids=range(1), req=request(cpus=1), priority=5)
    out = schedule([(job, group), (urgent_job, urgent)], workers, now=0.0)
    assert [t.group for t in out[1]] == [urgent]
    assert 2 not in out


def test_reservation_leaves_other_groups_to_single_node_tasks() -> None:
    workers = [worker(1, "a", cpus=1), worker(2, "a", cpus=1), worker(3, "b", cpus=1)]
    first = make_job(1)
    running = add_group(first, ids=range(1), req=request(cpus=1))
    schedule([(first, running)], [workers[0]], now=0.0)
    job, group = mn_job(2, job_id=2)
    later = make_job(3)
    stream = add_group(later, ids=range(10), req=request(cpus=1))
    out = schedule([(job, group), (later, stream)], workers, now=0.0)
    assert list(out) == [3]


def test_no_multinode_waiting_changes_nothing_for_single_node_work() -> None:
    workers = [worker(1, "a", cpus=1), worker(2, "b", cpus=1)]
    job = make_job()
    single = add_group(job, ids=range(2), req=request(cpus=1))
    out = schedule([(job, single)], workers, now=0.0)
    assert sorted(out) == [1, 2]


def test_ties_go_to_the_group_of_the_lowest_worker_id() -> None:
    job, group = mn_job(2)
    workers = [worker(3, "b"), worker(4, "b"), worker(1, "a"), worker(2, "a")]
    out = schedule([(job, group)], workers, now=0.0)
    assert list(out) == [1]


def test_reserved_workers_get_no_prefill_either() -> None:
    workers = [worker(1, "a", cpus=1), worker(2, "a", cpus=1)]
    first = make_job(1)
    running = add_group(first, ids=range(1), req=request(cpus=1))
    schedule([(first, running)], [workers[0]], now=0.0)
    job, group = mn_job(2, job_id=2)
    later = make_job(3)
    # Short tasks: the prefill pass would queue many on every eligible worker.
    short = add_group(later, ids=range(100), req=request(cpus=1), mean_duration=0.001)
    out = schedule([(job, group), (later, short)], workers, now=0.0)
    assert out == {}
    assert len(workers[1].tasks) == 0


def test_filter_tags_decide_which_workers_a_multi_node_task_takes() -> None:
    job, group = mn_job(2)
    group.tags = frozenset({"role=leader"})
    workers = [worker(1, "a"), worker(2, "a"), worker(3, "b"), worker(4, "b")]
    for w in workers[:2]:
        w.filter_tags = frozenset({"role=worker"})
    for w in workers[2:]:
        w.filter_tags = frozenset({"role=leader"})
    out = schedule([(job, group)], workers, now=0.0)
    assert list(out) == [3]
    assert out[3][0].nodes == ((3, "n3.cluster"), (4, "n4.cluster"))


def test_a_full_concurrency_pool_holds_multi_node_tasks_back() -> None:
    from hqpy.server.pools import Pool

    job, group = mn_job(2, count=2)
    group.pool = Pool("mpi-licence", 1)
    workers = [worker(i, "a") for i in range(1, 5)]
    out = schedule([(job, group)], workers, now=0.0)
    assert sum(len(tasks) for tasks in out.values()) == 1
    assert group.pool.active == 1
