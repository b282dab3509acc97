"""The allocator loop in-process: a real `ServerState`, a recording fake backend, virtual time.

Every test runs under trio's autojump clock and gives the service `trio.current_time` as its
clock, so back-off delays of an hour take no real time and the order of events is exact. The
fake backend does no I/O (only the service writes the submit script into `tmp_path`).

The service is connected to the server state as the composition root connects them (the
state's event hub and `ServerDemand`), so a job submit, a worker registration and a worker loss
reach it exactly as in `hq server start`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BatchBackend,
    CancelError,
    CancelOutcome,
    CancelTarget,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
    cancel_each,
)
from hqpy.autoalloc.cancels import CANCEL_ATTEMPTS, cancel_bound
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.service import AllocError, AutoAllocService
from hqpy.autoalloc.state import (
    MAX_QUEUED_STATUS_ERRORS,
    MAX_RUNNING_STATUS_ERRORS,
    MAX_SUBMISSION_FAILS,
    SUBMISSION_DELAYS,
    AllocationQueue,
)
from hqpy.common.events import AllocationEndReported
from hqpy.common.resources import (
    FRACTIONS,
    ResourceAmountRequest,
    ResourceDescriptorItem,
    ResourceRequest,
    parse_descriptor,
)
from hqpy.common.states import AllocationState, AllocEventKind, QueueState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
from hqpy.server.server import Server, ServerConfig
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker

TICK = 5.0
CONFIG = AutoAllocConfig(
    refresh_interval=1e9,
    queued_refresh_interval=1e9,
    max_schedule_delay=30.0,
    tick_interval=TICK,
    debounce=0.005,
)
"""HyperQueue's pass timers, but no polling of the batch system unless a test asks for it."""

SBATCH_ERROR = (
    "sbatch execution failed\nExit code: 1\nStderr: sbatch: error: Batch job submission "
    "failed: Invalid account or account/partition combination specified\nStdout:"
)


# ---------------------------------------------------------------------------------------------
# The fake backend


@attrs.define
class Call:
    what: str
    """`submit`, `query` or `cancel`."""
    args: tuple[str, ...]
    time: float


