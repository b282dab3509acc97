"""`hq server start|stop|info|wait|generate-access`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy.cli.common import client_command, duration, output_of

if TYPE_CHECKING:  # `server start` writes its access file before importing these
    from hqpy.cli.main import CommandTree, Subparsers
    from hqpy.cli.output import Output
    from hqpy.client.blocking import BlockingConnection
    from hqpy.server.startup import EarlyStart

log = logging.getLogger("hqpy.cli")


def register(tree: CommandTree, nouns: Subparsers) -> None:
    server = tree.command(nouns, "server", "Commands for controlling the server")
    verbs = tree.group(server, "verb")

    p = tree.command(verbs, "start", "Start the server (stays in the foreground)")
    p.add_argument("--host", help="Hostname that clients and workers use to reach the server")
    p.add_argument("--client-port", type=int, default=0, help="Port for clients (default: random)")
    p.add_argument("--worker-port", type=int, default=0, help="Port for workers (default: random)")
    p.add_argument("--access-file", type=Path, help="Serve the hosts, ports and keys of this file")
    p.add_argument(
        "--idle-timeout", type=duration, help="Default idle timeout of workers that set none"
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="Serve Prometheus metrics (/metrics) and the status page (/) on this port",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="Address the metrics port listens on (default: 127.0.0.1)",
    )
    p.add_argument(
        "--journal",
        type=Path,
        help="Journal file: restore the jobs it holds (when it exists) and record new ones in it",
    )
    p.add_argument(
        "--journal-flush-period",
        type=duration,
        default=1.0,
        help="How often task completions are written to the journal (default: 1s)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("HQPY_CONFIG") or None,
        help="A TOML file of queues and pools to add at start (default: $HQPY_CONFIG; "
        "see docs/config.md)",
    )
    p.set_defaults(func=cmd_start, long_running=True)

    p = tree.command(verbs, "stop", "Stop the server")
    p.set_defaults(func=cmd_stop)

    p = tree.command(verbs, "info", "Show information about the running server")
    p.set_defaults(func=cmd_info)

    p = tree.command(verbs, "wait", "Wait until a server is running")
    p.add_argument("--timeout", type=duration, default=300.0, help="How long to wait (default 5m)")
    p.set_defaults(func=cmd_wait)

    p = tree.command(
        verbs, "generate-access", "Write an access file for `server start --access-file`"
    )
    p.add_argument("file", type=Path, help="Where to write the whole record")
    p.add_argument("--client-port", type=_port, required=True, help="Port for clients")
    p.add_argument("--worker-port", type=_port, required=True, help="Port for workers")
    p.add_argument("--host", help="Hostname of both endpoints (default: this host's name)")
    p.add_argument("--client-host", help="Hostname for clients (instead of --host)")
    p.add_argument("--worker-host", help="Hostname for workers (instead of --host)")
    p.add_argument("--client-file", type=Path, help="Also write the client part alone here")
    p.add_argument("--worker-file", type=Path, help="Also write the worker part alone here")
    p.set_defaults(func=cmd_generate_access)


def cmd_start(args: argparse.Namespace) -> int:
    """Bind, write the access file and `hq-current` first (standard library only), then import
    and start the rest. SIGINT or SIGTERM at any point is a clean stop: exit 0, no link left."""
    from hqpy.cli import early_signals

    early_signals.install()  # already done by `main`, unless called directly
    stop_signals = early_signals.received
    from hqpy.server.startup import StartError, early_start

    startup = None
    if args.config is not None:
        # Checked before anything is bound: a bad file starts nothing.
        from hqpy.autoalloc.backends import registry
        from hqpy.autoalloc.params import split_error
        from hqpy.config.loader import ConfigError, load_file

        try:
            startup = load_file(args.config, registry.names(), split_error)
        except ConfigError as e:
            output_of(args).error(str(e))
            return 1
    args.startup = startup
    try:
        early = early_start(
            args.server_dir, args.host, args.client_port, args.worker_port, args.access_file
        )
    except StartError as e:
        output_of(args).error(str(e))
        return 1
    except OSError as e:
        output_of(args).error(f"Cannot start the server: {e}")
        return 1
    try:
        if stop_signals:
            return 0
        return _serve(args, early, stop_signals)
    finally:
        from hqpy.common import serverdir

        serverdir.unlink_current(args.server_dir, early.instance_dir)
        early.close()


def _serve(args: argparse.Namespace, early: EarlyStart, stop_signals: list[int]) -> int:
    import trio

    from hqpy.app.server_process import ServerProcess
    from hqpy.common.errors import RequestError
    from hqpy.common.serverdir import AccessError
    from hqpy.journal.file import JournalError
    from hqpy.protocol import messages as m
    from hqpy.server.server import ServerConfig

    out = output_of(args)
    config = ServerConfig(
        server_dir=args.server_dir,
        host=args.host,
        client_port=args.client_port,
        worker_port=args.worker_port,
        access_file=args.access_file,
        idle_timeout=args.idle_timeout,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        early=early,
    )

    async def run() -> None:
        server = ServerProcess(
            config,
            journal=args.journal,
            journal_flush_period=args.journal_flush_period,
            startup=args.startup,
        )
        import signal

        # Open before the server starts, so that no signal falls between two receivers.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if stop_signals:
                return
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    async for _ in signals:
                        server.request_stop()
                        return

                async def serve(*, task_status: trio.TaskStatus[m.ServerInfoView]) -> None:
                    await server.run(task_status=task_status)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                info = await nursery.start(serve)
                out.server_started(info)

    errors: list[str] = []
    try:
        trio.run(run)
    except* AccessError as group:
        errors.append(str(_first_leaf(group)))
    except* JournalError as group:
        errors.append(str(_first_leaf(group)))
    except* RequestError as group:
        errors.append(f"{args.config}: {_first_leaf(group)}")
    except* OSError as group:
        errors.append(f"Cannot start the server: {_first_leaf(group)}")
    if errors:
        out.error(errors[0])
        return 1
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    """The first real exception in (nested) nursery exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port `{text}`") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


