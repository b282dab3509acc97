"""HTCondor: a submit description beside the script, `condor_submit`, `condor_q -json` (and
`condor_history -json` for jobs that left the queue), `condor_rm`.

Formats are those of the HTCondor manual and of Parsl's, dask-jobqueue's and TARDIS's
fixtures (`/work/shared/reference/batch-systems.md` §2); the emulator in `tests/emulators/`
prints the same. Choices:
- HTCondor reads no directives from a script, so the script carries its submit description
  as `#CONDOR <line>` comments (the whole truth on disk, as `#SBATCH` lines are for Slurm);
  `submit` writes them, plus `executable = <script>`, to `hq-submit.sub` and submits that;
- an allocation is one cluster (`queue` once); its id is the cluster id (`123`);
- several workers need the parallel universe (`machine_count = N`): the script then runs once
  per slot by itself; one worker runs in the vanilla universe;
- file transfer is off (`should_transfer_files = NO`: the server directory is shared) and the
  job gets the server's environment (`getenv = True`); lines after `--` come last, so they
  can override either;
- HTCondor has no walltime: `periodic_remove` ends a job that ran longer than the limit, and
  such a removal counts as a normal end (FINISHED, like Slurm's TIMEOUT);
- the script sets `HQPY_ALLOCATION_ID` from the job ad's `ClusterId`, which
  `hq worker --manager detect` reads.
"""

from __future__ import annotations

import json
import logging
import math
import re
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
    StatusQueryError,
    SubmitError,
    command_failure,
)
from hqpy.autoalloc.backends.common import (
    ScriptBackend,
    render_prelude,
    run_checked,
    run_unchecked,
    write_jobid,
)
from hqpy.common.jsontypes import JsonObject, JsonValue

logger = logging.getLogger(__name__)

DIRECTIVE = "#CONDOR "
SUBMIT_FILE = "hq-submit.sub"

ATTRIBUTES = (
    "ClusterId,ProcId,JobStatus,EnteredCurrentStatus,JobStartDate,CompletionDate,"
    "ExitCode,ExitBySignal,RemoveReason,HoldReason,LastRejMatchReason"
)
"""The job-ad attributes a status needs (`-attributes`); `LastRejMatchReason` is why the
negotiator did not match an idle job, `HoldReason` why a job is held."""

PERIODIC_REMOVE = "PeriodicRemove"
"""In `RemoveReason` when the walltime expression removed the job."""

RM_GONE = ("Couldn't find/remove all jobs",)
"""condor_rm's answer for a cluster that is already gone (several wrappers read it so)."""

RM_ACCEPTED = "marked for removal"

_SUBMITTED_RE = re.compile(r"(\d+) job\(s\) submitted to cluster (\d+)\.")

_GONE = ExternalStatus(ExternalState.FAILED, raw="")


def render_condor_script(request: AllocationRequest) -> str:
    """The allocation script: its submit description as `#CONDOR` lines, then the worker."""
    d = request.workdir
    n = request.worker_count
    limit = max(1, math.ceil(request.time_limit))
    description = [
        "universe = parallel" if n > 1 else "universe = vanilla",
        *([f"machine_count = {n}", '+ParallelShutdownPolicy = "WAIT_FOR_ALL"'] if n > 1 else []),
        f'batch_name = "{request.name}"',
        f"output = {d}/stdout",
        f"error = {d}/stderr",
        f"log = {d}/condor.log",
        f"initialdir = {d}",
        "getenv = True",
        "should_transfer_files = NO",
        f"periodic_remove = (JobStatus == 2) && (time() - EnteredCurrentStatus > {limit})",
        *request.additional_args,
        # The trial of `alloc add` is checked by condor_submit but never starts a worker.
        *(["hold = True"] if request.dry_run else []),
    ]
    lines = ["#!/bin/bash", *(DIRECTIVE + line for line in description)]
    allocation = 'export HQPY_ALLOCATION_ID="$(sed -n "s/^ClusterId = //p" "$_CONDOR_JOB_AD")"'
    prelude = render_prelude(request, "$HQPY_ALLOCATION_ID")
    return "\n".join(lines) + "\n\n" + allocation + "\n" + prelude + request.worker_command + "\n"


def submit_description(script_text: str, script: Path) -> str:
    """`hq-submit.sub` from the script's `#CONDOR` lines, with `executable` and `queue`."""
    lines = [
        line[len(DIRECTIVE) :] for line in script_text.splitlines() if line.startswith(DIRECTIVE)
    ]
    return "\n".join([f"executable = {script}", *lines, "queue", ""])


def parse_condor_submit_output(stdout: str) -> str:
    """The cluster id from `1 job(s) submitted to cluster 1351043.`.

    Raises:
        ValueError: no such line.
    """
    match = _SUBMITTED_RE.search(stdout)
    if match is None:
        raise ValueError(f"no cluster id in condor_submit output: {stdout.strip()[:200]!r}")
    return match.group(2)


def _epoch(value: JsonValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)


