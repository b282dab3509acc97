"""Slurm: `sbatch` to submit, one batched `squeue` (with `scontrol` for purged jobs), `scancel`.

HyperQueue asks `scontrol show job` once per allocation; hqpy asks `squeue` once for all of a
poll's allocations and only falls back to `scontrol` for ids `squeue` no longer lists, or for
all of them when `squeue` is missing, fails or hangs (it gets a short timeout), so a queue with
many allocations costs one call, and a broken `squeue` costs seconds, not the whole timeout.
Output formats are those of Slurm 22.05 as captured
in `tests/fixtures/slurm/`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hqpy.autoalloc import partitions
from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelError,
    CancelOutcome,
    CancelTarget,
    CommandRunner,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    command_failure,
)
from hqpy.autoalloc.backends.common import (
    ScriptBackend,
    format_walltime,
    is_simple_command,
    query_each,
    quote_single,
    render_prelude,
    run_checked,
    run_unchecked,
)
from hqpy.autoalloc.backends.runner import CommandObserver

logger = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%T|%S|%e|%r"
"""Job id, long state name, start time, end time, reason: what a status needs, `|`-separated
(the reason last, so a `|` in it cannot shift the other fields)."""

NO_REASON = ("None", "(null)", "")
"""What Slurm prints as the reason of a job that has none."""

INVALID_JOB_ID = "Invalid job id"
"""What `squeue -j`/`scontrol show job` print (rc 1) for ids slurmctld no longer holds."""

_STATES: dict[str, ExternalState] = {
    # Waiting for resources, or going back to waiting.
    "PENDING": ExternalState.QUEUED,
    "CONFIGURING": ExternalState.QUEUED,
    "REQUEUED": ExternalState.QUEUED,
    "REQUEUE_FED": ExternalState.QUEUED,
    "REQUEUE_HOLD": ExternalState.QUEUED,
    "RESV_DEL_HOLD": ExternalState.QUEUED,
    # Holding nodes: the workers may be alive.
    "RUNNING": ExternalState.RUNNING,
    "COMPLETING": ExternalState.RUNNING,
    "SUSPENDED": ExternalState.RUNNING,
    "STOPPED": ExternalState.RUNNING,
    "SIGNALING": ExternalState.RUNNING,
    "STAGE_OUT": ExternalState.RUNNING,
    "RESIZING": ExternalState.RUNNING,
    # Ended normally: a pilot job reaching its walltime (or being preempted) is expected.
    "COMPLETED": ExternalState.FINISHED,
    "TIMEOUT": ExternalState.FINISHED,
    "PREEMPTED": ExternalState.FINISHED,
    # Ended badly.
    "CANCELLED": ExternalState.FAILED,
    "FAILED": ExternalState.FAILED,
    "NODE_FAIL": ExternalState.FAILED,
    "OUT_OF_MEMORY": ExternalState.FAILED,
    "BOOT_FAIL": ExternalState.FAILED,
    "DEADLINE": ExternalState.FAILED,
    "SPECIAL_EXIT": ExternalState.FAILED,
    "REVOKED": ExternalState.FAILED,
}

SQUEUE_TIMEOUT = 5.0
"""Seconds `squeue` gets before `scontrol` is asked instead: a healthy one answers in ms."""

SCONTROL_PARALLEL = 8
"""`scontrol show job` calls at once when `squeue` cannot answer."""

SCANCEL_GONE = (INVALID_JOB_ID, "already completing or completed")
"""scancel's per-id errors that mean the job is already gone (not a failed cancellation)."""

_GONE = ExternalStatus(ExternalState.FAILED, raw="")
"""A job Slurm no longer knows (purged after MinJobAge): counted as failed, as in HyperQueue."""

_PARSABLE_RE = re.compile(r"(\d+(?:_\d+)?)(?:;\S+)?")


