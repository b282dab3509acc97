"""Drain and hand-back in-process: a real `ServerState`, the allocator with a fake backend,
virtual time (trio's autojump clock). Tasks an allocation's end stops go back to waiting with a
new instance id and never count as crashes; `task info` keeps why each instance ended."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from hqpy.autoalloc.service import AllocError, AutoAllocService
from hqpy.common import drain as reasons
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
from hqpy.server.drain import ServerDrain
from hqpy.server.jobs import Task
from hqpy.server.server import Server, ServerConfig
from hqpy.server.workers import Worker
from tests.factories import cpu_resources, worker_config
from tests.server.test_autoalloc_service import (
    CONFIG,
    FakeBackend,
    World,
    add_queue,
    settle,
    submit,
)


async def start(nursery: trio.Nursery, tmp_path: Path) -> World:
    fake = FakeBackend()
    server = Server(ServerConfig(server_dir=tmp_path))
    server.state.clock = trio.current_time
    service = AutoAllocService(
        ServerDemand(server.state),
        server.state.hub,
        tmp_path / "001",
        CONFIG,
        make_backend=fake.make,
        clock=trio.current_time,
        control=ServerDrain(server.state),
    )
    await nursery.start(service.run)
    return World(server, service, fake)


def add_worker(world: World, allocation_id: str, time_limit: float | None = None) -> Worker:
    config = worker_config(
        resources=cpu_resources(1),
        time_limit=time_limit,
        manager=m.ManagerInfo("SLURM", allocation_id),
        group=allocation_id,
    )
    return world.state.add_worker(config)


def start_tasks(world: World, worker: Worker) -> list[Task]:
    """The worker reports every task it holds as running."""
    now = trio.current_time()
    tasks = list(worker.tasks.values())
    rows = [
        [t.group.body.job_id, t.id, t.instance_id, TaskState.RUNNING, now, None, None]
        for t in tasks
    ]
    world.state.on_task_updates(worker, rows)
    return tasks


def finish(world: World, worker: Worker, task: Task) -> None:
    now = trio.current_time()
    row = [task.group.body.job_id, task.id, task.instance_id, TaskState.FINISHED, now, now, None]
    world.state.on_task_updates(worker, [row])


async def running_allocation(world: World, tasks: int) -> tuple[Worker, Worker]:
    """A queue of 2-worker allocations whose first allocation runs with 2 workers; `tasks`
    one-cpu tasks were submitted and placed on them."""
    await add_queue(world, backlog=1, workers_per_alloc=2)
    submit(world, tasks)
    await settle()
    a = add_worker(world, "1.job")
    b = add_worker(world, "1.job")
    world.state.schedule()
    return a, b


def events(world: World) -> list[tuple[str, str | None]]:
    return [(e.event, e.allocation_id) for e in world.queue().events]


async def test_drain_waits_for_running_tasks_within_the_grace_then_cancels(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    a, b = await running_allocation(world, 2)
    [task] = start_tasks(world, a)
    [queued] = list(b.tasks.values())  # placed on b but not started
    world.service.drain("1.job", grace=60.0)
    await settle()
    # b held no running task: it was stopped, its task waits again (a new instance, no
    # history: it never ran) and a takes nothing new.
    assert b.state is WorkerState.STOPPED
    assert queued.state is TaskState.WAITING and queued.worker_id is None
    assert queued.instance_id == 1 and queued.history is None
    assert world.state.schedule() == 0
    await settle(30)
    finish(world, a, task)
    await settle()
    assert a.state is WorkerState.STOPPED
    assert ("cancel", ("1.job",)) in [(c.what, c.args) for c in world.fake.calls]
    kinds = events(world)
    assert ("allocation-draining", "1.job") in kinds
    assert ("allocation-drained", "1.job") in kinds
    drained = next(e for e in world.queue().events if e.event == "allocation-drained")
    assert drained.message.startswith("0 task(s) handed back")
    assert task.state is TaskState.FINISHED
    # The allocation was cancelled well before the grace ran out.
    assert trio.current_time() < 60.0 + 30.0


async def test_grace_over_hands_running_tasks_back_without_a_crash(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    a, _b = await running_allocation(world, 1)
    [task] = start_tasks(world, a)
    world.service.drain("1.job", grace=10.0)
    await settle(5)
    states = [task.state]
    await settle(10)
    states.append(task.state)
    assert states == [TaskState.RUNNING, TaskState.WAITING]
    assert task.crash_count == 0
    assert task.instance_id == 1
    assert task.history == [(0, reasons.DRAINED)]
    drained = next(e for e in world.queue().events if e.event == "allocation-drained")
    assert drained.message.startswith("1 task(s) handed back")
    # The handed-back task runs elsewhere: a worker of another allocation takes it.
    other = add_worker(world, "2.job")
    world.state.schedule()
    assert list(other.tasks.values()) == [task]


async def test_drain_of_an_unknown_or_ended_allocation_is_refused(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    with pytest.raises(AllocError, match="Allocation 9.job not found"):
        world.service.drain("9.job", 0.0)
    a, _b = await running_allocation(world, 1)
    start_tasks(world, a)
    world.service.drain("1.job", 60.0)
    with pytest.raises(AllocError, match="already draining"):
        world.service.drain("1.job", 0.0)
    await settle(61)
    with pytest.raises(AllocError, match="has already ended"):
        world.service.drain("1.job", 0.0)


async def test_walltime_loss_hands_back_without_a_crash_other_losses_count(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    early = add_worker(world, "1.job", time_limit=100.0)
    world.state.schedule()
    [task] = start_tasks(world, early)
    world.state.on_worker_lost(early, WorkerState.CONNECTION_LOST)
    assert task.crash_count == 1
    assert task.history == [(0, reasons.LOST)]
    late = add_worker(world, "1.job", time_limit=100.0)
    world.state.schedule()
    start_tasks(world, late)
    await settle(90)
    world.state.on_worker_lost(late, WorkerState.CONNECTION_LOST)
    assert task.state is TaskState.WAITING
    assert task.crash_count == 1
    assert task.history == [(0, reasons.LOST), (1, reasons.WALLTIME)]


async def test_forced_queue_removal_hands_running_tasks_back(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    a, _b = await running_allocation(world, 1)
    [task] = start_tasks(world, a)
    await world.service.remove(1, force=True)
    # The cancel kills the workers: their connections drop.
    for worker in (a, _b):
        world.state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    assert task.state is TaskState.WAITING
    assert task.crash_count == 0
    assert task.history == [(0, reasons.REMOVED)]
