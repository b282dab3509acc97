"""The local backend: an allocation is a process group on this machine running the script.

It gives laptops, CI and single nodes the same autoalloc flow as a cluster (design §7). The id
`local-<N>` comes from a per-backend counter and reaches the script and its workers as
`HQPY_ALLOCATION_ID`, which `hq worker start --manager detect` reads.

States (answered from memory, no command is run):
- QUEUED (`STARTING`) from submit until `mark_started` (the first worker registered), even
  though the process runs at once: like a batch job, the allocation counts against the backlog
  until it has a worker;
- RUNNING after `mark_started`;
- FINISHED when the script exits 0 (`COMPLETED`) or is ended at its time limit (`TIMEOUT`:
  SIGTERM to the group, SIGKILL after `grace`), as a Slurm walltime is a normal end;
- FAILED on any other exit (`FAILED`) or after `cancel` (`CANCELLED`); an id this backend never
  handed out is FAILED too (`""`, as a purged Slurm job).
A dry-run script is only checked with `bash -n` and stays QUEUED (`HELD`) until cancelled.

Across a server restart: each allocation's dir holds `process-group` (its process group id and
the start time of the group's leader, from `/proc`, so that a reused pid is not taken for it). A
restarted server's backend adopts the allocations of the server before (`continue_after`): it
reports them RUNNING (or STARTING, as before) while a process of the group lives, FINISHED
(`EXITED`: it cannot know the exit status; the script's exit trap reports it) once none does,
and cancels them by signalling the group, as its own.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import attrs
import trio

from hqpy.autoalloc import partitions
from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelOutcome,
    CancelTarget,
    CommandRunner,
    ExternalState,
    ExternalStatus,
    SubmitError,
    cancel_each,
)
from hqpy.autoalloc.backends.common import (
    format_walltime,
    render_prelude,
    run_checked,
    write_jobid,
)
from hqpy.autoalloc.backends.runner import CommandObserver, make_runner
from hqpy.common.process import TaskProcess, devnull
from hqpy.protocol.messages import QueueParams

logger = logging.getLogger(__name__)

ALLOCATION_ID_ENV = "HQPY_ALLOCATION_ID"


_FOREIGN_ALLOCATION_ENV = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "PBS_JOBID",
    "PBS_ENVIRONMENT",
    "LSB_JOBID",
    "SGE_ROOT",
    "_CONDOR_JOB_AD",
)
"""Removed from a local allocation's environment: a server that itself runs inside a batch
job must not make its local workers report that job as their allocation (`--manager detect`)."""


def render_local_script(request: AllocationRequest) -> str:
    """A bash script that starts `worker_count` workers in the background and waits for them.

    The comment lines are for people reading it; `submit` takes the time limit and the dry
    run from the request. The exit status is the last failing worker's, so a crashing
    allocation is FAILED.
    """
    lines = [
        "#!/bin/bash",
        f"# hqpy local allocation {request.name}",
        f"# time limit {format_walltime(request.time_limit)}",
        f"# workers {request.worker_count}",
    ]
    if request.additional_args:
        lines.append("# args " + " ".join(request.additional_args))
    if request.dry_run:
        lines.append("# dry run")
    lines.append(f"# The server sets {ALLOCATION_ID_ENV}; `--manager detect` reads it.")
    body = [
        "pids=()",
        f"for i in $(seq {request.worker_count}); do",
        f"    ( {request.worker_command} ) &",
        '    pids+=("$!")',
        "done",
    ]
    if request.splits:  # one group of workers per part (issue 11)
        body = partitions.render_local(request.splits, request.worker_command)
    body += [
        "status=0",
        'for pid in "${pids[@]}"; do',
        '    wait "$pid" || status=$?',
        "done",
        'exit "$status"',
    ]
    prelude = render_prelude(request, f"${ALLOCATION_ID_ENV}")
    return "\n".join(lines) + "\n\n" + prelude + "\n".join(body) + "\n"


@attrs.define(eq=False)
class _LocalAllocation:
    id: str
    workdir: Path
    time_limit: float | None
    process: TaskProcess | None
    """None for a dry run (never started)."""
    started_at: float | None = None
    registered: bool = False
    finished_at: float | None = None
    returncode: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    exited: trio.Event = attrs.field(factory=trio.Event)
    """The script (the group's leader) has exited and been reaped."""
    done: trio.Event = attrs.field(factory=trio.Event)

    def status(self) -> ExternalStatus:
        if self.cancelled:
            state, raw = ExternalState.FAILED, "CANCELLED"
        elif self.process is None:
            state, raw = ExternalState.QUEUED, "HELD"
        elif not self.done.is_set():
            if self.registered:
                state, raw = ExternalState.RUNNING, "RUNNING"
            else:
                state, raw = ExternalState.QUEUED, "STARTING"
        elif self.timed_out:
            state, raw = ExternalState.FINISHED, "TIMEOUT"
        elif self.returncode == 0:
            state, raw = ExternalState.FINISHED, "COMPLETED"
        else:
            state, raw = ExternalState.FAILED, "FAILED"
        started = self.started_at if state is not ExternalState.QUEUED else None
        return ExternalStatus(state, started_at=started, finished_at=self.finished_at, raw=raw)


GROUP_NAME = "process-group"
"""In an allocation's dir: `<process group id> <start time of its leader>` (see `read_group`)."""


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, field 22 of `/proc/PID/stat`): with
    the pid, it names one process for good. None when there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None or len(fields) < 20 else int(fields[19])


