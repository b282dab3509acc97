"""The fit check's rules: resources, memory, time request, nodes and tags, against connected
workers and queue shapes, and which queue is named as the closest."""

from __future__ import annotations

import attrs

from hqpy.common.demand import QueueOffer
from hqpy.common.resources import FRACTIONS, ResourceAmountRequest, ResourceRequest
from hqpy.server.fit import WorkerShape, check_queue, check_worker, explain, shortfall

GIB = 1024 * FRACTIONS
"""One GiB of `mem` (MiB units, 1/10,000 each)."""


def req(
    cpus: int = 1, mem_gib: int = 0, n_nodes: int = 0, min_time: float = 0.0
) -> ResourceRequest:
    entries = [ResourceAmountRequest("cpus", cpus * FRACTIONS)] if cpus else []
    if mem_gib:
        entries.append(ResourceAmountRequest("mem", mem_gib * GIB))
    return ResourceRequest(tuple(entries), n_nodes=n_nodes, min_time=min_time)


def queue(
    queue_id: int = 1,
    name: str = "q",
    cpus: int | None = 4,
    mem_gib: int | None = None,
    exact: bool = False,
    time_limit: float = 3600.0,
    workers_per_alloc: int = 1,
    filter_tags: frozenset[str] = frozenset(),
) -> QueueOffer:
    capacity: dict[str, int] | None = None
    if cpus is not None:
        capacity = {"cpus": cpus * FRACTIONS}
        if mem_gib is not None:
            capacity["mem"] = mem_gib * GIB
    return QueueOffer(
        queue_id=queue_id,
        name=name,
        manager="local",
        capacity=capacity,
        exact=exact,
        time_limit=time_limit,
        workers_per_alloc=workers_per_alloc,
        filter_tags=filter_tags,
    )


def worker(
    worker_id: int = 1,
    cpus: int = 4,
    filter_tags: frozenset[str] = frozenset(),
    time_left: float | None = None,
) -> WorkerShape:
    return WorkerShape(worker_id, {"cpus": cpus * FRACTIONS}, filter_tags, time_left)


NO_TAGS: frozenset[str] = frozenset()


def test_nothing_to_compare_with_is_no_warning() -> None:
    # Submitting before starting workers (and without queues) is the usual case.
    assert shortfall(req(cpus=64), NO_TAGS, [], []) is None


def test_a_worker_that_fits_means_no_warning() -> None:
    assert shortfall(req(cpus=2), NO_TAGS, [worker(cpus=4)], []) is None


def test_cpus_larger_than_every_worker_are_reported() -> None:
    why = shortfall(req(cpus=8), NO_TAGS, [worker(1, cpus=4), worker(2, cpus=2)], [])
    assert why == "needs cpus 8; worker 1 gives 4"


def test_a_queue_that_fits_saves_a_task_no_worker_fits() -> None:
    assert shortfall(req(cpus=8), NO_TAGS, [worker(cpus=4)], [queue(cpus=16)]) is None


def test_memory_shortfall_names_the_queue_and_gib() -> None:
    why = shortfall(req(mem_gib=32), NO_TAGS, [], [queue(2, "small", mem_gib=16)])
    assert why == 'needs mem 32 GiB; queue 2 "small" gives 16 GiB'


def test_unknown_queue_shape_fits_any_resources() -> None:
    assert shortfall(req(cpus=1000, mem_gib=999), NO_TAGS, [], [queue(cpus=None)]) is None


def test_a_resource_a_declared_queue_does_not_mention_may_exist() -> None:
    # Declared `--cpus 4` only: its workers may still detect memory.
    assert shortfall(req(mem_gib=8), NO_TAGS, [], [queue(cpus=4, exact=False)]) is None


def test_a_resource_a_learned_queue_shape_lacks_is_missing() -> None:
    why = shortfall(req(mem_gib=8), NO_TAGS, [], [queue(3, "learned", cpus=4, exact=True)])
    assert why == 'needs mem 8 GiB; queue 3 "learned" gives 0 MiB'


def test_time_request_longer_than_the_queue_walltime() -> None:
    why = shortfall(req(min_time=7200), NO_TAGS, [], [queue(1, "short", time_limit=3600)])
    assert why == 'needs 2h of worker time; queue 1 "short" gives 1h'