class FakeBackend:
    """A `BatchBackend` that hands out ids `1.job`, `2.job`, ... and records every call.

    `submit_errors` are raised by the next submissions, in order (then `fail_submit`, if set,
    by every one); `statuses` answer queries (default: still queued), or `query_error` makes
    them fail; `cancel_error` makes cancels fail.
    """

    manager: ClassVar[str] = "SLURM"

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.requests: list[AllocationRequest] = []
        self.scripts: list[Path] = []
        self.submit_errors: list[str] = []
        self.fail_submit: str | None = None
        self.statuses: dict[str, ExternalStatus] = {}
        self.query_error: str | None = None
        self.cancel_error: str | None = None
        self.cancel_gate: trio.Event | None = None
        """When set, cancels wait for it (a slow `scancel`)."""
        self.cancel_failures: dict[str, int] = {}
        """Allocation id -> how many of its next cancels fail (then they succeed)."""
        self.hanging_cancels: set[str] = set()
        """Allocation ids whose cancel never returns (an `scancel` that hangs)."""
        self.hanging_submits: set[int] = set()
        """Queue ids whose submissions hang for the 30 s command timeout, then fail."""
        self.hanging_queries: set[str] = set()
        """Allocation ids whose status query hangs for the 30 s command timeout, then fails."""
        self.managers: list[str] = []
        self._next_id = 1
        self._changed = trio.Event()

    def make(self, manager: str, nursery: trio.Nursery, timeout: float) -> BatchBackend:
        """The `make_backend` argument of `AutoAllocService`."""
        self.managers.append(manager)
        return self

    def _record(self, what: str, *args: str) -> None:
        self.calls.append(Call(what, args, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()

    def render_script(self, request: AllocationRequest) -> str:
        self.requests.append(request)
        header = f"#!/bin/bash\n# {request.name}: {request.worker_count} worker(s)\n"
        return f"{header}\n{request.worker_command}\n"

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        workdir = request.workdir
        await trio.lowlevel.checkpoint()
        self._record("submit", str(script))
        self.scripts.append(script)
        queue_dir = workdir.parent.name.split("-")[0]  # `autoalloc/<queue>[-name]/<seq>`
        if queue_dir.isdigit() and int(queue_dir) in self.hanging_submits:
            await trio.sleep(30.0)
            raise SubmitError("sbatch did not finish within 30s")
        if self.submit_errors:
            raise SubmitError(self.submit_errors.pop(0))
        if self.fail_submit is not None:
            raise SubmitError(self.fail_submit)
        allocation_id = f"{self._next_id}.job"
        self._next_id += 1
        return allocation_id

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        await trio.lowlevel.checkpoint()
        self._record("query", *ids)
        if self.hanging_queries.intersection(ids):
            await trio.sleep(30.0)
            raise StatusQueryError("squeue did not finish within 30s")
        if self.query_error is not None:
            raise StatusQueryError(self.query_error)
        queued = ExternalStatus(ExternalState.QUEUED, raw="PENDING")
        return {i: self.statuses.get(i, queued) for i in ids}

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        await trio.lowlevel.checkpoint()
        self._record("cancel", allocation_id)
        if self.cancel_gate is not None:
            await self.cancel_gate.wait()
        if allocation_id in self.hanging_cancels:
            await trio.sleep_forever()
        if self.cancel_failures.get(allocation_id, 0) > 0:
            self.cancel_failures[allocation_id] -= 1
            raise CancelError("scancel: error: Socket timed out on send/recv operation")
        if self.cancel_error is not None:
            raise CancelError(self.cancel_error)

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        self._record("cancel_many", *(t.allocation_id for t in targets))
        return await cancel_each(self.cancel, targets, timeout=30.0)

    # --- for the tests

    def made(self, what: str) -> list[Call]:
        return [c for c in self.calls if c.what == what]

    @property
    def submitted(self) -> list[str]:
        """Ids of the successful submissions, in order."""
        return [f"{n}.job" for n in range(1, self._next_id)]

    @property
    def cancelled(self) -> list[str]:
        return [c.args[0] for c in self.made("cancel")]

    async def wait_for(self, what: str, count: int) -> None:
        while len(self.made(what)) < count:
            await self._changed.wait()


# ---------------------------------------------------------------------------------------------
# The world around the service


@attrs.define
class World:
    server: Server
    service: AutoAllocService
    fake: FakeBackend

    @property
    def state(self) -> ServerState:
        return self.server.state

    def queue(self, queue_id: int = 1) -> AllocationQueue:
        queue = self.service.state.queues[queue_id]
        return queue

    def events(self, queue_id: int = 1) -> list[str]:
        return [e.event for e in self.queue(queue_id).events]

    def allocation_states(self, queue_id: int = 1) -> dict[str, AllocationState]:
        return {a.id: a.state for a in self.queue(queue_id).allocations.values()}


async def start(
    nursery: trio.Nursery,
    tmp_path: Path,
    config: AutoAllocConfig = CONFIG,
    fake: FakeBackend | None = None,
) -> World:
    fake = fake or FakeBackend()
    server = Server(ServerConfig(server_dir=tmp_path))
    server.state.clock = trio.current_time
    service = AutoAllocService(
        ServerDemand(server.state),
        server.state.hub,
        tmp_path / "001",
        config,
        make_backend=fake.make,
        clock=trio.current_time,
    )
    await nursery.start(service.run)
    return World(server, service, fake)


def queue_params(**kw: object) -> m.QueueParams:
    values: dict[str, object] = {"manager": "slurm", "time_limit": 3600.0, "cpus": "1"}
    values.update(kw)
    return m.QueueParams(**values)  # type: ignore[arg-type]


async def add_queue(world: World, **kw: object) -> AllocationQueue:
    return await world.service.add_queue(queue_params(**kw), dry_run=False)


def submit(world: World, count: int, cpus: int = 1, time_request: float = 0.0) -> int:
    """`hq submit --array 0-<count-1> --cpus <cpus> [--time-request ...] sleep 1`."""
    desc = m.SubmitDesc(
        ids=f"0-{count - 1}",
        args=("sleep", "1"),
        env={},
        cwd="%{SUBMIT_DIR}",
        stdout=None,
        stderr=None,
        submit_dir="/tmp",
        request=ResourceRequest(
            (ResourceAmountRequest("cpus", cpus * FRACTIONS),), min_time=time_request
        ),
    )
    job_id = world.state.submit(m.SubmitRequest(desc))
    world.service.notify()
    return job_id


def add_worker(world: World, allocation_id: str | None, cpus: str = "1") -> Worker:
    """A worker registers, started by the allocation `allocation_id` (None: by hand)."""
    resources: tuple[ResourceDescriptorItem, ...] = (parse_descriptor("cpus", cpus),)
    config = m.WorkerConfiguration(
        hostname="node1",
        work_dir="/tmp",
        listen_address="",
        heartbeat_interval=8.0,
        idle_timeout=None,
        time_limit=None,
        resources=resources,
        group="default",
        on_server_lost="finish-running",
        pid=1,
        manager=None if allocation_id is None else m.ManagerInfo("SLURM", allocation_id),
    )
    return world.state.add_worker(config)


async def settle(seconds: float = 1.0) -> None:
    """Let virtual time pass (the debounce, ticks and passes run), then wait until every task
    is blocked. The default second is less than a tick: what happens in it was woken up."""
    await trio.sleep(seconds)
    await trio.testing.wait_all_tasks_blocked()


# ---------------------------------------------------------------------------------------------
# When it submits


async def test_submits_right_after_a_job_submit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    slow = AutoAllocConfig(refresh_interval=1e9, max_schedule_delay=1e6, tick_interval=1e6)
    world = await start(nursery, tmp_path, slow)
    await add_queue(world)
    await settle(10)
    assert world.fake.calls == []
    submitted_at = trio.current_time()
    submit(world, 1)
    # Virtual seconds: far below the tick, so the wake-up (not a timer) caused the submit.
    with trio.fail_after(1):
        await world.fake.wait_for("submit", 1)
    assert world.fake.made("submit")[0].time - submitted_at < 1
    assert world.allocation_states() == {"1.job": AllocationState.QUEUED}


async def test_server_job_submit_wakes_the_allocator_by_itself(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    slow = AutoAllocConfig(refresh_interval=1e9, max_schedule_delay=1e6, tick_interval=1e6)
    world = await start(nursery, tmp_path, slow)
    await add_queue(world)
    await settle(10)
    desc = m.SubmitDesc(
        ids="0",
        args=("true",),
        env={},
        cwd="/tmp",
        stdout=None,
        stderr=None,
        submit_dir="/tmp",
        request=ResourceRequest((ResourceAmountRequest("cpus", FRACTIONS),)),
    )
    world.state.submit(m.SubmitRequest(desc))  # no notify(): the server's hook does it
    with trio.fail_after(1):
        await world.fake.wait_for("submit", 1)


async def test_adding_a_queue_submits_for_tasks_already_waiting(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    slow = AutoAllocConfig(refresh_interval=1e9, max_schedule_delay=1e6, tick_interval=1e6)
    world = await start(nursery, tmp_path, slow)
    submit(world, 3)
    await settle(10)
    await add_queue(world, backlog=2)
    with trio.fail_after(1):
        await world.fake.wait_for("submit", 2)
    await settle()
    assert len(world.fake.submitted) == 2


async def test_nothing_is_submitted_without_waiting_tasks(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=4)
    world.service.notify()
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.calls == []
    # Tasks that a worker already runs are no demand either.
    add_worker(world, None, cpus="4")
    submit(world, 4)
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.calls == []


async def test_nothing_is_submitted_for_tasks_the_queue_workers_cannot_run(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, cpus="4", backlog=4)
    submit(world, 10, cpus=8)
    await settle(3 * CONFIG.max_schedule_delay)
    assert world.fake.calls == []
    submit(world, 1, cpus=4)
    await settle()
    assert world.fake.submitted == ["1.job"]


async def test_nothing_is_submitted_for_tasks_longer_than_the_worker_time_limit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, time_limit=3600.0, worker_time_limit=1800.0)
    submit(world, 5, time_request=1801.0)
    await settle(3 * CONFIG.max_schedule_delay)
    assert world.fake.calls == []
    # A time request equal to the worker's time limit fits.
    submit(world, 1, time_request=1800.0)
    await settle()
    assert world.fake.submitted == ["1.job"]


async def test_backlog_is_respected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=3)
    submit(world, 100)
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]
    assert [r.worker_count for r in world.fake.requests] == [1, 1, 1]
    # One of them starts: the backlog has room for one more.
    add_worker(world, "2.job")
    await settle()
    assert world.fake.submitted == ["1.job", "2.job", "3.job", "4.job"]
    assert world.allocation_states()["2.job"] is AllocationState.RUNNING


async def test_workers_per_alloc_and_max_worker_count_are_respected(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=4, workers_per_alloc=3, max_worker_count=7)
    submit(world, 100)
    await settle(10 * CONFIG.max_schedule_delay)
    assert [r.worker_count for r in world.fake.requests] == [3, 3, 1]
    assert world.queue().active_worker_count() == 7


async def test_queued_allocations_cover_the_demand(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=10, workers_per_alloc=2)
    submit(world, 3)
    await settle(10 * CONFIG.max_schedule_delay)
    assert [r.worker_count for r in world.fake.requests] == [2, 1]
    # More tasks: only what the queued workers do not cover.
    submit(world, 2)
    await settle()
    assert [r.worker_count for r in world.fake.requests] == [2, 1, 2]


async def test_probing_queue_submits_one_allocation_at_a_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, cpus=None, backlog=3)
    submit(world, 100)
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.submitted == ["1.job"]
    assert world.queue().known_resources is None