def render_sbatch_script(request: AllocationRequest) -> str:
    """The `hq-submit.sh` of one allocation, exactly as HyperQueue writes it.

    With several nodes, `srun` starts one worker per node; a compound line (start/stop commands
    or `HQPY_LOG=`) runs under `bash -c` so that all of it runs on every node.
    """
    d = request.workdir
    lines = [
        "#!/bin/bash",
        f"#SBATCH --nodes={request.worker_count}",
        f"#SBATCH --job-name={request.name}",
        f"#SBATCH --output={d}/stdout",
        f"#SBATCH --error={d}/stderr",
        f"#SBATCH --time={format_walltime(request.time_limit)}",
    ]
    if request.additional_args:
        lines.append("#SBATCH " + " ".join(request.additional_args))
    if request.dry_run:
        # The trial of `alloc add` is validated by sbatch but never starts a worker.
        lines.append("#SBATCH --hold")
    command = request.worker_command
    if request.worker_count > 1:
        n = request.worker_count
        if not is_simple_command(command):
            command = f"bash -c {quote_single(command)}"
        command = f"srun --overlap --ntasks={n} --nodes={n} {command}"
    if request.splits:  # one srun per part, on its own node range (issue 11)
        command = partitions.render_slurm(request.splits, request.worker_command)
    prelude = render_prelude(request, "$SLURM_JOB_ID")
    return "\n".join(lines) + "\n\n" + prelude + command + "\n"


def parse_sbatch_output(stdout: str) -> str:
    """The job id from `Submitted batch job <id>` (banner lines before it are fine), or from
    the bare line `sbatch --parsable` prints (`<id>` or `<id>;<cluster>`).

    Raises:
        ValueError: no id in the output.
    """
    lines = [line.strip() for line in stdout.splitlines()]
    for line in lines:
        if line.lower().startswith("submitted batch job"):
            words = line.split()
            if len(words) >= 4:
                return words[3]
    for line in reversed(lines):
        match = _PARSABLE_RE.fullmatch(line)
        if match:
            return match.group(1)
    raise ValueError(f"no job id in sbatch output: {stdout.strip()!r}")


def _state(word: str) -> ExternalState:
    # `CANCELLED by 0` (sacct), `CANCELLED+`: the first word, without decorations.
    key = word.split(" ")[0].rstrip("+").upper()
    state = _STATES.get(key)
    if state is None:
        logger.warning("unknown Slurm job state %r; counting the allocation as failed", word)
        return ExternalState.FAILED
    return state


