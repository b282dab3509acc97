"""SgeBackend against a real Grid Engine (start one with `scripts/sge-local.sh start`; skipped
when none answers)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from hqpy.autoalloc.backends.base import AllocationRequest, CancelTarget, ExternalState
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.sge import SgeBackend


def _sge_answers() -> bool:
    if not os.environ.get("SGE_ROOT") or shutil.which("qconf") is None:
        return False
    try:
        out = subprocess.run(["qconf", "-sel"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


pytestmark = pytest.mark.skipif(not _sge_answers(), reason="no Grid Engine answers")


def request(tmp_path: Path, seq: int, command: str) -> AllocationRequest:
    return AllocationRequest(
        queue_id=1,
        seq=seq,
        name=f"hq-1-{seq}",
        worker_count=1,
        time_limit=120,
        additional_args=(),
        worker_command=command,
        workdir=tmp_path / f"{seq:03}",
    )


async def wait_state(backend: SgeBackend, job_id: str, states: set[ExternalState]) -> str:
    with trio.fail_after(60):
        while True:
            status = (await backend.query([job_id]))[job_id]
            if status.state in states:
                return status.raw
            await trio.sleep(0.5)


async def test_submit_run_and_cancel(tmp_path: Path) -> None:
    backend = SgeBackend(timeout=30)
    done = request(tmp_path, 1, 'echo "job $HQPY_ALLOCATION_ID"')
    job_id = await backend.submit(done, write_script(done, backend.render_script(done)))
    await wait_state(backend, job_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert (done.workdir / "stdout").read_text() == f"job {job_id}\n"

    reqs = [request(tmp_path, n, "sleep 300") for n in (2, 3)]
    ids = [await backend.submit(r, write_script(r, backend.render_script(r))) for r in reqs]
    for job_id in ids:
        await wait_state(backend, job_id, {ExternalState.RUNNING, ExternalState.QUEUED})
    outcome = await backend.cancel_many(
        [CancelTarget(i, r.workdir) for i, r in zip(ids, reqs, strict=True)]
    )
    assert outcome == dict.fromkeys(ids)
    with trio.fail_after(60):
        while (await trio.run_process(["qstat"], capture_stdout=True)).stdout.strip():  # noqa: ASYNC110
            await trio.sleep(0.5)
