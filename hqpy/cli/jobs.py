"""`hq submit`, `hq job ...` and `hq task ...`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy.cli.common import (
    add_selector,
    client_command,
    count,
    duration,
    emit_log_lines,
    id_set,
    output_of,
    run_client,
    signed_int,
    tag_arg,
)
from hqpy.client.blocking import ClientError
from hqpy.common.logs import get_logger
from hqpy.common.states import TaskState, WorkerFilter
from hqpy.protocol import messages as m

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hqpy.cli.main import CommandTree, Subparsers
    from hqpy.cli.output import Output
    from hqpy.cli.output.progress import WaitContext
    from hqpy.client.blocking import BlockingConnection
    from hqpy.common.jsontypes import JsonValue
    from hqpy.common.resources import ResourceAmountRequest

log = get_logger("hqpy.cli")

DEFAULT_STDOUT = "%{CWD}/job-%{JOB_ID}/%{TASK_ID}.stdout"
DEFAULT_STDERR = "%{CWD}/job-%{JOB_ID}/%{TASK_ID}.stderr"
PROGRESS_INTERVAL = 0.3
MISSING_ONE_BY_ONE = 1000
STATE_FILTERS = ("waiting", "running", "finished", "failed", "canceled", "aborted", "opened")


def _crash_limit(text: str) -> int:
    if text == "unlimited":
        return 0
    if text == "never-restart":
        return -1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid crash limit `{text}`: use a positive number, `unlimited` or `never-restart`"
        )
    return value


def _name(text: str) -> str:
    if "\n" in text or "\t" in text:
        raise argparse.ArgumentTypeError("name must not contain a newline or a tab")
    return text


def _states(text: str) -> tuple[str, ...]:
    states = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    for s in states:
        if s not in STATE_FILTERS:
            raise argparse.ArgumentTypeError(
                f"unknown state `{s}`; expected a list of {', '.join(STATE_FILTERS)}"
            )
    return states


MAX_UNITS = 2**32 - 1
"""The most of one resource a task can ask for (whole units)."""


def _amount_ok(request: ResourceAmountRequest, what: str) -> None:
    from hqpy.common.resources import FRACTIONS

    if isinstance(request.amount, int) and request.amount > MAX_UNITS * FRACTIONS:
        raise argparse.ArgumentTypeError(f"{what} is too large (at most {MAX_UNITS})")


def _cpus(text: str) -> str:
    """`--cpus` as HyperQueue reads it (a bad value is a usage error); sent as typed."""
    from hqpy.common.resources import parse_request_entry

    try:
        _amount_ok(parse_request_entry("cpus", text), f"`{text}`")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _resource(text: str) -> str:
    from hqpy.common.resources import parse_request_entry, parse_resource_arg

    try:
        name, value = parse_resource_arg(text)
        _amount_ok(parse_request_entry(name, value), f"`{text}`")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"`{text}`: expected KEY=VALUE")
    if "\0" in text:
        raise argparse.ArgumentTypeError(
            f"{ascii(text)}: a variable's name and value cannot contain a NUL character"
        )
    return key, value


def _job_id(text: str) -> int:
    value = count(text)
    return value


def add_submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--array", type=id_set, help="Task ids of an array: `1-10,20`, `0-100:2`")
    p.add_argument("--each-line", type=Path, help="One task per line of this file (HQ_ENTRY)")
    p.add_argument("--from-json", type=Path, help="One task per item of this JSON array (HQ_ENTRY)")
    p.add_argument("--cpus", type=_cpus, help="Cpus per task: `2`, `4 compact!`")
    p.add_argument(
        "--resource", type=_resource, action="append", default=[], help="`name=amount [policy]`"
    )
    p.add_argument("--nodes", type=count, default=0, help="Nodes of a multi-node task")
    p.add_argument("--time-limit", type=duration, help="Kill the task after this long")
    p.add_argument(
        "--time-request", type=duration, default=0.0, help="Minimal remaining worker time"
    )
    p.add_argument("--priority", type=signed_int, default=0, help="Higher runs first")
    p.add_argument("--max-fails", type=count, help="Abort the job after more failed tasks")
    p.add_argument(
        "--crash-limit", type=_crash_limit, default=5, help="Worker losses a task survives"
    )
    p.add_argument("--name", type=_name, help="Job name")
    p.add_argument("--cwd", help="Working directory of tasks (default: the submit dir)")
    p.add_argument(
        "--env", type=_env, action="append", default=[], help="`KEY=VALUE` for the tasks"
    )
    p.add_argument("--stdout", help="Stdout path (placeholders allowed) or `none`")
    p.add_argument("--stderr", help="Stderr path (placeholders allowed) or `none`")
    p.add_argument("--task-dir", action="store_true", help="Give each task a temporary directory")
    p.add_argument("--stdin", action="store_true", help="Pass this command's stdin to each task")
    p.add_argument("--job", type=_job_id, help="Submit into this open job")
    p.add_argument(
        "--tag",
        type=tag_arg,
        action="append",
        default=[],
        help="Tag the tasks: NAME or KEY=VALUE (repeatable); workers with filter tags need them",
    )
    p.add_argument("--pool", help="Run in this concurrency pool (`hq pool set NAME SIZE`)")
    p.add_argument(
        "--directives",
        choices=("auto", "file", "stdin", "off"),
        default="auto",
        help="Read `#HQ` options (and the shebang) from the script: `auto` for a `.sh` program",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--wait", action="store_true", help="Wait until the job ends")
    g.add_argument("--progress", action="store_true", help="Show a progress bar until the job ends")
    p.add_argument("command", nargs=argparse.REMAINDER, help="The program and its arguments")
    p.set_defaults(func=cmd_submit)


def register(tree: CommandTree, nouns: Subparsers) -> None:
    add_submit_options(tree.command(nouns, "submit", "Submit a job"))

    job = tree.command(nouns, "job", "Commands for managing jobs")
    verbs = tree.group(job, "verb")
    add_submit_options(tree.command(verbs, "submit", "Submit a job"))

    p = tree.command(verbs, "list", "List jobs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--all", action="store_true", help="Show all jobs")
    g.add_argument("--filter", type=_states, help="Show jobs in these states")
    p.add_argument("--verbose", "-v", action="store_true", help="Show cancel reasons")
    p.set_defaults(func=cmd_list)

    p = tree.command(verbs, "info", "Show details of jobs")
    add_selector(p, "Job")
    p.set_defaults(func=cmd_info)

    p = tree.command(verbs, "cancel", "Cancel jobs")
    add_selector(p, "Job")
    p.add_argument("--reason", help="Why (at most 200 characters)")
    p.set_defaults(func=cmd_cancel)

    p = tree.command(verbs, "forget", "Forget completed jobs")
    add_selector(p, "Job")
    p.add_argument("--filter", type=_states, default=(), help="Only jobs in these states")
    p.set_defaults(func=cmd_forget)

    for name, helptext in (
        ("wait", "Wait until jobs end"),
        ("progress", "Show the progress of jobs"),
    ):
        p = tree.command(verbs, name, helptext)
        add_selector(p, "Job")
        p.add_argument(
            "--without-close", action="store_true", help="Do not wait for open jobs to close"
        )
        p.set_defaults(func=cmd_wait, progress=name == "progress")

    p = tree.command(verbs, "cat", "Print the output of tasks")
    p.add_argument("job_id", help="Job id or `last`")
    p.add_argument("stream", choices=("stdout", "stderr"))
    p.add_argument("--tasks", type=id_set, help="Task ids")
    p.add_argument("--task-status", type=_states, default=(), help="Only tasks in these states")
    p.add_argument(
        "--print-task-header", action="store_true", help="A `# Job J, task T` line first"
    )
    p.set_defaults(func=cmd_cat)

    p = tree.command(verbs, "task-ids", "Print the task ids of jobs")
    add_selector(p, "Job")
    p.add_argument("--filter", type=_states, default=(), help="Only tasks in these states")
    p.set_defaults(func=cmd_task_ids)

    p = tree.command(verbs, "summary", "Count jobs by state")
    p.set_defaults(func=cmd_summary)

    p = tree.command(verbs, "open", "Open a job that tasks can be submitted into")
    p.add_argument("--name", type=_name)
    p.add_argument("--max-fails", type=count)
    p.set_defaults(func=cmd_open)

    p = tree.command(verbs, "close", "Close open jobs")
    add_selector(p, "Job")
    p.set_defaults(func=cmd_close)

    task = tree.command(nouns, "task", "Commands for tasks")
    tverbs = tree.group(task, "verb")
    p = tree.command(tverbs, "list", "List tasks of jobs")
    add_selector(p, "Job")
    p.add_argument("--tasks", type=id_set, help="Task ids")
    p.add_argument("--task-status", type=_states, default=(), help="Only tasks in these states")
    p.add_argument("--verbose", "-v", action="store_true", help="Full error messages")
    p.set_defaults(func=cmd_task_list)

    p = tree.command(tverbs, "info", "Show details of tasks")
    p.add_argument("job_id", help="Job id or `last`")
    p.add_argument("task_ids", type=id_set, help="Task ids")
    p.add_argument("--verbose", "-v", action="store_true", help="Full error messages")
    p.set_defaults(func=cmd_task_info)

    p = tree.command(tverbs, "explain", "Explain why a task can or cannot run, and where")
    p.add_argument("job_id", help="Job id or `last`")
    p.add_argument("task_id", type=count, help="Task id")
    p.set_defaults(func=cmd_task_explain)


# ---------------------------------------------------------------------------------------------
# Submit


def build_submit(args: argparse.Namespace) -> m.SubmitRequest:
    """Turn `hq submit` options into a request; raises ValueError with a user-facing message."""
    from hqpy.common.idset import parse_id_set
    from hqpy.common.resources import build_request

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("no command given; usage: hq submit [options] -- <program> [args...]")
    for arg in command:
        if "\0" in arg:
            raise ValueError(f"argument {ascii(arg)} contains a NUL character")
    if args.each_line is not None and args.from_json is not None:
        raise ValueError("--each-line and --from-json cannot be used together")
    entries = _entries(args)
    if args.array is not None:
        ids = parse_id_set(args.array)
        if entries is not None and ids and ids.max() >= len(entries):
            raise ValueError(f"--array: id {ids.max()} is past the {len(entries)} entries")
        ids_text = str(ids)
    elif entries is not None:
        ids_text = f"0-{len(entries) - 1}"
    else:
        ids_text = "0"
    env = dict(args.env)
    request = build_request(
        args.cpus, args.resource, n_nodes=args.nodes, time_request=args.time_request
    )
    submit_dir = os.getcwd()
    cwd = os.path.abspath(args.cwd) if args.cwd else submit_dir
    stdout = _output_path(args.stdout, DEFAULT_STDOUT, "--stdout")
    stderr = _output_path(args.stderr, DEFAULT_STDERR, "--stderr")
    stdin = _read_stdin(args) if args.stdin else None
    return m.SubmitRequest(
        submit=m.SubmitDesc(
            ids=ids_text,
            args=tuple(command),
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            submit_dir=submit_dir,
            request=request,
            entries=entries,
            priority=args.priority,
            time_limit=args.time_limit,
            crash_limit=args.crash_limit,
            task_dir=args.task_dir,
            stdin=stdin,
            auto_ids=args.array is None,
            tags=tuple(dict.fromkeys(args.tag)),
            pool=args.pool,
            task_tags=getattr(args, "task_tags", None),
        ),
        name=args.name,
        max_fails=args.max_fails,
        job_id=args.job,
    )


def _entries(args: argparse.Namespace) -> list[str] | None:
    """The entries of `--each-line` or `--from-json` (None without either)."""
    if args.each_line is not None:
        lines = _read(args.each_line, "--each-line").splitlines()
        for n, line in enumerate(lines, 1):
            if "\0" in line:
                raise ValueError(
                    f"--each-line: line {n} of `{args.each_line}` contains a NUL character, "
                    "which cannot be passed to a task (HQ_ENTRY)"
                )
        if not lines:
            raise ValueError(f"--each-line: `{args.each_line}` has no lines: no tasks to submit")
        return lines
    if args.from_json is None:
        return None
    text = _read(args.from_json, "--from-json")
    try:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"--from-json: the root of `{args.from_json}` must be an array")
        entries = [json.dumps(item) for item in data]
        args.task_tags = _task_tags(data, args.from_json)
    except RecursionError:
        raise ValueError(
            f"--from-json: `{args.from_json}` is nested too deeply to be read"
        ) from None
    except MemoryError:
        raise ValueError(f"--from-json: `{args.from_json}` is too large to be read") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--from-json: `{args.from_json}` is not valid JSON: {e}") from None
    if not entries:
        raise ValueError(f"--from-json: `{args.from_json}` is an empty array: no tasks to submit")
    return entries


TASK_TAGS_KEY = "hq_tags"
"""A `--from-json` item that is an object may tag its task: `{"hq_tags": ["gpu"], ...}`."""


def _task_tags(items: list[JsonValue], path: Path) -> list[list[str]] | None:
    """Each item's `hq_tags` (None when no item has any); the item stays whole in HQ_ENTRY."""
    from hqpy.common.tags import parse_tags

    out: list[list[str]] = []
    found = False
    for i, item in enumerate(items):
        tags = item.get(TASK_TAGS_KEY) if isinstance(item, dict) else None
        if tags is None:
            out.append([])
            continue
        names = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
        if not isinstance(tags, list) or len(names) != len(tags):
            raise ValueError(
                f'--from-json: item {i} of `{path}`: "{TASK_TAGS_KEY}" must be a list of '
                'strings, e.g. ["system=H2O"]'
            )
        try:
            out.append(sorted(parse_tags(names)))
        except ValueError as e:
            raise ValueError(f"--from-json: item {i} of `{path}`: {e}") from None
        found = True
    return out if found else None


