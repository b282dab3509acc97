"""The per-task instance history (`hq task info`: earlier instances and why each ended, crash
counts) is journaled and restored, survives `hq journal compact`, and journals written before
it existed still load."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from hqpy.app import journaling
from hqpy.common import drain as reasons
from hqpy.common.states import TaskState, WorkerState
from hqpy.journal import file
from hqpy.journal import records as r
from hqpy.protocol import messages as m
from hqpy.server.drain import ServerDrain
from hqpy.server.state import ServerState
from hqpy.server.views import task_views
from tests.factories import worker_config
from tests.journal.test_restore import Live, restored


def shown(state: ServerState, job_id: int = 1) -> list[tuple[object, ...]]:
    """What `hq task info` shows of each task, but its times (not journaled)."""
    return [
        (v.id, v.state, v.instance_id, v.crash_count, v.instances, v.error)
        for v in task_views(state.jobs[job_id], None, None)
    ]


async def lose_twice_then_finish(live: Live) -> None:
    """Tasks 0 and 1 run on a worker that is lost (a crash), then on a worker whose
    allocation is drained (no crash); then every task finishes."""
    live.run_all(worker_cpus=2)
    live.state.on_worker_lost(live.worker, WorkerState.CONNECTION_LOST)
    live.run_all(worker_cpus=2)
    live.worker.handback = reasons.DRAINED
    live.state.on_worker_lost(live.worker, WorkerState.STOPPED)
    rows = live.run_all(worker_cpus=4)
    live.update([[j, t, i, TaskState.FINISHED, 1.0, 2.0, None] for j, t, i in rows])
    await live.writer.flush()


async def test_instance_history_and_crash_counts_restore(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    journaling.watch_workers(live.state, live.state.hub, live.writer)
    await live.submit("0-3")
    await lose_twice_then_finish(live)
    before = shown(live.state)
    history = live.state.jobs[1].tasks[0].history or []
    assert [why for _, why in history] == [reasons.LOST, reasons.DRAINED]
    assert restored(path).jobs[1].tasks[0].history == live.state.jobs[1].tasks[0].history
    assert shown(restored(path)) == before


async def test_instance_history_survives_compact(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    journaling.watch_workers(live.state, live.state.hub, live.writer)
    await live.submit("0-3")
    await lose_twice_then_finish(live)
    before = shown(live.state)
    live.writer.close()
    journaling.compact(path)
    assert shown(restored(path)) == before


async def test_history_of_a_task_waiting_again_restores(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "j"
    live = Live(path, nursery)
    journaling.watch_workers(live.state, live.state.hub, live.writer)
    await live.submit("0-1")
    live.run_all(worker_cpus=2)
    live.state.on_worker_lost(live.worker, WorkerState.CONNECTION_LOST)
    await live.writer.flush()
    state = restored(path)
    assert shown(state) == shown(live.state)
    worker = state.add_worker(worker_config(cpus=2))
    assert state.schedule() == 2
    assert sorted((t.id, t.instance_id) for t in worker.tasks.values()) == [(0, 1), (1, 1)]


def test_journal_without_instance_rows_still_loads() -> None:
    """A `tasks-updated` record as older hqpy wrote it (no `instances`)."""
    payload = b'{"op":"tasks-updated","started":[],"finished":[[1,0,3]],"failed":[],"crashed":[]}'
    record = r.decode(payload)
    assert record == r.TasksUpdated(finished=[[1, 0, 3]])


def test_new_records_round_trip() -> None:
    for record in (
        r.TasksUpdated(instances=[[1, 2, 0, "lost"]]),
        r.AllocationDraining(1, "local-1", 600.0, 5.0),
    ):
        assert r.decode(r.encode(record)) == record
        assert r.unstructure(record)["op"] in r.BY_OP


def test_export_shows_the_new_records(tmp_path: Path) -> None:
    path = tmp_path / "j"
    file.write_atomically(path, [r.AllocationDraining(1, "local-1", 600.0, 5.0)])
    [record] = file.read(path).records
    assert r.unstructure(record) == {
        "op": "allocation-draining",
        "queue_id": 1,
        "allocation_id": "local-1",
        "grace": 600.0,
        "at": 5.0,
    }


async def test_no_task_is_handed_out_before_the_workers_of_the_server_before_are_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A task a returning worker ran, whose start the journal had not yet received, waits in
    the restored server: given to another worker first, it would run twice."""
    path = tmp_path / "j"
    live = Live(path, nursery)
    journaling.watch_workers(live.state, live.state.hub, live.writer)
    await live.submit("0-3")
    returning = attrs.evolve(worker_config(cpus=1), server_lost_grace=60.0)
    live.state.add_worker(returning)
    live.state.add_worker(returning)
    await live.writer.flush()
    state = ServerState("restored")
    rep = journaling.replay(state, file.read(path).records)
    assert rep.returning_workers() == {1, 2}
    state.restore_expect_workers(rep.returning_workers())
    other = state.add_worker(worker_config(cpus=4))  # a new worker
    first = state.add_worker(worker_config(cpus=1), previous_id=1)
    assert state.schedule() == 0
    assert not other.tasks and not first.tasks
    state.add_worker(worker_config(cpus=1), previous_id=2)
    assert state.schedule() == 4


async def test_tasks_are_handed_out_after_the_settle_time_whoever_is_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    state = ServerState("restored")
    live = Live(tmp_path / "j", nursery)
    await live.submit("0-1")
    await live.writer.flush()
    journaling.replay(state, file.read(tmp_path / "j").records)
    state.restore_expect_workers({5})
    state.add_worker(worker_config(cpus=2))
    assert state.schedule() == 0
    state.end_restore_settle()
    assert state.schedule() == 2


async def test_finished_tasks_keep_a_later_instance_id_also_after_compact(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A task given to a worker whose allocation was drained before it started runs under the
    next instance id (no crash, no earlier instance): `hq task info` shows that id."""
    path = tmp_path / "j"
    live = Live(path, nursery)
    journaling.watch_workers(live.state, live.state.hub, live.writer)
    await live.submit("0-3")
    drained = live.state.add_worker(
        worker_config(cpus=2, manager=m.ManagerInfo("LOCAL", "local-1"))
    )
    live.state.schedule()
    assert len(drained.tasks) == 2
    ServerDrain(live.state).drain("local-1")
    rows = live.run_all(worker_cpus=4)
    assert sorted(i for _, _, i in rows) == [0, 0, 1, 1]
    live.update([[j, t, i, TaskState.FINISHED, 1.0, 2.0, None] for j, t, i in rows])
    await live.writer.flush()
    before = shown(live.state)
    assert shown(restored(path)) == before
    live.writer.close()
    journaling.compact(path)
    assert shown(restored(path)) == before
