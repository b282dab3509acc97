"""The worker agent: register with the server, run the tasks it assigns, report their ends.

Task updates are batched: whatever finished while the last batch was being sent goes out in the
next frame, and a task that starts and ends within one batch is reported once. Tasks assigned
ahead of time wait in a local queue and start as soon as resources free up, with no round trip.
"""

from __future__ import annotations

import heapq
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import attrs
import trio
import trio.lowlevel

from hqpy.common import serverdir
from hqpy.common.process import OrphanGuard, SpawnedProcess, process_age
from hqpy.common.resources import ResourceGrant, ResourcePool
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.framing import FramedStream, ProtocolError
from hqpy.worker.launcher import Launcher, TaskOutcome
from hqpy.worker.startup import EXIT_SERVER_LOST as EXIT_SERVER_LOST
from hqpy.worker.startup import Registration, RegistrationRefused, connect, connect_and_register
from hqpy.worker.startup import WorkerExit as WorkerExit
from hqpy.worker.startup import WorkerOptions as WorkerOptions
from hqpy.worker.startup import register as register_link

log = logging.getLogger(__name__)

UPDATE_BATCH_DELAY = 0.005
"""Seconds between two frames of task updates: what ends meanwhile shares the next frame, and a
task that starts and ends within it is reported once. An update never waits when none was sent
in the last 5 ms. Measured (docs/benchmark.md): the server's CPU per `true` task fell from 80-189
to 23-97 µs and the worker's from 208-419 to 159-327 µs."""
EXIT_OK = 0
KILL_SIGNALS = (signal.SIGKILL, signal.SIGTERM)
KILLED_REPORT_DELAY = 0.5
"""Seconds a task killed by SIGKILL or SIGTERM waits before it is reported failed: when the
batch system ends an allocation (a node cleaned up, a job cancelled) it signals all its
processes at once, and the task's exit can be seen before the worker's own end."""
RESEND_WINDOW = 60.0
"""Seconds a reported task end is kept to be sent again after reconnecting: the server may have
got it and died before its journal flushed it (`--journal-flush-period`); a result it already
has is ignored."""
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 5.0
"""Seconds between tries to reach a lost server: doubling from the first, up to the max."""


