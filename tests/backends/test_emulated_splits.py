"""`--split` scripts of the Slurm and PBS backends run by the emulated CLIs: each part starts
its node count of workers, each told its part (`HQPY_SPLIT`); PBS takes the parts' hosts from
`$PBS_NODEFILE`."""

from __future__ import annotations

from pathlib import Path

import pytest

from hqpy.autoalloc.backends.base import ExternalState
from tests.backends.conftest import Emulator
from tests.backends.test_emulated import make, request, submit, wait_for

SPLITS = ("mpi:2:role=leader", "serial:1:role=worker")


@pytest.mark.parametrize("flavor", ["slurm", "pbs"])
async def test_split_parts_start_on_their_nodes(
    flavor: str, emulator: Emulator, tmp_path: Path
) -> None:
    backend = make(flavor, emulator)
    out = tmp_path / "parts.txt"
    # One line per started worker: its part, and (PBS) the node it was started on.
    command = f'echo "$HQPY_SPLIT ${{PBS_TASKNUM:-}}" >> {out}'
    req = request(tmp_path, worker_count=3, worker_command=command, splits=SPLITS)
    job_id = await submit(backend, req)
    status = await wait_for(backend, job_id, {ExternalState.FINISHED, ExternalState.FAILED})
    assert status.state is ExternalState.FINISHED, status
    lines = sorted(out.read_text().splitlines())
    if flavor == "pbs":
        assert lines == ["0:mpi:role=leader 0", "0:mpi:role=leader 1", "1:serial:role=worker 2"]
    else:
        assert [line.split()[0] for line in lines] == [
            "0:mpi:role=leader",
            "0:mpi:role=leader",
            "1:serial:role=worker",
        ]