def _stat_fields(pid: int) -> list[str] | None:
    """`/proc/PID/stat` after the command name (state, ppid, pgrp, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read(4096)
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def write_group(workdir: Path, pgid: int) -> None:
    """Record the allocation's process group, so a restarted server can follow it."""
    started = process_start_time(pgid)
    (workdir / GROUP_NAME).write_text(f"{pgid} {'' if started is None else started}\n")


def read_group(workdir: Path) -> tuple[int, int | None] | None:
    """`(pgid, leader start time)` from an allocation's dir; None when it has none (an older
    server's allocation, or a dry run)."""
    try:
        with open(workdir / GROUP_NAME) as f:
            parts = f.read(200).split()
    except OSError:
        return None
    if not parts or not parts[0].isdigit() or int(parts[0]) <= 1:
        return None
    started = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return int(parts[0]), started


def group_identity(pgid: int, started: int | None) -> bool | None:
    """Whether the group recorded as `(pgid, started)` may still have processes: True when its
    leader lives (the same process: same start time); None when the leader is gone but the
    group is not empty (its pid cannot be reused while the group exists: the members are the
    group's, maybe only zombies, see `_group_alive`); False when it is gone for good."""
    fields = _stat_fields(pgid)
    if fields is not None and len(fields) >= 20:
        if started is not None and int(fields[19]) != started:
            return False  # the pid was reused: the group ended
        if fields[0] not in ("Z", "X"):
            return True
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return None


@attrs.frozen
class EarlierAllocation:
    """An allocation of the server before a restore, still active in its journal."""

    id: str
    workdir: Path
    running: bool
    """A worker of it had registered (it was RUNNING, not STARTING)."""


@attrs.define(eq=False)
class _AdoptedAllocation:
    """A process group started by the server before (`continue_after`)."""

    id: str
    workdir: Path
    pgid: int
    leader_started: int | None
    registered: bool
    gone: bool = False
    cancelled: bool = False
    finished_at: float | None = None

    async def alive(self) -> bool:
        """Whether a live process is left in the group (remembered once it is not)."""
        if self.gone:
            return False
        found = group_identity(self.pgid, self.leader_started)
        if found is None:
            found = await trio.to_thread.run_sync(_group_alive, self.pgid)
        if not found:
            self.gone = True
            self.finished_at = time.time()
        return found

    async def status(self) -> ExternalStatus:
        if self.cancelled:
            return ExternalStatus(
                ExternalState.FAILED, finished_at=self.finished_at, raw="CANCELLED"
            )
        if await self.alive():
            if self.registered:
                return ExternalStatus(ExternalState.RUNNING, raw="RUNNING")
            return ExternalStatus(ExternalState.QUEUED, raw="STARTING")
        return ExternalStatus(ExternalState.FINISHED, finished_at=self.finished_at, raw="EXITED")


