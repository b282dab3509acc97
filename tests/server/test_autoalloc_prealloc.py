"""Preallocated pools (`--preallocate N [--persist]`) and queue filter tags, in-process on the
autojump clock: a real `ServerState`, the recording fake backend of the service tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from hqpy.autoalloc.service import AllocError
from hqpy.common.resources import FRACTIONS, ResourceAmountRequest, ResourceRequest
from hqpy.common.states import AllocationState, QueueState
from hqpy.protocol import messages as m
from tests.server.test_autoalloc_service import (
    World,
    add_queue,
    add_worker,
    settle,
    start,
    submit,
)
from tests.server.test_drain import start_tasks


def submit_tagged(world: World, count: int, tags: tuple[str, ...]) -> int:
    desc = m.SubmitDesc(
        ids=f"0-{count - 1}",
        args=("sleep", "1"),
        env={},
        cwd="%{SUBMIT_DIR}",
        stdout=None,
        stderr=None,
        submit_dir="/tmp",
        request=ResourceRequest((ResourceAmountRequest("cpus", FRACTIONS),)),
        tags=tags,
    )
    job_id = world.state.submit(m.SubmitRequest(desc))
    world.service.notify()
    return job_id


class RecordingControl:
    """An `AllocationControl` that records which allocations the allocator drains."""

    def __init__(self) -> None:
        self.drained: list[str] = []

    def drain(self, allocation_id: str) -> None:
        self.drained.append(allocation_id)

    def busy(self, allocation_id: str) -> int:
        return 0

    def hand_back(self, allocation_id: str, reason: str, stop: bool = True) -> None:
        pass


def active(world: World, queue_id: int = 1) -> list[str]:
    return [a.id for a in world.queue(queue_id).active()]


async def test_pool_submits_nothing_without_work_then_all_n_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=3, backlog=1)
    await settle(60)
    assert world.fake.made("submit") == []
    submit(world, 1)
    await settle()
    # All three at once, although the backlog is 1 and one task waits.
    assert len(world.fake.made("submit")) == 3
    assert world.events().count("prealloc-started") == 1


async def test_pool_keeps_n_up_while_work_waits_and_replaces_an_ended_one(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=2)
    submit(world, 10, cpus=1)
    await settle()
    assert active(world) == ["1.job", "2.job"]
    worker = add_worker(world, "1.job")
    await settle()
    world.state.on_worker_stopping(worker, "time-limit")
    await settle(10)
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    assert active(world) == ["2.job", "3.job"]
    assert "prealloc-replaced" in world.events()


async def test_persistent_pool_is_up_from_creation_and_replaced_without_work(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=2, persist=True)
    await settle()
    assert active(world) == ["1.job", "2.job"]
    worker = add_worker(world, "1.job")
    await settle(600)
    # No work: no withdrawal of the queued one; the ended one is replaced.
    assert world.allocation_states()["2.job"] is AllocationState.QUEUED
    world.state.on_worker_stopping(worker, "time-limit")
    await settle(10)
    assert active(world) == ["2.job", "3.job"]
    assert world.events().count("prealloc-replaced") == 1


async def test_persistent_workers_ignore_the_idle_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=1, persist=True, idle_timeout=60.0, time_limit=7200.0)
    await settle()
    command = world.fake.requests[0].worker_command
    assert '--idle-timeout "2h"' in command
    assert '--idle-timeout "1m"' not in command


async def test_stop_preallocated_cancels_and_stops_replacing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=2, persist=True)
    await settle()
    control = RecordingControl()
    world.service.control = control
    worker = add_worker(world, "1.job")
    await settle()
    assert await world.service.stop_preallocated((), now=False) == [1]
    await settle()
    # The queued one is cancelled; the running one is drained (its workers take no new task).
    assert world.fake.cancelled == ["2.job"]
    assert control.drained == ["1.job"]
    assert world.events().count("prealloc-stopped") == 1
    world.state.on_worker_stopping(worker, "stopped")
    await settle(600)
    assert active(world) == []
    assert len(world.fake.made("submit")) == 2
    # Work does not restart a stopped pool; `hq alloc preallocate` does.
    submit(world, 1)
    await settle(60)
    assert len(world.fake.made("submit")) == 2
    assert world.service.preallocate(("1",)) == [1]
    await settle()
    assert len(world.fake.made("submit")) == 4


async def test_stop_preallocated_now_cancels_running_allocations(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=2, persist=True)
    await settle()
    control = RecordingControl()
    world.service.control = control
    add_worker(world, "1.job")
    await settle()
    await world.service.stop_preallocated(("1",), now=True)
    await settle()
    assert sorted(world.fake.cancelled) == ["1.job", "2.job"]
    assert control.drained == []


async def test_preallocate_starts_a_pool_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, preallocate=2, name="small")
    await settle()
    assert world.fake.made("submit") == []
    assert world.service.preallocate(("small",)) == [1]
    await settle()
    assert active(world) == ["1.job", "2.job"]
    # Not persistent: no replacement without work, and no withdrawal of what it started.
    worker = add_worker(world, "1.job")
    await settle(600)
    assert world.allocation_states()["2.job"] is AllocationState.QUEUED
    world.state.on_worker_stopping(worker, "idle-timeout")
    await settle(10)
    assert active(world) == ["2.job"]
    assert len(world.fake.made("submit")) == 2


async def test_pool_respects_max_worker_count_and_pause(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    queue = await add_queue(world, preallocate=4, persist=True, max_worker_count=3)
    await settle()
    assert len(world.fake.made("submit")) == 3
    world.service.pause(queue.id)
    assert queue.state is QueueState.PAUSED
    worker = add_worker(world, "1.job")
    await settle()
    world.state.on_worker_stopping(worker, "time-limit")
    await settle(60)
    assert len(world.fake.made("submit")) == 3


async def test_pool_requests_name_queues_that_are_pools(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, name="plain")
    with pytest.raises(AllocError, match="not a pool"):
        world.service.preallocate(("plain",))
    with pytest.raises(AllocError, match="`nope` not found"):
        await world.service.stop_preallocated(("nope",), now=False)


async def test_tagged_work_is_demand_only_for_queues_whose_filter_tags_it_carries(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, filter_tags=("gpu",), name="gpu")
    await add_queue(world, name="any")
    submit(world, 1)
    await settle()
    # The untagged task: only the queue without filter tags.
    assert active(world, 1) == []
    assert len(active(world, 2)) == 1
    submit_tagged(world, 1, ("gpu", "x=1"))
    await settle()
    assert len(active(world, 1)) == 1
    assert '--filter-tag "gpu"' in world.fake.requests[-1].worker_command


async def test_queue_offers_describe_each_live_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, name="small", memory=16 * 2**30, filter_tags=("small",), cpus="2")
    probing = await add_queue(world, cpus=None, time_limit=600.0)
    world.service.pause(probing.id)
    offers = world.service.queue_offers()
    assert [o.queue_id for o in offers] == [1, 2]
    small, other = offers
    assert small.name == "small"
    assert small.capacity == {"cpus": 2 * FRACTIONS, "mem": 16 * 1024 * FRACTIONS}
    assert small.filter_tags == frozenset({"small"})
    assert not small.exact and not small.paused
    assert other.capacity is None and other.paused and other.time_limit == 600.0


async def test_load_adds_all_queues_or_none(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    good = m.QueueParams(manager="slurm", time_limit=3600.0, name="a", cpus="1")
    bad = m.QueueParams(manager="slurm", time_limit=3600.0, name="b", backlog=0)
    with pytest.raises(AllocError, match="queue b: Backlog has to be at least 1; no queue"):
        await world.service.load_queues((good, bad))
    assert world.service.state.live_queues() == []
    assert await world.service.load_queues((good,)) == [1]


async def test_stopping_a_pool_drains_its_busy_workers(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Without `--now`, a pool's busy worker finishes what runs and takes nothing new."""
    from hqpy.server.drain import ServerDrain

    world = await start(nursery, tmp_path)
    world.service.control = ServerDrain(world.state)
    await add_queue(world, preallocate=1, persist=True)
    await settle()
    idle = add_worker(world, "1.job", cpus="2")
    busy = add_worker(world, "1.job", cpus="2")
    submit(world, 1)
    world.state.schedule()
    # The one task went to one of the two workers; name them by what they hold.
    if idle.tasks:
        idle, busy = busy, idle
    assert busy.tasks and not idle.tasks
    start_tasks(world, busy)
    await world.service.stop_preallocated(("1",), now=False)
    assert idle.stop_reason == "drained"
    assert busy.stop_reason is None and busy.draining
    # A busy worker with a free cpu takes no new task.
    job_id = submit(world, 1)
    world.state.schedule()
    assert [t.group.body.job_id for t in busy.tasks.values()] == [job_id - 1]
    assert world.fake.cancelled == []


async def test_persistent_pool_backs_off_after_failed_submissions(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    from hqpy.autoalloc.state import SUBMISSION_DELAYS

    world = await start(nursery, tmp_path)
    world.fake.fail_submit = "sbatch: error: Batch job submission failed"
    await add_queue(world, preallocate=3, persist=True)
    await settle()
    # The first failure ends the step: no storm of three (or more) attempts.
    assert len(world.fake.made("submit")) == 1
    await settle(SUBMISSION_DELAYS[1] - 5)
    assert len(world.fake.made("submit")) == 1
    world.fake.fail_submit = None
    await settle(30)
    assert len(world.fake.made("submit")) == 4
    assert active(world) == ["1.job", "2.job", "3.job"]
    events = world.events()
    assert "prealloc-replaced" not in events  # retries after a failure belong to the start
    assert events.count("prealloc-started") == 2
