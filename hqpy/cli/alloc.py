"""`hq alloc add|dry-run|list|info|events|log|pause|resume|remove|drain|preallocate|stop|load`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy.autoalloc.backends import registry
from hqpy.autoalloc.params import split_error
from hqpy.cli.common import (
    client_command,
    duration,
    output_of,
    positive_int,
    run_client,
    tag_arg,
)
from hqpy.cli.output import Output
from hqpy.client.blocking import BlockingConnection, ClientError
from hqpy.protocol import messages as m

if TYPE_CHECKING:
    from hqpy.cli.main import CommandTree, Subparsers

log = logging.getLogger("hqpy.cli")

IDLE_TIMEOUT_WARNING = 10 * 60.0
MAX_TEMPLATE_BYTES = 256 * 1024


def _backlog(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number `{text}`") from None
    if value < 1:
        raise argparse.ArgumentTypeError("Backlog has to be at least 1")
    return value


def _utilization(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number between 0 and 1")
    return value


def _absolute(text: str) -> str:
    """A path option, made absolute against the directory `hq` runs in."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return os.path.abspath(os.path.expanduser(text))


def _size(text: str) -> int:
    """Binary sizes, as the batch systems read them: `16g` and `16GB` are 16 GiB."""
    import humanfriendly  # type: ignore[import-untyped]

    try:
        value = int(humanfriendly.parse_size(text, binary=True))
    except humanfriendly.InvalidSize:
        raise argparse.ArgumentTypeError(f"`{text}` is not a size (e.g. 16g or 512MiB)") from None
    if value < 2**20:
        raise argparse.ArgumentTypeError(f"`{text}` is less than 1 MiB")
    return value


def add_queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("manager", choices=registry.names(), help="The batch system")
    p.add_argument(
        "-t", "--time-limit", type=duration, required=True, help="Walltime of allocations"
    )
    p.add_argument("-b", "--backlog", type=_backlog, default=1, help="Allocations kept queued")
    p.add_argument(
        "-m",
        "--workers-per-alloc",
        "--max-workers-per-alloc",
        dest="workers_per_alloc",
        type=positive_int,
        default=1,
        help="Workers (nodes) per allocation",
    )
    p.add_argument("--max-worker-count", type=positive_int, help="Cap on the queue's workers")
    p.add_argument("-n", "--name", help="Name of the queue (used in allocation names)")
    p.add_argument(
        "--idle-timeout", type=duration, default=300.0, help="Workers' idle timeout (5m)"
    )
    p.add_argument("--worker-time-limit", type=duration, help="Workers' time limit")
    p.add_argument("--worker-start-cmd", help="Shell command run before each worker")
    p.add_argument("--worker-stop-cmd", help="Shell command run after each worker")
    p.add_argument("--worker-wrap-cmd", help="Prefix of the worker command")
    p.add_argument("--on-server-lost", choices=("stop", "finish-running"), default="finish-running")
    p.add_argument("--cpus", help="Cpus of each worker, as `hq worker start --cpus`")
    p.add_argument("--resource", action="append", default=[], help="A worker resource pool")
    p.add_argument("--group", help="Worker group (default: the allocation id)")
    p.add_argument("--coupling", help="Passed on to `hq worker start --coupling`")
    p.add_argument("--no-hyper-threading", action="store_true", help="Passed on to the workers")
    p.add_argument("--detect-resources", help="Passed on to `hq worker start`")
    p.add_argument("--overview-interval", type=duration, help="Passed on to the workers")
    p.add_argument("--min-utilization", type=_utilization, default=0.0, help="0..1, as workers")
    p.add_argument(
        "--env-script",
        type=_absolute,
        help="A bash file sourced first in each allocation script (modules, venvs)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A variable exported for the workers (repeatable)",
    )
    p.add_argument(
        "--python",
        help="The interpreter that runs the workers (default: the server's; `python3` allowed)",
    )
    p.add_argument(
        "--worker-dir", type=_absolute, help="The workers' working directory (created if missing)"
    )
    p.add_argument(
        "--script-template",
        type=_absolute,
        help="A string.Template file that replaces the built-in allocation script",
    )
    p.add_argument(
        "-x",
        dest="template_params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A parameter of the script template, used as $KEY (repeatable)",
    )
    # --- splits (issue 11) ---------------------------------------------------------------------
    p.add_argument(
        "--split",
        dest="splits",
        action="append",
        default=[],
        metavar="KIND:COUNT[:TAG,...]",
        help="A part of each allocation: `mpi` (one worker group) or `serial` (one worker per "
        "node), its node count and its workers' filter tags; the counts add up to "
        "--workers-per-alloc (repeatable)",
    )
    p.add_argument(
        "--filter-tag",
        action="append",
        default=[],
        type=tag_arg,
        metavar="TAG",
        help="The workers run only tasks with this tag (NAME or KEY=VALUE; repeatable)",
    )
    p.add_argument(
        "--preallocate",
        type=positive_int,
        metavar="N",
        default=0,
        help="A pool: submit N allocations at once when there is work for them, keep N up",
    )
    p.add_argument(
        "--persist",
        action="store_true",
        help="With --preallocate: keep the N up from now on, with or without work",
    )
    p.add_argument(
        "--memory",
        type=_size,
        help="Memory per node asked of the batch system (16g = 16 GiB); the workers' `mem`",
    )
    p.add_argument(
        "--pe",
        dest="parallel_environment",
        metavar="NAME",
        help="sge: the parallel environment of allocations of several workers "
        "(one of `qconf -spl`)",
    )
    p.set_defaults(additional_args=[], batch_args=True)
    p.epilog = "Arguments after `--` go verbatim into the script as one batch directive line."