def _read(path: Path, option: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{option}: cannot read `{path}`: {e.strerror}") from None
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{option}: `{path}` is not valid UTF-8 (line {line}, byte {e.start})"
        ) from None


def _output_path(value: str | None, default: str, option: str) -> str | None:
    if value is None:
        return default
    if value == "none":
        return None
    if value.endswith(":rm-if-finished"):
        value = value[: -len(":rm-if-finished")]
    if value.startswith("%{"):
        return value
    path = os.path.abspath(value)
    _check_parents(path, option)
    return path


def _check_parents(path: str, option: str) -> None:
    """A parent that exists but is a file can never hold the output: say so now, not per task."""
    fixed = path.split("%{", 1)[0]
    parent = os.path.dirname(fixed)
    while parent and not os.path.lexists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{option} `{path}`: `{parent}` is not a directory")


def _read_stdin(args: argparse.Namespace) -> bytes:
    """This command's stdin, read once (`--directives stdin` and `--stdin` may both want it)."""
    data: bytes | None = getattr(args, "stdin_data", None)
    if data is None:
        data = sys.stdin.buffer.read()
        args.stdin_data = data
    return data


def cmd_submit(args: argparse.Namespace) -> int:
    from hqpy.cli.directives import apply_directives

    try:
        if args.directives == "stdin" and not args.stdin:
            # HyperQueue's rule: the script read for directives is also the tasks' stdin.
            raise ValueError("You have to use `--stdin` when you specify `--directives=stdin`.")
        apply_directives(args, add_submit_options, lambda: _read_stdin(args))
        request = build_submit(args)
    except ValueError as e:
        output_of(args).error(str(e))
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        resp = conn.request(request, m.SubmitResponse)
        for warning in resp.warnings:
            log.warning("%s", warning)
        out.job_submitted(resp.job_id)
        if args.wait or args.progress:
            # The submit confirmation is this command's one output; the wait adds nothing.
            wait_for_jobs(conn, str(resp.job_id), False, args.progress, quiet_output(out))

    return run_client(args, call)


