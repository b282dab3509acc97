"""Run one batch-system command as an argv list under a timeout (the default `CommandRunner`).

Commands are found by bare name on the server's `PATH` and inherit its environment, as
HyperQueue runs them; a hanging `squeue` must never stall the allocator, hence the timeout.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from hqpy.autoalloc.backends.base import BackendError, CommandResult, CommandRunner

logger = logging.getLogger("hqpy.autoalloc.backends")


def ignore_command(command: str, seconds: float, ok: bool) -> None:
    pass


CommandObserver = Callable[[str, float, bool], None]
observe_command: CommandObserver = ignore_command
"""Told of every batch command (program, seconds, success); the metrics endpoint sets it."""


async def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the CommandRunner interface; fail_after inside
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` to completion and capture its output; a non-zero exit is *not* an error here.

    Args:
        env: variables added to (or overriding) the server's own environment.

    Raises:
        BackendError: the program could not be started (`sbatch start failed: ...`) or did not
            finish within `timeout` seconds (it is killed).
    """
    args = tuple(argv)
    full_env = None if env is None else {**os.environ, **env}
    logger.debug("running %s (cwd %s)", shlex.join(args), cwd)
    started = time.monotonic()
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                args,
                cwd=cwd,
                env=full_env,
                check=False,
                capture_stdout=True,
                capture_stderr=True,
                stdin=subprocess.DEVNULL,
            )
    except OSError as e:
        observe_command(args[0], time.monotonic() - started, False)
        reason = e.strerror or str(e)
        raise BackendError(f"{args[0]} start failed: {reason}") from e
    except trio.TooSlowError as e:
        observe_command(args[0], time.monotonic() - started, False)
        raise BackendError(f"`{shlex.join(args)}` did not finish within {timeout:g}s") from e
    observe_command(args[0], time.monotonic() - started, proc.returncode == 0)
    result = CommandResult(
        argv=args,
        returncode=proc.returncode,
        stdout=proc.stdout.decode("utf-8", errors="replace"),
        stderr=proc.stderr.decode("utf-8", errors="replace"),
    )
    logger.debug(
        "%s exited with %d\nstdout: %s\nstderr: %s",
        shlex.join(args),
        result.returncode,
        result.stdout.rstrip(),
        result.stderr.rstrip(),
    )
    return result


_check: CommandRunner = run_command
"""`run_command` is a `CommandRunner` (checked by mypy)."""
