"""What client commands share: parsing helpers for argparse and running a call on the server."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from hqpy.cli.output import Output, make_output
from hqpy.client.blocking import BlockingConnection, ClientError, connect
from hqpy.protocol import messages as m

log = logging.getLogger("hqpy.cli")


def duration(text: str) -> float:
    """argparse type for durations (`30s`, `1h 30m`, `500ms`, `HH:MM:SS`)."""
    from hqpy.common.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number `{text}`") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"`{text}` must be at least 1")
    return value


def output_of(args: argparse.Namespace) -> Output:
    return make_output(args.output_mode, args.colors)


def run_client(
    args: argparse.Namespace, call: Callable[[BlockingConnection, Output], int | None]
) -> int:
    """Connect to the server of `args.server_dir`, run `call`, and turn errors into exit codes."""
    out = output_of(args)
    try:
        with connect(args.server_dir) as conn:
            return call(conn, out) or 0
    except ClientError as e:
        out.error(str(e))
        return 1


def emit_log_lines(lines: list[m.LogLine]) -> None:
    """Log what the server said, at the level it chose (HyperQueue logs these on stderr)."""
    levels = {"INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}
    for line in lines:
        log.log(levels.get(line.level, logging.INFO), "%s", line.text)


def add_selector(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("selector", help=f"{what} selector: an id, a range (1-3), `last` or `all`")
