"""Commands on several jobs or workers at once (`job cancel 1-9`, `worker stop all`), and the
log lines their clients print, in HyperQueue's words. The transitions are `ServerState`'s."""

from __future__ import annotations

from hqpy.common.states import JobState, TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server.selection import id_text, select
from hqpy.server.state import ServerState

FORGETTABLE = frozenset({JobState.FINISHED, JobState.FAILED, JobState.CANCELED, JobState.ABORTED})
"""What `hq job forget` drops when no `--filter` is given."""


def close_jobs(state: ServerState, selector: str) -> list[m.LogLine]:
    jobs, missing = select(state.jobs, selector)
    lines = []
    for job in jobs:
        if state.close_job(job):
            lines.append(m.LogLine("INFO", f"Job {job.id} closed"))
        else:
            lines.append(m.LogLine("ERROR", f"Closing job {job.id} failed; job is already closed"))
    if missing:
        lines.append(m.LogLine("ERROR", _failed("Closing", "job", id_text(missing))))
    return lines


def cancel_jobs(state: ServerState, selector: str, reason: str | None) -> list[m.LogLine]:
    jobs, missing = select(state.jobs, selector)
    lines = []
    all_jobs = selector.strip() == "all"
    for job in jobs:
        canceled = state.cancel_job(job, reason)
        if canceled is None:
            if not all_jobs:
                lines.append(
                    m.LogLine(
                        "ERROR", f"Canceling job {job.id} failed; all tasks are already finished"
                    )
                )
            continue
        done = job.counts[TaskState.FINISHED]
        lines.append(
            m.LogLine(
                "INFO",
                f"Job {job.id} canceled ({canceled} tasks canceled, {done} tasks already finished)",
            )
        )
    if missing:
        lines.append(m.LogLine("ERROR", _failed("Canceling", "job", id_text(missing))))
    if all_jobs and not lines:
        lines.append(m.LogLine("INFO", "There is nothing to cancel"))
    return lines


def forget_jobs(state: ServerState, selector: str, states: tuple[str, ...]) -> list[m.LogLine]:
    jobs, missing = select(state.jobs, selector)
    wanted = {JobState(s.upper()) for s in states if s.upper() in JobState.__members__}
    if not states:
        wanted = set(FORGETTABLE)
    forgotten = 0
    ignored = len(missing)
    for job in jobs:
        if job.is_complete() and job.state() in wanted:
            state.forget_job(job)
            forgotten += 1
        else:
            ignored += 1
    text = f"{forgotten} {'job' if forgotten == 1 else 'jobs'} were forgotten"
    if ignored:
        text += f", {ignored} were ignored due to wrong state or invalid ID"
    return [m.LogLine("INFO", text)]


def stop_workers(state: ServerState, selector: str) -> list[m.LogLine]:
    workers, missing = select(state.workers, selector)
    lines = []
    for w in workers:
        if w.state is not WorkerState.RUNNING or w.stop_reason is not None:
            lines.append(
                m.LogLine("WARN", f"Stopping worker {w.id} failed; worker is already stopped")
            )
            continue
        state.request_worker_stop(w, "stopped")
        lines.append(m.LogLine("INFO", f"Worker {w.id} stopped"))
    if missing:
        lines.append(m.LogLine("ERROR", _failed("Stopping", "worker", id_text(missing))))
    return lines


def _failed(verb: str, noun: str, ids: str) -> str:
    """`Canceling job 7 failed; job not found`, or for several ids one line:
    `Canceling jobs 100-50000000 failed; jobs not found`."""
    if ids.isdigit():
        return f"{verb} {noun} {ids} failed; {noun} not found"
    return f"{verb} {noun}s {ids} failed; {noun}s not found"