# ---------------------------------------------------------------------------------------------
# Waiting and progress


def quiet_output(out: Output) -> bool:
    from hqpy.cli.output.quiet import QuietOutput

    return isinstance(out, QuietOutput)


def wait_for_jobs(
    conn: BlockingConnection, selector: str, without_close: bool, progress: bool, quiet: bool
) -> list[m.JobView]:
    """Wait until the jobs end, drawing a progress bar if asked; returns their final state."""
    if not progress or quiet:
        resp = conn.request(m.WaitJobsRequest(selector, without_close), m.JobListResponse)
        _log_missing(resp.missing)
        return resp.jobs
    bar = ProgressBar(sys.stdout.isatty(), conn)
    missing_logged = False
    while True:
        details = conn.request(m.JobDetailsRequest(selector), m.JobDetailsResponse)
        if not missing_logged:
            _log_missing(details.missing)
            missing_logged = True
        jobs = [j.info for j in details.jobs]
        if all(_ended(j, without_close) for j in jobs):
            bar.finish(jobs)
            return jobs
        bar.draw(jobs)
        time.sleep(PROGRESS_INTERVAL)


def _log_missing(job_ids: str) -> None:
    if job_ids:
        log.error("%s not found", m.describe_ids("Job", job_ids))


def _task_pages(conn: BlockingConnection, req: m.TaskListRequest) -> Iterator[m.TaskListResponse]:
    """The pages of a task list as they come (the server sends `TASK_PAGE` tasks at a time);
    a job's tasks may go on in the next page, and a job with no tasks is one empty entry.

    The next page is asked for before this one is handed on: the server builds it while the
    client prints this one."""
    resp = conn.request(req, m.TaskListResponse)
    while True:
        if resp.next is not None:
            conn.send_request(m.TaskListRequest(req.selector, req.task_ids, req.states, resp.next))
        yield resp
        if resp.next is None:
            return
        resp = conn.response(m.TaskListResponse)


