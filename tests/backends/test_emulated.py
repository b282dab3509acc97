"""SlurmBackend and PbsBackend against the emulated CLIs: real scripts, real processes."""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BatchBackend,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.pbs import PbsBackend
from hqpy.autoalloc.backends.runner import run_command
from hqpy.autoalloc.backends.slurm import SlurmBackend
from tests.backends.conftest import Emulator

FLAVORS = ["slurm", "pbs"]


def make(flavor: str, emulator: Emulator, timeout: float = 10, **env: str) -> BatchBackend:
    runner = emulator.runner(**env)
    if flavor == "slurm":
        return SlurmBackend(runner, timeout=timeout)
    return PbsBackend(runner, timeout=timeout)


def request(tmp_path: Path, seq: int = 1, **changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=seq,
        name=f"hq-1-{seq}",
        worker_count=1,
        time_limit=600,
        additional_args=(),
        worker_command="sleep 1",
        workdir=tmp_path / "autoalloc" / "1" / f"{seq:03}",
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


async def submit(backend: BatchBackend, req: AllocationRequest) -> str:
    script = write_script(req, backend.render_script(req))
    return await backend.submit(script, req.workdir)


async def wait_for(
    backend: BatchBackend, allocation_id: str, states: set[ExternalState]
) -> ExternalStatus:
    with trio.fail_after(30):
        while True:
            status = (await backend.query([allocation_id]))[allocation_id]
            if status.state in states:
                return status
            await trio.sleep(0.1)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_submit_query_finish(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator, HQPY_EMULATOR_START_DELAY="2")
    req = request(tmp_path, worker_command='echo "$SLURM_JOB_ID$PBS_JOBID"; sleep 1')
    allocation_id = await submit(backend, req)
    assert (req.workdir / "jobid").read_text() == allocation_id + "\n"
    first = (await backend.query([allocation_id]))[allocation_id]
    assert first.state is ExternalState.QUEUED
    assert first.raw == {"slurm": "PENDING", "pbs": "Q"}[flavor]
    running = await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    assert running.started_at is not None and running.finished_at is None
    done = await wait_for(backend, allocation_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert (done.state, done.raw) == (
        ExternalState.FINISHED,
        {"slurm": "COMPLETED", "pbs": "F"}[flavor],
    )
    assert done.started_at is not None and done.finished_at is not None
    assert (req.workdir / "stdout").read_text() == allocation_id + "\n"
    submits = [c for c in emulator.calls() if c["tool"] in ("sbatch", "qsub")]
    assert submits == [
        {
            "tool": submits[0]["tool"],
            "argv": [str(req.workdir / "hq-submit.sh")],
            "cwd": str(req.workdir),
        }
    ]


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_failing_script_fails(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator)
    allocation_id = await submit(backend, request(tmp_path, worker_command="exit 3"))
    done = await wait_for(backend, allocation_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert done.state is ExternalState.FAILED


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_cancel_running(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator)
    req = request(tmp_path, worker_command="sleep 60")
    allocation_id = await submit(backend, req)
    await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    await backend.cancel(allocation_id, req.workdir)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (
        ExternalState.FAILED,
        {"slurm": "CANCELLED", "pbs": "F"}[flavor],
    )
    await backend.cancel(allocation_id, req.workdir)  # already gone: not an error


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_one_status_call_for_many(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator)
    ids = [await submit(backend, request(tmp_path, seq=n)) for n in (1, 2, 3)]
    before = len(emulator.calls())
    statuses = await backend.query(ids)
    assert list(statuses) == ids
    assert len(emulator.calls()) == before + 1


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_multi_node(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator)
    req = request(tmp_path, worker_count=2, worker_command="echo one worker")
    allocation_id = await submit(backend, req)
    done = await wait_for(backend, allocation_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert done.state is ExternalState.FINISHED
    assert (req.workdir / "stdout").read_text() == "one worker\none worker\n"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_submit_failure(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator, HQPY_EMULATOR_FAIL_SUBMIT="FOOBAR")
    with pytest.raises(SubmitError) as info:
        await submit(backend, request(tmp_path))
    tool = {"slurm": "sbatch", "pbs": "qsub"}[flavor]
    assert str(info.value) == f"{tool} execution failed\nExit code: 1\nStderr: FOOBAR\nStdout: "


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_garbage_is_a_status_error(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    allocation_id = await submit(make(flavor, emulator), request(tmp_path))
    backend = make(flavor, emulator, HQPY_EMULATOR_GARBAGE="1")
    with pytest.raises(StatusQueryError, match="output not understood"):
        await backend.query([allocation_id])


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_hanging_command_times_out(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator, timeout=0.5, HQPY_EMULATOR_HANG="5")
    with pytest.raises(StatusQueryError, match="did not finish within 0.5s"):
        await backend.query(["1"])


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_forgotten_job_is_failed(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator, HQPY_EMULATOR_MIN_JOB_AGE="0")
    req = request(tmp_path, worker_command="true")
    allocation_id = await submit(backend, req)
    with trio.fail_after(30):
        while True:
            if not (await backend.query([allocation_id]))[allocation_id].raw:
                break
            await trio.sleep(0.1)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (ExternalState.FAILED, "")
    await backend.cancel(allocation_id, req.workdir)  # gone: not an error


async def test_slurm_unknown_and_known_ids(emulator: Emulator, tmp_path: Path) -> None:
    backend = make("slurm", emulator)
    allocation_id = await submit(backend, request(tmp_path))
    statuses = await backend.query([allocation_id, "999"])
    assert statuses[allocation_id].state in (ExternalState.QUEUED, ExternalState.RUNNING)
    assert (statuses["999"].state, statuses["999"].raw) == (ExternalState.FAILED, "")
    tools = [c["tool"] for c in emulator.calls()]
    assert tools[-2:] == ["squeue", "scontrol"]


async def test_pbs_dry_run_is_held(emulator: Emulator, tmp_path: Path) -> None:
    backend = make("pbs", emulator)
    req = request(tmp_path, dry_run=True, worker_command="touch started")
    allocation_id = await submit(backend, req)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (ExternalState.QUEUED, "H")
    await backend.cancel(allocation_id, req.workdir)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert status.state is ExternalState.FAILED
    assert not (req.workdir / "started").exists()


async def test_missing_program_text(tmp_path: Path) -> None:
    backend = SlurmBackend(functools.partial(run_command, env={"PATH": str(tmp_path)}))
    req = request(tmp_path)
    script = write_script(req, backend.render_script(req))
    with pytest.raises(SubmitError, match="^sbatch start failed: No such file or directory"):
        await backend.submit(script, req.workdir)
