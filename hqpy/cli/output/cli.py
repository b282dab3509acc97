"""The `cli` output mode: HyperQueue's ASCII tables, which scripts parse line by line.

Row names, their order and the cell formats follow `hq-cli-compat.md` §4-§5 exactly; anything a
reader does not parse (colours) is only added when stdout is a terminal or `--colors always`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

from hqpy.cli.output.common import (
    JOB_STATES,
    explain_lines,
    format_crash_limit,
    format_env,
    format_stdio,
    job_state,
    job_task_ids,
    local_time,
    now,
    queue_resources,
    task_makespan,
    truncate_error,
    truncate_middle,
)
from hqpy.common.durations import format_duration, format_makespan
from hqpy.common.logs import get_logger
from hqpy.common.resources import (
    ResourceRequest,
    format_descriptor_long,
    format_descriptor_short,
    format_request,
)
from hqpy.common.states import TaskState
from hqpy.common.tables import horizontal_table, vertical_table
from hqpy.protocol import messages as m

log = get_logger("hqpy.cli")

ERROR_TRUNCATE_LENGTH_LIST = 16
ERROR_TRUNCATE_LENGTH_INFO = 237
MAX_DISPLAYED_WORKERS = 2
MAX_SHOWN_FAILED_TASKS = 5
PROGRESS_BAR_WIDTH = 40

Rows = list[tuple[str, str]]


def _duration_or_none(seconds: float | None) -> str:
    return "None" if seconds is None else format_duration(seconds)


def _format_resources(request: ResourceRequest) -> str:
    """`job info`/`task info` Resources: `nodes: N` for a multi-node task, then the entries."""
    lines = []
    if request.n_nodes > 0:
        lines.append(f"nodes: {request.n_nodes}")
    entries = format_request(request)
    if entries:
        lines.append(entries)
    return "\n".join(lines)


def _progress_bar(stats: m.TaskStats, n_tasks: int) -> str:
    """HyperQueue's bar: each of canceled, failed, finished, running takes ceil(share * 40)."""
    parts = (stats.canceled + stats.aborted, stats.failed, stats.finished, stats.running)
    used = 0
    for count in parts:
        chars = math.ceil(count / n_tasks * PROGRESS_BAR_WIDTH) if n_tasks else 0
        used += min(PROGRESS_BAR_WIDTH - used, chars)
    return "[" + "#" * used + "." * (PROGRESS_BAR_WIDTH - used) + "]"


def _job_state_cell(info: m.JobView) -> str:
    """A plain state for one task; for more, the bar and one `STATE (n)` line per non-zero count."""
    if info.task_count == 1:
        return job_state(info)
    stats = info.task_stats
    lines = [_progress_bar(stats, info.task_count)]
    for name, count in (
        ("RUNNING", stats.running),
        ("FAILED", stats.failed),
        ("FINISHED", stats.finished),
        ("CANCELED", stats.canceled),
        ("WAITING", stats.waiting),
        ("ABORTED", stats.aborted),
    ):
        if count > 0:
            lines.append(f"{name} ({count})")
    return "\n".join(lines)


def _job_workers(hostnames: Sequence[str]) -> str:
    shown = ",".join(hostnames[:MAX_DISPLAYED_WORKERS])
    if len(hostnames) > MAX_DISPLAYED_WORKERS:
        shown += f", … ({len(hostnames)} total)"
    return shown


def _submit_rows(submit: m.SubmitView) -> Rows:
    """The rows `job info` shows when the whole job is one array submit."""
    return [
        ("Resources", _format_resources(submit.request)),
        ("Pin", "None"),
        ("Priority", str(submit.priority)),
        ("Command", "\n".join(submit.args)),
        ("Stdout", format_stdio(submit.stdout)),
        ("Stderr", format_stdio(submit.stderr)),
        ("Environment", format_env(submit.env)),
        ("Working directory", submit.cwd),
        ("Task time limit", _duration_or_none(submit.time_limit)),
        ("Crash limit", format_crash_limit(submit.crash_limit)),
        *_routing_rows(submit),
    ]