def _task_list(conn: BlockingConnection, req: m.TaskListRequest) -> m.TaskListResponse:
    """Every page of a task list, joined."""
    pages = _task_pages(conn, req)
    first = next(pages)
    jobs, missing = first.jobs, first.missing
    for resp in pages:
        for job_id, tasks in resp.jobs:
            if jobs and jobs[-1][0] == job_id:
                jobs[-1][1].extend(tasks)
            else:
                jobs.append((job_id, tasks))
    return m.TaskListResponse(jobs, missing)


def _task_info(conn: BlockingConnection, job_id: int, task_ids: str) -> m.TaskInfoResponse:
    """Every page of `task info`, joined."""
    resp = conn.request(m.TaskInfoRequest(job_id, task_ids), m.TaskInfoResponse)
    tasks, missing = resp.tasks, resp.missing
    while resp.next is not None:
        resp = conn.request(m.TaskInfoRequest(job_id, task_ids, resp.next), m.TaskInfoResponse)
        tasks.extend(resp.tasks)
    return m.TaskInfoResponse(resp.job, tasks, missing)


def _ended(job: m.JobView, without_close: bool) -> bool:
    s = job.task_stats
    return s.waiting == 0 and s.running == 0 and (without_close or not job.is_open)


class ProgressBar:
    """A bar redrawn in place on a terminal, elsewhere a line now and then; stdout, never stderr.

    It shows the elapsed time, an estimate once tasks end, and while tasks wait with none
    running, why: allocations queued in a batch system, a paused queue, or no worker at all."""

    LINE_INTERVAL = 5.0
    CONTEXT_INTERVAL = 3.0
    MAX_QUEUES = 20
    """Queues asked about for the waiting line (each is one request)."""

    def __init__(self, tty: bool, conn: BlockingConnection | None = None) -> None:
        from hqpy.cli.output.progress import RateEstimate

        self.tty = tty
        self.conn = conn
        self.started = time.monotonic()
        self.estimate = RateEstimate()
        self.context: WaitContext | None = None
        self.context_at = -math.inf
        self.drawn_lines = 0
        self.last_line = 0.0
        self.last_key: list[str] = []

    def _lines(self, jobs: list[m.JobView]) -> list[str]:
        from hqpy.cli.output.progress import render_progress

        now = time.monotonic()
        total = sum(j.task_count for j in jobs)
        s = [j.task_stats for j in jobs]
        done = sum(x.finished + x.failed + x.canceled + x.aborted for x in s)
        left = self.estimate.observe(now, done, total)
        idle = sum(x.running for x in s) == 0 and sum(x.waiting for x in s) > 0
        if idle and now - self.context_at >= self.CONTEXT_INTERVAL:
            self.context = self._wait_context()
            self.context_at = now
        return render_progress(jobs, now - self.started, left, self.context if idle else None)

    def _wait_context(self) -> WaitContext | None:
        """Workers and queued allocations, from the server; None if it cannot tell."""
        from hqpy.cli.output.progress import QueueWait, WaitContext

        if self.conn is None:
            return None
        try:
            workers = self.conn.request(
                m.ListWorkersRequest(WorkerFilter.RUNNING), m.WorkerListResponse
            )
            queues = self.conn.request(m.AllocListRequest(), m.QueueListResponse).queues
            waits = []
            for q in [q for q in queues if not q.removed][: self.MAX_QUEUES]:
                resp = self.conn.request(m.AllocInfoRequest(q.id), m.AllocationListResponse)
                queued = [a for a in resp.allocations if a.state == "QUEUED"]
                # The batch system's word for why they wait (the first one that has one).
                reason = next((a.pending_reason for a in queued if a.pending_reason), None)
                paused = q.state == "PAUSED"
                waits.append(QueueWait(q.id, q.params.manager, len(queued), paused, reason))
        except ClientError as e:
            log.debug("cannot tell why tasks wait: %s", e)
            return None
        return WaitContext(len(workers.workers), tuple(waits))

    def draw(self, jobs: list[m.JobView]) -> None:
        lines = self._lines(jobs)
        if self.tty:
            self._redraw(lines, end="")
            return
        # Elsewhere print when something other than the clock changed, at most every few seconds.
        key = [lines[0].split(", elapsed")[0], *lines[1:]]
        if time.monotonic() - self.last_line >= self.LINE_INTERVAL and key != self.last_key:
            print("\n".join(lines), flush=True)
            self.last_line = time.monotonic()
            self.last_key = key

    def _redraw(self, lines: list[str], end: str) -> None:
        up = f"\x1b[{self.drawn_lines - 1}F" if self.drawn_lines > 1 else ""
        sys.stdout.write("\r" + up + "\x1b[J" + "\n".join(lines) + end)
        sys.stdout.flush()
        self.drawn_lines = len(lines)

    def finish(self, jobs: list[m.JobView]) -> None:
        if not jobs:
            return
        lines = self._lines(jobs)
        if self.tty:
            self._redraw(lines, end="\n")
        else:
            print("\n".join(lines))
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Job commands


