"""`hq worker start|list|info|stop|address|wait`."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy.cli.common import (
    add_selector,
    client_command,
    duration,
    emit_log_lines,
    output_of,
    positive_int,
    tag_arg,
)

if TYPE_CHECKING:
    from hqpy.cli.main import CommandTree, Subparsers
    from hqpy.cli.output import Output
    from hqpy.client.blocking import BlockingConnection

log = logging.getLogger("hqpy.cli")


def register(tree: CommandTree, nouns: Subparsers) -> None:
    worker = tree.command(nouns, "worker", "Commands for managing workers")
    verbs = tree.group(worker, "verb")

    p = tree.command(verbs, "start", "Start a worker (stays in the foreground)")
    p.add_argument("--cpus", help="Cpus of the worker: `4`, `2x8`, `[0,1,5]` (default: detected)")
    p.add_argument(
        "--resource",
        action="append",
        default=[],
        help="A resource pool: `gpus=[0,1]`, `mem=sum(1024)`",
    )
    p.add_argument("--no-detect-resources", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--detect-resources",
        default="all",
        help="Which resources to detect: `all`, `none` or a list such as `cpus,mem`",
    )
    p.add_argument("--no-hyper-threading", action="store_true", help="Ignore hyper-threads")
    p.add_argument("--idle-timeout", type=duration, help="Stop after this long without tasks")
    p.add_argument("--time-limit", type=duration, help="Stop after this long")
    p.add_argument("--heartbeat", type=duration, default=8.0, help="Heartbeat interval (8s)")
    p.add_argument("--group", help="Worker group (default: the allocation id, else `default`)")
    p.add_argument("--hostname", help="Hostname reported to the server")
    p.add_argument(
        "--manager",
        choices=("detect", "none", "slurm", "pbs"),
        default="detect",
        help="Batch system to read the allocation from",
    )
    p.add_argument(
        "--on-server-lost",
        choices=("stop", "finish-running"),
        default="stop",
        help="What to do with running tasks when the server is lost",
    )
    p.add_argument(
        "--server-lost-grace",
        type=duration,
        default=0.0,
        help="On losing the server, keep running tasks and reconnect for this long "
        "(default 0: give up at once; allocations' workers get 5m)",
    )
    p.add_argument("--work-dir", type=Path, help="Directory for task dirs and temporary files")
    p.add_argument("--overview-interval", type=duration, help=argparse.SUPPRESS)
    p.add_argument("--coupling", help=argparse.SUPPRESS)
    p.add_argument("--min-utilization", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--filter-tag",
        dest="filter_tags",
        type=tag_arg,
        action="append",
        default=[],
        help="Run only tasks with this tag (NAME or KEY=VALUE; repeatable: all of them)",
    )
    p.set_defaults(func=cmd_start, long_running=True)

    p = tree.command(verbs, "list", "List workers")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--all", action="store_true", help="Show all workers, also offline ones")
    g.add_argument("--filter", choices=("running", "offline"), help="Show only these workers")
    p.set_defaults(func=cmd_list)

    p = tree.command(verbs, "info", "Show information about workers")
    add_selector(p, "Worker")
    p.set_defaults(func=cmd_info)

    p = tree.command(verbs, "stop", "Stop workers")
    add_selector(p, "Worker")
    p.set_defaults(func=cmd_stop)

    p = tree.command(verbs, "address", "Print the hostname of a worker")
    p.add_argument("worker_id", type=int)
    p.set_defaults(func=cmd_address)

    p = tree.command(verbs, "wait", "Wait until this many workers are running")
    p.add_argument("count", type=positive_int)
    p.set_defaults(func=cmd_wait)

    # Hidden: allocation scripts' exit trap (w2alloc, issue #13.1).
    from hqpy.cli import report_end

    report_end.register(tree, verbs)


def cmd_start(args: argparse.Namespace) -> int:
    """Detect and check the configuration, then `run_worker` (see `hqpy.worker.startup`): only
    what registering needs is imported before the worker is registered."""
    import os

    from hqpy.autoalloc.partitions import SPLIT_ENV, worker_group
    from hqpy.common.resources import parse_descriptor, parse_resource_arg
    from hqpy.common.tags import parse_tags
    from hqpy.worker.hwdetect import detect_resources
    from hqpy.worker.manager import ManagerError, detect_manager
    from hqpy.worker.startup import WorkerOptions, run_worker

    try:
        items = []
        names: set[str] = set()
        if args.cpus is not None:
            items.append(parse_descriptor("cpus", args.cpus))
            names.add("cpus")
        for text in args.resource:
            name, definition = parse_resource_arg(text)
            if name in names:
                raise ValueError(f"resource `{name}` is defined twice")
            items.append(parse_descriptor(name, definition))
            names.add(name)
        detect = args.detect_resources.strip()
        if detect != "none" and not args.no_detect_resources:
            wanted = None if detect == "all" else {d.strip() for d in detect.split(",")}
            items += [d for d in detect_resources(wanted) if d.name not in names]
        manager = detect_manager(args.manager)
        hostname = args.hostname or socket.gethostname()
        group = args.group or (manager.allocation_id if manager is not None else "default")
        filter_tags = list(args.filter_tags)
        split = os.environ.get(SPLIT_ENV)
        if split:
            # A part of a partitioned allocation (`hq alloc add --split`).
            allocation_id = None if manager is None else manager.allocation_id
            part_group, part_tags = worker_group(split, allocation_id, f"{hostname}-{os.getpid()}")
            group = args.group or part_group
            filter_tags += part_tags
        filter_tags = sorted(parse_tags(filter_tags))
    except ValueError as e:
        output_of(args).error(f"Invalid worker configuration: {e}")
        return 2
    except ManagerError as e:
        output_of(args).error(str(e))
        return 1
    options = WorkerOptions(
        server_dir=args.server_dir,
        resources=tuple(items),
        hostname=hostname,
        heartbeat=args.heartbeat,
        idle_timeout=args.idle_timeout,
        time_limit=args.time_limit,
        group=group,
        on_server_lost=args.on_server_lost,
        work_dir=args.work_dir,
        manager=manager,
        zero_worker=os.environ.get("HQPY_ZERO_WORKER") == "1",
        min_utilization=args.min_utilization,
        overview_interval=args.overview_interval,
        filter_tags=tuple(filter_tags),
        server_lost_grace=args.server_lost_grace,
    )
    return run_worker(options)


@client_command
def cmd_list(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.common.states import WorkerFilter
    from hqpy.protocol import messages as m

    flt = WorkerFilter.ALL if args.all else WorkerFilter(args.filter or "running")
    resp = conn.request(m.ListWorkersRequest(flt), m.WorkerListResponse)
    out.worker_list(resp.workers)


@client_command
def cmd_info(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.protocol import messages as m

    resp = conn.request(m.WorkerInfoRequest(args.selector), m.WorkerListResponse)
    if not resp.workers:
        log.error("Worker %s not found", args.selector)
    out.worker_info(resp.workers)


@client_command
def cmd_stop(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.protocol import messages as m

    resp = conn.request(m.StopWorkersRequest(args.selector), m.LogLinesResponse)
    emit_log_lines(resp.lines)


@client_command
def cmd_address(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> int:
    from hqpy.protocol import messages as m

    resp = conn.request(m.WorkerInfoRequest(str(args.worker_id)), m.WorkerListResponse)
    if not resp.workers:
        out.error(f"Worker {args.worker_id} not found")
        return 1
    out.worker_address(resp.workers[0].configuration.hostname)
    return 0


@client_command
def cmd_wait(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.protocol import messages as m

    conn.request(m.WaitWorkersRequest(args.count), m.OkResponse)