def _parts_routing_rows(submits: Sequence[m.SubmitView]) -> Rows:
    """`Tags` and `Pool` of a job made of several submits (or split by `hq_tags`): per part."""
    rows: Rows = []
    if any(s.tags for s in submits):
        lines = [f"{s.ids}: {', '.join(s.tags) or '(none)'}" for s in submits]
        rows.append(("Tags", "\n".join(lines)))
    if any(s.pool is not None for s in submits):
        rows.append(("Pool", "\n".join(f"{s.ids}: {s.pool or '(none)'}" for s in submits)))
    return rows


def _routing_rows(submit: m.SubmitView | None) -> Rows:
    """`Tags` and `Pool` rows, only for tasks that have them (HyperQueue's tables otherwise)."""
    if submit is None:
        return []
    rows: Rows = []
    if submit.tags:
        rows.append(("Tags", ", ".join(submit.tags)))
    if submit.pool is not None:
        rows.append(("Pool", submit.pool))
    return rows


def _worker_runtime_info(worker: m.WorkerView) -> str:
    text = f"assigned tasks: {worker.assigned_tasks}"
    if worker.running_tasks > 0:
        text += f"; running tasks: {worker.running_tasks}"
    return text


class CliOutput:
    """Tables on stdout; errors and notes about truncation on stderr."""

    _events_shown = False

    def __init__(self, colors: str = "auto", clock: Callable[[], float] = now) -> None:
        if colors == "always":
            self.colored = True
        elif colors == "never":
            self.colored = False
        else:
            self.colored = sys.stdout.isatty()
        self._clock = clock

    # --- helpers ------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        print(text, file=sys.stdout)

    def _horizontal(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self._print(horizontal_table(header, rows, bold_header=self.colored))

    def _vertical(self, rows: Rows) -> None:
        self._print(vertical_table(rows))

    def _server_rows(self, info: m.ServerInfoView) -> Rows:
        return [
            ("Server UID", info.server_uid),
            ("Client host", info.client_host),
            ("Client port", str(info.client_port)),
            ("Worker host", info.worker_host),
            ("Worker port", str(info.worker_port)),
            ("Version", info.version),
            ("Pid", str(info.pid)),
            ("Start date", local_time(info.start_date, "%Y-%m-%d %H:%M:%S %Z")),
            ("Journal path", info.journal_path or ""),
        ]

    # --- server -------------------------------------------------------------------------------

    def server_started(self, info: m.ServerInfoView) -> None:
        self._vertical([("Server directory", info.server_dir), *self._server_rows(info)])
        sys.stdout.flush()

    def server_info(self, info: m.ServerInfoView) -> None:
        self._vertical(self._server_rows(info))

    # --- jobs ---------------------------------------------------------------------------------

    def job_submitted(self, job_id: int) -> None:
        self._print(f"Job submitted successfully, job ID: {job_id}")

    def job_opened(self, job_id: int) -> None:
        self._print(f"Job {job_id} is open.")

    def job_list(self, jobs: list[m.JobView], total: int, verbose: bool) -> None:
        header = ["ID", "Name", "State", "Tasks"]
        if verbose:
            header.append("Cancel Reason")
        rows = []
        for job in jobs:
            row = [
                f"*{job.id}" if job.is_open else str(job.id),
                truncate_middle(job.name),
                job_state(job),
                str(job.task_count),
            ]
            if verbose:
                row.append(job.cancel_reason or "")
            rows.append(row)
        self._horizontal(header, rows)
        if any(job.is_open for job in jobs):
            self._print("* = Open jobs")
        if total > len(jobs):
            verb, noun = ("is", "job") if total == 1 else ("are", "jobs")
            self._print(f"There {verb} {total} {noun} in total. Use `--all` to display all jobs.")

    def job_details(self, jobs: list[m.JobDetailView]) -> None:
        for index, job in enumerate(jobs):
            if index > 0:
                self._print("")
            self._job_detail(job)

    def _job_detail(self, job: m.JobDetailView) -> None:
        info = job.info
        tasks = str(info.task_count)
        ids = job_task_ids(job.submits)
        if ids:
            tasks += f"; Ids: {ids}"
        rows: Rows = [
            ("ID", str(info.id)),
            ("Name", info.name),
            ("State", _job_state_cell(info)),
            ("Cancel Reason", info.cancel_reason or ""),
            ("Session", "open" if info.is_open else "closed"),
            ("Tasks", tasks),
            ("Workers", _job_workers(job.workers)),
        ]
        single = len(job.submits) == 1
        if single:
            rows.extend(_submit_rows(job.submits[0]))
        else:
            rows.extend(_parts_routing_rows(job.submits))
        rows.append(("Submission date", local_time(job.submitted_at)))
        if single:
            rows.append(("Submission directory", job.submit_dir))
        end = job.finished_at if job.finished_at is not None else self._clock()
        rows.append(("Makespan", format_makespan(max(0.0, end - job.submitted_at))))
        self._vertical(rows)
        self._failed_tasks(job)

    def _failed_tasks(self, job: m.JobDetailView) -> None:
        """Up to 5 failed tasks under the job table, then how many failed in all."""
        shown = sorted(job.failed_tasks, key=lambda t: t.id)[:MAX_SHOWN_FAILED_TASKS]
        if not shown:
            return
        rows = [[str(t.id), "\n".join(t.workers), t.error or ""] for t in shown]
        self._horizontal(["Task ID", "Worker", "Error"], rows)
        failed = max(job.info.task_stats.failed, len(shown))
        if len(shown) < failed:
            self._print(f"{failed} tasks failed. ({len(shown)} shown)")
        else:
            self._print(f"{failed} tasks failed.")

    def job_summary(self, jobs: list[m.JobView]) -> None:
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in jobs:
            state = job_state(job)
            if state in counts:
                counts[state] += 1
        self._horizontal(["Status", "Count"], [[s, str(c)] for s, c in counts.items()])

    def job_wait_result(self, jobs: list[m.JobView], duration: float) -> None:
        """Nothing: the caller logs the outcome of the wait itself."""

    # --- tasks --------------------------------------------------------------------------------

    def task_list(self, jobs: list[tuple[int, list[m.TaskView]]], verbose: bool) -> None:
        several = len(jobs) > 1
        header = ["Task ID", "State", "Worker", "Makespan", "Error"]
        if several:
            header.insert(0, "Job ID")
        current = self._clock()
        truncated = False
        rows = []
        for job_id, tasks in sorted(jobs, key=lambda j: j[0]):
            for task in sorted(tasks, key=lambda t: t.id):
                error = ""
                if task.state is TaskState.FAILED and task.error is not None:
                    error = task.error
                    if not verbose:
                        error, cut = truncate_error(error, ERROR_TRUNCATE_LENGTH_LIST)
                        truncated = truncated or cut
                row = [
                    str(task.id),
                    task.state.name,
                    "\n".join(task.workers),
                    task_makespan(task, current),
                    error,
                ]
                if several:
                    row.insert(0, str(job_id))
                rows.append(row)
        self._horizontal(header, rows)
        if truncated:
            log.info("An error message was truncated. Use -v to display the full error.")

    def task_info(self, job: m.JobDetailView, tasks: list[m.TaskView], verbose: bool) -> None:
        current = self._clock()
        truncated = False
        for task in tasks:
            submit = self._submit_of(job, task)
            error = ""
            if task.state is TaskState.FAILED and task.error is not None:
                error = task.error
                if not verbose:
                    error, cut = truncate_error(error, ERROR_TRUNCATE_LENGTH_INFO)
                    truncated = truncated or cut
            rows: Rows = [
                ("Task ID", str(task.id)),
                ("State", task.state.name),
                ("Command", "\n".join(submit.args) if submit else ""),
                ("Environment", format_env(submit.env) if submit else ""),
                ("Worker", "\n".join(task.workers)),
                ("Start", local_time(task.started_at)),
                ("End", local_time(task.ended_at)),
                ("Makespan", task_makespan(task, current)),
                ("Workdir", task.cwd or (submit.cwd if submit else "")),
                ("Stdout", self._task_stdio(task.stdout, submit.stdout if submit else None)),
                ("Stderr", self._task_stdio(task.stderr, submit.stderr if submit else None)),
                ("Time limit", _duration_or_none(submit.time_limit if submit else None)),
                ("Resources", _format_resources(submit.request) if submit else ""),
                ("Priority", str(submit.priority) if submit else "0"),
                ("Pin", "none"),
                ("Task dir", "yes" if submit and submit.task_dir else "no"),
                ("Crash limit", format_crash_limit(submit.crash_limit) if submit else ""),
                ("Dependencies", ""),
                *_routing_rows(submit),
                ("Error", error),
            ]
            if task.nodes:
                nodes = zip(task.nodes, task.workers, strict=False)
                rows.append(("Nodes", "\n".join(f"{h} (worker {i})" for i, h in nodes)))
            if task.instances:
                ended = (f"instance {i}: {why}" for i, why in task.instances)
                rows.append(("Earlier instances", "\n".join(ended)))
            self._vertical(rows)
        if truncated:
            log.info("An error message(s) was truncated. Use -v to display the full error(s).")

    @staticmethod
    def _submit_of(job: m.JobDetailView, task: m.TaskView) -> m.SubmitView | None:
        if 0 <= task.group < len(job.submits):
            return job.submits[task.group]
        return job.submits[0] if job.submits else None

    @staticmethod
    def _task_stdio(resolved: str | None, template: str | None) -> str:
        """The task's resolved path once known, else the submit's template (`<None>` if none)."""
        if resolved is not None:
            return resolved
        return format_stdio(template)

    def task_ids(self, jobs: list[tuple[int, str]]) -> None:
        if len(jobs) == 1:
            self._print(jobs[0][1])
            return
        for job_id, ids in jobs:
            self._print(f"{job_id}: {ids}")

    # --- workers ------------------------------------------------------------------------------

    def worker_list(self, workers: list[m.WorkerView]) -> None:
        rows = []
        for worker in sorted(workers, key=lambda w: w.id):
            config = worker.configuration
            manager = config.manager
            rows.append(
                [
                    str(worker.id),
                    worker.state,
                    config.hostname,
                    "; ".join(format_descriptor_short(r) for r in config.resources),
                    manager.manager if manager else "None",
                    manager.allocation_id if manager else "N/A",
                ]
            )
        header = ["ID", "State", "Hostname", "Resources", "Manager", "Manager Job ID"]
        self._horizontal(header, rows)

    def worker_info(self, workers: list[m.WorkerView]) -> None:
        for index, worker in enumerate(workers):
            if index > 0:
                self._print("")
            config = worker.configuration
            manager = config.manager
            rows: Rows = [
                ("Worker", str(worker.id)),
                ("State", worker.state),
                ("Hostname", config.hostname),
                ("Started", local_time(worker.started_at)),
                ("Data provider", config.listen_address),
                ("Working directory", config.work_dir),
                ("Heartbeat", format_duration(config.heartbeat_interval)),
                ("Idle timeout", _duration_or_none(config.idle_timeout)),
                ("Overview interval", _duration_or_none(config.overview_interval)),
                ("Resources", "\n".join(format_descriptor_long(r) for r in config.resources)),
                ("Time Limit", _duration_or_none(config.time_limit)),
                ("Process pid", str(config.pid)),
                ("Group", config.group),
                ("Manager", manager.manager if manager else "None"),
                ("Manager Job ID", manager.allocation_id if manager else "N/A"),
                ("Last task started", local_time(worker.last_task_started)),
                ("Runtime Info", _worker_runtime_info(worker)),
            ]
            if config.filter_tags:
                rows.append(("Filter tags", ", ".join(config.filter_tags)))
            self._vertical(rows)

    def worker_address(self, hostname: str) -> None:
        self._print(hostname)

    # --- misc ---------------------------------------------------------------------------------

    def queue_list(self, queues: list[m.QueueView]) -> None:
        header = [
            "ID",
            "State",
            "Backlog size",
            "Max workers per alloc",
            "Max worker count",
            "Timelimit",
            "Manager",
            "Worker resources",
            "Name",
            "Args",
        ]
        rows = []
        for q in queues:
            p = q.params
            rows.append(
                [
                    str(q.id),
                    q.state,
                    str(p.backlog),
                    str(p.workers_per_alloc),
                    "" if p.max_worker_count is None else str(p.max_worker_count),
                    format_duration(p.time_limit),
                    p.manager.upper(),
                    queue_resources(q),
                    p.name or "",
                    ",".join(p.additional_args),
                ]
            )
        # Pools and filter tags (issue 10): columns only when a queue has them.
        if any(q.params.preallocate > 0 for q in queues):
            header.append("Preallocate")
            for row, q in zip(rows, queues, strict=True):
                row.append(pool_settings(q))
        if any(q.params.filter_tags for q in queues):
            header.append("Filter tags")
            for row, q in zip(rows, queues, strict=True):
                row.append(",".join(q.params.filter_tags))
        self._horizontal(header, rows)

    def allocation_list(self, queue: m.QueueView, allocations: list[m.AllocationView]) -> None:
        header = [
            "ID",
            "State",
            "Working directory",
            "Worker count",
            "Queue time",
            "Start time",
            "Finish time",
            "Pending reason",
        ]
        rows = [
            [
                a.id,
                a.state,
                a.workdir,
                str(a.worker_count),
                local_time(a.queued_at),
                local_time(a.started_at),
                local_time(a.ended_at),
                a.pending_reason or "",
            ]
            for a in allocations
        ]
        self._horizontal(header, rows)
        if queue.params.splits:
            from hqpy.autoalloc.partitions import parse_split

            parts = []
            for text in queue.params.splits:
                split = parse_split(text)
                tags = f" [{', '.join(split.tags)}]" if split.tags else ""
                nodes = "node" if split.count == 1 else "nodes"
                parts.append(f"{split.kind} {split.count} {nodes}{tags}")
            self._print("Each allocation is split into: " + "; ".join(parts))
        if queue.params.preallocate > 0:
            self._print(f"Preallocated pool: {pool_settings(queue)}")
        if queue.params.filter_tags:
            self._print(f"Filter tags: {', '.join(queue.params.filter_tags)}")
        if queue.pause_reason:
            self._print(f"The queue is paused: {queue.pause_reason}")
        environment = _worker_environment_rows(queue.params)
        if environment:
            self._print("Worker environment:")
            self._vertical(environment)

    def alloc_events(self, events: list[m.AllocEventView], follow: bool) -> None:
        rows = [[local_time(e.time), e.event, e.allocation_id or "", e.message] for e in events]
        if follow and self._events_shown:
            for row in rows:
                self._print("  ".join(cell for cell in row if cell))
            sys.stdout.flush()
            return
        self._events_shown = True
        self._horizontal(["Time", "Event", "Allocation", "Message"], rows)
        sys.stdout.flush()

    # --- tags, fit and pools ------------------------------------------------------------------

    def task_explain(self, resp: m.TaskExplainResponse) -> None:
        for line in explain_lines(resp):
            self._print(line)
        rows = []
        for w in [*resp.workers, *resp.queues]:
            runnable = "yes" if w.runnable else "no"
            if not w.variants:
                rows.append([w.worker, runnable, "0", "", "", ""])
            for v in w.variants:
                kind = v.name if v.kind == "resource" else v.kind
                mark = "" if v.ok else " (missing)"
                rows.append([w.worker, runnable, "0", kind, v.provides + mark, v.request])
        if rows:
            header = ["Worker Id", "Runnable", "Variant", "Type", "Provides", "Request"]
            self._horizontal(header, rows)

    def pool_list(self, pools: list[m.PoolView]) -> None:
        rows = [[p.name, str(p.size), str(p.running), str(p.waiting)] for p in pools]
        self._horizontal(["Name", "Size", "Running", "Waiting"], rows)

    def empty(self) -> None:
        """Nothing to show."""

    def error(self, message: str) -> None:
        print(message, file=sys.stderr)


def pool_settings(q: m.QueueView) -> str:
    """`2 allocations, persistent, started` for a queue with `--preallocate` (else empty)."""
    p = q.params
    if p.preallocate <= 0:
        return ""
    parts = [f"{p.preallocate} allocation{'s' if p.preallocate != 1 else ''}"]
    if p.persist:
        parts.append("persistent")
    if p.memory is not None:
        parts.append(f"memory {p.memory // 2**20} MiB")
    if q.prealloc_stopped:
        parts.append("stopped")
    elif q.prealloc_started:
        parts.append("started")
    return ", ".join(parts)


def _worker_environment_rows(p: m.QueueParams) -> Rows:
    """The queue's worker environment options that are set (`alloc info` prints them under the
    allocations, as every allocation of the queue starts in it)."""
    rows: Rows = []
    if p.env_script:
        rows.append(("Env script", p.env_script))
    if p.worker_env:
        rows.append(("Worker env", "\n".join(p.worker_env)))
    if p.python:
        rows.append(("Python", p.python))
    if p.worker_dir:
        rows.append(("Worker dir", p.worker_dir))
    if p.script_template is not None:
        params = ", ".join(p.template_params)
        rows.append(("Script template", f"custom (-x {params})" if params else "custom"))
    return rows
