"""The worker's end of its spawner process (see `spawner_main`): requests out, reports in.

The worker's event loop never forks: it queues a request, and one writer task sends whatever
queued up in one frame; one reader task wakes the tasks whose processes started or ended. The
spawner also is the orphan guard: when the worker ends, however it ends, the spawner's request
pipe closes and it kills the process groups of the tasks still running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.lowlevel

from hqpy.common.process import TaskProcess
from hqpy.worker import spawner_main
from hqpy.worker.spawner_main import encode_frame, split_frames

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Seconds the spawner gets to kill the remaining tasks and exit before it is killed."""


class SpawnResult:
    """How one task's process went: `failed` (it never started) or `code` (it ended)."""

    __slots__ = ("done", "pid", "code", "error", "stage", "errno", "on_started")

    def __init__(self, on_started: Callable[[], None]) -> None:
        self.done = trio.Event()
        self.pid: int | None = None
        self.code: int | None = None
        self.error: str | None = None
        """The spawn error text, or the task's error-file content."""
        self.stage: str | None = None
        """Where starting it failed: `cwd`, `output`, `exec`, `other`; None if it started."""
        self.errno: int | None = None
        self.on_started = on_started


class SpawnerLost(Exception):
    """The spawner process ended while the worker still needed it."""


class Spawner:
    """Owns the spawner process and the two pipes to it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        requests_read, requests_write = os.pipe()
        reports_read, reports_write = os.pipe()
        try:
            self.process = TaskProcess.start(
                [sys.executable, "-S", spawner_main.__file__],
                cwd=os.getcwd(),
                env=os.environ,
                stdin=requests_read,
                stdout=reports_write,
                stderr=2,
            )
        finally:
            os.close(requests_read)
            os.close(reports_write)
        self._requests = trio.lowlevel.FdStream(requests_write)
        self._reports = trio.lowlevel.FdStream(reports_read)
        self._out: list[tuple[Any, ...]] = []
        self._out_ready = trio.Event()
        self._pending: dict[int, SpawnResult] = {}
        self._groups: set[int] = set()
        self._next_key = 0
        self.lost = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move requests and reports until the spawner ends; then fail what still waits."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            task_status.started()
            try:
                await self._read()
            finally:
                self._fail_pending()
                nursery.cancel_scope.cancel()

    def _send(self, item: tuple[Any, ...]) -> None:
        self._out.append(item)
        self._out_ready.set()

    async def _write(self) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            batch, self._out = self._out, []
            try:
                await self._requests.send_all(encode_frame(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _read(self) -> None:
        buffer = bytearray()
        while True:
            try:
                data = await self._reports.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return
            buffer += data
            for batch in split_frames(buffer):
                for item in batch:
                    self._on_report(item)

    def _on_report(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        result = self._pending.get(item[1])
        if result is None:
            return
        if kind == "started":
            result.pid = item[2]
            result.on_started()
        elif kind == "exited":
            result.code, result.error = item[2], item[3]
            del self._pending[item[1]]
            result.done.set()
        elif kind == "failed":
            result.stage, result.errno, result.error = item[2], item[3], item[4]
            del self._pending[item[1]]
            result.done.set()

    def _fail_pending(self) -> None:
        if not self.lost:
            self.lost = True
            if self._pending:
                log.error("The spawner process ended; %d tasks are lost", len(self._pending))
        for result in self._pending.values():
            if result.pid is not None:
                try:
                    os.killpg(result.pid, signal.SIGKILL)
                except OSError:
                    pass
            result.stage, result.error = "other", "the worker's spawner process ended"
            result.done.set()
        self._pending.clear()

    async def run(
        self,
        *,
        executable: str,
        argv: list[str],
        group_id: int,
        group_env: Callable[[], dict[str, str]],
        extra_env: dict[str, str],
        cwd: str,
        stdout: str | None,
        stderr: str | None,
        stdin: bytes | None,
        error_file: str | None,
        task_dir_prefix: str | None,
        time_limit: float | None,
        on_started: Callable[[], None],
    ) -> tuple[SpawnResult, bool]:
        """Run one task to its end; returns its result and whether its time limit killed it.
        Cancelled, it kills the task's process group and waits for the task's end."""
        result = SpawnResult(on_started)
        if self.lost:
            result.stage, result.error = "other", "the worker's spawner process ended"
            return result, False
        self._next_key += 1
        key = self._next_key
        self._pending[key] = result
        if group_id not in self._groups:
            self._groups.add(group_id)
            self._send(("group", group_id, group_env()))
        self._send(
            (
                "spawn",
                key,
                executable,
                argv,
                group_id,
                extra_env,
                cwd,
                stdout,
                stderr,
                stdin,
                error_file,
                task_dir_prefix,
            )
        )
        timed_out = False
        try:
            if time_limit is None:
                await result.done.wait()
            else:
                with trio.move_on_after(time_limit) as limit:
                    await result.done.wait()
                if limit.cancelled_caught:
                    timed_out = True
                    self._send(("kill", key))
                    await result.done.wait()
        finally:
            if not result.done.is_set():
                self._send(("kill", key))
                with trio.CancelScope(shield=True):
                    await result.done.wait()
        return result, timed_out

    async def aclose(self) -> None:
        """Let the spawner go (it kills what still runs); off the loop, bounded in time."""
        await self._requests.aclose()
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reports.aclose()
