"""Rules shared by the output modes, so `cli`, `json` and `quiet` never disagree on a state."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from hqpy.common import states
from hqpy.common.durations import format_makespan
from hqpy.protocol import messages as m

DATE_FORMAT = "%d.%m.%Y %H:%M:%S"
"""`task info` Start/End, `job info` Submission date, `worker info` Started (local time)."""

JOB_STATES = ("RUNNING", "WAITING", "FINISHED", "FAILED", "ABORTED", "CANCELED")
"""The `job summary` rows, in HyperQueue's order."""


def job_state(view: m.JobView) -> str:
    """One state for a whole job, by HyperQueue's precedence (`hqpy.common.states.job_state`)."""
    s = view.task_stats
    counts = (s.waiting, s.running, s.finished, s.failed, s.canceled, s.aborted)
    return states.job_state(counts, view.is_open).value


def iso(t: float | None) -> str | None:
    """ISO 8601 in UTC, the JSON mode's timestamp format (None stays null)."""
    if t is None:
        return None
    from datetime import UTC, datetime  # here: `job list` and others never need it

    return datetime.fromtimestamp(t, UTC).isoformat()


def local_time(t: float | None, fmt: str = DATE_FORMAT) -> str:
    """A timestamp in local time for tables; empty when there is none (e.g. not started)."""
    if t is None:
        return ""
    from datetime import datetime

    return datetime.fromtimestamp(t).astimezone().strftime(fmt)


def truncate_middle(text: str, max_len: int = 50) -> str:
    """`job list` Name: a long name keeps its start and end (24 + `...` + 23 for 50)."""
    if len(text) <= max_len:
        return text
    keep = max_len - 3
    head = (keep + 1) // 2
    tail = keep - head
    return f"{text[:head]}...{text[len(text) - tail :]}"


def truncate_error(error: str, limit: int) -> tuple[str, bool]:
    """HyperQueue cuts errors of `limit` chars or more to `limit` + `...`; says if it cut."""
    if len(error) >= limit:
        return error[:limit] + "...", True
    return error, False


def task_makespan(task: m.TaskView, now: float) -> str:
    """Empty until the task starts, then live until it ends."""
    if task.started_at is None:
        return ""
    end = task.ended_at if task.ended_at is not None else now
    return format_makespan(max(0.0, end - task.started_at))


def format_crash_limit(limit: int) -> str:
    if limit == 0:
        return "unlimited"
    if limit < 0:
        return "never-restart"
    return str(limit)


def format_env(env: Mapping[str, str]) -> str:
    """`K=V` lines, sorted, without the variables HyperQueue sets itself (`HQ_*`)."""
    return "\n".join(f"{k}={v}" for k, v in sorted(env.items()) if not k.startswith("HQ_"))


def format_stdio(path: str | None) -> str:
    return "<None>" if path is None else path


def job_task_ids(submits: Iterable[m.SubmitView]) -> str:
    """The id set of all submits of a job (`1-6,10-20`)."""
    from hqpy.common.idset import IdSet, format_id_set, parse_id_set  # `job info` only

    ids = IdSet()
    for submit in submits:
        if submit.ids.strip():
            ids = ids.union(parse_id_set(submit.ids))
    return format_id_set(ids)


def now() -> float:
    return time.time()


def queue_worker_args(params: m.QueueParams) -> list[str]:
    """The worker options a queue passes on (`--cpus`, `--resource`), as HyperQueue lists them."""
    args: list[str] = []
    if params.cpus is not None:
        args += ["--cpus", params.cpus]
    for r in params.resources:
        args += ["--resource", r]
    return args


def queue_resources(queue: m.QueueView) -> str:
    """What a queue's workers have: learned from a worker, else declared (or given by a local
    queue), else unknown."""
    from hqpy.common.resources import format_descriptor_short

    if queue.known_resources is not None:
        return "; ".join(format_descriptor_short(r) for r in queue.known_resources)
    declared = queue_worker_args(queue.params)
    if queue.local_cpus is not None and queue.params.cpus is None:
        # A local queue starts its workers with their share of the machine's cpus.
        declared = ["--cpus", queue.local_cpus, *declared]
    if declared:
        return " ".join(declared)
    return "<unknown>"


def explain_lines(resp: m.TaskExplainResponse) -> list[str]:
    """The sentences above `hq task explain`'s table, in HyperQueue's words."""
    name = f"Task {resp.job_id}@{resp.task_id}"
    if resp.state == "waiting":
        first = f"{name} is ready to run because it has no dependencies."
    else:
        first = f"{name} is {resp.state}."
    runnable = [w.worker for w in resp.workers if w.runnable]
    if runnable:
        n = len(runnable)
        second = f"The task can run on {n} worker{'s' if n > 1 else ''}: {', '.join(runnable)}"
    else:
        second = "There is no worker where the task can run."
    lines = [first, second]
    queues = [q.worker for q in resp.queues if q.runnable]
    if resp.queues:
        lines.append(
            f"Workers of {', '.join(queues)} could run it."
            if queues
            else "No queue's workers could run it."
        )
    return lines
