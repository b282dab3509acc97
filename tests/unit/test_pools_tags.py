"""Concurrency pools (the slot counter, the scheduler's cap, demand) and tags (routing by filter
tags, validation) on a `ServerState` with a fake clock: no I/O."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from hqpy.common.demand import QueueOffer
from hqpy.common.errors import RequestError
from hqpy.common.events import TasksUnfittable
from hqpy.common.resources import FRACTIONS
from hqpy.common.states import TaskState
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
from hqpy.server.pools import PoolTable
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker
from tests.factories import cpu_request, submit_desc, worker_config


class Outbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def send_nowait(self, message: Any) -> None:
        self.messages.append(message)

    def rows(self) -> list[list[Any]]:
        out = [r for msg in self.messages if isinstance(msg, m.ComputeTasks) for r in msg.tasks]
        self.messages = []
        return out


@pytest.fixture
def state() -> ServerState:
    return ServerState("uid", clock=lambda: 1000.0)


def add_worker(
    state: ServerState, cpus: int = 4, filter_tags: tuple[str, ...] = ()
) -> tuple[Worker, Outbox]:
    outbox = Outbox()
    config = worker_config(cpus, f"w{state.next_worker_id}", filter_tags=filter_tags)
    return state.add_worker(config, outbox), outbox


def submit(state: ServerState, ids: str = "0-9", **kw: Any) -> int:
    return state.submit(m.SubmitRequest(submit_desc(ids, **kw)))


def finish(state: ServerState, worker: Worker, rows: list[list[Any]]) -> None:
    updates = [[r[0], r[1], r[2], m.TASK_FINISHED, 1.0, 2.0, None] for r in rows]
    state.on_task_updates(worker, updates)


# --- the pool table --------------------------------------------------------------------------


def test_pool_set_creates_and_resizes() -> None:
    table = PoolTable()
    pool = table.set("lic", 2)
    assert table.set("lic", 5) is pool
    assert pool.size == 5


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é"])
def test_pool_name_is_checked(name: str) -> None:
    with pytest.raises(RequestError, match="invalid pool name"):
        PoolTable().set(name, 1)


@pytest.mark.parametrize("size", [0, -1, 2**31])
def test_pool_size_is_checked(size: int) -> None:
    with pytest.raises(RequestError, match="invalid pool size"):
        PoolTable().set("p", size)


def test_submit_to_an_unknown_pool_says_how_to_create_it(state: ServerState) -> None:
    with pytest.raises(RequestError, match="create it with: hq pool set lic SIZE"):
        submit(state, pool="lic")
    assert state.jobs == {}


# --- the slot counter and the scheduler ------------------------------------------------------


def test_pool_caps_running_tasks_across_workers(state: ServerState) -> None:
    state.set_pool("lic", 3)
    submit(state, "0-9", pool="lic")
    (_, o1), (_, o2) = add_worker(state), add_worker(state)
    state.schedule()
    assert len(o1.rows()) + len(o2.rows()) == 3
    assert state.pools.pools["lic"].active == 3
    assert state.pool_views() == [m.PoolView("lic", 3, 3, 7)]


def test_prefill_never_takes_more_than_the_free_slots(state: ServerState) -> None:
    state.set_pool("one", 1)
    job_id = submit(state, "0-99", pool="one")
    # Short tasks are queued ahead ("prefill") on top of the worker's capacity.
    state.jobs[job_id].groups[0].duration_sum = 0.001
    state.jobs[job_id].groups[0].duration_count = 1
    _, outbox = add_worker(state, cpus=8)
    state.schedule()
    assert len(outbox.rows()) == 1


def test_a_slot_freed_by_a_finished_task_lets_the_next_one_start(state: ServerState) -> None:
    state.set_pool("one", 1)
    submit(state, "0-2", pool="one")
    worker, outbox = add_worker(state)
    state.schedule()
    first = outbox.rows()
    assert [r[1] for r in first] == [0]
    finish(state, worker, first)
    state.schedule()
    assert [r[1] for r in outbox.rows()] == [1]


def test_a_lost_worker_gives_its_slots_back(state: ServerState) -> None:
    state.set_pool("two", 2)
    submit(state, "0-3", pool="two")
    worker, outbox = add_worker(state)
    state.schedule()
    assert len(outbox.rows()) == 2
    state.on_worker_lost(worker, worker.state.CONNECTION_LOST)
    # Both handed back: waiting again, with the two never started.
    assert state.pool_views() == [m.PoolView("two", 2, 0, 4)]


def test_a_canceled_job_gives_its_slots_back(state: ServerState) -> None:
    state.set_pool("two", 2)
    job_id = submit(state, "0-3", pool="two")
    add_worker(state)
    state.schedule()
    state.cancel_job(state.jobs[job_id], None)
    assert state.pool_views() == [m.PoolView("two", 2, 0, 0)]


def test_shrinking_a_pool_stops_no_running_task(state: ServerState) -> None:
    state.set_pool("p", 3)
    submit(state, "0-9", pool="p")
    worker, outbox = add_worker(state)
    state.schedule()
    started = outbox.rows()
    assert len(started) == 3
    state.set_pool("p", 1)
    assert not any(isinstance(msg, m.CancelTasks) for msg in outbox.messages)
    # Two of the three end: still one running, the size: nothing new starts.
    finish(state, worker, started[:2])
    state.schedule()
    assert outbox.rows() == []
    finish(state, worker, started[2:])
    state.schedule()
    assert len(outbox.rows()) == 1


def test_growing_a_pool_starts_waiting_tasks(state: ServerState) -> None:
    state.set_pool("p", 1)
    submit(state, "0-9", pool="p")
    _, outbox = add_worker(state)
    state.schedule()
    assert len(outbox.rows()) == 1
    state.set_pool("p", 3)
    state.schedule()
    assert len(outbox.rows()) == 2


def test_tasks_without_a_pool_are_not_held_by_a_full_pool(state: ServerState) -> None:
    state.set_pool("p", 1)
    submit(state, "0-9", pool="p")
    submit(state, "0-1")
    _, outbox = add_worker(state)
    state.schedule()
    assert sorted(r[0] for r in outbox.rows()) == [1, 2, 2]


def test_pool_remove_is_refused_while_tasks_wait_or_run(state: ServerState) -> None:
    state.set_pool("p", 1)
    job_id = submit(state, "0-1", pool="p")
    with pytest.raises(RequestError, match="0 running and 2 waiting"):
        state.remove_pool("p")
    state.cancel_job(state.jobs[job_id], None)
    state.remove_pool("p")
    assert state.pool_views() == []


# --- demand ----------------------------------------------------------------------------------


def test_tasks_a_pool_holds_back_are_no_demand(state: ServerState) -> None:
    state.set_pool("p", 2)
    submit(state, "0-9", pool="p")
    submit(state, "0-9", pool="p")
    submit(state, "0-4")
    work = ServerDemand(state).waiting_work()
    assert [w.count for w in work] == [2, 5]


def test_demand_counts_only_free_slots(state: ServerState) -> None:
    state.set_pool("p", 3)
    submit(state, "0-9", pool="p")
    add_worker(state, cpus=1)
    state.schedule()
    (work,) = ServerDemand(state).waiting_work()
    assert work.count == 2


def test_no_demand_while_a_restored_server_waits_for_its_workers(state: ServerState) -> None:
    submit(state, "0-4")
    state.restore_expect_workers({3})
    assert ServerDemand(state).waiting_work() == []
    state.end_restore_settle()
    (work,) = ServerDemand(state).waiting_work()
    assert work.count == 5


def test_demand_carries_the_tags(state: ServerState) -> None:
    submit(state, "0-2", tags=("system=H2O", "gpu"))
    (work,) = ServerDemand(state).waiting_work()
    assert work.tags == frozenset({"gpu", "system=H2O"})
    assert work.count == 3


# --- tags ------------------------------------------------------------------------------------


def test_a_worker_with_filter_tags_runs_only_tasks_with_all_of_them(state: ServerState) -> None:
    plain = submit(state, "0-1")
    h2o = submit(state, "0-1", tags=("system=H2O", "scale=4"))
    _, filtered = add_worker(state, cpus=8, filter_tags=("system=H2O",))
    state.schedule()
    assert {r[0] for r in filtered.rows()} == {h2o}
    _, anyone = add_worker(state, cpus=8)
    state.schedule()
    assert {r[0] for r in anyone.rows()} == {plain}


def test_a_task_lacking_one_filter_tag_does_not_run(state: ServerState) -> None:
    submit(state, "0", tags=("system=H2O",))
    _, outbox = add_worker(state, filter_tags=("system=H2O", "scale=4"))
    state.schedule()
    assert outbox.rows() == []


def test_bad_tag_is_refused_with_its_reason(state: ServerState) -> None:
    with pytest.raises(RequestError, match="--tag: invalid tag 'a b'"):
        submit(state, tags=("a b",))


def test_tags_and_pool_are_in_the_job_view(state: ServerState) -> None:
    from hqpy.server import views

    state.set_pool("p", 1)
    job_id = submit(state, tags=("b", "a"), pool="p")
    (submit_view,) = views.job_detail(state.jobs[job_id], False).submits
    assert submit_view.tags == ("a", "b")
    assert submit_view.pool == "p"


# --- the fit check at submit -----------------------------------------------------------------


class Offers:
    def __init__(self, *offers: QueueOffer) -> None:
        self.offers = list(offers)

    def queue_offers(self) -> list[QueueOffer]:
        return self.offers


def test_unfittable_submit_is_warned_logged_and_counted(
    state: ServerState, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[TasksUnfittable] = []
    state.hub.subscribe(TasksUnfittable, events.append)
    add_worker(state, cpus=2)
    state.queue_offers = Offers(
        QueueOffer(2, "small", "slurm", {"cpus": 4 * FRACTIONS}, False, 3600.0, 1)
    )
    job_id = state.submit(m.SubmitRequest(submit_desc("0-9", request=cpu_request(8))))
    warnings = state.check_fit(job_id, 1)
    assert warnings == [
        f"Tasks 0-9 of job {job_id} can run on no worker and in no queue: needs cpus 8; "
        'queue 2 "small" gives 4'
    ]
    assert warnings[0] in caplog.text
    assert events == [TasksUnfittable(job_id, 10, 'needs cpus 8; queue 2 "small" gives 4')]


def test_fitting_submit_has_no_warning(state: ServerState) -> None:
    add_worker(state, cpus=8)
    job_id = state.submit(m.SubmitRequest(submit_desc("0", request=cpu_request(8))))
    assert state.check_fit(job_id, 1) == []


def test_per_entry_tags_split_a_submit_by_tag_set(state: ServerState) -> None:
    entries = ["a", "b", "c", "d"]
    desc = attrs.evolve(
        submit_desc("0-3", entries=entries, tags=("base",)),
        task_tags=[["x"], [], ["x"], ["y", "x"]],
    )
    job_id = state.submit(m.SubmitRequest(desc))
    groups = state.jobs[job_id].groups
    assert [(g.body.tags, str(g.ids)) for g in groups] == [
        (("base", "x"), "0,2"),
        (("base",), "1"),
        (("base", "x", "y"), "3"),
    ]
    # Each task keeps its own entry.
    assert [g.entry(g.ids.min()) for g in groups] == ["a", "b", "d"]
    assert state.jobs[job_id].counts[TaskState.WAITING] == 4
    _, outbox = add_worker(state, cpus=8, filter_tags=("y",))
    state.schedule()
    assert [(r[1], r[4]) for r in outbox.rows()] == [(3, "d")]


def test_per_entry_tags_must_match_the_entries(state: ServerState) -> None:
    desc = attrs.evolve(submit_desc("0-1", entries=["a", "b"]), task_tags=[["x"]])
    with pytest.raises(RequestError, match="for each entry"):
        state.submit(m.SubmitRequest(desc))
    desc = attrs.evolve(submit_desc("0-1", entries=["a", "b"]), task_tags=[["x"], ["no good"]])
    with pytest.raises(RequestError, match="Tags of entry 1: invalid tag 'no good'"):
        state.submit(m.SubmitRequest(desc))


def test_a_submit_with_too_many_distinct_tag_sets_is_refused(state: ServerState) -> None:
    """Each distinct tag set is a task group that every scheduling pass visits: 100,000 of them
    made a 100,000-task job run a few tasks a second, so the submit names the limit instead."""
    from hqpy.common.tags import MAX_TAG_SETS

    n = MAX_TAG_SETS + 1
    entries = [str(i) for i in range(n)]
    desc = attrs.evolve(
        submit_desc(f"0-{n - 1}", entries=entries), task_tags=[[f"t{i}"] for i in range(n)]
    )
    with pytest.raises(RequestError, match=f"more than {MAX_TAG_SETS} distinct tag sets"):
        state.submit(m.SubmitRequest(desc))
    assert not state.jobs
    # The limit counts only the tasks submitted (`--array` picks some entries).
    desc = attrs.evolve(desc, ids="0-9")
    job_id = state.submit(m.SubmitRequest(desc))
    assert len(state.jobs[job_id].groups) == 10


def test_base_and_entry_tags_together_stay_within_the_tag_limit(state: ServerState) -> None:
    from hqpy.common.tags import MAX_TAGS

    base = tuple(f"b{i}" for i in range(MAX_TAGS))
    desc = attrs.evolve(submit_desc("0", entries=["a"]), tags=base, task_tags=[["extra"]])
    with pytest.raises(RequestError, match=f"{MAX_TAGS + 1} tags"):
        state.submit(m.SubmitRequest(desc))


def test_explain_has_rows_for_workers_and_queues(state: ServerState) -> None:
    import trio

    from hqpy.server.clients import ClientHandlers

    add_worker(state, cpus=2)
    state.queue_offers = Offers(
        QueueOffer(4, "gpu", "slurm", None, False, 3600.0, 1, frozenset({"gpu"}))
    )
    job_id = state.submit(m.SubmitRequest(submit_desc("0-1", request=cpu_request(4))))
    handlers = ClientHandlers(state, lambda: None)  # type: ignore[arg-type, return-value]
    resp = trio.run(handlers.task_explain, m.TaskExplainRequest(job_id, 1))
    assert resp.found and resp.state == "waiting"
    (worker,) = resp.workers
    assert (worker.worker, worker.runnable) == ("1", False)
    (queue,) = resp.queues
    assert queue.worker == "queue 4" and not queue.runnable
    assert [(v.kind, v.provides, v.ok) for v in queue.variants] == [
        ("resource", "unknown", True),
        ("tags", "gpu", False),
    ]
    missing = trio.run(handlers.task_explain, m.TaskExplainRequest(job_id, 9))
    assert not missing.found