async def test_demand_is_shared_between_queues(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # HyperQueue `unknown_worker_resources_multi_queue`: one task, two queues that could both
    # run it: one allocation in all (the earlier queue's), not one per queue.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=4)
    await add_queue(world, backlog=4)
    submit(world, 1)
    await settle(3 * CONFIG.max_schedule_delay)
    assert world.fake.submitted == ["1.job"]
    assert list(world.queue(1).allocations) == ["1.job"]
    assert world.queue(2).allocations == {}


async def test_worker_registration_starts_the_allocation_and_teaches_the_shape(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, cpus=None, backlog=10)
    submit(world, 10)
    await settle()
    assert world.fake.submitted == ["1.job"]
    worker = add_worker(world, "1.job", cpus="4")
    await settle()
    queue = world.queue()
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING
    assert queue.known_resources == worker.config.resources
    assert world.events()[:3] == ["queue-created", "allocation-queued", "allocation-started"]
    # The worker took 4 tasks; 6 wait, and a 4-cpu worker runs 4 at once: 2 more workers.
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]


async def test_time_limit_of_the_allocation_is_the_queue_time_limit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, name="foo", time_limit=5400.0, worker_time_limit=600.0)
    submit(world, 1)
    await settle()
    [request] = world.fake.requests
    assert (request.name, request.seq, request.time_limit) == ("foo-1", 1, 5400.0)
    assert '--time-limit "10m"' in request.worker_command
    assert request.workdir == tmp_path / "001" / "autoalloc" / "1-foo" / "001"
    assert world.fake.scripts == [request.workdir / "hq-submit.sh"]
    assert world.fake.scripts[0].read_text().startswith("#!/bin/bash\n# foo-1")
    assert world.fake.managers == ["slurm"]


# ---------------------------------------------------------------------------------------------
# Pausing, failing and backing off


async def test_paused_queue_submits_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    world.service.pause(1)
    submit(world, 10)
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.calls == []
    assert world.events() == ["queue-created", "queue-paused"]
    world.service.resume(1)
    with trio.fail_after(1):
        await world.fake.wait_for("submit", 2)
    assert world.events()[-3:] == ["queue-resumed", "allocation-queued", "allocation-queued"]


async def test_submit_failed_event_carries_the_backend_error(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=3)
    world.fake.submit_errors = [SBATCH_ERROR]
    submit(world, 10)
    await settle()
    [event] = [e for e in world.queue().events if e.event == "submit-failed"]
    assert event.message == SBATCH_ERROR
    assert event.allocation_id is None
    # The pass stopped at the first failure; nothing was queued.
    assert len(world.fake.made("submit")) == 1
    assert world.queue().allocations == {}


