"""The local backend of a restarted server follows the allocations of the server before: their
dirs name their process groups (`process-group`), which it reports running or finished and
cancels, and it never mistakes another process that got the same pid for one of them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hqpy.autoalloc.backends.base import ExternalState
from hqpy.autoalloc.backends.local import (
    GROUP_NAME,
    EarlierAllocation,
    LocalBackend,
    process_start_time,
    read_group,
)
from tests.unit.test_backends_local import (
    group_alive,
    request,
    state_of,
    submit,
    wait_until_ended,
)


@pytest.fixture
async def backends() -> AsyncIterator[tuple[LocalBackend, LocalBackend]]:
    """The backend of the server before (it started the groups) and of the restarted one."""
    async with trio.open_nursery() as nursery:
        yield LocalBackend(nursery, grace=0.5), LocalBackend(nursery, grace=0.5)
        nursery.cancel_scope.cancel()


async def test_group_is_recorded_with_its_leaders_start_time(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    before, _ = backends
    req = request(tmp_path, worker_command="sleep 60")
    await submit(before, req)
    group = read_group(req.workdir)
    assert group is not None
    pgid, started = group
    assert os.getpgid(pgid) == pgid
    assert started is not None and started == process_start_time(pgid)
    await before.cancel_all()


async def test_restarted_backend_follows_and_cancels_a_group_it_did_not_start(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    before, after = backends
    req = request(tmp_path, worker_command="sleep 60", worker_count=2)
    assert await submit(before, req) == "local-1"
    group = read_group(req.workdir)
    assert group is not None
    after.continue_after(["local-1"], [EarlierAllocation("local-1", req.workdir, True)])
    assert await state_of(after, "local-1") == (ExternalState.RUNNING, "RUNNING")
    # New ids go on after the restored ones.
    assert await submit(after, request(tmp_path, seq=2, workdir=tmp_path / "002")) == "local-2"
    with trio.fail_after(20):
        await after.cancel("local-1", req.workdir)
    assert not group_alive(group[0])
    assert await state_of(after, "local-1") == (ExternalState.FAILED, "CANCELLED")


async def test_followed_group_that_had_no_worker_yet_starts_when_one_registers(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    before, after = backends
    req = request(tmp_path, worker_command="sleep 60")
    await submit(before, req)
    after.continue_after(["local-1"], [EarlierAllocation("local-1", req.workdir, False)])
    assert await state_of(after, "local-1") == (ExternalState.QUEUED, "STARTING")
    after.mark_started("local-1")
    assert await state_of(after, "local-1") == (ExternalState.RUNNING, "RUNNING")
    with trio.fail_after(20):
        await after.cancel_all()  # a server stop ends the followed groups too
    assert await state_of(after, "local-1") == (ExternalState.FAILED, "CANCELLED")


async def test_followed_group_that_ends_is_finished(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    before, after = backends
    gate = tmp_path / "gate"
    req = request(tmp_path, worker_command=f"while [ ! -e {gate} ]; do sleep 0.05; done")
    await submit(before, req)
    after.continue_after(["local-1"], [EarlierAllocation("local-1", req.workdir, True)])
    assert await state_of(after, "local-1") == (ExternalState.RUNNING, "RUNNING")
    gate.touch()
    await wait_until_ended(after, "local-1")
    assert await state_of(after, "local-1") == (ExternalState.FINISHED, "EXITED")


async def test_a_reused_pid_is_not_taken_for_the_group(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    _, after = backends
    other = await trio.lowlevel.open_process(["sleep", "60"], start_new_session=True)
    try:
        workdir = tmp_path / "001"
        workdir.mkdir()
        started = process_start_time(other.pid)
        assert started is not None
        # The group recorded had this pid, but its leader started at another time.
        (workdir / GROUP_NAME).write_text(f"{other.pid} {started - 1}\n")
        after.continue_after(["local-1"], [EarlierAllocation("local-1", workdir, True)])
        assert await state_of(after, "local-1") == (ExternalState.FINISHED, "EXITED")
        await after.cancel("local-1", workdir)
        await after.cancel_all()
        assert other.poll() is None, "another process with the same pid was signalled"
    finally:
        other.kill()
        await other.wait()


async def test_allocation_without_a_recorded_group_is_finished(
    backends: tuple[LocalBackend, LocalBackend], tmp_path: Path
) -> None:
    _, after = backends
    workdir = tmp_path / "001"
    workdir.mkdir()
    after.continue_after(["local-3"], [EarlierAllocation("local-3", workdir, True)])
    assert await state_of(after, "local-3") == (ExternalState.FINISHED, "")
    assert await submit(after, request(tmp_path, workdir=tmp_path / "004")) == "local-4"
