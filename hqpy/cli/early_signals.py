"""SIGINT/SIGTERM during `server start`'s start-up: recorded, not raised.

`hq server start` sets these handlers before it even parses its arguments, so a signal that
comes while argparse, the imports or the binding run is a clean stop (exit 0, no `hq-current`
left), never a traceback. The server's own signal receiver takes over once trio runs.
"""

from __future__ import annotations

import signal

received: list[int] = []
"""Stop signals that arrived before the server could act on them."""


def _record(signum: int, _frame: object) -> None:
    received.append(signum)


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _record)
