"""PBS Pro / OpenPBS: `qsub` to submit, one `qstat -f ... -F json -x` for all, `qdel`.

The argv shapes are HyperQueue's (hq-cli-compat §7.1). PBS cannot be installed here; the
formats come from the OpenPBS sources and manuals and are exercised through the emulators in
`tests/emulators/`.
"""

from __future__ import annotations

import json
import logging
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
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    command_failure,
)
from hqpy.autoalloc.backends.common import (
    ScriptBackend,
    format_walltime,
    quote_single,
    render_prelude,
    run_unchecked,
)
from hqpy.common.jsontypes import JsonObject, JsonValue

logger = logging.getLogger(__name__)

PBS_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"
"""`stime`/`mtime` in `qstat -f`, local time (`Thu Mar 19 15:09:46 2018`)."""

UNKNOWN_JOB = "Unknown Job Id"
"""qstat/qdel (exit 153) for an id the server does not hold, not even in its history."""

JOB_FINISHED = "Job has finished"
"""qdel (exit 35) for a job that already ended."""

_STATES: dict[str, ExternalState] = {
    "Q": ExternalState.QUEUED,  # queued
    "H": ExternalState.QUEUED,  # held (a dry-run allocation is submitted held)
    "W": ExternalState.QUEUED,  # waiting for its start time
    "T": ExternalState.QUEUED,  # being moved to another server
    "M": ExternalState.QUEUED,  # moved to another server
    "R": ExternalState.RUNNING,  # running
    "E": ExternalState.RUNNING,  # exiting after having run
    "B": ExternalState.RUNNING,  # array job: at least one subjob started
    "S": ExternalState.RUNNING,  # suspended by the server: still holds its nodes
    "U": ExternalState.RUNNING,  # suspended because the workstation became busy
}
"""`F` (finished) and `X` (subjob finished) depend on `Exit_status`; other letters -> FAILED."""

EXIT_WALLTIME = -29
"""`Exit_status` of a job killed at its walltime (`JOB_EXEC_KILL_WALLTIME`): a pilot job's
normal end, FINISHED like Slurm's TIMEOUT (HyperQueue counts it as failed)."""


def render_qsub_script(request: AllocationRequest) -> str:
    """The `hq-submit.sh` of one allocation, exactly as HyperQueue writes it (with `#PBS -h`,
    held, for a dry run; `pbsdsh` starts one worker per node when there are several)."""
    d = request.workdir
    lines = [
        "#!/bin/bash",
        f"#PBS -l select={request.worker_count}",
        f"#PBS -N {request.name}",
        f"#PBS -o {d}/stdout",
        f"#PBS -e {d}/stderr",
        f"#PBS -l walltime={format_walltime(request.time_limit)}",
    ]
    if request.additional_args:
        lines.append("#PBS " + " ".join(request.additional_args))
    if request.dry_run:
        lines.append("#PBS -h")
    command = request.worker_command
    if request.worker_count > 1:
        command = f"pbsdsh -- bash -l -c {quote_single(command)}"
    if request.splits:  # the parts' node ranges from $PBS_NODEFILE (issue 11)
        command = partitions.render_pbs(request.splits, request.worker_command)
    prelude = render_prelude(request, "$PBS_JOBID")
    return "\n".join(lines) + "\n\n" + prelude + command + "\n"


def parse_qsub_output(stdout: str) -> str:
    """`qsub` prints the new job id (`1.server`) and nothing else.

    Raises:
        ValueError: empty output.
    """
    job_id = stdout.strip()
    if not job_id:
        raise ValueError("qsub printed no job id")
    return job_id


def _time(value: JsonValue) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return time.mktime(time.strptime(value.strip(), PBS_TIME_FORMAT))
    except ValueError:
        return None


