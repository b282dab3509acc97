"""SlurmBackend and PbsBackend against the emulated CLIs: real scripts, real processes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BatchBackend,
    CancelTarget,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.htcondor import HtcondorBackend
from hqpy.autoalloc.backends.lsf import LsfBackend
from hqpy.autoalloc.backends.pbs import PbsBackend
from hqpy.autoalloc.backends.runner import run_command
from hqpy.autoalloc.backends.slurm import SlurmBackend
from tests.backends.conftest import Emulator

FLAVORS = ["slurm", "pbs", "lsf", "htcondor"]

BACKENDS: dict[str, Callable[..., BatchBackend]] = {
    "slurm": SlurmBackend,
    "pbs": PbsBackend,
    "lsf": LsfBackend,
    "htcondor": HtcondorBackend,
}
QUEUED_RAW = {"slurm": "PENDING", "pbs": "Q", "lsf": "PEND", "htcondor": "1"}
COMPLETED_RAW = {"slurm": "COMPLETED", "pbs": "F", "lsf": "DONE", "htcondor": "4"}
CANCELLED_RAW = {"slurm": "CANCELLED", "pbs": "F", "lsf": "EXIT", "htcondor": "3"}
SUBMIT_TOOL = {"slurm": "sbatch", "pbs": "qsub", "lsf": "bsub", "htcondor": "condor_submit"}
SUBMIT_EXIT = {"slurm": 1, "pbs": 1, "lsf": 255, "htcondor": 1}


def make(flavor: str, emulator: Emulator, timeout: float = 10, **env: str) -> BatchBackend:
    backend: BatchBackend = BACKENDS[flavor](emulator.runner(**env), timeout=timeout)
    return backend


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
    return await backend.submit(req, script)


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
    command = 'echo "$SLURM_JOB_ID$PBS_JOBID$HQPY_ALLOCATION_ID"; sleep 1'
    req = request(tmp_path, worker_command=command)
    allocation_id = await submit(backend, req)
    assert (req.workdir / "jobid").read_text() == allocation_id + "\n"
    first = (await backend.query([allocation_id]))[allocation_id]
    assert first.state is ExternalState.QUEUED
    assert first.raw == QUEUED_RAW[flavor]
    running = await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    assert running.started_at is not None and running.finished_at is None
    done = await wait_for(backend, allocation_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert (done.state, done.raw) == (
        ExternalState.FINISHED,
        COMPLETED_RAW[flavor],
    )
    assert done.started_at is not None and done.finished_at is not None
    assert (req.workdir / "stdout").read_text() == allocation_id + "\n"
    submits = [c for c in emulator.calls() if c["tool"] == SUBMIT_TOOL[flavor]]
    argv = {
        "slurm": [str(req.workdir / "hq-submit.sh")],
        "pbs": [str(req.workdir / "hq-submit.sh")],
        "lsf": [],  # `bsub < hq-submit.sh`
        "htcondor": [str(req.workdir / "hq-submit.sub")],
    }[flavor]
    assert submits == [{"tool": SUBMIT_TOOL[flavor], "argv": argv, "cwd": str(req.workdir)}]


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
        CANCELLED_RAW[flavor],
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
    tool, code = SUBMIT_TOOL[flavor], SUBMIT_EXIT[flavor]
    assert (
        str(info.value) == f"{tool} execution failed\nExit code: {code}\nStderr: FOOBAR\nStdout: "
    )


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


@pytest.mark.parametrize("flavor", ["slurm", "pbs", "lsf"])  # HTCondor's history keeps all
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


HELD = {
    "slurm": (ExternalState.QUEUED, "PENDING", "JobHeldUser"),
    "pbs": (ExternalState.QUEUED, "H", None),
    "lsf": (ExternalState.QUEUED, "PSUSP", "The job was suspended by the user while pending"),
    # HTCondor's held job needs a human: a failure, with the hold reason.
    "htcondor": (ExternalState.FAILED, "5", "submitted on hold at user's request"),
}


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_dry_run_is_held(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    # The trial allocation of `alloc add` is validated by the batch system but never starts
    # a worker; the status says why it waits.
    backend = make(flavor, emulator)
    req = request(tmp_path, dry_run=True, worker_command="touch started")
    allocation_id = await submit(backend, req)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw, status.reason) == HELD[flavor]
    await backend.cancel(allocation_id, req.workdir)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert status.state is ExternalState.FAILED
    assert not (req.workdir / "started").exists()


async def test_missing_program_text(tmp_path: Path) -> None:
    backend = SlurmBackend(functools.partial(run_command, env={"PATH": str(tmp_path)}))
    req = request(tmp_path)
    script = write_script(req, backend.render_script(req))
    with pytest.raises(SubmitError, match="^sbatch start failed: No such file or directory"):
        await backend.submit(req, script)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_cancel_many_is_one_command(flavor: str, emulator: Emulator, tmp_path: Path) -> None:
    backend = make(flavor, emulator)
    reqs = [request(tmp_path, seq=n, worker_command="sleep 60") for n in (1, 2, 3)]
    ids = [await submit(backend, req) for req in reqs]
    for allocation_id in ids:
        await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    await backend.cancel(ids[2], reqs[2].workdir)  # already gone at the batch cancel
    before = len(emulator.calls())
    targets = [CancelTarget(i, r.workdir) for i, r in zip(ids, reqs, strict=True)]
    targets.append(CancelTarget({"pbs": "999.nowhere"}.get(flavor, "999"), tmp_path))
    outcome = await backend.cancel_many(targets)
    assert outcome == {t.allocation_id: None for t in targets}
    calls = emulator.calls()[before:]
    assert [c["argv"] for c in calls] == [[t.allocation_id for t in targets]]
    statuses = await backend.query(ids)
    assert {s.raw for s in statuses.values()} == {CANCELLED_RAW[flavor]}


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_cancel_many_hanging_is_unconfirmed(
    flavor: str, emulator: Emulator, tmp_path: Path
) -> None:
    tool = {"slurm": "scancel", "pbs": "qdel", "lsf": "bkill", "htcondor": "condor_rm"}[flavor]
    backend = make(
        flavor, emulator, timeout=0.5, HQPY_EMULATOR_HANG="30", HQPY_EMULATOR_HANG_TOOLS=tool
    )
    targets = [CancelTarget("1", tmp_path), CancelTarget("2", tmp_path)]
    outcome = await backend.cancel_many(targets)
    assert set(outcome) == {"1", "2"}
    for error in outcome.values():
        assert error is not None
        assert error.endswith("did not finish within 0.5s; the cancellation is unconfirmed")


async def test_slurm_hanging_squeue_falls_back_to_scontrol(
    emulator: Emulator, tmp_path: Path
) -> None:
    backend = SlurmBackend(
        emulator.runner(HQPY_EMULATOR_HANG="30", HQPY_EMULATOR_HANG_TOOLS="squeue"),
        timeout=10,
        squeue_timeout=0.5,
    )
    req = request(tmp_path, worker_command="sleep 60")
    allocation_id = await submit(backend, req)
    status = await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    assert status.raw == "RUNNING" and status.started_at is not None
    assert [c["tool"] for c in emulator.calls()][-2:] == ["squeue", "scontrol"]
    await backend.cancel(allocation_id, req.workdir)
    status = (await backend.query([allocation_id]))[allocation_id]
    assert (status.state, status.raw) == (ExternalState.FAILED, "CANCELLED")


async def test_slurm_failing_squeue_falls_back_to_scontrol(
    emulator: Emulator, tmp_path: Path
) -> None:
    backend = make("slurm", emulator)
    allocation_id = await submit(backend, request(tmp_path, worker_command="true"))
    squeue = emulator.bin_dir / "squeue"
    squeue.write_text(
        "#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    status = await wait_for(backend, allocation_id, {ExternalState.FINISHED})
    assert status.raw == "COMPLETED"
    assert {c["tool"] for c in emulator.calls()} == {"sbatch", "scontrol"}