def test_time_request_equal_to_walltime_fits() -> None:
    assert shortfall(req(min_time=3600), NO_TAGS, [], [queue(time_limit=3600)]) is None


def test_time_request_against_a_worker_with_no_limit_fits() -> None:
    assert shortfall(req(min_time=10**6), NO_TAGS, [worker(time_left=None)], []) is None


def test_time_request_against_a_worker_near_its_end() -> None:
    verdict = check_worker(worker(time_left=60), req(min_time=120), NO_TAGS, 1)
    assert not verdict.runnable
    assert [c.kind for c in verdict.failed()] == ["time"]


def test_nodes_beyond_the_widest_queue() -> None:
    offers = [queue(1, "a", workers_per_alloc=2), queue(2, "b", workers_per_alloc=1)]
    why = shortfall(req(cpus=0, n_nodes=4), NO_TAGS, [], offers)
    assert why == "needs 4 nodes; the widest queue gives 2"


def test_nodes_within_a_queue_fit() -> None:
    assert shortfall(req(cpus=0, n_nodes=2), NO_TAGS, [], [queue(workers_per_alloc=2)]) is None


def test_worker_without_filter_tags_runs_a_tagged_task() -> None:
    assert shortfall(req(), frozenset({"system=H2O"}), [worker()], []) is None


def test_tag_check_fails_only_when_every_worker_filters_for_what_the_task_lacks() -> None:
    tags = frozenset({"system=H2O"})
    filtered = [worker(1, filter_tags=frozenset({"system=CO2"}))]
    offers = [queue(2, "co2", filter_tags=frozenset({"system=CO2"}))]
    why = shortfall(req(), tags, filtered, offers)
    assert (
        why
        == 'has tags system=H2O; no worker or queue runs it (queue 2 "co2" filters for system=CO2)'
    )
    # One worker without filter tags is enough.
    assert shortfall(req(), tags, [*filtered, worker(3)], offers) is None


def test_task_with_all_filter_tags_fits_the_queue() -> None:
    offer = queue(filter_tags=frozenset({"gpu"}))
    assert check_queue(
        offer,
        req(),
        frozenset({"gpu", "x=1"}),
    ).runnable


def test_closest_queue_has_the_fewest_failed_checks() -> None:
    far = queue(1, "far", cpus=1, time_limit=60)  # cpus and time both fail
    near = queue(2, "near", cpus=1, time_limit=7200)  # only cpus fails
    why = shortfall(req(cpus=4, min_time=3600), NO_TAGS, [], [far, near])
    assert why == 'needs cpus 4; queue 2 "near" gives 1'


def test_explain_gives_one_verdict_per_worker_and_queue() -> None:
    workers, queues = explain(req(cpus=2), NO_TAGS, [worker(1, cpus=1), worker(2)], [queue(5)])
    assert [(v.who, v.runnable) for v in workers] == [("1", False), ("2", True)]
    assert [(v.who, v.runnable) for v in queues] == [("queue 5", True)]
    (check,) = workers[0].checks
    assert (check.kind, check.name, check.provides, check.request) == ("resource", "cpus", "1", "2")


def test_nodes_count_only_workers_the_task_may_run_on() -> None:
    workers = [worker(1), worker(2, filter_tags=frozenset({"other"}))]
    why = shortfall(req(cpus=0, n_nodes=2), NO_TAGS, workers, [])
    assert why == "needs 2 nodes; 1 worker(s) could take it"
    assert shortfall(req(cpus=0, n_nodes=2), frozenset({"other"}), workers, []) is None


def test_nodes_count_only_workers_of_one_group() -> None:
    """Two workers of two 1-worker allocations never run a 2-node task (placement takes the
    workers of one group): counting them together left such a task waiting with no warning."""
    apart = [
        WorkerShape(1, {"cpus": 4 * FRACTIONS}, group="local-1"),
        WorkerShape(2, {"cpus": 4 * FRACTIONS}, group="local-2"),
    ]
    why = shortfall(req(cpus=0, n_nodes=2), NO_TAGS, apart, [])
    assert why == "needs 2 nodes; 1 worker(s) could take it"
    together = [attrs.evolve(w, group="local-1") for w in apart]
    assert shortfall(req(cpus=0, n_nodes=2), NO_TAGS, together, []) is None