@client_command
def cmd_list(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    states: tuple[str, ...] | None
    if args.all:
        states = None
    elif args.filter:
        states = args.filter
    else:
        states = ("waiting", "running", "opened")
    resp = conn.request(m.ListJobsRequest(states), m.JobListResponse)
    out.job_list(resp.jobs, resp.total, args.verbose)


@client_command
def cmd_info(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    req = m.JobDetailsRequest(args.selector, include_tasks=args.output_mode == "json")
    resp = conn.request(req, m.JobDetailsResponse)
    jobs, missing = resp.jobs, resp.missing
    while resp.next is not None:
        import attrs  # only here: importing it costs every `hq` call ~10 ms

        # A job's tasks come in pages (`TASK_PAGE` a reply): join them.
        resp = conn.request(
            m.JobDetailsRequest(req.selector, True, resp.next), m.JobDetailsResponse
        )
        for detail in resp.jobs:
            if jobs and jobs[-1].info.id == detail.info.id:
                tasks = (*(jobs[-1].tasks or ()), *(detail.tasks or ()))
                jobs[-1] = attrs.evolve(jobs[-1], tasks=tasks)
            else:
                jobs.append(detail)
    _log_missing(missing)
    out.job_details(jobs)


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.reason is not None and len(args.reason) > 200:
        output_of(args).error("--reason must be at most 200 characters long")
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        resp = conn.request(m.CancelJobsRequest(args.selector, args.reason), m.LogLinesResponse)
        emit_log_lines(resp.lines)

    return run_client(args, call)


@client_command
def cmd_forget(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.ForgetJobsRequest(args.selector, args.filter), m.LogLinesResponse)
    emit_log_lines(resp.lines)


@client_command
def cmd_close(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.CloseJobsRequest(args.selector), m.LogLinesResponse)
    emit_log_lines(resp.lines)


@client_command
def cmd_open(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.OpenJobRequest(args.name, args.max_fails), m.SubmitResponse)
    out.job_opened(resp.job_id)


@client_command
def cmd_wait(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    started = time.monotonic()
    jobs = wait_for_jobs(conn, args.selector, args.without_close, args.progress, quiet_output(out))
    out.job_wait_result(jobs, time.monotonic() - started)


@client_command
def cmd_summary(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.ListJobsRequest(None), m.JobListResponse)
    out.job_summary(resp.jobs)


@client_command
def cmd_task_ids(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.TaskIdsRequest(args.selector, args.filter), m.TaskIdsResponse)
    out.task_ids(resp.jobs)


@client_command
def cmd_cat(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    # Printed page by page: the client's memory does not grow with the job.
    last_job: int | None = None
    for page in _task_pages(conn, m.TaskListRequest(args.job_id, args.tasks, args.task_status)):
        if last_job is None and not page.jobs:
            log.error("No jobs were found")
            return
        for job_id, tasks in page.jobs:
            if job_id != last_job:
                last_job = job_id
                if args.tasks is not None:
                    _warn_missing_tasks(conn, job_id, args.tasks)
                if not tasks:
                    log.warning(
                        "No tasks were selected for job %d, there is nothing to print", job_id
                    )
                    continue
            _print_streams(args, job_id, tasks)
    sys.stdout.flush()


def _print_streams(args: argparse.Namespace, job_id: int, tasks: list[m.TaskView]) -> None:
    """The output files of some tasks of a job, as they are (headers and files go to the
    binary stream, so that nothing waits for a flush in between)."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    for task in tasks:
        path = task.stdout if args.stream == "stdout" else task.stderr
        if task.state is TaskState.WAITING and path is None:
            continue
        if path is None:
            out.flush()
            log.warning("Task %d has no `%s` stream associated with it", task.id, args.stream)
            continue
        if args.print_task_header:
            out.write(f"# Job {job_id}, task {task.id}\n".encode())
        _copy_to_stdout(path)
    out.flush()


def _warn_missing_tasks(conn: BlockingConnection, job_id: int, requested: str) -> None:
    """`Task N of job J not found` for asked ids that the job does not have (whatever their
    state). Missing ids are worked out as ranges; past `MISSING_ONE_BY_ONE` of them, each run
    is one line (`Tasks 6-4294967295 of job 1 not found`)."""
    from hqpy.common.idset import IdSet, parse_id_set

    ids = conn.request(m.TaskIdsRequest(str(job_id), ()), m.TaskIdsResponse)
    existing = parse_id_set(ids.jobs[0][1]) if ids.jobs and ids.jobs[0][1] else IdSet()
    missing = parse_id_set(requested).difference(existing)
    if len(missing) <= MISSING_ONE_BY_ONE:
        for task_id in missing:
            log.warning("Task %d of job %d not found", task_id, job_id)
        return
    for start, stop, step in missing.runs():
        last = stop - 1
        if start == last:
            log.warning("Task %d of job %d not found", start, job_id)
        elif step == 1:
            log.warning("Tasks %d-%d of job %d not found", start, last, job_id)
        else:
            log.warning("Tasks %d-%d:%d of job %d not found", start, last, step, job_id)


@client_command
def cmd_task_list(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = _task_list(conn, m.TaskListRequest(args.selector, args.tasks, args.task_status))
    _log_missing(resp.missing)
    out.task_list(resp.jobs, args.verbose)


@client_command
def cmd_task_info(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    job_id = _resolve_job_id(conn, args.job_id)
    if job_id is None:
        log.error("Job %s not found", args.job_id)
        return
    resp = _task_info(conn, job_id, args.task_ids)
    if resp.job is None:
        log.error("Job %d not found", job_id)
        return
    if resp.missing:
        log.warning("%s not found", m.describe_ids("Task", resp.missing))
    out.task_info(resp.job, resp.tasks, args.verbose)


@client_command
def cmd_task_explain(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> int:
    job_id = _resolve_job_id(conn, args.job_id)
    if job_id is None:
        log.error("Job %s not found", args.job_id)
        return 1
    resp = conn.request(m.TaskExplainRequest(job_id, args.task_id), m.TaskExplainResponse)
    if not resp.found:
        log.error("Task %d of job %d not found", args.task_id, job_id)
        return 1
    out.task_explain(resp)
    return 0


def _resolve_job_id(conn: BlockingConnection, text: str) -> int | None:
    if text != "last":
        try:
            return int(text)
        except ValueError:
            raise ClientError(f"invalid job id `{text}`: expected a number or `last`") from None
    resp = conn.request(m.ListJobsRequest(None), m.JobListResponse)
    return max((j.id for j in resp.jobs), default=None)


def _copy_to_stdout(path: str) -> None:
    """A task's output file as it is; a missing file (the task never ran) prints nothing."""
    import shutil  # here: most commands of this module never copy a file

    try:
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    except OSError:
        pass
