"""The one writer of the journal: records are framed on the trio thread and written (and
fsynced) in a worker thread, in batches, so the event loop never waits on the disk.

Two kinds of appends:
- `append` (submits, queues, cancels): the caller then awaits `durable()` before it answers
  its client; all records appended meanwhile share one write and one fsync.
- task updates (`task_started`, `task_finished`, `task_failed`): gathered into one
  `TasksUpdated` record per flush period. An `append` first closes the gathered batch, so the
  file keeps the order in which things happened.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from hqpy.journal.file import frame_record, open_for_append
from hqpy.journal.records import Record, TasksUpdated

log = logging.getLogger(__name__)


class JournalWriteError(OSError):
    """The journal could not be written; what was appended since the last good write is not
    durable."""


class JournalWriter:
    def __init__(self, path: Path, good_size: int, flush_period: float = 1.0) -> None:
        self.path = path
        self.flush_period = flush_period
        self._fd = open_for_append(path, good_size)
        self._frames: list[bytes] = []
        self._appended = 0
        """Appends so far (each `append` and each closed task batch counts one)."""
        self._durable = 0
        """Appends written and fsynced."""
        self._failed_seq = 0
        """The last append whose write failed (what it and those before it held is lost)."""
        self._written = trio.Event()
        self._wake = trio.Event()
        self._urgent = False
        self._batch_since: float | None = None
        self._finished: dict[int, list[int]] = {}
        self._started: dict[tuple[int, int], list[int]] = {}
        self._failed: list[list[object]] = []
        self._crashed: list[list[object]] = []
        self._instances: list[list[object]] = []
        self.error: str | None = None
        self.bytes_written = 0
        self.flushing = trio.Lock()
        """One write at a time: the writer task and a final `flush` (server stop) may meet."""

    # --- appends (trio thread, never block) ----------------------------------------------------

    def append(self, record: Record) -> int:
        """Queue a record for the next write; returns its sequence number for `durable`."""
        self._close_batch()
        self._frames.append(frame_record(record))
        self._appended += 1
        self._urgent = True
        self._wake.set()
        return self._appended

    def task_started(self, job_id: int, task_id: int, instance_id: int) -> None:
        self._started.setdefault((job_id, instance_id), []).append(task_id)
        self._batch_touched()

    def task_finished(self, job_id: int, task_id: int) -> None:
        self._finished.setdefault(job_id, []).append(task_id)
        self._batch_touched()

    def task_failed(self, job_id: int, task_id: int, error: str | None) -> None:
        self._failed.append([job_id, task_id, error])
        self._batch_touched()

    def task_crashed(self, job_id: int, task_id: int, crash_count: int, instance_id: int) -> None:
        self._crashed.append([job_id, task_id, crash_count, instance_id])
        self._batch_touched()

    def task_instance_ended(self, job_id: int, task_id: int, instance_id: int, why: str) -> None:
        """An instance of the task ended without the task ending (its history)."""
        self._instances.append([job_id, task_id, instance_id, why])
        self._batch_touched()

    def _batch_touched(self) -> None:
        if self._batch_since is None:
            self._batch_since = trio.current_time()
            self._wake.set()

    def _close_batch(self) -> None:
        if self._batch_since is None:
            return
        started = [
            [job_id, instance_id, first, last]
            for (job_id, instance_id), ids in self._started.items()
            for first, last in _ranges(ids)
        ]
        finished = [
            [job_id, first, last]
            for job_id, ids in self._finished.items()
            for first, last in _ranges(ids)
        ]
        record = TasksUpdated(
            started, finished, list(self._failed), list(self._crashed), list(self._instances)
        )
        self._frames.append(frame_record(record))
        self._appended += 1
        self._finished.clear()
        self._started.clear()
        self._failed.clear()
        self._crashed.clear()
        self._instances.clear()
        self._batch_since = None

    async def durable(self, seq: int | None = None) -> None:
        """Return once append `seq` (default: everything appended so far) is on disk; raises
        `JournalWriteError` when the write failed."""
        target = self._appended if seq is None else seq
        while self._durable < target:
            if self._failed_seq >= target and self.error is not None:
                raise JournalWriteError(self.error)
            await self._written.wait()

    async def next_write(self) -> None:
        """Return once the next write (or failed write) has ended."""
        await self._written.wait()

    # --- the writer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._urgent and self._batch_since is not None:
                deadline = self._batch_since + self.flush_period
                with trio.move_on_at(deadline):
                    await self._wake.wait()  # an urgent append cuts the wait short
                self._wake = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write and fsync everything appended so far (task batch included)."""
        async with self.flushing:
            await self._flush()

    async def _flush(self) -> None:
        self._urgent = False
        self._close_batch()
        if not self._frames:
            return
        data = b"".join(self._frames)
        self._frames.clear()
        seq = self._appended
        try:
            await trio.to_thread.run_sync(self._write, data)
        except OSError as e:
            self._failed_seq = seq
            self.error = f"Cannot write the journal `{self.path}`: {e.strerror or e}"
            log.error("%s", self.error)
        else:
            self._durable = seq
            self.bytes_written += len(data)
            if self.error is not None:
                log.warning("The journal `%s` is written again", self.path)
                self.error = None
        self._written.set()
        self._written = trio.Event()

    def _write(self, data: bytes) -> None:
        """Append and fsync; a failed write is cut off again so the file stays well-formed."""
        size = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, size)
                os.lseek(self._fd, size, os.SEEK_SET)
            except OSError as e:
                log.error("Cannot cut a failed write off the journal: %s", e)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ranges(ids: list[int]) -> list[tuple[int, int]]:
    """Inclusive `(first, last)` runs of the ids (sorted and deduplicated here)."""
    ids = sorted(set(ids))
    out = []
    first = last = ids[0]
    for task_id in ids[1:]:
        if task_id != last + 1:
            out.append((first, last))
            first = task_id
        last = task_id
    out.append((first, last))
    return out
