"""What every backend shares: the worker exec line, the script file, names and command errors.

The exec line follows HyperQueue's `build_worker_args` byte for byte (hq-cli-compat §7.2), so a
HyperQueue user reading `hq-submit.sh` sees what they expect; only `HQPY_LOG` replaces `RUST_LOG`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import ClassVar, NoReturn

import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BackendError,
    CancelError,
    CancelOutcome,
    CancelTarget,
    CommandResult,
    CommandRunner,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
    command_failure,
)
from hqpy.autoalloc.backends.runner import CommandObserver, make_runner
from hqpy.common.durations import format_duration, format_hms
from hqpy.protocol.messages import QueueParams

SCRIPT_NAME = "hq-submit.sh"
JOBID_NAME = "jobid"

format_walltime = format_hms
"""`HH:MM:SS` for `--time=`/`walltime=`; hours are never folded into days (`96:00:00`)."""

_MANAGER_ARG = {
    "slurm": "slurm",
    "pbs": "pbs",
    "local": "detect",
    "lsf": "detect",
    "htcondor": "detect",
    "sge": "detect",
}
"""`--manager` value per backend: local, LSF, HTCondor and Grid Engine workers find their
allocation from `HQPY_ALLOCATION_ID`, which those backends' scripts set."""

_NEEDS_ESCAPE = re.compile(r'["\\$`]')


SERVER_LOST_GRACE = 300.0
"""Seconds an allocation's worker keeps its tasks and reconnects after losing the server (a
restarted server adopts them)."""


def quote_double(value: str) -> str:
    """`"value"` as HyperQueue writes it; `"`, `\\`, `$` and backquotes are escaped so that a
    strange value cannot break the script (ordinary values come out unchanged)."""
    return '"' + _NEEDS_ESCAPE.sub(lambda m: "\\" + m.group(0), value) + '"'


def quote_single(text: str) -> str:
    """`'text'` for `bash -c`; single quotes inside are written as `'\\''`."""
    return "'" + text.replace("'", "'\\''") + "'"


def build_worker_command(
    params: QueueParams,
    *,
    hq_argv: Sequence[str],
    server_dir: Path,
    manager: str,
    hqpy_log: str | None,
    cpus_override: str | None = None,
) -> str:
    """The one exec line of a submit script, e.g.
    `/usr/bin/hq worker start --idle-timeout "5m" --manager "slurm" --server-dir "/d/001"
    --on-server-lost "finish-running" --time-limit "1h"` (on one line).

    Args:
        hq_argv: how to start `hq` (its absolute path, or `python -m hqpy`).
        server_dir: the server's numbered instance dir (`<server-dir>/001`).
        manager: `slurm`, `pbs` or `local`; local workers get `--manager "detect"`.
        hqpy_log: the server's `HQPY_LOG`, passed on to the workers when set.
        cpus_override: `--cpus` for a queue without one (the local backend divides the
            machine's cpus among the workers of an allocation).
    """
    manager_arg = _MANAGER_ARG.get(manager.lower())
    if manager_arg is None:
        from hqpy.autoalloc.backends import registry

        if manager.lower() not in registry.names():
            raise ValueError(
                f"unknown manager {manager!r}; expected one of {', '.join(registry.names())}"
            )
        # A plug-in's workers find their allocation in HQPY_ALLOCATION_ID, as local ones.
        manager_arg = "detect"
    parts = [
        shlex.join(hq_argv),
        "worker start",
        f"--idle-timeout {quote_double(format_duration(params.idle_timeout))}",
        f"--manager {quote_double(manager_arg)}",
        f"--server-dir {quote_double(str(server_dir))}",
    ]
    cpus = params.cpus if params.cpus is not None else cpus_override
    if cpus is not None:
        parts.append(f"--cpus {quote_double(cpus)}")
    parts.extend(f"--resource {quote_double(r)}" for r in params.resources)
    if params.coupling is not None:
        parts.append(f"--coupling {quote_double(params.coupling)}")
    if params.group is not None:
        parts.append(f"--group {shlex.quote(params.group)}")
    if params.no_hyper_threading:
        parts.append("--no-hyper-threading")
    if params.detect_resources is not None:
        parts.append(f"--detect-resources {shlex.quote(params.detect_resources)}")
    if params.overview_interval is not None:
        parts.append(
            f"--overview-interval {quote_double(format_duration(params.overview_interval))}"
        )
    if params.min_utilization > 0:
        parts.append(f"--min-utilization {params.min_utilization:g}")
    parts.extend(f"--filter-tag {quote_double(t)}" for t in params.filter_tags)
    parts.append(f"--on-server-lost {quote_double(params.on_server_lost)}")
    parts.append(f"--server-lost-grace {quote_double(format_duration(SERVER_LOST_GRACE))}")
    limit = params.worker_time_limit if params.worker_time_limit is not None else params.time_limit
    parts.append(f"--time-limit {quote_double(format_duration(limit))}")
    line = " ".join(parts)
    if params.worker_wrap_cmd:
        line = f"{params.worker_wrap_cmd} {line}"
    if hqpy_log:
        line = f"HQPY_LOG={shlex.quote(hqpy_log)} {line}"
    if params.worker_start_cmd:
        line = f"{params.worker_start_cmd} && {line}"
    if params.worker_stop_cmd:
        line = f"{line}; {params.worker_stop_cmd}"
    return line


