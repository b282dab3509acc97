"""What client commands share: parsing helpers for argparse and running a call on the server.

Imports of the client, the messages and the output modes happen when a command runs, not when
its parser is built: `hq --help` and usage errors should not pay for them.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from hqpy.common import logs

if TYPE_CHECKING:
    from hqpy.cli.output import Output
    from hqpy.client.blocking import BlockingConnection
    from hqpy.protocol import messages as m

log = logs.get_logger("hqpy.cli")

MAX_COUNT = 2**32 - 1
"""Counts given on the command line are `u32` in HyperQueue."""


def duration(text: str) -> float:
    """argparse type for durations (`30s`, `1h 30m`, `500ms`, `HH:MM:SS`)."""
    from hqpy.common.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _integer(text: str) -> int:
    stripped = text.strip()
    if len(stripped) > 30 or not stripped.lstrip("+-").replace("_", "").isdigit():
        shown = stripped if len(stripped) <= 30 else stripped[:30] + "..."
        raise argparse.ArgumentTypeError(f"invalid number `{shown}`")
    return int(stripped)


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"`{text}` must be at least 1")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"`{text}` is too large (at most {MAX_COUNT})")
    return value


def count(text: str) -> int:
    """argparse type for counts that may be 0 (`--max-fails`): 0 to 2^32 - 1."""
    value = _integer(text)
    if not 0 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"`{text}` is out of range (0 to {MAX_COUNT})")
    return value


def signed_int(text: str) -> int:
    """argparse type for a signed 32-bit value (`--priority`)."""
    value = _integer(text)
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"`{text}` is out of range (a 32-bit signed number)")
    return value


def id_set(text: str) -> str:
    """argparse type for id lists (`--array`, `--tasks`): checked here, sent as typed."""
    from hqpy.common.idset import parse_id_set

    try:
        parse_id_set(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def tag_arg(text: str) -> str:
    """argparse type for `--tag` / `--filter-tag`: NAME or KEY=VALUE."""
    from hqpy.common.tags import parse_tag

    try:
        return parse_tag(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def selector(text: str) -> str:
    """argparse type for `all`, `last` or an id list: checked here, sent as typed."""
    from hqpy.common.idset import parse_selector

    try:
        parse_selector(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def output_of(args: argparse.Namespace) -> Output:
    from hqpy.cli.output import make_output

    return make_output(args.output_mode, args.colors)


def run_client(
    args: argparse.Namespace, call: Callable[[BlockingConnection, Output], int | None]
) -> int:
    """Connect to the server of `args.server_dir`, run `call`, and turn errors into exit codes."""
    from hqpy.client.blocking import ClientError, connect

    out = output_of(args)
    try:
        with connect(args.server_dir) as conn:
            return call(conn, out) or 0
    except ClientError as e:
        out.error(str(e))
        return 1


ClientCall = Callable[[argparse.Namespace, "BlockingConnection", "Output"], int | None]


def client_command(call: ClientCall) -> Callable[[argparse.Namespace], int]:
    """A command that is one session with the server: `call(args, conn, out)` under
    `run_client` (connect, run, errors to exit codes)."""

    @functools.wraps(call)
    def command(args: argparse.Namespace) -> int:
        return run_client(args, functools.partial(call, args))

    return command


def emit_log_lines(lines: list[m.LogLine]) -> None:
    """Log what the server said, at the level it chose (HyperQueue logs these on stderr)."""
    levels = {"INFO": logs.INFO, "WARN": logs.WARNING, "ERROR": logs.ERROR}
    for line in lines:
        log.log(levels.get(line.level, logs.INFO), "%s", line.text)


def add_selector(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "selector", type=selector, help=f"{what} selector: an id, a range (1-3), `last` or `all`"
    )
