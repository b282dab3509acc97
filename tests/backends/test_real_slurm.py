"""SlurmBackend against a real Slurm (start one with `scripts/slurm-local.sh start`)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CommandResult,
    ExternalState,
    ExternalStatus,
    SubmitError,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.runner import run_command
from hqpy.autoalloc.backends.slurm import SlurmBackend


def _slurm_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and b"is UP" in ping.stdout


def _idle_nodes() -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-t", "idle,mix", "-o", "%N"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len(set(out.split()))


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not _slurm_answers(),
        reason="no Slurm answers here; run scripts/slurm-local.sh start (as root)",
    ),
]


@attrs.define
class CountingRunner:
    calls: list[list[str]] = attrs.field(factory=list)

    async def __call__(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.calls.append(list(argv))
        return await run_command(argv, **kwargs)


def request(tmp_path: Path, seq: int = 1, **changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=seq,
        name=f"hq-1-{seq}",
        worker_count=1,
        time_limit=120,
        additional_args=(),
        worker_command="sleep 1",
        workdir=tmp_path / "autoalloc" / "1" / f"{seq:03}",
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


async def submit(backend: SlurmBackend, req: AllocationRequest) -> str:
    script = write_script(req, backend.render_script(req))
    return await backend.submit(req, script)


async def wait_for(
    backend: SlurmBackend, allocation_id: str, states: set[ExternalState]
) -> ExternalStatus:
    with trio.fail_after(90):
        while True:
            status = (await backend.query([allocation_id]))[allocation_id]
            if status.state in states:
                return status
            await trio.sleep(0.2)


ENDED = {ExternalState.FINISHED, ExternalState.FAILED}


async def test_submit_run_complete(tmp_path: Path) -> None:
    backend = SlurmBackend()
    req = request(tmp_path, worker_command='echo "job $SLURM_JOB_ID"; sleep 1')
    allocation_id = await submit(backend, req)
    assert allocation_id.isdigit()
    assert (req.workdir / "jobid").read_text() == allocation_id + "\n"
    running = await wait_for(backend, allocation_id, {ExternalState.RUNNING} | ENDED)
    assert running.started_at is not None
    done = await wait_for(backend, allocation_id, ENDED)
    assert (done.state, done.raw) == (ExternalState.FINISHED, "COMPLETED")
    assert done.finished_at is not None and done.finished_at >= running.started_at
    assert (req.workdir / "stdout").read_text() == f"job {allocation_id}\n"


async def test_failing_script(tmp_path: Path) -> None:
    backend = SlurmBackend()
    allocation_id = await submit(backend, request(tmp_path, worker_command="exit 3"))
    done = await wait_for(backend, allocation_id, ENDED)
    assert (done.state, done.raw) == (ExternalState.FAILED, "FAILED")


async def test_cancel_running(tmp_path: Path) -> None:
    backend = SlurmBackend()
    req = request(tmp_path, worker_command="sleep 300")
    allocation_id = await submit(backend, req)
    await wait_for(backend, allocation_id, {ExternalState.RUNNING})
    await backend.cancel(allocation_id, req.workdir)
    done = await wait_for(backend, allocation_id, ENDED)
    assert (done.state, done.raw) == (ExternalState.FAILED, "CANCELLED")
    await backend.cancel(allocation_id, req.workdir)  # already gone: scancel is silent


async def test_one_squeue_call_and_unknown_ids(tmp_path: Path) -> None:
    runner = CountingRunner()
    backend = SlurmBackend(runner)
    ids = [await submit(backend, request(tmp_path, seq=n, worker_command="true")) for n in (1, 2)]
    runner.calls.clear()
    statuses = await backend.query([*ids, "999999"])
    assert [c[0] for c in runner.calls] == ["squeue", "scontrol"]
    assert runner.calls[0][-1] == f"--jobs={ids[0]},{ids[1]},999999"
    assert (statuses["999999"].state, statuses["999999"].raw) == (ExternalState.FAILED, "")
    runner.calls.clear()
    only_unknown = await backend.query(["999998"])
    assert only_unknown["999998"].state is ExternalState.FAILED
    assert [c[0] for c in runner.calls] == ["squeue", "scontrol"]
    for allocation_id in ids:
        await wait_for(backend, allocation_id, ENDED)


async def test_multi_node_runs_one_worker_per_node(tmp_path: Path) -> None:
    if _idle_nodes() < 2:
        pytest.skip("needs 2 nodes (SLURM_LOCAL_NODES=2 scripts/slurm-local.sh start)")
    backend = SlurmBackend()
    req = request(
        tmp_path, worker_count=2, worker_command='echo "worker on $SLURMD_NODENAME"; sleep 1'
    )
    allocation_id = await submit(backend, req)
    done = await wait_for(backend, allocation_id, ENDED)
    assert done.state is ExternalState.FINISHED
    lines = sorted((req.workdir / "stdout").read_text().splitlines())
    assert len(lines) == 2
    assert lines[0] != lines[1]


async def test_rejected_submission(tmp_path: Path) -> None:
    backend = SlurmBackend()
    req = request(tmp_path, worker_count=64)
    with pytest.raises(SubmitError) as info:
        await submit(backend, req)
    text = str(info.value)
    assert text.startswith("sbatch execution failed\nExit code: 1\nStderr: sbatch: error: ")
    assert "Batch job submission failed" in text


async def test_multi_node_compound_line_runs_whole_on_each_node(tmp_path: Path) -> None:
    if _idle_nodes() < 2:
        pytest.skip("needs 2 nodes (SLURM_LOCAL_NODES=2 scripts/slurm-local.sh start)")
    backend = SlurmBackend()
    line = "echo start && HQPY_LOG=debug bash -c 'echo \"worker $HQPY_LOG\"'; echo stop"
    req = request(tmp_path, worker_count=2, worker_command=line)
    allocation_id = await submit(backend, req)
    done = await wait_for(backend, allocation_id, ENDED)
    assert done.state is ExternalState.FINISHED
    lines = sorted((req.workdir / "stdout").read_text().splitlines())
    assert lines == ["start", "start", "stop", "stop", "worker debug", "worker debug"]
