"""Restored allocations whose workers never come back: the allocator cancels a running one once
the reconnect window has passed (with the usual confirmation and `cancel-failed` path), and
keeps a queued one. In-process, on the autojump clock, with the fake batch system of the
allocator's service tests."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
import trio.testing

from hqpy.app import journaling
from hqpy.autoalloc.backends.base import ExternalState, ExternalStatus
from hqpy.autoalloc.process import RESTART_REASON
from hqpy.autoalloc.service import AutoAllocService
from hqpy.common.idset import IdSet
from hqpy.common.states import AllocationState
from hqpy.journal import records as r
from hqpy.server.demand import ServerDemand
from hqpy.server.drain import ServerDrain
from hqpy.server.server import Server, ServerConfig
from tests.server.test_autoalloc_service import (
    CONFIG,
    FakeBackend,
    World,
    add_worker,
    queue_params,
    settle,
    submit,
)

WINDOW = 300.0
NO_WITHDRAW = attrs.evolve(CONFIG, withdraw_grace=1e9)
"""No task waits in these tests: queued allocations are not withdrawn for that."""
RUNNING = ExternalStatus(ExternalState.RUNNING, raw="RUNNING")


def journal(tmp_path: Path) -> list[r.Record]:
    """A queue with three allocations: 1.job and 3.job had started, 2.job was queued."""
    records: list[r.Record] = [r.QueueAdded(1, queue_params(), 0.0)]
    for seq, allocation_id in enumerate(("1.job", "2.job", "3.job"), start=1):
        records.append(r.AllocationPlanned(1, seq, 1, str(tmp_path / f"{seq:03}")))
        records.append(r.AllocEventLogged(0.0, "allocation-queued", 1, allocation_id, ""))
    for allocation_id in ("1.job", "3.job"):
        records.append(r.AllocEventLogged(0.0, "allocation-started", 1, allocation_id, ""))
    return records


async def restart(
    nursery: trio.Nursery,
    tmp_path: Path,
    fake: FakeBackend,
    records: list[r.Record] | None = None,
) -> World:
    """A server restored from `records` (default: `journal`), as the composition root wires
    it."""
    if records is None:
        records = journal(tmp_path)
    server = Server(ServerConfig(server_dir=tmp_path))
    server.state.clock = trio.current_time
    service = AutoAllocService(
        ServerDemand(server.state),
        server.state.hub,
        tmp_path / "002",
        NO_WITHDRAW,
        make_backend=fake.make,
        clock=trio.current_time,
        control=ServerDrain(server.state),
    )
    drains = journaling.restored_drains(records, trio.current_time)
    unconfirmed = journaling.restore_allocator(service, records, 3)
    journaling.resolve_unconfirmed(service, unconfirmed)
    journaling.expect_workers_back(service, WINDOW)
    await nursery.start(service.run)
    journaling.resume_drains(service, drains, WINDOW)
    return World(server, service, fake)


def last_message(world: World, allocation_id: str) -> str:
    return [e.message for e in world.queue().events if e.allocation_id == allocation_id][-1]


async def test_running_allocation_without_its_workers_is_cancelled_after_the_window(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeBackend()
    fake.statuses = {"1.job": RUNNING, "3.job": RUNNING}
    world = await restart(nursery, tmp_path, fake)
    await settle(10)
    add_worker(world, "3.job")  # its worker came back
    await settle(WINDOW - 20)
    assert fake.cancelled == []
    await settle(30)
    assert fake.cancelled == ["1.job"]
    states = world.allocation_states()
    assert states == {
        "1.job": AllocationState.FINISHED,
        "2.job": AllocationState.QUEUED,
        "3.job": AllocationState.RUNNING,
    }
    assert last_message(world, "1.job") == f"canceled: {RESTART_REASON}"
    # Queued: kept for as long as it waits (its workers connect when it starts).
    await settle(10 * WINDOW)
    assert fake.cancelled == ["1.job"]


async def test_queued_allocation_that_starts_without_workers_gets_the_window_from_its_start(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeBackend()
    fake.statuses = {"1.job": RUNNING, "3.job": RUNNING}
    world = await restart(nursery, tmp_path, fake)
    add_worker(world, "1.job")
    add_worker(world, "3.job")
    await settle(2 * WINDOW)
    fake.statuses["2.job"] = RUNNING
    await world.service.refresh(force=True)
    started = trio.current_time()
    assert world.allocation_states()["2.job"] is AllocationState.RUNNING
    await settle(WINDOW - 10)
    assert fake.cancelled == []
    await settle(20)
    assert fake.cancelled == ["2.job"]
    assert trio.current_time() - started >= WINDOW


async def test_allocation_that_ended_meanwhile_is_not_cancelled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeBackend()
    fake.statuses = {"1.job": RUNNING, "3.job": RUNNING}
    world = await restart(nursery, tmp_path, fake)
    await settle(WINDOW - 10)
    fake.statuses = {"1.job": ExternalStatus(ExternalState.FINISHED, raw="COMPLETED")}
    await settle(20)
    # 1.job ended by itself (asked first); 3.job still runs without a worker: cancelled.
    assert fake.cancelled == ["3.job"]
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    assert "COMPLETED" in last_message(world, "1.job")


async def test_cancel_that_fails_has_its_event_and_the_allocation_stays(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeBackend()
    fake.statuses = {"1.job": RUNNING, "3.job": RUNNING}
    fake.cancel_error = "scancel: error: Invalid job id specified"
    world = await restart(nursery, tmp_path, fake)
    await settle(WINDOW + 10 * 60)
    assert set(fake.cancelled) == {"1.job", "3.job"}
    assert "cancel-failed" in world.events()
    failed = [e for e in world.queue().events if e.event == "cancel-failed"]
    assert all("Invalid job id" in e.message for e in failed)
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING


async def test_a_draining_allocation_stays_draining_across_a_restart(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake = FakeBackend()
    fake.statuses = {"1.job": RUNNING, "2.job": RUNNING, "3.job": RUNNING}
    restarted_at = trio.current_time()
    # `hq alloc drain --grace 10m` of 1.job and 3.job 100 s before the server went: 500 s are
    # left. 1.job's worker comes back with a task it runs; 3.job's comes back idle.
    drains = [
        r.AllocationDraining(1, allocation_id, 600.0, restarted_at - 100.0)
        for allocation_id in ("1.job", "3.job")
    ]
    world = await restart(nursery, tmp_path, fake, [*journal(tmp_path), *drains])
    assert world.service.drains.draining.keys() == {"1.job", "3.job"}
    job_id = submit(world, 4)
    world.state.hold_grace = WINDOW
    world.state.restore_started(job_id, IdSet.from_ids([0]), 0)
    await settle(10)
    busy = add_worker(world, "1.job")
    assert world.state.adopt(busy, [[job_id, 0, 0]]) == []
    idle = add_worker(world, "3.job")
    add_worker(world, "2.job")
    await settle(1)
    # Drained as they come back: they take no new task; the idle one stops.
    assert busy.draining and idle.draining
    assert [t.id for t in busy.tasks.values()] == [0]
    assert idle.stop_reason == "drained" and not idle.tasks
    # The idle one's drain ends once the window for workers to come back has passed.
    await settle(WINDOW - 20)
    assert fake.cancelled == []
    await settle(20)
    assert fake.cancelled == ["3.job"]
    # The busy one's running task gets what was left of the grace.
    await settle(500 - WINDOW - 20)
    assert fake.cancelled == ["3.job"]
    await settle(20)
    assert fake.cancelled == ["3.job", "1.job"]
    assert trio.current_time() - restarted_at >= 500
    drained = [e.allocation_id for e in world.queue().events if e.event == "allocation-drained"]
    assert drained == ["3.job", "1.job"]
    assert not world.service.drains.draining
