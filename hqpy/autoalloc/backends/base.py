"""The interface every batch system implements, and the data it exchanges.

Commands always run as argv lists under a timeout (`CommandRunner`); parsers of their output
are pure functions, tested on captured real output.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import attrs
import trio

from hqpy.protocol.messages import QueueParams


class ExternalState(enum.Enum):
    QUEUED = "queued"
    """Waiting in the batch system's queue."""
    RUNNING = "running"
    FINISHED = "finished"
    """Ended normally, including a walltime TIMEOUT: a pilot job reaching its limit is normal."""
    FAILED = "failed"
    """Ended with an error, was cancelled, or the batch system no longer knows it."""


@attrs.frozen
class ExternalStatus:
    state: ExternalState
    started_at: float | None = None
    finished_at: float | None = None
    raw: str = ""
    """The batch system's own word for the state (`PENDING`, `R`, ...), for messages."""
    reason: str | None = None
    """Why a QUEUED allocation waits, in the batch system's words (Slurm's `Resources`, PBS's
    `comment`, LSF's pending reason, Grid Engine's scheduling info, HTCondor's hold reason);
    None when it does not say or the allocation is not queued."""


@attrs.frozen
class ScriptSetup:
    """What an allocation script does before its worker line (`common.render_prelude`)."""

    report_command: str | None = None
    """`<hq> worker report-end --server-dir "..."`: the exit trap that reports the end."""
    env_script: str | None = None
    """Sourced first (`--env-script`)."""
    exports: tuple[tuple[str, str], ...] = ()
    """Exported variables: `HQPY_LOG`, `RUST_LOG`, then each `--worker-env`."""
    worker_dir: str | None = None
    """The workers' working directory (`--worker-dir`), created if missing."""


@attrs.frozen
class AllocationRequest:
    """Everything needed to render one allocation's submit script."""

    queue_id: int
    seq: int
    """The allocation's number within its queue, from 1."""
    name: str
    """`hq-<queue>-<seq>`, or `<queue name>-<seq>` for a named queue."""
    worker_count: int
    time_limit: float
    """Seconds of walltime."""
    additional_args: tuple[str, ...]
    """What followed `--` on `hq alloc add`: one extra directive line, verbatim."""
    worker_command: str
    """The exec line: `[start && ][HQPY_LOG=.. ][wrap ]<hq> worker start ...[; stop]`."""
    workdir: Path
    """The allocation dir; holds `hq-submit.sh`, `jobid`, `stdout`, `stderr`."""
    dry_run: bool = False
    setup: ScriptSetup = ScriptSetup()
    """Exit trap, environment and directory; rendered by every backend before the worker."""
    splits: tuple[str, ...] = ()
    """`--split` parts (see `autoalloc.partitions`); backends that support them lay the
    workers out in these parts."""
    parallel_environment: str | None = None
    """`--pe NAME` (Grid Engine): the parallel environment of an allocation of several
    workers."""


@attrs.frozen
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


CommandRunner = Callable[..., Awaitable[CommandResult]]
"""`await runner(argv, cwd=..., timeout=...)`; raises `BackendError` if it cannot start or hangs."""


class BackendError(Exception):
    """A batch command failed; the message names the command and quotes its output."""


class SubmitError(BackendError):
    pass


class StatusQueryError(BackendError):
    pass


class CancelError(BackendError):
    pass


@attrs.frozen
class CancelTarget:
    allocation_id: str
    workdir: Path


CancelOutcome = dict[str, str | None]
"""Per allocation id: None when the batch system confirmed the cancellation (or the allocation
was already gone), else the error text. Every target has an entry."""


async def cancel_each(
    cancel_one: Callable[[str, Path], Awaitable[None]],
    targets: Sequence[CancelTarget],
    timeout: float,  # noqa: ASYNC109 - one timeout per command, not for the whole call
) -> CancelOutcome:
    """Cancel allocations one command each, all in parallel, each under its own timeout: one
    hanging command never holds up the others."""
    outcome: CancelOutcome = {}

    async def one(target: CancelTarget) -> None:
        try:
            with trio.fail_after(timeout):
                await cancel_one(target.allocation_id, target.workdir)
            outcome[target.allocation_id] = None
        except BackendError as e:
            outcome[target.allocation_id] = str(e)
        except trio.TooSlowError:
            outcome[target.allocation_id] = f"cancel did not finish within {timeout:g}s"

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(one, target)
    return outcome


def command_failure(result: CommandResult) -> str:
    """HyperQueue's text for a command that exited non-zero."""
    return (
        f"Exit code: {result.returncode}\nStderr: {result.stderr.strip()}\n"
        f"Stdout: {result.stdout.strip()}"
    )


class BatchBackend(Protocol):
    manager: ClassVar[str]
    """`SLURM`, `PBS` or `LOCAL`: what workers report and what `alloc list` shows."""

    def render_script(self, request: AllocationRequest) -> str:
        """The whole `hq-submit.sh` (pure)."""
        ...

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        """Submit the script (rendered from `request`, written in `request.workdir`); returns
        the allocation id. Raises `SubmitError`."""
        ...

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        """Status of many allocations in as few calls as possible; an id the batch system no
        longer knows is FAILED. Raises `StatusQueryError` when the command itself fails."""
        ...

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        """Cancel one allocation; one that is already gone is not an error."""
        ...

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """Cancel many allocations: with one command where the batch system takes many ids,
        else in parallel (`cancel_each`); never raises, the outcome says what failed."""
        ...


# Optional capabilities: a backend has them or not; callers test with `isinstance` (these are
# runtime-checkable) instead of `getattr`.


@runtime_checkable
class ChecksScripts(Protocol):
    """Can check a script without submitting it (the local backend's dry run: `bash -n`)."""

    async def check_script(self, script: Path) -> None:
        """Raises `SubmitError` when the script would not run."""
        ...


@runtime_checkable
class TracksWorkers(Protocol):
    """Wants to know when the first worker of an allocation registered (the local backend
    keeps an allocation QUEUED until then, as a batch job waits in its queue)."""

    def mark_started(self, allocation_id: str) -> None: ...


@runtime_checkable
class SharesHost(Protocol):
    """Runs its workers on the server's own machine (the local backend): it divides the
    machine's cpus among the workers of a queue that gives no `--cpus`, and caps how many such
    workers run at once."""

    def worker_cpus(self, params: QueueParams) -> str | None:
        """`--cpus` of each worker of the queue; None when the queue gives its own."""
        ...

    def worker_cap(self, params: QueueParams, cpus_per_worker: int) -> int | None:
        """At most this many workers of the queue at once (None: no cap)."""
        ...


@runtime_checkable
class CancelsAll(Protocol):
    """Can end every allocation it started at once (server shutdown)."""

    async def cancel_all(self) -> None: ...