def register(tree: CommandTree, nouns: Subparsers) -> None:
    alloc = tree.command(nouns, "alloc", "Automatic allocation: queues that submit allocations")
    verbs = tree.group(alloc, "verb")

    p = tree.command(verbs, "add", "Create an allocation queue")
    add_queue_options(p)
    p.add_argument("--no-dry-run", action="store_true", help="Skip the trial submission")
    p.set_defaults(func=cmd_add)

    p = tree.command(verbs, "dry-run", "Submit a trial allocation and cancel it at once")
    add_queue_options(p)
    p.add_argument(
        "--print-script",
        action="store_true",
        help="Only print the script that would be submitted (nothing is submitted)",
    )
    p.set_defaults(func=cmd_dry_run)

    p = tree.command(verbs, "list", "List allocation queues")
    p.set_defaults(func=cmd_list)

    p = tree.command(verbs, "info", "List the allocations of a queue")
    p.add_argument("queue_id", type=int)
    p.add_argument("--filter", choices=("queued", "running", "finished", "failed"))
    p.set_defaults(func=cmd_info)

    p = tree.command(verbs, "events", "Show the history of a queue")
    p.add_argument("queue_id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="Keep printing new events")
    p.set_defaults(func=cmd_events)

    p = tree.command(verbs, "log", "Print the stdout or stderr of an allocation")
    p.add_argument("allocation_id")
    p.add_argument("channel", choices=("stdout", "stderr"))
    p.set_defaults(func=cmd_log)

    p = tree.command(verbs, "preallocate", "Start the allocations of preallocated pools now")
    p.add_argument("queues", nargs="*", metavar="QUEUE", help="Pool ids or names (none: all)")
    p.set_defaults(func=cmd_preallocate)

    p = tree.command(verbs, "stop", "End the allocations of preallocated pools")
    p.add_argument(
        "--preallocated",
        action="store_true",
        help="Required: end the (persistent) pools' allocations and stop replacing them",
    )
    p.add_argument("queues", nargs="*", metavar="QUEUE", help="Pool ids or names (none: all)")
    p.add_argument("--now", action="store_true", help="Cancel at once, also running tasks")
    p.set_defaults(func=cmd_stop)

    p = tree.command(verbs, "load", "Add the queues and pools of a TOML configuration")
    p.add_argument("file", help="The configuration (see docs/config.md)")
    p.set_defaults(func=cmd_load)

    for action, helptext in (
        ("pause", "Stop submitting allocations"),
        ("resume", "Submit allocations again (also resets the failure counters)"),
        ("remove", "Remove a queue, cancelling its allocations"),
    ):
        p = tree.command(verbs, action, helptext)
        p.add_argument("queue_id", type=int)
        if action == "remove":
            p.add_argument("--force", action="store_true", help="Also if allocations run")
        p.set_defaults(func=cmd_queue_action, action=action)

    # --- drain (issue 11) ---------------------------------------------------------------------
    p = tree.command(
        verbs, "drain", "End an allocation: no new tasks, hand back what still runs, cancel it"
    )
    p.add_argument("allocation_id")
    p.add_argument(
        "--grace",
        type=duration,
        default=0.0,
        help="Time running tasks get to finish before they are handed back (default 0)",
    )
    p.set_defaults(func=cmd_drain)


def queue_params(args: argparse.Namespace) -> m.QueueParams | None:
    """The queue described by the options, or None (after printing why) if it cannot be."""
    if args.persist and not args.preallocate:
        output_of(args).error("--persist needs --preallocate N (the number of allocations)")
        return None
    if args.worker_time_limit is not None and args.worker_time_limit > args.time_limit:
        output_of(args).error("Worker time limit cannot be larger than queue time limit")
        return None
    template = None
    if args.script_template is not None:
        try:
            with open(args.script_template, encoding="utf-8") as f:
                template = f.read(MAX_TEMPLATE_BYTES + 1)
        except (OSError, UnicodeDecodeError) as e:
            output_of(args).error(f"Cannot read script template `{args.script_template}`: {e}")
            return None
        if len(template) > MAX_TEMPLATE_BYTES:
            output_of(args).error(
                f"Script template `{args.script_template}` is larger than "
                f"{MAX_TEMPLATE_BYTES // 1024} KiB"
            )
            return None
    params = m.QueueParams(
        manager=args.manager,
        time_limit=args.time_limit,
        backlog=args.backlog,
        workers_per_alloc=args.workers_per_alloc,
        max_worker_count=args.max_worker_count,
        name=args.name,
        idle_timeout=args.idle_timeout,
        worker_time_limit=args.worker_time_limit,
        worker_start_cmd=args.worker_start_cmd,
        worker_stop_cmd=args.worker_stop_cmd,
        worker_wrap_cmd=args.worker_wrap_cmd,
        on_server_lost=args.on_server_lost,
        cpus=args.cpus,
        resources=tuple(args.resource),
        additional_args=tuple(args.additional_args),
        group=args.group,
        coupling=args.coupling,
        no_hyper_threading=args.no_hyper_threading,
        detect_resources=args.detect_resources,
        overview_interval=args.overview_interval,
        min_utilization=args.min_utilization,
        env_script=args.env_script,
        worker_env=tuple(args.worker_env),
        python=args.python,
        worker_dir=args.worker_dir,
        script_template=template,
        template_params=tuple(args.template_params),
        splits=tuple(args.splits),
        filter_tags=tuple(dict.fromkeys(args.filter_tag)),
        preallocate=args.preallocate,
        persist=args.persist,
        memory=args.memory,
        parallel_environment=args.parallel_environment,
    )
    error = split_error(params)
    if error is not None:
        # A usage error (exit 2, as clap's), caught before any round trip to the server.
        output_of(args).error(error)
        raise SystemExit(2)
    return params


def dry_run_message(manager: str) -> str:
    """HyperQueue's line for a batch system; the local backend only checks its script."""
    if manager == "local":
        return (
            "The allocation script was checked with `bash -n`. "
            "No trial allocation was started for the local queue."
        )
    return (
        "A trial allocation was submitted successfully. "
        "It was immediately canceled to avoid wasting resources."
    )


def cmd_add(args: argparse.Namespace) -> int:
    params = queue_params(args)
    if params is None:
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        if params.cpus is None and not params.resources and params.manager != "local":
            log.warning(
                "No worker resources were provided for this queue. Before the first worker "
                "connects from an allocation submitted by this queue, the queue will operate "
                "in probing mode."
            )
        if params.idle_timeout > IDLE_TIMEOUT_WARNING:
            log.warning(
                "You have set an idle timeout longer than 10 minutes. "
                "This can result in wasted allocation duration."
            )
        resp = conn.request(
            m.AllocAddRequest(params, dry_run=not args.no_dry_run), m.QueueCreatedResponse
        )
        if not args.no_dry_run:
            log.info(dry_run_message(params.manager))
        log.info("Allocation queue %d successfully created", resp.queue_id)
        out.empty()

    return run_client(args, call)


def cmd_dry_run(args: argparse.Namespace) -> int:
    params = queue_params(args)
    if params is None:
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        if args.print_script:
            # The server renders the script into a dry-run allocation dir and says where.
            resp = conn.request(m.AllocDryRunRequest(params, print_script=True), m.AllocLogResponse)
            script = Path(resp.workdir) / "hq-submit.sh"
            try:
                sys.stdout.write(script.read_text())
            except OSError as e:
                raise ClientError(f"Cannot read the rendered script {script}: {e}") from None
            shutil.rmtree(resp.workdir, ignore_errors=True)
            return
        conn.request(m.AllocDryRunRequest(params), m.OkResponse)
        log.info(dry_run_message(params.manager))
        out.empty()

    return run_client(args, call)


@client_command
def cmd_list(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.AllocListRequest(), m.QueueListResponse)
    out.queue_list(resp.queues)


@client_command
def cmd_info(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.AllocInfoRequest(args.queue_id), m.AllocationListResponse)
    allocations = resp.allocations
    if args.filter:
        allocations = [a for a in allocations if a.state.lower() == args.filter]
    out.allocation_list(resp.queue, allocations)


@client_command
def cmd_events(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.AllocEventsRequest(args.queue_id), m.AllocEventsResponse)
    out.alloc_events(resp.events, args.follow)
    if not args.follow:
        return
    seen = resp.total
    try:
        while not resp.queue_removed:
            resp = conn.request(
                m.AllocEventsRequest(args.queue_id, after=seen, wait=True),
                m.AllocEventsResponse,
            )
            seen = resp.total
            if resp.events:
                out.alloc_events(resp.events, True)
    except ClientError:
        # The server stopped: the stream ends here.
        return


def cmd_log(args: argparse.Namespace) -> int:
    if args.output_mode == "json":
        output_of(args).error("`hq alloc log` is not supported in JSON mode")
        return 1

    def call(conn: BlockingConnection, out: Output) -> int:
        resp = conn.request(m.AllocLogRequest(args.allocation_id), m.AllocLogResponse)
        path = f"{resp.workdir}/{args.channel}"
        try:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer)
        except OSError as e:
            out.error(f"Cannot read `{path}`: {e.strerror}")
            return 1
        sys.stdout.flush()
        return 0

    return run_client(args, call)