@attrs.define
class Reconnect:
    """When a worker that lost its server tries again, and when it gives up
    (`--server-lost-grace`)."""

    grace: float
    lost_at: float
    attempts: int = 0

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next try, or None once the grace is over."""
        left = self.lost_at + self.grace - now
        if left <= 0:
            return None
        delay: float = min(RECONNECT_FIRST * 2.0**self.attempts, RECONNECT_MAX)
        self.attempts += 1
        return min(delay, left)


class _QueuedTask:
    __slots__ = ("key", "job_id", "task_id", "instance_id", "body", "entry", "nodes")

    def __init__(
        self,
        key: tuple[int, int, int],
        job_id: int,
        task_id: int,
        instance_id: int,
        body: m.TaskBody,
        entry: str | None,
    ) -> None:
        self.key = key
        self.job_id = job_id
        self.task_id = task_id
        self.instance_id = instance_id
        self.body = body
        self.entry = entry
        self.nodes: list[str] | None = None
        """A multi-node task: the hosts of its workers, this one first."""

    def __lt__(self, other: _QueuedTask) -> bool:
        return self.key < other.key


class WorkerAgent:
    def __init__(
        self, options: WorkerOptions, hq_path: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.options = options = options.settled()
        self.clock = clock
        assert options.work_dir is not None  # settled
        self.work_dir = options.work_dir
        self.launcher = Launcher(self.work_dir, hq_path, clock=clock)
        self.pool = ResourcePool(list(options.resources))
        self.bodies: dict[int, m.TaskBody] = {}
        self.queue: list[_QueuedTask] = []
        self.seq = 0
        self.running: dict[tuple[int, int], trio.CancelScope] = {}
        self.instances: dict[tuple[int, int], int] = {}
        """Instance id of each running task (presented to the server on reconnecting)."""
        self.recent: deque[tuple[float, m.TaskUpdateRow]] = deque()
        """Task ends sent in the last `RESEND_WINDOW` seconds, with when."""
        self.framed: FramedStream | None = None
        """The connection to the server; None while it is lost."""
        self.updates: list[m.TaskUpdateRow] = []
        self.unsent_running: dict[tuple[int, int, int], int] = {}
        self.updates_ready = trio.Event()
        self.worker_id = 0
        self.tasks_nursery: trio.Nursery | None = None
        self.accepting = True
        self.all_done = trio.Event()
        self.main_scope = trio.CancelScope()
        self.exit: tuple[int, str] | None = None

    def configuration(self) -> m.WorkerConfiguration:
        return self.options.configuration()

    async def run(self, registration: Registration | None = None) -> int:
        """Serve until stopped; returns the process exit code. `registration` is the connection
        `worker start` registered before importing trio (`startup`); without one, the agent
        registers itself."""
        if registration is None:
            try:
                registration = await trio.to_thread.run_sync(
                    connect_and_register, self.options, abandon_on_cancel=True
                )
            except WorkerExit as e:
                log.error("%s", e.reason)
                return e.code
        if self.options.zero_worker:
            return await self._serve(registration)
        # Started before the first task (`Popen`: a fork and an exec), so no task waits for it.
        guard = self.launcher.guard = OrphanGuard()
        try:
            return await self._serve(registration)
        finally:
            with trio.CancelScope(shield=True):
                await guard.aclose()

    def _adopt(self, registration: Registration) -> FramedStream:
        """Take over the sealed connection that `startup.register` made."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(registration.sock))
        framed = FramedStream(stream)
        framed.secure(registration.sealer, registration.opener)
        self.worker_id = registration.reply.worker_id
        return framed

    async def _serve(self, registration: Registration) -> int:
        framed = self._adopt(registration)
        age = process_age()
        if age is not None:
            age -= time.monotonic() - registration.at
            log.debug("Registered %.0f ms after the worker process started", age * 1000)
        config = self.configuration()
        with self.main_scope:
            async with trio.open_nursery() as nursery:
                self.tasks_nursery = nursery
                if config.time_limit is not None:
                    nursery.start_soon(self._time_limit, config.time_limit)
                current: FramedStream | None = framed
                while current is not None:
                    await self._session(current)
                    if self.exit is not None:
                        break
                    current = await self._reconnect()
                if self.exit is None:
                    await self._on_server_lost()
                nursery.cancel_scope.cancel()
        code, reason = self.exit or (EXIT_SERVER_LOST, "the connection to the server was lost")
        log.info("Worker is stopping: %s", reason)
        return code

    async def _session(self, framed: FramedStream) -> None:
        """Serve one connection until it is lost or the worker stops."""
        self.framed = framed
        self.accepting = True
        self.updates_ready.set()  # what ended while the server was away
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, framed)
                nursery.start_soon(self._flush_updates, framed)
                await self._receive(framed)
                nursery.cancel_scope.cancel()
        finally:
            self.framed = None
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                if self.updates and self.exit is not None:  # what ended since the last frame
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        await framed.send(m.TaskUpdates(self.updates), codec.FROM_WORKER)
                        self.updates = []
                await framed.aclose()

    async def _reconnect(self) -> FramedStream | None:
        """After losing the server: keep the running tasks and try again (re-reading the access
        file, which a restarted server rewrites) until `--server-lost-grace` ends."""
        grace = self.options.server_lost_grace
        if grace <= 0:
            return None
        self.accepting = False
        self.queue.clear()  # assigned but not started: the server hands them out again
        log.warning(
            "Server lost; keeping %d running task(s) and reconnecting for %.0f s",
            len(self.running),
            grace,
        )
        policy = Reconnect(grace, trio.current_time())
        while True:
            delay = policy.next_delay(trio.current_time())
            if delay is None:
                log.warning("The server did not come back within %.0f s", grace)
                return None
            await trio.sleep(delay)
            if self.recent:
                self._requeue_updates([row for _, row in self.recent])
                self.recent.clear()
            message = m.RegisterWorker(self.configuration(), self.worker_id, self._held_tasks())
            try:
                registration = await trio.to_thread.run_sync(
                    self._register_again, message, abandon_on_cancel=True
                )
            except WorkerExit as e:
                log.info("Reconnect try %d: %s", policy.attempts, e.reason)
                continue
            except RegistrationRefused as e:
                log.info("Reconnect try %d: %s", policy.attempts, e)
                continue
            return self._adopt(registration)

    def _register_again(self, message: m.RegisterWorker) -> Registration:
        """One try to reach the server again and register (in a worker thread)."""
        return register_link(connect(self._reconnect_dir(), attempts=1), message)

    def _requeue_updates(self, rows: list[m.TaskUpdateRow]) -> None:
        """Put `rows` back before the unsent updates. The positions of unsent starts move
        with them: an end that replaced the row at an old position would overwrite another
        task's end, which would then never reach the server."""
        if not rows:
            return
        self.updates = rows + self.updates
        shift = len(rows)
        for key in self.unsent_running:
            self.unsent_running[key] += shift

    def _remember_sent(self, updates: list[m.TaskUpdateRow]) -> None:
        now = trio.current_time()
        recent = self.recent
        recent.extend((now, row) for row in updates if row[3] != m.TASK_RUNNING)
        while recent and recent[0][0] < now - RESEND_WINDOW:
            recent.popleft()

    def _held_tasks(self) -> list[list[int]]:
        """What to present on registering again: running tasks, and those whose end is unsent."""
        rows = {(j, t, i) for (j, t), i in self.instances.items()}
        rows.update((row[0], row[1], row[2]) for row in self.updates)
        return [list(row) for row in sorted(rows)]

    def stop(self, code: int, reason: str) -> None:
        """End the worker: kill its tasks and leave `run` with this exit code."""
        if self.exit is None:
            self.exit = (code, reason)
        self.accepting = False
        self._kill_all()
        self.main_scope.cancel()

    def _reconnect_dir(self) -> Path:
        """Where a restarted server is found: an allocation's worker is given its server's
        instance dir (`D/001`), while the restarted server writes a new one (`D/002`) and points
        `D/hq-current` at it, so follow that link when there is one."""
        given = self.options.server_dir
        if given.name.isdigit() and (given.parent / serverdir.CURRENT).exists():
            return given.parent
        return given

    # -----------------------------------------------------------------------------------------

    async def _receive(self, framed: FramedStream) -> None:
        while True:
            try:
                msg = await framed.receive(codec.TO_WORKER)
            except (trio.BrokenResourceError, ProtocolError, ConnectionError):
                msg = None
            if msg is None:
                return
            if isinstance(msg, m.ComputeTasks):
                self._on_compute(msg)
            elif isinstance(msg, m.CancelTasks):
                self._on_cancel(msg)
            elif isinstance(msg, m.StopWorker):
                if msg.reason == m.SERVER_STOPPED:
                    self.stop(EXIT_SERVER_LOST, "the server stopped")
                else:
                    self.stop(EXIT_OK, f"the server asked it to stop ({msg.reason})")
                return

    async def _on_server_lost(self) -> None:
        self.accepting = False
        self.queue.clear()
        if self.options.on_server_lost == "finish-running" and self.running:
            log.warning("Server lost; finishing %d running tasks", len(self.running))
            await self.all_done.wait()
        self.stop(EXIT_SERVER_LOST, "the connection to the server was lost")

    def _kill_all(self) -> None:
        self.queue.clear()
        for scope in self.running.values():
            scope.cancel()

    def _on_compute(self, msg: m.ComputeTasks) -> None:
        for body in msg.bodies:
            self.bodies[body.group_id] = body
        for row in msg.tasks:
            job_id, task_id, instance_id, group_id, entry = row[:5]
            body = self.bodies[group_id]
            self.seq += 1
            item = _QueuedTask(
                (-body.priority, job_id, self.seq), job_id, task_id, instance_id, body, entry
            )
            if len(row) > 5:
                item.nodes = row[5]
            heapq.heappush(self.queue, item)
        self._start_queued()

    def _on_cancel(self, msg: m.CancelTasks) -> None:
        drop = {(j, t) for j, t, _ in msg.tasks}
        before = len(self.queue)
        self.queue = [q for q in self.queue if (q.job_id, q.task_id) not in drop]
        if len(self.queue) != before:
            heapq.heapify(self.queue)
        for key in drop:
            scope = self.running.get(key)
            if scope is not None:
                scope.cancel()

    def _start_queued(self) -> None:
        if not self.accepting or self.tasks_nursery is None:
            return
        while self.queue:
            head = self.queue[0]
            if self.options.zero_worker:
                heapq.heappop(self.queue)
                now = self.clock()
                self._report(head, m.TASK_FINISHED, now, now, None)
                continue
            allocation = self.pool.try_allocate(head.body.request)
            if allocation is None:
                return
            heapq.heappop(self.queue)
            scope = trio.CancelScope()
            self.running[(head.job_id, head.task_id)] = scope
            self.instances[(head.job_id, head.task_id)] = head.instance_id
            self.all_done = trio.Event() if self.all_done.is_set() else self.all_done
            begun: SpawnedProcess | TaskOutcome | None = None
            at = None
            if head.nodes is None:
                try:
                    begun = self.launcher.start_now(
                        head.body, head.task_id, head.instance_id, head.entry, allocation
                    )
                except Exception as e:  # a task's failure, whatever it is, never ends the worker
                    log.exception("Task %d@%d failed in the worker", head.task_id, head.job_id)
                    begun = TaskOutcome(False, f"The worker could not run the task: {e!r}")
                if isinstance(begun, SpawnedProcess):
                    at = self.clock()
                    self._report(head, m.TASK_RUNNING, at, None, None)
            self.tasks_nursery.start_soon(self._run_task, head, allocation, scope, begun, at)

    async def _run_task(
        self,
        item: _QueuedTask,
        allocation: ResourceGrant,
        scope: trio.CancelScope,
        begun: SpawnedProcess | TaskOutcome | None,
        begun_at: float | None,
    ) -> None:
        """Run the task to its end and report it; `begun`: what `Launcher.start_now` did
        (None: the launcher starts it here)."""
        started: list[float] = [] if begun_at is None else [begun_at]

        def on_started(t: float) -> None:
            started.append(t)
            self._report(item, m.TASK_RUNNING, t, None, None)

        outcome = TaskOutcome(False, "the task was not run")
        try:
            with scope:
                if isinstance(begun, TaskOutcome):
                    outcome = begun
                elif begun is not None:
                    error_file = self.launcher.error_file(item.body, item.task_id, item.instance_id)
                    outcome = await self.launcher.wait(begun, item.body.time_limit, error_file)
                else:
                    outcome = await self.launcher.run(
                        item.body,
                        item.task_id,
                        item.instance_id,
                        item.entry,
                        allocation,
                        on_started,
                        item.nodes,
                    )
        except Exception as e:  # a task's failure, whatever it is, never ends the worker
            log.exception("Task %d@%d failed in the worker", item.task_id, item.job_id)
            outcome = TaskOutcome(False, f"The worker could not run the task: {e!r}")
        finally:
            self.pool.release(allocation)
            self.running.pop((item.job_id, item.task_id), None)
            self.instances.pop((item.job_id, item.task_id), None)
            if not self.running:
                self.all_done.set()
        if outcome.killed_by in KILL_SIGNALS and not scope.cancel_called:
            # The batch system may be killing every process of the allocation, this worker
            # too: then the task was not at fault and must run again elsewhere, which the
            # server does when this worker is gone without having reported it failed.
            await trio.sleep(KILLED_REPORT_DELAY)
            if self.exit is not None:
                scope.cancel()  # the worker is stopping: reported as one of the tasks it ends
        start = started[0] if started else None
        now = self.clock()
        if scope.cancel_called:
            self._report(item, m.TASK_CANCELED, start, now, None)
        elif outcome.ok:
            self._report(item, m.TASK_FINISHED, start, now, None)
        else:
            self._report(item, m.TASK_FAILED, start, now, outcome.error)
        self._start_queued()

    def _report(
        self,
        item: _QueuedTask,
        status: int,
        started: float | None,
        ended: float | None,
        error: str | None,
    ) -> None:
        key = (item.job_id, item.task_id, item.instance_id)
        row = [item.job_id, item.task_id, item.instance_id, status, started, ended, error]
        if status == m.TASK_RUNNING:
            self.unsent_running[key] = len(self.updates)
            self.updates.append(row)
        else:
            index = self.unsent_running.pop(key, None)
            if index is not None:
                self.updates[index] = row
            else:
                self.updates.append(row)
        self.updates_ready.set()

    async def _flush_updates(self, framed: FramedStream) -> None:
        while True:
            await self.updates_ready.wait()
            self.updates_ready = trio.Event()
            await trio.lowlevel.checkpoint()
            updates, self.updates = self.updates, []
            self.unsent_running.clear()
            try:
                await framed.send(m.TaskUpdates(updates), codec.FROM_WORKER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                # Kept for the next connection (the server ignores what it already has).
                self._requeue_updates(updates)
                return
            except trio.Cancelled:
                # The session ends (the server went) in the middle of the send: kept too, or
                # these ends are never presented and a restarted server runs them again.
                self._requeue_updates(updates)
                raise
            if self.options.server_lost_grace > 0:
                self._remember_sent(updates)
            await trio.sleep(UPDATE_BATCH_DELAY)

    async def _heartbeat(self, framed: FramedStream) -> None:
        while True:
            await trio.sleep(self.options.heartbeat)
            try:
                await framed.send(m.Heartbeat(), codec.FROM_WORKER)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                return

    async def _time_limit(self, limit: float) -> None:
        await trio.sleep(limit)
        log.info("Time limit of the worker reached")
        self.accepting = False
        self._kill_all()
        framed = self.framed
        if framed is not None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                await framed.send(m.WorkerStopping("time-limit"), codec.FROM_WORKER)
        self.stop(EXIT_OK, "time limit reached")


def hq_executable() -> str:
    """The absolute path of the `hq` this process runs as, for `HQ` in task environments."""
    argv0 = sys.argv[0]
    if argv0.endswith("__main__.py") or not argv0:
        return sys.executable
    return os.path.abspath(argv0)
