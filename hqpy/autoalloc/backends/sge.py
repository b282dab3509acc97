"""Grid Engine (SGE, Son of Grid Engine, Debian's gridengine 8.1.9): `qsub -terse`, one
`qstat -xml` for all (plus one `qstat -xml -j` for the pending reasons of queued ones), `qacct
-j` for jobs that left it, `qdel`. Tested against a real gridengine (`scripts/sge-local.sh`).

Formats are those of the Grid Engine 8.1.9 man pages (sge_status(5), qstat(1)) and of gc3pie's
and dask-jobqueue's fixtures (`/work/shared/reference/batch-systems.md` §3). Choices:
- `-terse` on the command line (some versions ignore it as a `#$` line), the id is the last
  line of the output;
- `-S /bin/bash` and `-cwd`: a queue whose shell is csh still runs the script with bash, in
  the allocation directory;
- walltime `-l h_rt=HH:MM:SS`; several workers need a parallel environment (sites name their
  own: `qconf -spl`), given by the queue's `--pe NAME` (else `HQPY_SGE_PE`); the script
  starts one worker per granted slot of `$PE_HOSTFILE` with `qrsh -inherit -V` (a PE with
  `allocation_rule 1` makes that one per host);
- the script exports `HQPY_ALLOCATION_ID=$JOB_ID`, which `hq worker --manager detect` reads.
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import attrs

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelOutcome,
    CancelTarget,
    CommandRunner,
    ExternalState,
    ExternalStatus,
    StatusQueryError,
    SubmitError,
    command_failure,
)
from hqpy.autoalloc.backends.common import (
    ScriptBackend,
    format_walltime,
    query_each,
    quote_single,
    render_prelude,
    run_checked,
    run_unchecked,
    write_jobid,
)
from hqpy.autoalloc.backends.runner import CommandObserver

logger = logging.getLogger(__name__)

PE_ENV = "HQPY_SGE_PE"
"""The parallel environment for allocations of several workers, when none is given."""

QDEL_GONE = ("does not exist",)
"""`denied: job "123" does not exist` (exit 1): already ended, or never known."""

QDEL_ACCEPTED = ("for deletion", "has deleted job")

QACCT_NOT_FOUND = ("not found", "No such file or directory")
"""`error: job id 123 not found` (exit 1): not (yet) in the accounting file; and
`.../common/accounting: No such file or directory` (exit 1, stdout `no jobs running since
startup`): no job has ended since the cell was made, so there is no accounting file yet."""

QACCT_PARALLEL = 8

ACCOUNTING_LAG = 30.0
"""Seconds after a job was last listed by `qstat` during which `qacct` not finding it means
"not written yet" (the real gridengine writes the record a second or so after the job left
`qstat`), not "gone": the job keeps its last listed status meanwhile."""

SGE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
"""`JAT_start_time` in `qstat -xml` (local time; some versions add `.mmm`)."""

QACCT_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"
"""`start_time`/`end_time` in `qacct -j` (local time)."""

_GONE = ExternalStatus(ExternalState.FAILED, raw="")


class SgeScriptError(SubmitError, ValueError):
    """The request cannot be rendered (several workers without a parallel environment): a
    `SubmitError`, so the allocator records it as a failed submission with this text."""


def render_qsub_sge_script(request: AllocationRequest, parallel_environment: str | None) -> str:
    """The `hq-submit.sh` of one allocation for `qsub -terse hq-submit.sh`; the queue's `--pe`
    wins over `parallel_environment` (the backend's default).

    Raises:
        SgeScriptError: several workers and no parallel environment.
    """
    d = request.workdir
    n = request.worker_count
    lines = [
        "#!/bin/bash",
        f"#$ -N {request.name}",
        f"#$ -o {d}/stdout",
        f"#$ -e {d}/stderr",
        f"#$ -l h_rt={format_walltime(request.time_limit)}",
        "#$ -S /bin/bash",
        "#$ -cwd",
    ]
    command = request.worker_command
    parallel_environment = request.parallel_environment or parallel_environment
    if n > 1:
        if not parallel_environment:
            raise SgeScriptError(
                f"an allocation of {n} workers on Grid Engine needs a parallel environment: "
                f"add `--pe NAME` (one of `qconf -spl`) or set {PE_ENV}"
            )
        lines.append(f"#$ -pe {parallel_environment} {n}")
        # One worker per granted slot (`host slots ...` lines of $PE_HOSTFILE): a PE with
        # `allocation_rule 1` gives one per host. qrsh, like ssh, joins its arguments into one
        # command line for the remote shell, so the line is quoted twice (found on the real
        # gridengine: quoted once, `bash -c` got only the first word).
        remote = quote_single("bash -c " + quote_single(command))
        command = (
            "while read -r host slots _; do\n"
            '    for _ in $(seq "$slots"); do\n'
            f'        qrsh -inherit -V "$host" {remote} &\n'
            "    done\n"
            'done <"$PE_HOSTFILE"\nwait'
        )
    if request.additional_args:
        lines.append("#$ " + " ".join(request.additional_args))
    if request.dry_run:
        # The trial of `alloc add` is checked by qsub but never runs: with a 1 s scheduler it
        # otherwise started (and its worker registered) before `qdel` came.
        lines.append("#$ -h")
    prelude = render_prelude(request, "$JOB_ID")
    allocation = 'export HQPY_ALLOCATION_ID="$JOB_ID"\n'
    return "\n".join(lines) + "\n\n" + allocation + prelude + command + "\n"


def parse_qsub_terse_output(stdout: str) -> str:
    """The id: the last non-empty line of `qsub -terse` (warnings may come first).

    Raises:
        ValueError: no id.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines or not lines[-1].split(".")[0].isdigit():
        raise ValueError(f"no job id in qsub output: {stdout.strip()[:200]!r}")
    return lines[-1].split(".")[0]


def _letters_state(letters: str) -> ExternalState:
    """sge_status(5): `d` (being deleted) and `E` (error) first, then r/t/s, then q/h/w."""
    if "E" in letters:
        return ExternalState.FAILED
    if "d" in letters:
        return ExternalState.FAILED
    if any(c in letters for c in "rtsST"):
        return ExternalState.RUNNING
    if any(c in letters for c in "qhwR"):
        return ExternalState.QUEUED
    logger.warning("unknown Grid Engine job state %r; counting the allocation as failed", letters)
    return ExternalState.FAILED


def _parse_time(text: str | None, fmt: str) -> float | None:
    if not text:
        return None
    try:
        return time.mktime(time.strptime(text.strip().split(".")[0], fmt))
    except ValueError:
        return None


def parse_qstat_xml(text: str) -> dict[str, ExternalStatus]:
    """Status per job number from `qstat -xml` (jobs that left the queue are not listed).

    Raises:
        ValueError: not qstat's XML.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"qstat output is not XML: {e}") from e
    if root.tag != "job_info":
        raise ValueError(f"qstat XML has <{root.tag}>, not <job_info>")
    statuses: dict[str, ExternalStatus] = {}
    for job in root.iter("job_list"):
        number = (job.findtext("JB_job_number") or "").strip()
        letters = (job.findtext("state") or "").strip()
        if not number or not letters:
            raise ValueError("a job_list without JB_job_number or state")
        state = _letters_state(letters)
        started = None
        if state is not ExternalState.QUEUED:
            started = _parse_time(job.findtext("JAT_start_time"), SGE_TIME_FORMAT)
        statuses.setdefault(number, ExternalStatus(state, started_at=started, raw=letters))
    return statuses


def parse_qstat_j_reasons(text: str, ids: Sequence[str]) -> dict[str, str]:
    """Why the pending jobs `ids` wait, from `qstat -xml -j <ids>`: the scheduler's messages
    (kept when its `schedd_job_info` is true, as in Debian's default). A job's own messages
    (`<SME_message_list>`: `Job is in hold state`, `cannot run in PE "hq" because it only
    offers 1 slots`), else the global ones that hold every job back
    (`<SME_global_message_list>`: `queue instance "all.q@vm" dropped because it is overloaded:
    ...`); several are joined with `; `. Ids without any message are left out.

    Raises:
        ValueError: not XML.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"qstat -j output is not XML: {e}") from e
    own: dict[str, list[str]] = {}
    for messages in root.iter("SME_message_list"):
        for element in messages.findall("element"):
            message = _message(element)
            for number in element.iter("ULNG_value"):
                job = (number.text or "").strip()
                if message and job and message not in own.setdefault(job, []):
                    own[job].append(message)
    general: list[str] = []
    for messages in root.iter("SME_global_message_list"):
        for element in messages.findall("element"):
            message = _message(element)
            if message and message not in general:
                general.append(message)
    reasons = {job: "; ".join(own.get(job) or general) for job in ids}
    return {job: text for job, text in reasons.items() if text}


def _message(element: ET.Element) -> str:
    return " ".join((element.findtext("MES_message") or "").split())


def parse_qacct_output(text: str) -> ExternalStatus:
    """`qacct -j <id>`: `key value` lines (several records if the id was reused: the last
    counts). `failed 0` and `exit_status 0` is FINISHED; anything else FAILED.

    Raises:
        ValueError: no `exit_status` line.
    """
    record: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("====="):
            record = {}
            continue
        key, _, value = line.partition(" ")
        if key:
            record[key] = " ".join(value.split())  # `137                  (Killed)`
    if "exit_status" not in record:
        raise ValueError(f"no exit_status in qacct output: {text.strip()[:200]!r}")
    failed = record.get("failed", "0").split(":")[0].strip()
    ok = failed == "0" and record["exit_status"].split()[0] == "0"
    state = ExternalState.FINISHED if ok else ExternalState.FAILED
    return ExternalStatus(
        state,
        started_at=_parse_time(record.get("start_time"), QACCT_TIME_FORMAT),
        finished_at=_parse_time(record.get("end_time"), QACCT_TIME_FORMAT),
        raw=f"exit_status {record['exit_status']}",
    )


class SgeBackend(ScriptBackend):
    """Allocations are Grid Engine jobs; workers find theirs through `HQPY_ALLOCATION_ID`."""

    manager: ClassVar[str] = "SGE"
    submit_program: ClassVar[str] = "qsub"
    parse_submit_output = staticmethod(parse_qsub_terse_output)

    def __init__(
        self,
        runner: CommandRunner | None = None,
        timeout: float = 30.0,
        *,
        observer: CommandObserver | None = None,
        parallel_environment: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(runner, timeout, observer=observer)
        self.parallel_environment = parallel_environment or os.environ.get(PE_ENV) or None
        self._clock = clock
        self._listed: dict[str, tuple[ExternalStatus, float]] = {}
        """Per job: its status when `qstat` last listed it, and when (bounded: entries older
        than `ACCOUNTING_LAG` are dropped)."""

    def render_script(self, request: AllocationRequest) -> str:
        return render_qsub_sge_script(request, self.parallel_environment)

    async def submit(self, request: AllocationRequest, script: Path) -> str:
        workdir = request.workdir
        result = await run_checked(
            self._run,
            ["qsub", "-terse", str(script)],
            cwd=workdir,
            command_timeout=self._timeout,
            error=SubmitError,
            what="qsub",
        )
        try:
            job_id = parse_qsub_terse_output(result.stdout)
        except ValueError as e:
            raise SubmitError(f"qsub execution failed\n{e}\n{command_failure(result)}") from e
        write_jobid(workdir, job_id)
        return job_id

    async def query(self, ids: Sequence[str]) -> dict[str, ExternalStatus]:
        """One `qstat -xml` (own jobs); `qacct -j` for each id it does not list; an id in
        neither (qacct lags, or accounting is off) is gone: FAILED."""
        if not ids:
            return {}
        result = await run_unchecked(
            self._run,
            ["qstat", "-xml"],
            cwd=None,
            command_timeout=self._timeout,
            error=StatusQueryError,
        )
        if result.returncode != 0:
            raise StatusQueryError(f"qstat execution failed\n{command_failure(result)}")
        try:
            listed = parse_qstat_xml(result.stdout)
        except ValueError as e:
            raise StatusQueryError(f"qstat output not understood: {e}") from e
        now = self._clock()
        for job_id in ids:
            if job_id in listed:
                self._listed[job_id] = (listed[job_id], now)
        self._listed = {k: v for k, v in self._listed.items() if now - v[1] <= ACCOUNTING_LAG}
        missing = [job_id for job_id in ids if job_id not in listed]
        found = await query_each(missing, self._qacct, QACCT_PARALLEL)
        for job_id in missing:
            # Just left qstat and not in the accounting file yet: not gone, only unwritten.
            recent = self._listed.get(job_id)
            if found[job_id] is _GONE and recent is not None:
                found[job_id] = recent[0]
        queued = [i for i in ids if i in listed and listed[i].state is ExternalState.QUEUED]
        reasons = await self._reasons(queued)
        return {
            job_id: (
                attrs.evolve(listed[job_id], reason=reasons.get(job_id))
                if job_id in listed
                else found[job_id]
            )
            for job_id in ids
        }

    async def _reasons(self, queued: Sequence[str]) -> dict[str, str]:
        """Scheduling info of the queued ids (one `qstat -xml -j a,b,...`); a failure only
        loses the reasons, never the statuses."""
        if not queued:
            return {}
        try:
            result = await run_unchecked(
                self._run,
                ["qstat", "-xml", "-j", ",".join(queued)],
                cwd=None,
                command_timeout=self._timeout,
                error=StatusQueryError,
            )
            if result.returncode == 0:
                return parse_qstat_j_reasons(result.stdout, queued)
            logger.debug("qstat -j failed: %s", command_failure(result))
        except (StatusQueryError, ValueError) as e:
            logger.debug("no scheduling info from qstat -j: %s", e)
        return {}

    async def _qacct(self, job_id: str) -> ExternalStatus:
        result = await run_unchecked(
            self._run,
            ["qacct", "-j", job_id],
            cwd=None,
            command_timeout=self._timeout,
            error=StatusQueryError,
        )
        if result.returncode != 0:
            if any(text in result.stderr + result.stdout for text in QACCT_NOT_FOUND):
                return _GONE
            raise StatusQueryError(f"qacct execution failed\n{command_failure(result)}")
        try:
            return parse_qacct_output(result.stdout)
        except ValueError as e:
            raise StatusQueryError(f"qacct output not understood: {e}") from e

    async def cancel_many(self, targets: Sequence[CancelTarget]) -> CancelOutcome:
        """`qdel ID ID ...`: `<user> has registered the job 8 for deletion` / `has deleted
        job 8` per id; `denied: job "8" does not exist` (exit 1) means gone."""
        return await self.cancel_together(["qdel"], targets, (*QDEL_GONE, *QDEL_ACCEPTED))
