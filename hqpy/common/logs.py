"""Logging set-up: `HQPY_LOG` (`hqpy.autoalloc=debug,hqpy=info`) or `--debug`, on stderr.

The default line is `<UTC time> <LEVEL> <message>`, as HyperQueue prints it; in debug mode lines
start with `[` and carry milliseconds and the logger name, so they never look like table rows.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}


class _Formatter(logging.Formatter):
    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        level = LEVEL_NAMES.get(record.levelname, record.levelname)
        t = time.gmtime(record.created)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.debug:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03}Z"
            return f"[{stamp} {level} {record.name}] {message}"
        return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', t)} {level} {message}"


def parse_spec(spec: str) -> tuple[int | None, dict[str, int]]:
    """`info`, `hqpy.autoalloc=debug,hqpy=info` -> (root level, per-logger levels)."""
    root: int | None = None
    levels: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, level = part.rpartition("=")
        value = logging.getLevelName(
            level.strip().upper().replace("WARN", "WARNING").replace("WARNINGING", "WARNING")
        )
        if not isinstance(value, int):
            raise ValueError(
                f"invalid log level `{level}` in HQPY_LOG; use debug, info, warn or error"
            )
        if name:
            levels[name.strip()] = value
        else:
            root = value
    return root, levels


def setup_logging(debug: bool, default_level: int = logging.INFO) -> None:
    spec = os.environ.get("HQPY_LOG", "")
    try:
        root_level, levels = parse_spec(spec)
    except ValueError as e:
        print(e, file=sys.stderr)
        root_level, levels = None, {}
    debug_format = debug or "debug" in spec.lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(debug_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    hqpy_logger = logging.getLogger("hqpy")
    if debug:
        hqpy_logger.setLevel(logging.DEBUG)
    else:
        hqpy_logger.setLevel(root_level if root_level is not None else default_level)
    root.setLevel(logging.WARNING)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
