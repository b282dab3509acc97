"""`hq worker report-end` (hidden): an allocation script's exit trap tells the server that the
allocation ended, with its exit code and the tail of its stderr.

It connects to the worker port with the worker secret of the access file, as a worker does,
and sends `AllocationEnded` instead of `RegisterWorker`; the server closes the connection
once it has taken the report. Everything is bounded: the stderr tail (`TAIL_BYTES`) and the
whole call (`REPORT_TIMEOUT`), so a dead server never holds up the end of an allocation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hqpy.cli.main import CommandTree, Subparsers

TAIL_BYTES = 4096
REPORT_TIMEOUT = 10.0
VERBS = ("start", "list", "info", "stop", "address", "wait")
"""The verbs `hq worker --help` lists; `report-end` is left out of them."""


def register(tree: CommandTree, verbs: Subparsers) -> None:
    """Add `report-end` to `hq worker`'s verbs without a help line (scripts call it)."""
    p = verbs.add_parser("report-end", parents=[tree.common])
    verbs.metavar = "{" + ",".join(VERBS) + "}"
    p.add_argument("--allocation", required=True, help="The allocation id")
    p.add_argument("--exit-code", type=int, required=True, help="The script's exit code")
    p.add_argument("--stderr-file", type=Path, help="The allocation's stderr file")
    p.set_defaults(func=cmd_report_end)


def read_tail(path: Path | None, limit: int = TAIL_BYTES) -> str:
    """The last `limit` bytes of a file (empty if it cannot be read), from a line start when
    one is near, decoded leniently."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return ""
    if size > limit:
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:
            data = data[newline + 1 :]
    return data.decode("utf-8", errors="replace")


def cmd_report_end(args: argparse.Namespace) -> int:
    import trio

    from hqpy.cli.common import output_of
    from hqpy.common import serverdir
    from hqpy.protocol import codec
    from hqpy.protocol import messages as m
    from hqpy.protocol.auth import AuthError, peer_handshake
    from hqpy.protocol.framing import FramedStream, ProtocolError

    out = output_of(args)
    message = m.AllocationEnded(args.allocation, args.exit_code, read_tail(args.stderr_file))

    async def report() -> None:
        with trio.fail_after(REPORT_TIMEOUT):
            await send()

    async def send() -> None:
        record = serverdir.load_access(args.server_dir)
        if record.worker is None or not record.worker.secret_key:
            raise serverdir.AccessError("The access file has no worker part")
        stream = await trio.open_tcp_stream(record.worker.host, record.worker.port)
        async with stream:
            framed = FramedStream(stream)
            await peer_handshake(framed, "worker", record.worker.secret_key)
            await framed.send(message, codec.FROM_WORKER)
            # The server closes the connection once it has the report.
            await framed.receive_frame()

    try:
        trio.run(report)
    except trio.TooSlowError:
        out.error(f"Could not report the end of allocation {args.allocation}: timed out")
        return 1
    except (serverdir.AccessError, OSError, AuthError, ProtocolError) as e:
        out.error(f"Could not report the end of allocation {args.allocation}: {e}")
        return 1
    return 0
