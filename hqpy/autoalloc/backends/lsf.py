"""IBM Spectrum LSF: `bsub < script`, one `bjobs -o ... -json` for all, `bkill`.

Formats are those of LSF 10.1 as documented by IBM and printed in the fixtures of Parsl, ERT
and dask-jobqueue (`/work/shared/reference/batch-systems.md` §1); the emulator in
`tests/emulators/` prints the same. Choices:
- `bsub < script`: LSF always reads `#BSUB` lines from standard input, whereas `bsub script`
  reads them only when the site sets `LSB_BSUB_PARSE_SCRIPT=Y`;
- nodes as `-n N -R "span[ptile=1]"` (one slot per host, so N hosts), which every LSF accepts;
  IBM CSM sites (`-nnodes`) add their own line after `--`; `blaunch` starts one worker per
  host when there are several;
- walltime `-W H:MM`, rounded up to the minute (LSF has no seconds);
- the script exports `HQPY_ALLOCATION_ID=$LSB_JOBID`, which `hq worker --manager detect` reads.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelOutcome,
    CancelTarget,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
    command_failure,
)
from hqpy.autoalloc.backends.common import (
    ScriptBackend,
    quote_single,
    render_prelude,
    run_checked,
    run_unchecked,
    write_jobid,
)
from hqpy.common.jsontypes import JsonObject, JsonValue

logger = logging.getLogger(__name__)

BJOBS_FIELDS = "jobid stat submit_time start_time finish_time pend_reason"
"""What a status needs (`bjobs -o`); with `-json` every value is a string. `pend_reason` is
why a PEND job waits (`New job is waiting for scheduling;`), empty or `-` otherwise."""

NOT_FOUND = "is not found"
"""bjobs (stderr) for an id LSF no longer holds (after `CLEAN_PERIOD`) or never knew."""

BKILL_GONE = ("Job has already finished", "No matching job found", NOT_FOUND)
"""bkill's per-id answers that mean the job is already gone."""

BKILL_ACCEPTED = ("is being terminated", "is being signaled")

_SUBMITTED_RE = re.compile(r"Job <(\d+)> is submitted to ")

_STATES: dict[str, ExternalState] = {
    "PEND": ExternalState.QUEUED,
    "PSUSP": ExternalState.QUEUED,  # suspended (held) while pending
    "PROV": ExternalState.QUEUED,  # host being provisioned
    "WAIT": ExternalState.QUEUED,  # chunk-job member waiting
    "RUN": ExternalState.RUNNING,
    "USUSP": ExternalState.RUNNING,  # suspended: still holds its hosts
    "SSUSP": ExternalState.RUNNING,
    "UNKWN": ExternalState.RUNNING,  # mbatchd lost contact with the host: keep polling
    "DONE": ExternalState.FINISHED,
    "PDONE": ExternalState.FINISHED,
    "EXIT": ExternalState.FAILED,  # non-zero exit, or killed (also at the walltime)
    "PERR": ExternalState.FAILED,
    "ZOMBI": ExternalState.FAILED,
}

_GONE = ExternalStatus(ExternalState.FAILED, raw="")