def ad_status(ad: JsonObject) -> ExternalStatus:
    """The status of one job ad (`JobStatus` and friends)."""
    code = ad.get("JobStatus")
    raw = str(code)
    if code in (0, 1):
        state = ExternalState.QUEUED
    elif code in (2, 6, 7):  # running, transferring output, suspended
        state = ExternalState.RUNNING
    elif code == 4:
        ok = ad.get("ExitBySignal") is not True and ad.get("ExitCode", 0) == 0
        state = ExternalState.FINISHED if ok else ExternalState.FAILED
    elif code == 3:  # removed: by the walltime expression (normal end), or cancelled
        reason = str(ad.get("RemoveReason", ""))
        state = ExternalState.FINISHED if PERIODIC_REMOVE in reason else ExternalState.FAILED
    else:  # 5 held (needs a human), or unknown
        if code != 5:
            logger.warning("unknown HTCondor JobStatus %r; counting the allocation as failed", code)
        state = ExternalState.FAILED
    started = _epoch(ad.get("JobStartDate")) if state is not ExternalState.QUEUED else None
    ended = None
    if state in (ExternalState.FINISHED, ExternalState.FAILED):
        ended = _epoch(ad.get("CompletionDate")) or _epoch(ad.get("EnteredCurrentStatus"))
    # Why it waits (idle) or why it cannot run (held, reported as it fails).
    why = ad.get("HoldReason") if code == 5 else ad.get("LastRejMatchReason")
    said = why.strip() if isinstance(why, str) and code in (0, 1, 5) else ""
    return ExternalStatus(
        state, started_at=started, finished_at=ended, raw=raw, reason=said or None
    )


def parse_condor_json(text: str) -> dict[str, ExternalStatus]:
    """Status per cluster id from `condor_q -json` / `condor_history -json` (a JSON array of
    ads, or nothing at all when nothing matched). Proc 0 speaks for its cluster.

    Raises:
        ValueError: not a JSON array of objects.
    """
    if not text.strip():
        return {}
    try:
        ads = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(ads, list):
        raise ValueError("not a JSON array")
    statuses: dict[str, ExternalStatus] = {}
    for ad in ads:
        if not isinstance(ad, dict) or "ClusterId" not in ad:
            raise ValueError(f"not a job ad: {str(ad)[:100]!r}")
        if ad.get("ProcId", 0) != 0:
            continue
        statuses[str(ad["ClusterId"])] = ad_status(ad)
    return statuses


class HtcondorBackend(ScriptBackend):
    """Allocations are HTCondor clusters; workers find theirs through `HQPY_ALLOCATION_ID`."""

    manager: ClassVar[str] = "HTCONDOR"
    submit_program: ClassVar[str] = "condor_submit"
    parse_submit_output = staticmethod(parse_condor_submit_output)

    def render_script(self, request: AllocationRequest) -> str:
        return render_condor_script(request)

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        workdir = request.workdir
        description = workdir / SUBMIT_FILE
        try:
            text = await trio.Path(script).read_text()
            await trio.Path(description).write_text(submit_description(text, script))
        except OSError as e:
            raise SubmitError(f"cannot write {SUBMIT_FILE}: {e.strerror or e}") from e
        result = await run_checked(
            self._run,
            ["condor_submit", str(description)],
            cwd=workdir,
            command_timeout=self._timeout,
            error=SubmitError,
            what="condor_submit",
        )
        try:
            job_id = parse_condor_submit_output(result.stdout)
        except ValueError as e:
            raise SubmitError(
                f"condor_submit execution failed\n{e}\n{command_failure(result)}"
            ) from e
        write_jobid(workdir, job_id)
        return job_id

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        """`condor_q` for all; `condor_history` for those that left the queue; a cluster in
        neither is gone (FAILED)."""
        if not ids:
            return {}
        found = await self._ask("condor_q", ["condor_q", *ids, "-json", "-attributes", ATTRIBUTES])
        missing = [job_id for job_id in ids if job_id not in found]
        if missing:
            argv = [
                "condor_history",
                *missing,
                "-json",
                "-attributes",
                ATTRIBUTES,
                "-match",
                str(len(missing)),
            ]
            found.update(await self._ask("condor_history", argv))
        return {job_id: found.get(job_id, _GONE) for job_id in ids}

    async def _ask(self, program: str, argv: list[str]) -> dict[str, ExternalStatus]:
        result = await run_unchecked(
            self._run, argv, cwd=None, command_timeout=self._timeout, error=StatusQueryError
        )
        if result.returncode != 0:
            raise StatusQueryError(f"{program} execution failed\n{command_failure(result)}")
        try:
            return parse_condor_json(result.stdout)
        except ValueError as e:
            raise StatusQueryError(f"{program} output not understood: {e}") from e

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """`condor_rm ID ID ...`: `All jobs in cluster 5 have been marked for removal` per
        id; `Couldn't find/remove all jobs in cluster 5.` (non-zero exit) means gone."""
        return await self.cancel_together(["condor_rm"], targets, (*RM_GONE, RM_ACCEPTED))
