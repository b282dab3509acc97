"""Logging set-up: `HQPY_LOG` (`hqpy.autoalloc=debug,hqpy=info`) or `--debug`, on stderr.

HyperQueue's `RUST_LOG` works too, so its troubleshooting docs apply as written: its module
paths are mapped to hqpy's loggers (`hyperqueue::server::autoalloc=debug` becomes
`hqpy.autoalloc=debug`), and `HQPY_LOG` wins where both name the same logger.

The default line is `<UTC time> <LEVEL> <message>`, as HyperQueue prints it; in debug mode lines
start with `[` and carry milliseconds and the logger name, so they never look like table rows.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

# `logging`'s level values: reading HQPY_LOG must not import logging (see `get_logger`).
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50

LEVEL_NAMES = {"WARNING": "WARN", "CRITICAL": "ERROR"}


def _formatter(debug: bool) -> logging.Formatter:
    import logging

    class Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            level = LEVEL_NAMES.get(record.levelname, record.levelname)
            t = time.gmtime(record.created)
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.formatException(record.exc_info)
            if debug:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03}Z"
                return f"[{stamp} {level} {record.name}] {message}"
            return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', t)} {level} {message}"

    return Formatter()


LEVELS = {
    "trace": DEBUG,
    "debug": DEBUG,
    "info": INFO,
    "warn": WARNING,
    "warning": WARNING,
    "error": ERROR,
    "off": CRITICAL + 10,
}
"""Level names of HQPY_LOG and of RUST_LOG (`trace` is hqpy's `debug`)."""

RUST_MODULES = (
    ("hyperqueue::server::autoalloc", "hqpy.autoalloc"),
    ("hyperqueue::server", "hqpy.server"),
    ("hyperqueue::worker", "hqpy.worker"),
    ("hyperqueue::client", "hqpy.cli"),
    ("hyperqueue::transfer", "hqpy.protocol"),
    ("hyperqueue", "hqpy"),
    ("tako::internal::worker", "hqpy.worker"),
    ("tako", "hqpy.server"),
)
"""HyperQueue's module paths (longest first) and the hqpy loggers that do their work."""


def parse_spec(spec: str, variable: str = "HQPY_LOG") -> tuple[int | None, dict[str, int]]:
    """`info`, `hqpy.autoalloc=debug,hqpy=info` -> (root level, per-logger levels)."""
    root: int | None = None
    levels: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, level = part.rpartition("=")
        value = LEVELS.get(level.strip().lower())
        if value is None:
            raise ValueError(
                f"invalid log level `{level}` in {variable}; use debug, info, warn or error"
            )
        if name:
            levels[name.strip()] = value
        else:
            root = value
    return root, levels


def rust_log_to_hqpy(spec: str) -> tuple[int | None, dict[str, int]]:
    """`RUST_LOG` as HyperQueue reads it, mapped to hqpy's loggers; crates hqpy has no
    counterpart of (`tokio=debug`) are left out."""
    root, levels = parse_spec(spec, "RUST_LOG")
    mapped: dict[str, int] = {}
    for name, level in levels.items():
        path = name.replace("-", "_")
        for prefix, logger in RUST_MODULES:
            if path == prefix or path.startswith(prefix + "::"):
                mapped[logger] = level
                break
    return root, mapped


def log_levels(environ: dict[str, str] | os._Environ[str]) -> tuple[int | None, dict[str, int]]:
    """The levels asked for by `RUST_LOG` and `HQPY_LOG` together (HQPY_LOG wins)."""
    root, levels = rust_log_to_hqpy(environ.get("RUST_LOG", ""))
    own_root, own = parse_spec(environ.get("HQPY_LOG", ""))
    return (own_root if own_root is not None else root), {**levels, **own}


def setup_logging(debug: bool, default_level: int = INFO) -> None:
    _configure(debug, default_level, _env_levels())


def setup_logging_on_first_use(debug: bool) -> None:
    """`setup_logging`, done when a `get_logger` logger is first used: a client command that
    logs nothing never imports `logging` (~3 ms of each call). HQPY_LOG is read now, so a bad
    value is reported as before. Only for processes whose modules log through `get_logger`."""
    _pending.append((debug, INFO, _env_levels()))


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)`, made (and the logging set up, if that was deferred) on the
    first use of one of its methods."""
    return _LazyLogger(name)  # type: ignore[return-value]


class _LazyLogger:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging

        if _pending:
            _configure(*_pending.pop())
        return getattr(logging.getLogger(self._name), attr)


Levels = tuple[int | None, dict[str, int]]

_pending: list[tuple[bool, int, Levels]] = []


def _env_levels() -> Levels:
    try:
        return log_levels(os.environ)
    except ValueError as e:
        print(e, file=sys.stderr)
        return None, {}


def _configure(debug: bool, default_level: int, env: Levels) -> None:
    import logging

    _pending.clear()
    root_level, levels = env
    debug_format = debug or any(level <= DEBUG for level in [*levels.values(), root_level or INFO])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(debug_format))
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