def format_lsf_walltime(seconds: float) -> str:
    """`H:MM` for `#BSUB -W`, rounded up to a whole minute (at least 1)."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes // 60}:{minutes % 60:02}"


def render_bsub_script(request: AllocationRequest) -> str:
    """The `hq-submit.sh` of one allocation for `bsub < hq-submit.sh`."""
    d = request.workdir
    n = request.worker_count
    lines = [
        "#!/bin/bash",
        f"#BSUB -J {request.name}",
        f"#BSUB -o {d}/stdout",
        f"#BSUB -e {d}/stderr",
        f"#BSUB -W {format_lsf_walltime(request.time_limit)}",
        f"#BSUB -n {n}",
        '#BSUB -R "span[ptile=1]"',
    ]
    if request.additional_args:
        lines.append("#BSUB " + " ".join(request.additional_args))
    if request.dry_run:
        # The trial of `alloc add` is checked by bsub but never starts a worker (PSUSP).
        lines.append("#BSUB -H")
    command = request.worker_command
    if n > 1:
        # One task per slot, and one slot per host: one worker per host.
        command = f"blaunch bash -c {quote_single(command)}"
    prelude = render_prelude(request, "$LSB_JOBID")
    allocation = 'export HQPY_ALLOCATION_ID="$LSB_JOBID"\n'
    return "\n".join(lines) + "\n\n" + allocation + prelude + command + "\n"


def parse_bsub_output(stdout: str) -> str:
    """The id from `Job <123> is submitted to [default ]queue <q>.`, on any line (sites print
    banners such as `Cannot connect to LSF. Please wait ...` first).

    Raises:
        ValueError: no id in the output.
    """
    match = _SUBMITTED_RE.search(stdout)
    if match is None:
        raise ValueError(f"no job id in bsub output: {stdout.strip()[:200]!r}")
    return match.group(1)


def _lsf_time(text: JsonValue, now: float) -> float | None:
    """`Dec 28 19:56` (bjobs drops the year; a trailing ` L`/` E`/` X` marks estimates):
    the latest such moment not after `now` (+ a day of clock skew)."""
    if not isinstance(text, str):
        return None
    words = text.split()
    if len(words) < 3:
        return None
    year = time.localtime(now).tm_year
    for candidate in (year, year - 1):
        try:
            t = time.mktime(time.strptime(f"{' '.join(words[:3])} {candidate}", "%b %d %H:%M %Y"))
        except ValueError:
            return None
        if t <= now + 86400:
            return t
    return None


def _record_status(record: JsonObject, now: float) -> ExternalStatus:
    raw = str(record.get("STAT", ""))
    state = _STATES.get(raw)
    if state is None:
        logger.warning("unknown LSF job state %r; counting the allocation as failed", raw)
        state = ExternalState.FAILED
    started = (
        _lsf_time(record.get("START_TIME"), now) if state is not ExternalState.QUEUED else None
    )
    ended = (
        _lsf_time(record.get("FINISH_TIME"), now)
        if state in (ExternalState.FINISHED, ExternalState.FAILED)
        else None
    )
    why = str(record.get("PEND_REASON") or "").strip().rstrip(";").strip()
    reason = why if state is ExternalState.QUEUED and why not in ("", "-") else None
    return ExternalStatus(state, started_at=started, finished_at=ended, raw=raw, reason=reason)


def parse_bjobs_json(text: str, ids: Sequence[str], now: float) -> dict[str, ExternalStatus]:
    """Status of each of `ids` from `bjobs -o "..." -json <ids>`; an id without a record (or
    with `"ERROR": "Job <N> is not found"`) is gone: FAILED, as a purged Slurm job.

    Raises:
        ValueError: no JSON object in the text (lines before the first `{` are skipped).
    """
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in bjobs output: {text.strip()[:200]!r}")
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise ValueError(f"bjobs output is not JSON: {e}") from e
    records = data.get("RECORDS") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError("bjobs JSON has no RECORDS list")
    found: dict[str, ExternalStatus] = {}
    for record in records:
        if not isinstance(record, dict) or "JOBID" not in record:
            continue
        if record.get("ERROR") or "STAT" not in record:
            continue
        found[str(record["JOBID"])] = _record_status(record, now)
    return {job_id: found.get(job_id, _GONE) for job_id in ids}


class LsfBackend(ScriptBackend):
    """Allocations are LSF jobs; workers find theirs through `HQPY_ALLOCATION_ID`."""

    manager: ClassVar[str] = "LSF"
    submit_program: ClassVar[str] = "bsub"
    parse_submit_output = staticmethod(parse_bsub_output)

    def render_script(self, request: AllocationRequest) -> str:
        return render_bsub_script(request)

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        workdir = request.workdir
        result = await run_checked(
            self._run,
            ["bsub"],
            cwd=workdir,
            command_timeout=self._timeout,
            error=SubmitError,
            what="bsub",
            stdin=script,
        )
        try:
            job_id = parse_bsub_output(result.stdout)
        except ValueError as e:
            raise SubmitError(f"bsub execution failed\n{e}\n{command_failure(result)}") from e
        write_jobid(workdir, job_id)
        return job_id

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        if not ids:
            return {}
        argv = ["bjobs", "-o", BJOBS_FIELDS, "-json", *ids]
        result = await run_unchecked(
            self._run, argv, cwd=None, command_timeout=self._timeout, error=StatusQueryError
        )
        # Exit 255 when some ids are unknown (the known ones are still printed); exit 0 with
        # only `Job <N> is not found` lines when none is known.
        if "{" not in result.stdout:
            errors = result.stderr.strip().splitlines()
            if errors and all(NOT_FOUND in line for line in errors):
                return {job_id: _GONE for job_id in ids}
            if result.returncode != 0:
                raise StatusQueryError(f"bjobs execution failed\n{command_failure(result)}")
        try:
            return parse_bjobs_json(result.stdout, ids, time.time())
        except ValueError as e:
            raise StatusQueryError(f"bjobs output not understood: {e}") from e

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """`bkill ID ID ...`: `Job <11> is being terminated` per id; `Job <33>: Job has
        already finished` and `Job <66>: No matching job found` (exit 255) mean gone."""
        return await self.cancel_together(["bkill"], targets, (*BKILL_GONE, *BKILL_ACCEPTED))