def _job_status(job: JsonObject) -> ExternalStatus:
    raw = str(job.get("job_state", ""))
    if raw in ("F", "X"):
        exit_status = job.get("Exit_status")
        ok = isinstance(exit_status, int) and exit_status in (0, EXIT_WALLTIME)
        state = ExternalState.FINISHED if ok else ExternalState.FAILED
    else:
        known = _STATES.get(raw)
        if known is None:
            logger.warning("unknown PBS job state %r; counting the allocation as failed", raw)
            known = ExternalState.FAILED
        state = known
    started = _time(job.get("stime")) if state is not ExternalState.QUEUED else None
    ended = (
        _time(job.get("mtime")) if state in (ExternalState.FINISHED, ExternalState.FAILED) else None
    )
    # The scheduler's `comment` says why a queued job waits (`Not Running: Insufficient amount
    # of resource: ncpus`); of a running or ended one it says what happened: not kept.
    comment = job.get("comment")
    reason = comment.strip() or None if isinstance(comment, str) else None
    return ExternalStatus(
        state,
        started_at=started,
        finished_at=ended,
        raw=raw,
        reason=reason if state is ExternalState.QUEUED else None,
    )


def _find(jobs: JsonObject, job_id: str) -> JsonValue:
    """The entry of `job_id`; PBS may print `1.server.domain` for a submitted `1.server`."""
    if job_id in jobs:
        return jobs[job_id]
    number = job_id.split(".", 1)[0]
    matches = [v for k, v in jobs.items() if k.split(".", 1)[0] == number]
    return matches[0] if len(matches) == 1 else None


def parse_qstat_json(text: str, ids: Sequence[str]) -> dict[str, ExternalStatus]:
    """Status of each of `ids` from `qstat -f ... -F json -x`; an id missing from `Jobs` is
    FAILED (the server has forgotten it), as in HyperQueue.

    Raises:
        ValueError: the text is not qstat's JSON.
    """
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"qstat output is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError("qstat JSON is not an object")
    jobs = data.get("Jobs", {})
    if not isinstance(jobs, dict):
        raise ValueError("qstat JSON has no `Jobs` object")
    statuses: dict[str, ExternalStatus] = {}
    for job_id in ids:
        job = _find(jobs, job_id)
        if isinstance(job, dict):
            statuses[job_id] = _job_status(job)
        else:
            statuses[job_id] = ExternalStatus(ExternalState.FAILED, raw="")
    return statuses


class PbsBackend(ScriptBackend):
    """Allocations are PBS jobs; workers find theirs through `PBS_JOBID` + `PBS_ENVIRONMENT`."""

    manager: ClassVar[str] = "PBS"
    submit_program: ClassVar[str] = "qsub"
    parse_submit_output = staticmethod(parse_qsub_output)

    def render_script(self, request: AllocationRequest) -> str:
        return render_qsub_script(request)

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        if not ids:
            return {}
        argv = ["qstat"]
        for job_id in ids:
            argv += ["-f", job_id]
        argv += ["-F", "json", "-x"]
        result = await run_unchecked(
            self._run, argv, cwd=None, command_timeout=self._timeout, error=StatusQueryError
        )
        # With an unknown id among known ones, qstat prints the others and exits 153.
        if result.returncode != 0 and UNKNOWN_JOB not in result.stderr:
            raise StatusQueryError(f"qstat execution failed\n{command_failure(result)}")
        try:
            return parse_qstat_json(result.stdout, ids)
        except ValueError as e:
            raise StatusQueryError(f"qstat output not understood: {e}") from e

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """`qdel ID ID ...`; per-id errors name the id (`qdel: Unknown Job Id 12.server`, rc
        153; `qdel: Job has finished 12.server`, rc 35: both mean already gone)."""
        return await self.cancel_together(["qdel"], targets, (UNKNOWN_JOB, JOB_FINISHED))

    async def cancel(self, allocation_id: str, workdir: Path) -> None:
        result = await run_unchecked(
            self._run,
            ["qdel", allocation_id],
            cwd=workdir,
            command_timeout=self._timeout,
            error=CancelError,
        )
        if result.returncode == 0:
            return
        if UNKNOWN_JOB in result.stderr or JOB_FINISHED in result.stderr:
            logger.debug("allocation %s is already gone: %s", allocation_id, result.stderr.strip())
            return
        raise CancelError(f"qdel execution failed\n{command_failure(result)}")