async def test_failing_submissions_back_off_and_pause_the_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    world.fake.fail_submit = SBATCH_ERROR
    submit(world, 10)
    with trio.fail_after(sum(SUBMISSION_DELAYS) + 10 * SUBMISSION_DELAYS[-1]):
        while world.queue().state is QueueState.ACTIVE:
            await world.service.wait_for_events(1, after=world.queue().event_count)
    attempts = [c.time for c in world.fake.made("submit")]
    assert len(attempts) == MAX_SUBMISSION_FAILS
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    steps = [*SUBMISSION_DELAYS[1:], *[SUBMISSION_DELAYS[-1]] * (MAX_SUBMISSION_FAILS - 5)]
    for gap, delay in zip(gaps, steps, strict=True):
        assert delay <= gap < delay + 2 * TICK, (gaps, steps)
    events = world.queue().events
    failures = [e for e in events if e.event == "submit-failed"]
    assert len(failures) == MAX_SUBMISSION_FAILS
    assert all(e.message == SBATCH_ERROR for e in failures)
    paused = events[-1]
    assert paused.event == "queue-paused"
    assert "10 submissions in a row failed" in paused.message
    assert "hq alloc resume 1" in paused.message
    assert world.queue().pause_reason == paused.message
    # Paused: no more attempts, however long we wait.
    await settle(10 * SUBMISSION_DELAYS[-1])
    assert len(world.fake.made("submit")) == MAX_SUBMISSION_FAILS
    # The cause is fixed and the user resumes: it submits at once, not after an hour.
    world.fake.fail_submit = None
    world.service.resume(1)
    with trio.fail_after(1):
        await world.fake.wait_for("submit", MAX_SUBMISSION_FAILS + 1)
    await settle()
    assert world.queue().state is QueueState.ACTIVE
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_unwritable_allocation_directory_is_a_submit_failure(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # HyperQueue counts "Failed to create allocation directory" as a failed submission; the
    # allocator (and with it the server) must not die of it.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "autoalloc").write_text("not a directory")
    submit(world, 1)
    await settle()
    assert world.fake.calls == []
    assert world.events()[-1] == "submit-failed"
    assert "autoalloc" in world.queue().events[-1].message
    # Fixed: the next attempt (after the back-off step) succeeds.
    (tmp_path / "001" / "autoalloc").unlink()
    await settle(SUBMISSION_DELAYS[1] + 2 * TICK)
    assert world.fake.submitted == ["1.job"]


async def test_submission_success_after_a_failure_resets_the_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    world.fake.submit_errors = [SBATCH_ERROR]
    submit(world, 10)
    await settle()
    assert len(world.fake.made("submit")) == 1
    await settle(SUBMISSION_DELAYS[1] + 2 * TICK)
    assert world.fake.submitted == ["1.job"]
    assert world.queue().limiter.submission_fails == 0
    assert world.queue().limiter.step == 0


async def test_allocations_that_crash_pause_the_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 10)
    for n in range(1, 4):
        with trio.fail_after(2 * SUBMISSION_DELAYS[n] + 10 * TICK):
            await world.fake.wait_for("submit", n)
        await settle()
        worker = add_worker(world, f"{n}.job")
        await trio.sleep(1)
        world.state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
        await settle()
        assert world.allocation_states()[f"{n}.job"] is AllocationState.FAILED
    assert world.queue().state is QueueState.PAUSED
    assert "3 allocations in a row failed" in world.queue().events[-1].message
    await settle(10 * SUBMISSION_DELAYS[-1])
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]


# ---------------------------------------------------------------------------------------------
# Following allocations


async def test_worker_loss_ends_the_allocation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    worker = add_worker(world, "1.job")
    await settle(120)
    # It stops before it ran its task, which waits again (and brings a new allocation).
    world.state.on_worker_stopping(worker, "idle-timeout")
    stopped_at = trio.current_time()
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    assert [(e.event, e.allocation_id) for e in world.queue().events][1:4] == [
        ("allocation-queued", "1.job"),
        ("allocation-started", "1.job"),
        ("allocation-finished", "1.job"),
    ]
    assert world.queue().allocations["1.job"].finished_at == stopped_at
    assert world.fake.cancelled == []  # it ends by itself


async def test_worker_crash_fails_the_allocation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    worker = add_worker(world, "1.job")
    await settle(5)
    world.state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FAILED
    # Its batch job may live on without it (a dead node): it is cancelled.
    assert world.fake.cancelled == ["1.job"]
    # Its task waits again, so a new allocation comes (after the back-off step).
    await settle(SUBMISSION_DELAYS[1] + 2 * TICK)
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_external_status_starts_and_ends_allocations(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=3)
    submit(world, 3)
    await settle()
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]
    fake = world.fake
    fake.statuses["1.job"] = ExternalStatus(ExternalState.RUNNING, raw="RUNNING")
    fake.statuses["2.job"] = ExternalStatus(ExternalState.FAILED, raw="CANCELLED")
    await world.service.refresh(force=True)
    assert fake.made("query")[-1].args == ("1.job", "2.job", "3.job")
    states = world.allocation_states()
    assert states["1.job"] is AllocationState.RUNNING
    assert states["2.job"] is AllocationState.FAILED
    assert states["3.job"] is AllocationState.QUEUED
    fake.statuses["1.job"] = ExternalStatus(ExternalState.FINISHED, raw="TIMEOUT")
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    # Only active allocations are asked about.
    await world.service.refresh(force=True)
    assert fake.made("query")[-1].args == ("3.job",)


