"""A complete hqpy backend plug-in: `hq alloc add toy ...` once this package is installed.

Its "batch system" runs each allocation script as a process group of this machine, so that
it needs nothing but bash; a real plug-in runs its submit, status and cancel commands here
instead (with `hqpy.autoalloc.backends.common.run_checked`, under the timeout it is given).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelOutcome,
    CancelTarget,
    ExternalState,
    ExternalStatus,
    SubmitError,
    cancel_each,
)
from hqpy.autoalloc.backends.common import format_walltime, render_prelude, write_jobid
from hqpy.autoalloc.backends.runner import CommandObserver


class ToyBackend:
    """Found through the entry point `toy = "hqpy_toy_backend:ToyBackend"` of the group
    `hqpy.backends`, and built as `ToyBackend(nursery=..., timeout=..., observer=...)`."""

    manager: ClassVar[str] = "TOY"

    def __init__(
        self,
        *,
        nursery: trio.Nursery | None = None,
        timeout: float = 30.0,
        observer: CommandObserver | None = None,
    ) -> None:
        self._timeout = timeout
        self._jobs: dict[str, trio.Process] = {}
        self._cancelled: set[str] = set()

    def render_script(self, request: AllocationRequest) -> str:
        # Workers started with `--manager detect` find their allocation in
        # HQPY_ALLOCATION_ID; `render_prelude` adds the exit trap that reports the end, the
        # env script and the exported variables of the queue.
        return (
            "#!/bin/bash\n"
            f"# toy allocation {request.name}: {request.worker_count} worker(s), "
            f"{format_walltime(request.time_limit)}\n\n"
            + render_prelude(request, "$HQPY_ALLOCATION_ID")
            + request.worker_command
            + "\n"
        )

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        allocation_id = f"toy-{request.queue_id}-{request.seq}"
        env = {**os.environ, "HQPY_ALLOCATION_ID": allocation_id}
        workdir = request.workdir
        try:
            out, err = _open_outputs(workdir)
            try:
                process = await trio.lowlevel.open_process(
                    ["bash", str(script)],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            finally:
                os.close(out)
                os.close(err)
        except OSError as e:
            raise SubmitError(f"toy submit failed: {e}") from e
        self._jobs[allocation_id] = process
        write_jobid(workdir, allocation_id)
        return allocation_id

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        statuses = {}
        for allocation_id in ids:
            process = self._jobs.get(allocation_id)
            code = None if process is None else process.poll()
            if process is None or allocation_id in self._cancelled:
                statuses[allocation_id] = ExternalStatus(ExternalState.FAILED, raw="GONE")
            elif code is None:
                statuses[allocation_id] = ExternalStatus(ExternalState.RUNNING, raw="RUN")
            elif code == 0:
                statuses[allocation_id] = ExternalStatus(ExternalState.FINISHED, raw="DONE")
            else:
                statuses[allocation_id] = ExternalStatus(ExternalState.FAILED, raw="EXIT")
        return statuses

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        process = self._jobs.get(allocation_id)
        if process is None or process.poll() is not None:
            return
        self._cancelled.add(allocation_id)
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with trio.move_on_after(self._timeout):
            await process.wait()

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        return await cancel_each(self.cancel, targets, self._timeout)


def _open_outputs(workdir: Path) -> tuple[int, int]:
    """The allocation's `stdout` and `stderr` files, where `hq alloc log` reads them."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = os.open(workdir / "stdout", flags, 0o644)
    try:
        return out, os.open(workdir / "stderr", flags, 0o644)
    except OSError:
        os.close(out)
        raise
