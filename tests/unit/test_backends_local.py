"""The local backend: allocations as process groups, with real (tiny) bash scripts."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelTarget,
    ExternalState,
    SubmitError,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.local import (
    LocalBackend,
    _group_alive,
    render_local_script,
)


def request(tmp_path: Path, **changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=1,
        name="hq-1-1",
        worker_count=1,
        time_limit=3600,
        additional_args=(),
        worker_command="true",
        workdir=tmp_path / "001",
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    async with trio.open_nursery() as nursery:
        yield LocalBackend(nursery, grace=0.5)
        nursery.cancel_scope.cancel()


async def submit(backend: LocalBackend, req: AllocationRequest) -> str:
    script = write_script(req, backend.render_script(req))
    return await backend.submit(req, script)


async def state_of(backend: LocalBackend, allocation_id: str) -> tuple[ExternalState, str]:
    status = (await backend.query([allocation_id]))[allocation_id]
    return status.state, status.raw


async def wait_until_ended(backend: LocalBackend, allocation_id: str) -> None:
    with trio.fail_after(20):
        while True:
            state, _ = await state_of(backend, allocation_id)
            if state not in (ExternalState.QUEUED, ExternalState.RUNNING):
                return
            await trio.sleep(0.02)


async def wait_for_file(path: Path) -> None:
    with trio.fail_after(10):
        while True:
            if await trio.Path(path).exists():
                return
            await trio.sleep(0.02)


def group_alive(pgid: int) -> bool:
    """Any live (non-zombie) member: PID 1 here reaps orphans only after a while."""
    return _group_alive(pgid)


def test_render(tmp_path: Path) -> None:
    req = request(tmp_path, worker_count=2, time_limit=90, worker_command="hq worker start")
    assert render_local_script(req) == (
        "#!/bin/bash\n"
        "# hqpy local allocation hq-1-1\n"
        "# time limit 00:01:30\n"
        "# workers 2\n"
        "# The server sets HQPY_ALLOCATION_ID; `--manager detect` reads it.\n"
        "\n"
        "pids=()\n"
        "for i in $(seq 2); do\n"
        "    ( hq worker start ) &\n"
        '    pids+=("$!")\n'
        "done\n"
        "status=0\n"
        'for pid in "${pids[@]}"; do\n'
        '    wait "$pid" || status=$?\n'
        "done\n"
        'exit "$status"\n'
    )


def test_render_dry_run_and_args(tmp_path: Path) -> None:
    text = render_local_script(request(tmp_path, dry_run=True, additional_args=("a", "b")))
    assert "\n# args a b\n# dry run\n" in text


async def test_lifecycle(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(
        tmp_path,
        worker_command='echo "worker of $HQPY_ALLOCATION_ID"; sleep 0.5',
    )
    allocation_id = await submit(backend, req)
    assert allocation_id == "local-1"
    assert (req.workdir / "jobid").read_text() == "local-1\n"
    assert await state_of(backend, allocation_id) == (ExternalState.QUEUED, "STARTING")
    backend.mark_started(allocation_id)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (ExternalState.RUNNING, "RUNNING")
    assert status.started_at is not None
    await wait_until_ended(backend, allocation_id)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (ExternalState.FINISHED, "COMPLETED")
    assert status.finished_at is not None and status.started_at is not None
    assert status.finished_at >= status.started_at
    assert (req.workdir / "stdout").read_text() == "worker of local-1\n"


async def test_ids_count_up(backend: LocalBackend, tmp_path: Path) -> None:
    first = await submit(backend, request(tmp_path / "a"))
    second = await submit(backend, request(tmp_path / "b"))
    assert (first, second) == ("local-1", "local-2")


async def test_starts_one_copy_per_worker(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(tmp_path, worker_count=3, worker_command="echo w >> workers.txt")
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert (req.workdir / "workers.txt").read_text() == "w\nw\nw\n"


async def test_failing_worker_fails_the_allocation(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(tmp_path, worker_count=2, worker_command='echo oops >&2; exit "$i"')
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "FAILED")
    assert (req.workdir / "stderr").read_text() == "oops\noops\n"


async def test_time_limit_ends_as_finished(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(tmp_path, time_limit=1, worker_command="echo $$ > pgid; sleep 60")
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert await state_of(backend, allocation_id) == (ExternalState.FINISHED, "TIMEOUT")
    assert not group_alive(int((req.workdir / "pgid").read_text()))


async def test_sigterm_ignored_gets_sigkill(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(
        tmp_path,
        time_limit=1,
        worker_command="trap '' TERM; echo $$ > pgid; sleep 60",
    )
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert await state_of(backend, allocation_id) == (ExternalState.FINISHED, "TIMEOUT")
    assert not group_alive(int((req.workdir / "pgid").read_text()))


async def test_cancel(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(tmp_path, worker_command="echo $$ > pgid; sleep 60")
    allocation_id = await submit(backend, req)
    await wait_for_file(req.workdir / "pgid")
    await backend.cancel(allocation_id, req.workdir)
    assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "CANCELLED")
    assert not group_alive(int((req.workdir / "pgid").read_text()))
    await backend.cancel(allocation_id, req.workdir)  # again: nothing happens
    await backend.cancel("local-99", req.workdir)  # unknown: nothing happens


async def test_unknown_id_is_failed(backend: LocalBackend) -> None:
    assert await state_of(backend, "local-7") == (ExternalState.FAILED, "")


async def test_dry_run_is_checked_not_started(backend: LocalBackend, tmp_path: Path) -> None:
    req = request(tmp_path, dry_run=True, worker_command="touch started")
    allocation_id = await submit(backend, req)
    assert await state_of(backend, allocation_id) == (ExternalState.QUEUED, "HELD")
    await backend.cancel(allocation_id, req.workdir)
    assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "CANCELLED")
    assert not (req.workdir / "started").exists()


async def test_syntax_error_is_caught_by_the_script_check(
    backend: LocalBackend, tmp_path: Path
) -> None:
    # The dry run of `alloc add` runs this check; submissions trust hqpy's own rendering.
    req = request(tmp_path, worker_command="if then")
    script = write_script(req, backend.render_script(req))
    with pytest.raises(SubmitError, match="^bash -n execution failed\nExit code: 2\nStderr: "):
        await backend.check_script(script)


async def test_submitted_script_with_a_syntax_error_ends_failed(
    backend: LocalBackend, tmp_path: Path
) -> None:
    req = request(tmp_path, worker_command="if then")
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert (await state_of(backend, allocation_id))[0] is ExternalState.FAILED


async def test_foreign_allocation_ids_are_not_inherited(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("PBS_JOBID", "4.pbs")
    req = request(tmp_path, worker_command='echo "[$SLURM_JOB_ID][$PBS_JOBID]"')
    allocation_id = await submit(backend, req)
    await wait_until_ended(backend, allocation_id)
    assert (req.workdir / "stdout").read_text() == "[][]\n"


async def test_cancel_all(backend: LocalBackend, tmp_path: Path) -> None:
    ids = [
        await submit(backend, request(tmp_path / str(n), worker_command="sleep 60"))
        for n in range(2)
    ]
    await backend.cancel_all()
    for allocation_id in ids:
        assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "CANCELLED")


async def test_closing_the_nursery_kills_the_groups(tmp_path: Path) -> None:
    req = request(tmp_path, worker_command="echo $$ > pgid; sleep 60")
    async with trio.open_nursery() as nursery:
        backend = LocalBackend(nursery)
        await submit(backend, req)
        await wait_for_file(req.workdir / "pgid")
        nursery.cancel_scope.cancel()
    assert not group_alive(int((req.workdir / "pgid").read_text()))


async def test_group_scan_runs_off_the_loop(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader exits on SIGTERM, a child ignoring it lingers: the rest of the group is
    checked by walking /proc, which must happen in a thread, never on the trio loop."""
    from hqpy.autoalloc.backends import local

    on_loop: list[bool] = []

    def recording_group_alive(pgid: int) -> bool:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return _group_alive(pgid)

    monkeypatch.setattr(local, "_group_alive", recording_group_alive)
    req = request(tmp_path, worker_command="(trap '' TERM; sleep 60) & echo $$ > pgid; wait")
    allocation_id = await submit(backend, req)
    await wait_for_file(req.workdir / "pgid")
    await backend.cancel(allocation_id, req.workdir)
    assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "CANCELLED")
    assert not group_alive(int((req.workdir / "pgid").read_text()))
    assert on_loop and not any(on_loop)


async def test_cancel_many_in_parallel(backend: LocalBackend, tmp_path: Path) -> None:
    reqs = [
        request(tmp_path, seq=n, workdir=tmp_path / f"{n:03}", worker_command="sleep 60")
        for n in (1, 2)
    ]
    ids = [await submit(backend, req) for req in reqs]
    outcome = await backend.cancel_many(
        [CancelTarget(i, r.workdir) for i, r in zip(ids, reqs, strict=True)]
        + [CancelTarget("local-99", tmp_path)]
    )
    assert outcome == {ids[0]: None, ids[1]: None, "local-99": None}
    for allocation_id in ids:
        assert await state_of(backend, allocation_id) == (ExternalState.FAILED, "CANCELLED")