@client_command
def cmd_drain(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    conn.request(m.AllocDrainRequest(args.allocation_id, args.grace), m.OkResponse)
    log.info("Allocation %s is draining", args.allocation_id)
    out.empty()


@client_command
def cmd_queue_action(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    conn.request(
        m.AllocQueueRequest(
            m.QueueAction(args.action), args.queue_id, getattr(args, "force", False)
        ),
        m.OkResponse,
    )
    done = {"remove": "removed", "pause": "paused", "resume": "resumed"}[args.action]
    log.info("Allocation queue %d successfully %s", args.queue_id, done)


def _queues_done(
    args: argparse.Namespace, what: str, ids: tuple[int, ...], **extra: object
) -> None:
    """The queues a command touched: a line per mode (cli: a log line; json: an object;
    quiet: the ids)."""
    if args.output_mode == "json":
        print(json.dumps({"queue_ids": list(ids), **extra}, indent=2))
    elif args.output_mode == "quiet":
        for queue_id in ids:
            print(queue_id)
    else:
        shown = ", ".join(str(i) for i in ids) if ids else "none"
        log.info("%s: %s", what, shown)


@client_command
def cmd_preallocate(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.AllocPreallocateRequest(tuple(args.queues)), m.AllocQueuesResponse)
    _queues_done(args, "Preallocated pools started", resp.queue_ids)


def cmd_stop(args: argparse.Namespace) -> int:
    if not args.preallocated:
        output_of(args).error(
            "`hq alloc stop` stops preallocated pools: write `hq alloc stop --preallocated "
            "[QUEUE...]` (to remove a queue, use `hq alloc remove`)"
        )
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        resp = conn.request(
            m.AllocStopPreallocatedRequest(tuple(args.queues), args.now), m.AllocQueuesResponse
        )
        _queues_done(args, "Preallocated pools stopped", resp.queue_ids)

    return run_client(args, call)


def cmd_load(args: argparse.Namespace) -> int:
    from hqpy.config.loader import ConfigError, load_file

    try:
        config = load_file(args.file, registry.names(), split_error)
    except ConfigError as e:
        output_of(args).error(str(e))
        return 1

    def call(conn: BlockingConnection, out: Output) -> None:
        resp = conn.request(m.AllocLoadRequest(config.queues), m.AllocQueuesResponse)
        for name, size in config.pools:
            conn.request(m.PoolSetRequest(name, size), m.OkResponse)
        _queues_done(
            args,
            f"Loaded {args.file}: queues",
            resp.queue_ids,
            pools={name: size for name, size in config.pools},
        )
        if config.pools and args.output_mode == "cli":
            log.info("Pools: %s", ", ".join(f"{n} = {s}" for n, s in config.pools))

    return run_client(args, call)