def _time(text: str) -> float | None:
    """Epoch seconds from Slurm's local `%Y-%m-%dT%H:%M:%S`; `Unknown`, `N/A`, `None` -> None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _status(
    raw: str, start: str | None, end: str | None, reason: str | None = None
) -> ExternalStatus:
    state = _state(raw)
    # A pending job's StartTime is an estimate and a running job's EndTime is start + limit:
    # only keep the times that have happened.
    started = _time(start) if start and state is not ExternalState.QUEUED else None
    ended = _time(end) if end and state in (ExternalState.FINISHED, ExternalState.FAILED) else None
    # The reason of a pending job says why it waits (`Resources`, `Priority`,
    # `PartitionTimeLimit`, `JobHeldUser`); of any other, why it ended: not kept.
    why = reason.strip() if reason and state is ExternalState.QUEUED else None
    return ExternalStatus(
        state,
        started_at=started,
        finished_at=ended,
        raw=raw,
        reason=None if why in NO_REASON else why,
    )


def parse_squeue_output(text: str) -> dict[str, ExternalStatus]:
    """`squeue --noheader --format=%i|%T|%S|%e|%r` lines -> status per job id (the reason
    field may be left out: `%i|%T|%S|%e`).

    Raises:
        ValueError: a line has fewer than four fields.
    """
    statuses: dict[str, ExternalStatus] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|", 4)
        if len(fields) < 4 or not fields[0] or not fields[1]:
            raise ValueError(f"unexpected squeue line {line!r}")
        job_id, raw, start, end = fields[:4]
        statuses[job_id] = _status(raw, start, end, fields[4] if len(fields) == 5 else None)
    return statuses


def parse_scontrol_output(text: str) -> ExternalStatus:
    """`scontrol show job <id>`: whitespace-separated `Key=Value` items on any line.

    Empty output, or `slurm_load_jobs error: Invalid job id specified`, means the job is gone
    (FAILED, as HyperQueue counts it).

    Raises:
        ValueError: the text has no `JobState=`.
    """
    if not text.strip() or INVALID_JOB_ID in text:
        return _GONE
    items: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in items:
            items[key] = value
    raw = items.get("JobState")
    if not raw:
        raise ValueError(f"no JobState in scontrol output: {text.strip()[:200]!r}")
    return _status(raw, items.get("StartTime"), items.get("EndTime"), items.get("Reason"))


class SlurmBackend(ScriptBackend):
    """Allocations are Slurm batch jobs; workers find theirs through `SLURM_JOB_ID`."""

    manager: ClassVar[str] = "SLURM"
    submit_program: ClassVar[str] = "sbatch"
    parse_submit_output = staticmethod(parse_sbatch_output)

    def render_script(self, request: AllocationRequest) -> str:
        return render_sbatch_script(request)

    def __init__(
        self,
        runner: CommandRunner | None = None,
        timeout: float = 30.0,
        *,
        observer: CommandObserver | None = None,
        squeue_timeout: float = SQUEUE_TIMEOUT,
    ) -> None:
        super().__init__(runner, timeout, observer=observer)
        self._squeue_timeout = min(squeue_timeout, timeout)
        self._squeue_broken = False
        """Whether the last `squeue` failed: warn once when it breaks, not every poll."""

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        """One batched `squeue` (under a short timeout); `scontrol show job` per id for the
        ids it does not list, and for all of them when `squeue` is missing, fails, hangs or
        prints something else (HyperQueue asks `scontrol` only)."""
        if not ids:
            return {}
        try:
            listed = await self._squeue(ids)
        except StatusQueryError as e:
            log = logger.debug if self._squeue_broken else logger.warning
            log("squeue failed, asking scontrol per allocation: %s", e)
            self._squeue_broken = True
            listed = {}
        else:
            if self._squeue_broken:
                logger.info("squeue answers again")
            self._squeue_broken = False
        missing = [job_id for job_id in ids if job_id not in listed]
        found = await query_each(missing, self._query_one, SCONTROL_PARALLEL)
        return {job_id: listed.get(job_id) or found[job_id] for job_id in ids}

    async def _squeue(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        """The statuses `squeue` lists (ids it does not list are left out).

        Raises:
            StatusQueryError: squeue could not run, timed out, failed or printed garbage.
        """
        argv = [
            "squeue",
            "--noheader",
            "--states=all",
            f"--format={SQUEUE_FORMAT}",
            "--jobs=" + ",".join(ids),
        ]
        result = await run_unchecked(
            self._run, argv, cwd=None, command_timeout=self._squeue_timeout, error=StatusQueryError
        )
        if result.returncode == 0:
            try:
                return parse_squeue_output(result.stdout)
            except ValueError as e:
                raise StatusQueryError(f"squeue output not understood: {e}") from e
        if INVALID_JOB_ID in result.stderr:
            # Slurm 22.05 says this (rc 1) only when *none* of the ids is known; other
            # versions may say it when any is unknown. Either way, ask per id.
            return {}
        raise StatusQueryError(f"squeue execution failed\n{command_failure(result)}")

    async def _query_one(self, job_id: str) -> ExternalStatus:
        """`scontrol show job` for a job `squeue` did not list (purged, or never known)."""
        result = await run_unchecked(
            self._run,
            ["scontrol", "show", "job", job_id],
            cwd=None,
            command_timeout=self._timeout,
            error=StatusQueryError,
        )
        if result.returncode != 0:
            if INVALID_JOB_ID in result.stderr:
                return _GONE
            raise StatusQueryError(f"scontrol execution failed\n{command_failure(result)}")
        try:
            return parse_scontrol_output(result.stdout)
        except ValueError as e:
            raise StatusQueryError(f"scontrol output not understood: {e}") from e

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """`scancel ID ID ...`: rc 0 means every id was accepted (scancel is silent with rc 0
        for finished and unknown ids alike); with `-v` or other versions, per-id errors name
        the id (`Kill job error on job id 99: Invalid job id specified`)."""
        return await self.cancel_together(["scancel"], targets, SCANCEL_GONE)

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        # scancel is silent with rc 0 for finished and unknown ids alike.
        await run_checked(
            self._run,
            ["scancel", allocation_id],
            cwd=workdir,
            command_timeout=self._timeout,
            error=CancelError,
            what="scancel",
        )