STDERR_NAME = "stderr"


def render_prelude(request: AllocationRequest, allocation_id: str) -> str:
    """The lines between the directives and the worker line (empty when there is nothing to
    set up): the exit trap that reports the allocation's end to the server, the env script,
    the exported variables and the working directory.

    Variables are exported rather than written before the worker command, so that they reach
    workers started through `srun`, `pbsdsh`, `blaunch` or `qrsh -V` too.

    Args:
        allocation_id: how the script names its allocation (`$SLURM_JOB_ID`, ...).
    """
    setup = request.setup
    lines = []
    if setup.report_command:
        stderr = quote_double(str(request.workdir / STDERR_NAME))
        body = (
            f'hqpy_exit=$?; {setup.report_command} --allocation "{allocation_id}" '
            f'--exit-code "$hqpy_exit" --stderr-file {stderr} >/dev/null 2>&1'
        )
        lines.append(f"trap {quote_single(body)} EXIT")
    if setup.env_script:
        lines.append(f"source {quote_double(setup.env_script)}")
    lines.extend(f"export {key}={quote_double(value)}" for key, value in setup.exports)
    if setup.worker_dir:
        d = quote_double(setup.worker_dir)
        lines.append(f"mkdir -p {d} && cd {d} || exit 1")
    return "".join(line + "\n" for line in lines)