@client_command
def cmd_stop(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.protocol import messages as m

    conn.request(m.StopServerRequest(), m.OkResponse)


@client_command
def cmd_info(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    from hqpy.protocol import messages as m

    resp = conn.request(m.ServerInfoRequest(), m.ServerInfoResponse)
    out.server_info(resp.info)


def cmd_wait(args: argparse.Namespace) -> int:
    from hqpy.client.blocking import ClientError, connect

    out = output_of(args)

    deadline = time.monotonic() + args.timeout
    while True:
        try:
            connect(args.server_dir, wait=0).close()
            break
        except ClientError:
            if time.monotonic() >= deadline:
                from hqpy.common.durations import format_duration

                out.error(
                    f"Timeout after {format_duration(args.timeout)}: Could not connect to server "
                    f"at `{args.server_dir}`. Make sure that the server is running."
                )
                return 1
            time.sleep(0.2)
    return 0


def cmd_generate_access(args: argparse.Namespace) -> int:
    """FILE gets the whole record; `--client-file`/`--worker-file` (either or both) get
    exactly `version` and their own part, without `server_uid`, as HyperQueue writes them."""
    from hqpy import __version__
    from hqpy.common import serverdir
    from hqpy.protocol.auth import new_secret

    for other in ("client_host", "worker_host"):
        if args.host is not None and getattr(args, other) is not None:
            flag = "--" + other.replace("_", "-")
            print(
                f"error: the argument '--host <HOST>' cannot be used with "
                f"'{flag} <{other.upper()}>'",
                file=sys.stderr,
            )
            return 2
    host = args.host or socket.gethostname()
    client = serverdir.Endpoint(args.client_host or host, args.client_port, new_secret())
    worker = serverdir.Endpoint(args.worker_host or host, args.worker_port, new_secret())
    full = serverdir.AccessRecord(__version__, serverdir.new_server_uid(), client, worker)
    writes = [(args.file, full)]
    if args.client_file is not None:
        writes.append((args.client_file, serverdir.AccessRecord(__version__, client=client)))
    if args.worker_file is not None:
        writes.append((args.worker_file, serverdir.AccessRecord(__version__, worker=worker)))
    for path, record in writes:
        try:
            serverdir.write_access(path, record)
        except OSError as e:
            output_of(args).error(f"Cannot write access file `{path}`: {e.strerror or e}")
            return 1
    return 0