def _open_output(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


GROUP_CHECK_INTERVAL = 0.1
"""Seconds between checks for the rest of a group after its leader exited."""


async def _group_gone(pgid: int) -> None:
    """Return once no live process is left in the group.

    `killpg(pgid, 0)` (one syscall, on the loop) answers at once when the group is empty;
    only when members (maybe zombies waiting for a slow reaper) remain is `/proc` scanned,
    in a thread, at a low rate: the trio loop never walks `/proc`.
    """
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if not await trio.to_thread.run_sync(_group_alive, pgid):
            return
        await trio.sleep(GROUP_CHECK_INTERVAL)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies wait for their reaper).
    Walks `/proc`: call it in a thread (`_group_gone`)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


@attrs.frozen
class LocalShare:
    """How local allocations share this machine's cpus (pure: `SharesHost`)."""

    host_cpus: int

    def worker_cpus(self, params: QueueParams) -> str | None:
        """Without `--cpus`, each worker of an allocation gets its part of the machine."""
        if params.cpus is not None:
            return None
        return str(max(1, self.host_cpus // max(1, params.workers_per_alloc)))

    def worker_cap(self, params: QueueParams, cpus_per_worker: int) -> int | None:
        """Without `--cpus` and `--max-worker-count`, the queue's workers together get as many
        cpus as the machine has, not more."""
        if params.max_worker_count is not None:
            return params.max_worker_count
        if params.cpus is not None or cpus_per_worker <= 0:
            return None
        return max(1, self.host_cpus // cpus_per_worker)


class LocalBackend:
    """Runs allocations as local process groups; their watchers live in the given nursery.

    Keep one instance per server (shared by its local queues): ids come from its counter.

    Args:
        nursery: long-lived, owned by the caller; one watcher task per allocation runs in it.
        grace: seconds between SIGTERM and SIGKILL when an allocation is ended.
        env: extra environment for the scripts (on top of the server's).
        observer: told of the commands it runs (`bash -n`), as for the other backends.
        host_cpus: the cpus its workers share (default: this process's affinity mask).
    """

    manager: ClassVar[str] = "LOCAL"

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        grace: float = 5.0,
        runner: CommandRunner | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        observer: CommandObserver | None = None,
        host_cpus: int | None = None,
    ) -> None:
        self._nursery = nursery
        self._share = LocalShare(
            host_cpus if host_cpus is not None else len(os.sched_getaffinity(0))
        )
        self._grace = grace
        self._run = runner if runner is not None else make_runner(observer)
        self._timeout = timeout
        self._env = dict(env or {})
        self._counter = 0
        self._allocations: dict[str, _LocalAllocation] = {}
        self._earlier: set[str] = set()
        """Allocations of an earlier server (restored from its journal) that it cannot follow
        (no `process-group` in their dir): reported finished."""
        self._adopted: dict[str, _AdoptedAllocation] = {}
        """Allocations of an earlier server whose process group it follows."""

    def render_script(self, request: AllocationRequest) -> str:
        return render_local_script(request)

    def worker_cpus(self, params: QueueParams) -> str | None:
        return self._share.worker_cpus(params)

    def worker_cap(self, params: QueueParams, cpus_per_worker: int) -> int | None:
        return self._share.worker_cap(params, cpus_per_worker)

    async def check_script(self, script: Path) -> None:
        """`bash -n`: the dry run of the local backend. Raises `SubmitError` on a syntax error."""
        await run_checked(
            self._run,
            ["bash", "-n", str(script)],
            cwd=script.parent,
            command_timeout=self._timeout,
            error=SubmitError,
            what="bash -n",
        )

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        # The time limit and the dry run come from the request (a script template need not
        # keep the comment lines); no thread hops of trio's file and process helpers: this
        # sits between a `hq submit` and the first worker.
        workdir = request.workdir
        self._counter += 1
        allocation_id = f"local-{self._counter}"
        if request.dry_run:
            self._allocations[allocation_id] = _LocalAllocation(
                allocation_id, workdir, None, process=None
            )
            write_jobid(workdir, allocation_id)
            return allocation_id
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ALLOCATION_ENV}
        env.update(self._env)
        env[ALLOCATION_ID_ENV] = allocation_id
        try:
            process = self._spawn(script, workdir, env)
        except OSError as e:
            raise SubmitError(f"bash start failed: {e.strerror or e}") from e
        allocation = _LocalAllocation(
            allocation_id,
            workdir,
            request.time_limit,
            process=process,
            started_at=time.time(),
        )
        self._allocations[allocation_id] = allocation
        try:
            write_group(workdir, process.pid)
        except OSError as e:
            logger.warning(
                "local allocation %s: cannot record its process group: %s; a restarted server "
                "will not follow it",
                allocation_id,
                e,
            )
        write_jobid(workdir, allocation_id)
        logger.debug("local allocation %s is process group %d", allocation_id, process.pid)
        self._nursery.start_soon(self._watch, allocation, name=f"local allocation {allocation_id}")
        return allocation_id

    @staticmethod
    def _spawn(script: Path, workdir: Path, env: dict[str, str]) -> TaskProcess:
        """`bash <script>` as the leader of a new session (so of its own process group),
        forked on the trio thread: no thread hop between a `hq submit` and the allocation."""
        stdout = _open_output(workdir / "stdout")
        try:
            stderr = _open_output(workdir / "stderr")
            try:
                return TaskProcess.start(
                    ["bash", str(script)],
                    cwd=str(workdir),
                    env=env,
                    stdin=devnull(),
                    stdout=stdout,
                    stderr=stderr,
                )
            finally:
                os.close(stderr)
        finally:
            os.close(stdout)

    def mark_started(self, allocation_id: str) -> None:
        """A worker of this allocation registered: from now on it is RUNNING."""
        allocation = self._allocations.get(allocation_id)
        if allocation is not None:
            allocation.registered = True
        adopted = self._adopted.get(allocation_id)
        if adopted is not None:
            adopted.registered = True

    def continue_after(
        self, allocation_ids: Sequence[str], active: Sequence[EarlierAllocation] = ()
    ) -> None:
        """Restore from a journal: these ids belong to the server before; new ids go on after
        them. Those still `active` in the journal whose dir names their process group are
        followed (reported running while the group lives, and cancelled by signalling it); the
        others are reported finished."""
        following = {a.id: a for a in active}
        for allocation_id in allocation_ids:
            prefix, _, number = allocation_id.rpartition("-")
            if prefix != "local" or not number.isdigit():
                continue
            self._counter = max(self._counter, int(number))
            earlier = following.get(allocation_id)
            group = None if earlier is None else read_group(earlier.workdir)
            if earlier is None or group is None or allocation_id in self._allocations:
                self._earlier.add(allocation_id)
                continue
            self._adopted[allocation_id] = _AdoptedAllocation(
                allocation_id, earlier.workdir, group[0], group[1], earlier.running
            )
            logger.info(
                "local allocation %s of the server before is process group %d; following it",
                allocation_id,
                group[0],
            )

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        statuses: dict[str, ExternalStatus] = {}
        for allocation_id in ids:
            allocation = self._allocations.get(allocation_id)
            adopted = self._adopted.get(allocation_id)
            if adopted is not None:
                statuses[allocation_id] = await adopted.status()
            elif allocation is None and allocation_id in self._earlier:
                statuses[allocation_id] = ExternalStatus(ExternalState.FINISHED, raw="")
            elif allocation is None:
                statuses[allocation_id] = ExternalStatus(ExternalState.FAILED, raw="")
            else:
                statuses[allocation_id] = allocation.status()
        return statuses

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        return await cancel_each(self.cancel, targets, self._timeout)

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        adopted = self._adopted.get(allocation_id)
        if adopted is not None:
            await self._cancel_adopted(adopted)
            return
        allocation = self._allocations.get(allocation_id)
        if allocation is None or allocation.done.is_set():
            return
        if allocation.timed_out:
            await allocation.done.wait()
            return
        allocation.cancelled = True
        if allocation.process is None:
            allocation.finished_at = time.time()
            allocation.done.set()
            return
        await self._terminate(allocation)
        await allocation.done.wait()

    async def cancel_all(self) -> None:
        """End every live allocation (server shutdown), all at once, also those adopted."""
        async with trio.open_nursery() as nursery:
            for allocation in list(self._allocations.values()):
                if not allocation.done.is_set():
                    nursery.start_soon(self.cancel, allocation.id, allocation.workdir)
            for adopted in list(self._adopted.values()):
                if not adopted.gone:
                    nursery.start_soon(self._cancel_adopted, adopted)

    async def _cancel_adopted(self, adopted: _AdoptedAllocation) -> None:
        """SIGTERM to the group of the server before, SIGKILL to what is left after `grace`;
        returns once no process of it is left. A group that is gone (or whose leader's pid now
        names another process) is not signalled."""
        if not await adopted.alive():
            return
        adopted.cancelled = True
        pgid = adopted.pgid
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(self._grace) as graceful:
            await _group_gone(pgid)
        if graceful.cancelled_caught:
            logger.info("allocation %s ignored SIGTERM; killing it", adopted.id)
            _signal_group(pgid, signal.SIGKILL)
            with trio.move_on_after(5):
                await _group_gone(pgid)
        adopted.gone = True
        adopted.finished_at = time.time()

    async def _terminate(self, allocation: _LocalAllocation) -> None:
        """SIGTERM to the group, SIGKILL to what is left after `grace`; returns once no
        process of the group is left (the script's own exit is recorded by `_watch`).

        The leader's exit comes from its pidfd (`_watch`); the rest of the group is checked
        by `_group_gone`, off the loop."""
        assert allocation.process is not None
        pgid = allocation.process.pid
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(self._grace) as graceful:
            await allocation.exited.wait()
            await _group_gone(pgid)
        if graceful.cancelled_caught:
            logger.info("allocation %s ignored SIGTERM; killing it", allocation.id)
            _signal_group(pgid, signal.SIGKILL)
            with trio.move_on_after(5):
                await allocation.exited.wait()
                await _group_gone(pgid)

    async def _watch(self, allocation: _LocalAllocation) -> None:
        """Wait for the script to exit (its pidfd), ending it at its time limit; record how
        it ended."""
        process = allocation.process
        assert process is not None
        try:
            async with trio.open_nursery() as nursery:
                if allocation.time_limit is not None:
                    nursery.start_soon(self._end_at_limit, allocation, allocation.time_limit)
                await process.wait()
                allocation.exited.set()
                if not allocation.timed_out:
                    nursery.cancel_scope.cancel()
                # else: `_terminate` is ending the rest of the group; let it finish.
        finally:
            if process.returncode is None:
                # The nursery is being cancelled (server exit): leave nothing behind.
                _signal_group(process.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await process.wait()
                    await _group_gone(process.pid)
        allocation.returncode = process.returncode
        allocation.finished_at = time.time()
        allocation.done.set()
        logger.debug("local allocation %s exited with %s", allocation.id, process.returncode)

    async def _end_at_limit(self, allocation: _LocalAllocation, limit: float) -> None:
        await trio.sleep(limit)
        if allocation.exited.is_set() or allocation.cancelled:
            return
        logger.info("local allocation %s reached its time limit", allocation.id)
        allocation.timed_out = True
        await self._terminate(allocation)