def is_simple_command(line: str) -> bool:
    """Whether `line` is one plain command that a launcher (`srun`) can exec directly: no
    `&&`/`;`/pipes (start and stop commands) and no leading `VAR=value` (`HQPY_LOG`)."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return False
    if not tokens or "=" in tokens[0]:
        return False
    return not any(token and set(token) <= set("();<>|&") for token in tokens)


def allocation_name(queue_id: int, seq: int, name: str | None) -> str:
    """`hq-<queue>-<seq>` (`hq-1-1`), or `<name>-<seq>` (`foo-1`) for a named queue."""
    return f"{name}-{seq}" if name else f"hq-{queue_id}-{seq}"


def write_script(request: AllocationRequest, text: str) -> Path:
    """Write `<workdir>/hq-submit.sh` (mode 0755) and return its path."""
    request.workdir.mkdir(parents=True, exist_ok=True)
    path = request.workdir / SCRIPT_NAME
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_jobid(workdir: Path, allocation_id: str) -> None:
    """Record the batch id beside the script, as HyperQueue does (`jobid`)."""
    (workdir / JOBID_NAME).write_text(allocation_id + "\n")


async def run_checked(
    runner: CommandRunner,
    argv: Sequence[str],
    *,
    cwd: Path | None,
    command_timeout: float,
    error: type[BackendError],
    what: str,
    stdin: Path | None = None,
) -> CommandResult:
    """Run a command; a start failure, a timeout or a non-zero exit raises `error`.

    The message is HyperQueue's: `<what> execution failed` and the quoted output.
    """
    result = await run_unchecked(
        runner, argv, cwd=cwd, command_timeout=command_timeout, error=error, stdin=stdin
    )
    if result.returncode != 0:
        raise error(f"{what} execution failed\n{command_failure(result)}")
    return result


async def run_unchecked(
    runner: CommandRunner,
    argv: Sequence[str],
    *,
    cwd: Path | None,
    command_timeout: float,
    error: type[BackendError],
    stdin: Path | None = None,
) -> CommandResult:
    """Run a command; only a start failure or a timeout raises (as `error`).

    Args:
        stdin: a file for its standard input (only passed to the runner when set).
    """
    extra = {} if stdin is None else {"stdin": stdin}
    try:
        result: CommandResult = await runner(list(argv), cwd=cwd, timeout=command_timeout, **extra)
    except BackendError as e:
        if type(e) is error:
            raise
        raise_as(error, e)
    return result


CANCEL_CHUNK = 200
"""Ids per cancel command: far below any argv limit, one command for a typical queue."""

_ID_PUNCTUATION = "<>:;,\"'()[]"


def _id_key(text: str) -> str:
    """`12` of `12`, `<12>:`, `"12"`, `12.server` or `12.server.domain` (PBS prints either)."""
    return text.strip(_ID_PUNCTUATION).split(".", 1)[0]


def judge_cancel(result: CommandResult, ids: Sequence[str], gone: Sequence[str]) -> CancelOutcome:
    """Per id, what one cancel command for many ids said (pure).

    Exit 0: every id was accepted. Otherwise each output line that names one of the ids is
    that id's answer: None when it contains one of `gone` (already finished or unknown, not
    an error; or the tool's own word for accepted), else the line as the error; ids no line
    names were accepted. When no line names any id, the failure is every id's (the command
    failed as a whole).
    """
    if result.returncode == 0:
        return dict.fromkeys(ids)
    by_key: dict[str, list[str]] = {}
    for allocation_id in ids:
        by_key.setdefault(_id_key(allocation_id), []).append(allocation_id)
    outcome: CancelOutcome = {}
    named = False
    for line in (result.stderr + "\n" + result.stdout).splitlines():
        keys = {_id_key(word) for word in line.split()}
        for key in keys & by_key.keys():
            named = True
            error = None if any(marker in line for marker in gone) else line.strip()
            for allocation_id in by_key[key]:
                if outcome.get(allocation_id) is None:
                    outcome[allocation_id] = error
    if not named:
        failure = f"{result.argv[0]} execution failed\n{command_failure(result)}"
        return dict.fromkeys(ids, failure)
    return {allocation_id: outcome.get(allocation_id) for allocation_id in ids}


def raise_as(error: type[BackendError], cause: BackendError) -> NoReturn:
    """Re-raise a runner failure as the error type the caller expects (same text)."""
    raise error(str(cause)) from cause


async def query_each(
    ids: Sequence[str],
    query_one: Callable[[str], Awaitable[ExternalStatus]],
    parallel: int,
) -> dict[str, ExternalStatus]:
    """Ask about each id with its own command, at most `parallel` at once (the fallback when a
    batched listing does not know an id). Raises the first `StatusQueryError` once all ended."""
    found: dict[str, ExternalStatus] = {}
    errors: list[StatusQueryError] = []
    limiter = trio.CapacityLimiter(parallel)

    async def one(job_id: str) -> None:
        async with limiter:
            try:
                found[job_id] = await query_one(job_id)
            except StatusQueryError as e:
                errors.append(e)

    async with trio.open_nursery() as nursery:
        for job_id in ids:
            nursery.start_soon(one, job_id)
    if errors:
        raise errors[0]
    return found


class ScriptBackend:
    """What Slurm and PBS share: one command submits the script, its output names the job.

    Subclasses set `manager` and `submit_program`, and parse the submit output.
    """

    manager: ClassVar[str]
    submit_program: ClassVar[str]

    def __init__(
        self,
        runner: CommandRunner | None = None,
        timeout: float = 30.0,
        *,
        observer: CommandObserver | None = None,
    ) -> None:
        """Args:
        runner: runs the batch commands (tests pass fakes); default: a `BatchCommandRunner`.
        timeout: seconds each command may take.
        observer: told of each command (`BatchCommandRun`) when `runner` is the default.
        """
        self._run = runner if runner is not None else make_runner(observer)
        self._timeout = timeout

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        """One allocation through `cancel_many`, its error raised."""
        outcome = await self.cancel_many([CancelTarget(allocation_id, workdir)])
        error = outcome.get(allocation_id)
        if error is not None:
            raise CancelError(error)

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """Each batch system cancels many ids with one command of its own."""
        raise NotImplementedError

    async def cancel_together(
        self, argv: Sequence[str], targets: Sequence[CancelTarget], gone: Sequence[str]
    ) -> CancelOutcome:
        """Cancel `targets` with `argv + ids`, one command per `CANCEL_CHUNK` ids, all
        chunks at once; see `judge_cancel` for how the output is read."""
        ids = list(dict.fromkeys(t.allocation_id for t in targets))
        workdirs = {t.allocation_id: t.workdir for t in targets}
        outcome: CancelOutcome = {}

        async def chunk(part: list[str]) -> None:
            command = [*argv, *part]
            # Run where the allocations live (one allocation: its own dir), as submit does.
            cwd = Path(os.path.commonpath([workdirs[i] for i in part]))
            try:
                result = await self._run(command, cwd=cwd, timeout=self._timeout)
            except BackendError as e:
                outcome.update(dict.fromkeys(part, f"{e}; the cancellation is unconfirmed"))
                return
            outcome.update(judge_cancel(result, part, gone))

        async with trio.open_nursery() as nursery:
            for start in range(0, len(ids), CANCEL_CHUNK):
                nursery.start_soon(chunk, ids[start : start + CANCEL_CHUNK])
        return outcome

    @staticmethod
    def parse_submit_output(stdout: str) -> str:
        raise NotImplementedError

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        workdir = request.workdir
        program = self.submit_program
        result = await run_checked(
            self._run,
            [program, str(script)],
            cwd=workdir,
            command_timeout=self._timeout,
            error=SubmitError,
            what=program,
        )
        try:
            job_id = self.parse_submit_output(result.stdout)
        except ValueError as e:
            raise SubmitError(f"{program} execution failed\n{e}\n{command_failure(result)}") from e
        write_jobid(workdir, job_id)
        return job_id