@pytest.mark.parametrize("raw", ["COMPLETED", "TIMEOUT", "F"])
async def test_external_finish_before_any_worker_is_finished_and_does_not_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path, raw: str
) -> None:
    # hq #14.2: HyperQueue's FinishedUnexpectedly{failed: false} (PBS `F` with exit 0, Slurm
    # COMPLETED or TIMEOUT): finished, and no step up the back-off ladder.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.statuses["1.job"] = ExternalStatus(ExternalState.FINISHED, raw=raw)
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    event = world.queue().events[-1]
    assert (event.event, event.allocation_id) == ("allocation-finished", "1.job")
    assert raw in event.message
    assert "before any worker registered" in event.message
    limiter = world.queue().limiter
    assert (limiter.allocation_fails, limiter.step) == (0, 0)
    # The task still waits: its replacement comes at the next pass, not a minute later.
    await settle()
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_external_failure_before_any_worker_counts_towards_the_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.statuses["1.job"] = ExternalStatus(ExternalState.FAILED, raw="FAILED")
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.FAILED
    assert world.queue().limiter.allocation_fails == 1
    await settle()
    assert world.fake.submitted == ["1.job"], "the back-off holds the replacement"
    await settle(SUBMISSION_DELAYS[1] + 2 * TICK)
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_status_errors_fail_a_queued_allocation_which_is_cancelled_and_replaced(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # HyperQueue issue #764: a purged job kept its allocation queued forever. hq #14.3: after
    # more than 10 errors it fails, its replacement comes at the next pass (no back-off), and
    # (#8.5) it is cancelled in the batch system, where it may still exist.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    error = "squeue execution failed\nExit code: 1\nStderr: slurm_load_jobs error\nStdout:"
    world.fake.query_error = error
    for _ in range(MAX_QUEUED_STATUS_ERRORS):
        await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.QUEUED
    assert world.queue().allocations["1.job"].status_errors == MAX_QUEUED_STATUS_ERRORS
    assert world.fake.cancelled == []
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.FAILED
    errors = [e for e in world.queue().events if e.event == "status-error"]
    assert len(errors) == MAX_QUEUED_STATUS_ERRORS + 1
    assert all(e.message == error for e in errors)
    [failed] = [e for e in world.queue().events if e.event == "allocation-failed"]
    assert failed.allocation_id == "1.job"
    assert "could not be read 11 times" in failed.message
    assert world.fake.cancelled == ["1.job"]
    assert (world.queue().limiter.allocation_fails, world.queue().limiter.step) == (0, 0)
    # The task still waits: a new allocation takes the failed one's place at the next pass.
    await settle()
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_status_errors_finish_a_running_allocation_after_twenty(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.statuses["1.job"] = ExternalStatus(ExternalState.RUNNING, raw="RUNNING")
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING
    world.fake.query_error = "squeue timed out"
    for _ in range(MAX_RUNNING_STATUS_ERRORS):
        await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    assert world.fake.cancelled == ["1.job"], "no worker of it is there: it is cancelled"
    assert world.queue().limiter.step == 0


async def test_a_good_status_resets_the_error_count(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.query_error = "squeue start failed: No such file or directory"
    for _ in range(MAX_QUEUED_STATUS_ERRORS):
        await world.service.refresh(force=True)
    world.fake.query_error = None
    await world.service.refresh(force=True)
    assert world.queue().allocations["1.job"].status_errors == 0
    world.fake.query_error = "again"
    await world.service.refresh(force=True)
    assert world.allocation_states()["1.job"] is AllocationState.QUEUED


async def test_refresh_polls_on_its_interval(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = AutoAllocConfig(refresh_interval=60.0, max_schedule_delay=30.0, tick_interval=TICK)
    world = await start(nursery, tmp_path, config)
    await add_queue(world, backlog=1)
    await settle(300)
    assert world.fake.made("query") == []  # nothing to ask about
    submit(world, 1)
    await settle()
    world.fake.statuses["1.job"] = ExternalStatus(ExternalState.RUNNING, raw="RUNNING")
    await settle(config.refresh_interval + 2 * TICK)
    assert world.fake.made("query")
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING


async def test_queued_allocations_are_polled_often_running_ones_rarely(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # hq #13.1: queued allocations every `queued_refresh_interval` (one query for all of a
    # queue's queued ones); running ones only every `refresh_interval`.
    config = AutoAllocConfig(
        refresh_interval=3600.0,
        queued_refresh_interval=30.0,
        max_schedule_delay=30.0,
        tick_interval=TICK,
    )
    world = await start(nursery, tmp_path, config)
    await add_queue(world, backlog=3)
    submit(world, 3)
    await settle()
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]
    add_worker(world, "1.job")
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING
    await settle(config.queued_refresh_interval + 2 * TICK)
    queries = world.fake.made("query")
    assert queries, "queued allocations are polled within their interval"
    assert all(q.args == ("2.job", "3.job") for q in queries), queries
    world.fake.statuses["2.job"] = ExternalStatus(ExternalState.FAILED, raw="FAILED")
    await settle(config.queued_refresh_interval + 2 * TICK)
    assert world.allocation_states()["2.job"] is AllocationState.FAILED
    # Over an hour, the running allocation is asked about with the others (a safety net).
    await settle(config.refresh_interval)
    assert any("1.job" in q.args for q in world.fake.made("query"))


# ---------------------------------------------------------------------------------------------
# Allocations that report their own end (hq #13.1)


def report_end(world: World, allocation_id: str, exit_code: int, stderr: str = "") -> None:
    """What the server publishes when an allocation script's exit trap calls back."""
    world.state.hub.publish(AllocationEndReported(allocation_id, exit_code, stderr))


async def test_reported_failure_before_any_worker_fails_the_allocation_with_its_stderr(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    report_end(world, "1.job", 1, "module: not found\nboom\n")
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FAILED
    event = world.queue().events[-1]
    assert (event.event, event.allocation_id) == ("allocation-failed", "1.job")
    assert event.message == (
        "its script exited with code 1 before any worker registered; "
        "stderr: module: not found | boom"
    )
    assert world.queue().limiter.allocation_fails == 1
    assert world.fake.submitted == ["1.job"], "the back-off holds the replacement"
    await settle(SUBMISSION_DELAYS[1] + 2 * TICK)
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_reported_failures_pause_the_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    for n in range(1, 4):
        with trio.fail_after(2 * SUBMISSION_DELAYS[n] + 10 * TICK):
            await world.fake.wait_for("submit", n)
        await settle()
        report_end(world, f"{n}.job", 127, "hq: command not found")
        await settle()
    assert world.queue().state is QueueState.PAUSED
    assert "3 allocations in a row failed" in world.queue().events[-1].message
    await settle(10 * SUBMISSION_DELAYS[-1])
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]


async def test_reported_clean_exit_finishes_without_back_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    report_end(world, "1.job", 0, "warnings only")
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    event = world.queue().events[-2]
    assert (event.event, event.message) == (
        "allocation-finished",
        "its script exited with code 0 before any worker registered",
    )
    assert (world.queue().limiter.allocation_fails, world.queue().limiter.step) == (0, 0)
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_reported_end_with_connected_workers_leaves_the_end_to_them(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    worker = add_worker(world, "1.job")
    await settle(120)
    report_end(world, "1.job", 0)
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.RUNNING
    world.state.on_worker_stopping(worker, "idle-timeout")
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED


async def test_reported_end_of_an_allocation_being_cancelled_is_its_cancellation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.cancel_gate = trio.Event()
    nursery.start_soon(world.service.remove, 1, False)
    await settle()
    report_end(world, "1.job", 143, "Terminated")
    await settle()
    assert world.allocation_states()["1.job"] is AllocationState.FINISHED
    assert world.queue().allocations["1.job"].finished_at is not None
    assert world.queue().limiter.allocation_fails == 0
    world.fake.cancel_gate.set()
    await settle()


async def test_reported_end_of_an_unknown_allocation_is_ignored(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    report_end(world, "99.job", 1, "boom")
    await settle()
    assert world.allocation_states() == {"1.job": AllocationState.QUEUED}


# ---------------------------------------------------------------------------------------------
# Withdrawing queued allocations no task needs (hq #13.2)

GRACE = CONFIG.withdraw_grace


async def test_queued_allocations_without_demand_are_withdrawn_after_the_grace_period(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=3)
    submit(world, 3)
    await settle()
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]
    # A worker started by hand takes two of the tasks: one allocation is still needed.
    add_worker(world, None, cpus="2")
    gone_at = trio.current_time()
    await settle(GRACE - 1)
    assert world.fake.cancelled == [], "withdrawn before the grace period ended"
    await settle(CONFIG.max_schedule_delay + 2 * TICK)
    assert sorted(world.fake.cancelled) == ["2.job", "3.job"], "the newest go, the oldest stays"
    assert world.allocation_states() == {
        "1.job": AllocationState.QUEUED,
        "2.job": AllocationState.FINISHED,
        "3.job": AllocationState.FINISHED,
    }
    withdrawn = [e for e in world.queue().events if e.event == "allocation-withdrawn"]
    assert [e.allocation_id for e in withdrawn] == ["2.job", "3.job"]
    assert all(e.time - gone_at >= GRACE for e in withdrawn)
    assert world.queue().limiter.allocation_fails == 0
    # Withdrawn allocations are not replaced: nothing needs them.
    await settle(3 * CONFIG.max_schedule_delay)
    assert world.fake.submitted == ["1.job", "2.job", "3.job"]


async def test_demand_that_returns_within_the_grace_period_keeps_the_allocations(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    submit(world, 2)
    await settle()
    worker = add_worker(world, None, cpus="2")
    await settle(GRACE / 2)
    # The worker goes away before it ran them: the tasks wait again.
    world.state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    await settle(3 * GRACE)
    assert world.fake.cancelled == []
    assert "allocation-withdrawn" not in world.events()


async def test_withdrawal_that_the_batch_system_refuses_keeps_the_allocation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.cancel_error = "scancel execution failed\nExit code: 1"
    add_worker(world, None)
    await settle(GRACE + CONFIG.max_schedule_delay + 2 * TICK)
    assert world.fake.cancelled == ["1.job"] * CANCEL_ATTEMPTS
    assert world.allocation_states() == {"1.job": AllocationState.QUEUED}
    assert world.events()[-1] == "cancel-failed"
    alloc = world.queue().allocations["1.job"]
    assert (alloc.cancel_reason, alloc.withdrawing) == (None, False)
    # It tries again a grace period later; now the batch system takes it.
    world.fake.cancel_error = None
    await settle(GRACE + CONFIG.max_schedule_delay + 2 * TICK)
    assert world.allocation_states() == {"1.job": AllocationState.FINISHED}
    assert world.events()[-1] == "allocation-withdrawn"


# ---------------------------------------------------------------------------------------------
# One queue's batch commands never stall another's (hq #8.6)


async def test_a_hanging_submit_of_one_queue_does_not_stall_another(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1, cpus="2")
    await add_queue(world, backlog=3, cpus="1")
    world.fake.hanging_submits = {1}
    submit(world, 1, cpus=2)  # only queue 1 can run it: its `sbatch` hangs for 30 s
    await settle()
    assert len(world.fake.made("submit")) == 1
    submitted_at = trio.current_time()
    submit(world, 3, cpus=1)
    with trio.fail_after(1):
        await world.fake.wait_for("submit", 4)
    assert trio.current_time() - submitted_at < 1, "queue 2 waited for queue 1's sbatch"
    await settle()
    assert list(world.queue(2).allocations) == ["1.job", "2.job", "3.job"]
    assert world.queue(1).allocations == {}
    # The submission under way counted as queue 1's queued allocation: passes that ran
    # meanwhile neither submitted it again nor gave its task to queue 2.
    await settle(25)
    assert len(world.fake.made("submit")) == 4
    await settle(10)
    [failed] = [e for e in world.queue(1).events if e.event == "submit-failed"]
    assert "did not finish within 30s" in failed.message
    assert world.queue(1).in_flight == []


async def test_a_hanging_status_query_of_one_queue_does_not_stall_another(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = AutoAllocConfig(refresh_interval=TICK, max_schedule_delay=30.0, tick_interval=TICK)
    world = await start(nursery, tmp_path, config)
    await add_queue(world, backlog=1, cpus="2")
    await add_queue(world, backlog=1, cpus="1")
    submit(world, 1, cpus=2)
    await settle()
    submit(world, 1, cpus=1)
    await settle()
    assert list(world.queue(1).allocations) == ["1.job"]
    assert list(world.queue(2).allocations) == ["2.job"]
    world.fake.hanging_queries = {"1.job"}
    world.fake.statuses["2.job"] = ExternalStatus(ExternalState.RUNNING, raw="RUNNING")
    await settle(2 * TICK)
    assert world.allocation_states(2) == {"2.job": AllocationState.RUNNING}
    queries = [c.args for c in world.fake.made("query")]
    assert queries.count(("1.job",)) == 1, "a queue's poll is not started again while it runs"
    assert queries.count(("2.job",)) >= 1


# ---------------------------------------------------------------------------------------------
# Requests: remove, cancel, events, add with a dry run


async def test_remove_refuses_running_allocations_unless_forced(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 5)
    await settle()
    add_worker(world, "1.job")
    await settle()
    assert world.allocation_states() == {
        "1.job": AllocationState.RUNNING,
        "2.job": AllocationState.QUEUED,
    }
    with pytest.raises(AllocError, match="Allocation queue has running jobs"):
        await world.service.remove(1, force=False)
    assert world.fake.cancelled == []
    assert world.service.state.get_live(1) is not None
    await world.service.remove(1, force=True)
    assert sorted(world.fake.cancelled) == ["1.job", "2.job"]
    assert world.service.state.get_live(1) is None
    queue = world.queue()
    assert all(a.state is AllocationState.FINISHED for a in queue.allocations.values())
    assert "queue-removed" in world.events()
    with pytest.raises(AllocError, match="Allocation queue 1 not found"):
        world.service.get_queue(1)
    # A removed queue submits nothing more.
    submit(world, 5)
    await settle(10 * CONFIG.max_schedule_delay)
    assert world.fake.submitted == ["1.job", "2.job"]


async def test_remove_cancels_queued_allocations_without_force(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    submit(world, 5)
    await settle()
    await world.service.remove(1, force=False)
    assert sorted(world.fake.cancelled) == ["1.job", "2.job"]  # in parallel
    messages = [e.message for e in world.queue().events if e.event == "allocation-finished"]
    assert messages == ["canceled: its queue was removed"] * 2


async def test_cancel_all_cancels_every_active_allocation(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2, cpus="1")
    await add_queue(world, backlog=1, cpus="2")
    submit(world, 1, cpus=2)  # only the second queue can run it
    await settle()
    assert world.fake.submitted == ["1.job"]
    add_worker(world, "1.job", cpus="2")
    await settle()
    submit(world, 20)
    await settle()
    assert len(world.fake.submitted) == 4
    world.fake.statuses["4.job"] = ExternalStatus(ExternalState.FAILED, raw="CANCELLED")
    await world.service.refresh(force=True)
    active = sorted(
        a.id
        for q in world.service.state.queues.values()
        for a in q.allocations.values()
        if a.is_active
    )
    assert active == ["1.job", "2.job", "3.job"]
    await world.service.cancel_all()
    assert sorted(world.fake.cancelled) == active
    for queue in world.service.state.queues.values():
        assert not any(a.is_active for a in queue.allocations.values())


async def test_allocation_being_cancelled_ends_canceled_whatever_the_status_says(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A status poll that runs while hqpy's own cancel is under way sees the batch system say
    # CANCELLED: that is hqpy's doing, not a failed allocation (which would count towards
    # pausing the queue).
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.cancel_gate = trio.Event()
    nursery.start_soon(world.service.cancel_all)
    await world.fake.wait_for("cancel", 1)
    world.fake.statuses["1.job"] = ExternalStatus(ExternalState.FAILED, raw="CANCELLED")
    await world.service.refresh(force=True)
    world.fake.cancel_gate.set()
    await settle()
    alloc = world.queue().allocations["1.job"]
    assert alloc.state is AllocationState.FINISHED
    [ended] = [e for e in world.queue().events if e.allocation_id == "1.job"][-1:]
    assert (ended.event, ended.message) == ("allocation-finished", "canceled: the server stopped")
    assert world.queue().limiter.allocation_fails == 0


async def test_cancel_all_cancels_what_is_submitted_meanwhile(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # On server stop, cancelling one allocation frees a backlog slot; a pass that runs before
    # `cancel_all` returns must not fill it: nobody would cancel that allocation, and it would
    # outlive the server (seen end to end with the Slurm and PBS emulators, where passes run
    # every 100 ms while `scancel` takes a few hundred).
    config = AutoAllocConfig(refresh_interval=1e9, max_schedule_delay=TICK, tick_interval=TICK)
    world = await start(nursery, tmp_path, config)
    await add_queue(world, backlog=2)
    submit(world, 10)
    await settle()
    assert world.fake.submitted == ["1.job", "2.job"]
    done = trio.Event()

    async def stop() -> None:
        await world.service.cancel_all()
        done.set()

    world.fake.cancel_gate = trio.Event()
    nursery.start_soon(stop)
    await world.fake.wait_for("cancel", 1)
    world.fake.cancel_gate.set()
    await world.fake.wait_for("cancel", 2)
    # The second cancel is slow (well within the 30 s that server stop allows for all).
    world.fake.cancel_gate = trio.Event()
    await settle(3 * TICK)
    world.fake.cancel_gate.set()
    await done.wait()
    active = [a.id for a in world.queue().allocations.values() if a.is_active]
    assert active == [], "allocations left behind by the server stop"
    assert sorted(world.fake.cancelled) == world.fake.submitted


async def test_failed_cancel_is_retried_then_leaves_the_allocation_active(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # hq #8.5: an allocation counts as canceled only when the batch system confirmed it.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1)
    submit(world, 1)
    await settle()
    world.fake.cancel_error = "scancel execution failed\nExit code: 1"
    await world.service.cancel_all()
    assert world.fake.cancelled == ["1.job"] * CANCEL_ATTEMPTS
    assert world.allocation_states() == {"1.job": AllocationState.QUEUED}
    [error] = [e for e in world.queue().events if e.event == "cancel-failed"]
    assert error.allocation_id == "1.job"
    assert error.message.startswith("could not cancel 1.job: scancel execution failed")
    assert "allocation-finished" not in world.events()


async def test_cancel_that_fails_once_is_retried(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    submit(world, 2)
    await settle()
    world.fake.cancel_failures = {"2.job": 1}
    await world.service.cancel_all()
    assert sorted(world.fake.cancelled) == ["1.job", "2.job", "2.job"]
    assert [c.args for c in world.fake.made("cancel_many")] == [("1.job", "2.job"), ("2.job",)]
    assert world.allocation_states() == {
        "1.job": AllocationState.FINISHED,
        "2.job": AllocationState.FINISHED,
    }
    assert "cancel-failed" not in world.events()


async def test_server_stop_with_a_hanging_cancel_still_cancels_every_other_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # hq #8.5: a hanging `scancel` once spent the whole stop budget on the first allocation.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=1, cpus="2")
    await add_queue(world, backlog=2, cpus="1")
    submit(world, 1, cpus=2)  # queue 1
    await settle()
    submit(world, 2, cpus=1)  # queue 2 (queue 1's coming worker takes the 2-cpu task)
    await settle()
    assert list(world.queue(1).allocations) == ["1.job"]
    assert list(world.queue(2).allocations) == ["2.job", "3.job"]
    world.fake.hanging_cancels = {"1.job"}
    started = trio.current_time()
    await world.service.cancel_all()
    assert trio.current_time() - started <= cancel_bound(CONFIG.command_timeout)  # virtual seconds
    assert world.allocation_states(2) == {
        "2.job": AllocationState.FINISHED,
        "3.job": AllocationState.FINISHED,
    }
    assert world.allocation_states(1) == {"1.job": AllocationState.QUEUED}
    [error] = [e for e in world.queue(1).events if e.event == "cancel-failed"]
    assert error.allocation_id == "1.job"
    assert "1.job" in error.message


async def test_remove_force_reports_what_it_could_not_cancel(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # hq #8.5: a hanging `scancel` made `alloc remove --force` print success after 90 s and
    # record the allocations as `finished: canceled`.
    world = await start(nursery, tmp_path)
    await add_queue(world, backlog=2)
    submit(world, 5)
    await settle()
    add_worker(world, "1.job")
    await settle()
    assert sorted(world.queue().allocations) == ["1.job", "2.job", "3.job"]
    world.fake.hanging_cancels = {"1.job", "3.job"}
    started = trio.current_time()
    with pytest.raises(AllocError) as info:
        await world.service.remove(1, force=True)
    assert trio.current_time() - started <= cancel_bound(CONFIG.command_timeout)
    message = str(info.value)
    assert message.startswith(
        "Allocation queue 1 was removed, but allocations 1.job, 3.job could not be cancelled"
    )
    assert "\n" not in message
    assert world.service.state.get_live(1) is None
    assert world.allocation_states() == {
        "1.job": AllocationState.RUNNING,
        "2.job": AllocationState.FINISHED,
        "3.job": AllocationState.QUEUED,
    }
    [error] = [e for e in world.queue().events if e.event == "cancel-failed"]
    assert error.message == "could not cancel 1.job, 3.job: cancel did not finish within 30s"
    # The batch system says later that it is gone: that confirms the cancel.
    world.fake.statuses["3.job"] = ExternalStatus(ExternalState.FAILED, raw="CANCELLED")
    await world.service.refresh(force=True)
    assert world.allocation_states()["3.job"] is AllocationState.FINISHED
    assert world.queue().events[-1].message == "canceled: its queue was removed"
    assert world.queue().limiter.allocation_fails == 0


async def test_wait_for_events_wakes_on_a_new_event(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    queue = await add_queue(world)
    woken: list[int] = []

    async def follower() -> None:
        await world.service.wait_for_events(1, after=queue.event_count)
        woken.append(world.queue().event_count)

    nursery.start_soon(follower)
    await settle(100)
    assert woken == []
    world.service.pause(1)
    await settle()
    assert woken == [2]
    # Already more events than `after`: returns at once.
    with trio.fail_after(0.001):
        await world.service.wait_for_events(1, after=0)


async def test_add_queue_with_dry_run_submits_then_cancels(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    queue = await world.service.add_queue(queue_params(workers_per_alloc=3), dry_run=True)
    assert [(c.what, c.args[:1]) for c in world.fake.calls] == [
        ("submit", (str(world.fake.scripts[0]),)),
        ("cancel_many", ("1.job",)),
        ("cancel", ("1.job",)),
    ]
    [request] = world.fake.requests
    assert request.dry_run
    assert request.worker_count == 3
    assert not request.workdir.exists(), "the dry-run directory is cleaned up"
    assert queue.id == 1
    assert world.events() == ["queue-created"]
    assert queue.allocations == {}


async def test_add_queue_fails_when_the_dry_run_cannot_submit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    world.fake.fail_submit = SBATCH_ERROR
    with pytest.raises(AllocError) as info:
        await world.service.add_queue(queue_params(), dry_run=True)
    assert str(info.value).startswith("Could not submit allocation:")
    assert SBATCH_ERROR in str(info.value)
    assert world.service.state.live_queues() == []
    assert world.fake.cancelled == []


async def test_add_queue_fails_when_the_dry_run_cannot_cancel(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    world = await start(nursery, tmp_path)
    world.fake.cancel_error = "scancel execution failed"
    with pytest.raises(AllocError, match=r"^Could not cancel allocation 1\.job: scancel"):
        await world.service.add_queue(queue_params(), dry_run=True)
    assert world.service.state.live_queues() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backlog": 0}, "Backlog has to be at least 1"),
        (
            {"time_limit": 600.0, "worker_time_limit": 601.0},
            "Worker time limit cannot be larger than queue time limit",
        ),
        ({"manager": "loadleveler"}, "Unknown manager `loadleveler`"),
        ({"cpus": "lots"}, "Invalid worker resources"),
    ],
)
async def test_add_queue_rejects_bad_parameters(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    changes: dict[str, object],
    message: str,
) -> None:
    world = await start(nursery, tmp_path)
    with pytest.raises(AllocError, match=message):
        await world.service.add_queue(queue_params(**changes), dry_run=True)
    assert world.fake.calls == []
    assert world.service.state.live_queues() == []


async def test_tasks_that_fit_no_queue_are_an_event_on_every_queue(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The fit check's finding reaches `alloc events` of each queue, with the closest queue's
    shortfall; a job that fits one of them records nothing."""
    world = await start(nursery, tmp_path)
    world.state.queue_offers = world.service
    await add_queue(world, cpus="4", name="small")
    await add_queue(world, cpus="2", name="tiny")
    first = world.state.next_group_id
    job_id = submit(world, 10, cpus=8)
    warnings = world.state.check_fit(job_id, first)
    assert len(warnings) == 1
    for queue_id in (1, 2):
        events = world.queue(queue_id).events
        [event] = [e for e in events if e.event is AllocEventKind.TASKS_UNFITTABLE]
        assert event.message.startswith(f"10 tasks of job {job_id} fit no queue: needs cpus 8;")
        assert 'queue 1 "small" gives 4' in event.message
    first = world.state.next_group_id
    fitting = submit(world, 1, cpus=4)
    assert world.state.check_fit(fitting, first) == []
    assert [e.event for e in world.queue(1).events].count(AllocEventKind.TASKS_UNFITTABLE) == 1
