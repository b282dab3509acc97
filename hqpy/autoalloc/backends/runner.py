"""Run one batch-system command as an argv list under a timeout (the default `CommandRunner`).

Commands are found by bare name on the server's `PATH` and inherit its environment, as
HyperQueue runs them. Three guarantees keep a misbehaving command from hurting the server:
- it runs as the leader of a new session (so of its own process group), and a timeout ends the
  whole group (SIGTERM, then SIGKILL after a grace): no child is left behind under PID 1;
- its output is bounded: a head and a tail of each stream are kept, the middle is dropped and
  counted (`... [N bytes cut] ...`), so an `sbatch` printing 400 MB leaves memory flat;
- whoever wants to know of each command (metrics) passes an observer at construction.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from hqpy.autoalloc.backends.base import BackendError, CommandResult, CommandRunner
from hqpy.common.events import BatchCommandRun

logger = logging.getLogger("hqpy.autoalloc.backends")

OUTPUT_LIMIT = 32 * 1024
"""Bytes kept of each stream (half from its start, half from its end): 64 KiB for both."""

KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL to a timed-out command's process group."""

_CHUNK = 64 * 1024

CommandObserver = Callable[[BatchCommandRun], None]
"""Told of every batch command that ran (program, seconds, success)."""


def ignore_run(event: BatchCommandRun) -> None:
    """The default observer: nothing."""


class BoundedOutput:
    """The first and last `limit // 2` bytes of a stream, and how many bytes were dropped."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self._half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0

    def feed(self, data: bytes | bytearray) -> None:
        room = self._half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail += data
        excess = len(self.tail) - self._half
        if excess > 0:
            del self.tail[:excess]
            self.cut += excess

    def text(self) -> str:
        if not self.cut:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
        head = bytes(self.head).decode("utf-8", errors="replace")
        tail = bytes(self.tail).decode("utf-8", errors="replace")
        return f"{head}\n... [{self.cut} bytes cut] ...\n{tail}"

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        while True:
            data = await stream.receive_some(_CHUNK)
            if not data:
                return
            self.feed(data)


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); nothing more can be done.
        return False
    return True


class BatchCommandRunner:
    """A `CommandRunner`: `await runner(argv, cwd=..., timeout=..., env=...)`.

    Args:
        observer: told of each command that ran (`BatchCommandRun`); default: nobody.
        output_limit: bytes kept of each of stdout and stderr.
        kill_grace: seconds a timed-out group gets between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        observer: CommandObserver | None = None,
        *,
        output_limit: int = OUTPUT_LIMIT,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self._observer = observer or ignore_run
        self._output_limit = output_limit
        self._kill_grace = kill_grace

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - the CommandRunner interface; fail_after inside
        env: Mapping[str, str] | None = None,
        stdin: Path | None = None,
    ) -> CommandResult:
        """Run `argv` to completion and capture its output; a non-zero exit is *not* an error.

        Args:
            env: variables added to (or overriding) the server's own environment.
            stdin: a file to read as standard input (`bsub < script`); default: none.

        Raises:
            BackendError: the program could not be started (`sbatch start failed: ...`) or did
                not finish within `timeout` seconds (its whole process group is ended).
        """
        args = tuple(argv)
        full_env = None if env is None else {**os.environ, **env}
        logger.debug("running %s (cwd %s)", shlex.join(args), cwd)
        started = time.monotonic()
        try:
            returncode, stdout, stderr = await self._run(args, cwd, full_env, timeout, stdin)
        except OSError as e:
            self._observe(args[0], started, False)
            reason = e.strerror or str(e)
            raise BackendError(f"{args[0]} start failed: {reason}") from e
        except trio.TooSlowError as e:
            self._observe(args[0], started, False)
            raise BackendError(f"`{shlex.join(args)}` did not finish within {timeout:g}s") from e
        self._observe(args[0], started, returncode == 0)
        result = CommandResult(
            argv=args, returncode=returncode, stdout=stdout.text(), stderr=stderr.text()
        )
        logger.debug(
            "%s exited with %d\nstdout: %s\nstderr: %s",
            shlex.join(args),
            result.returncode,
            result.stdout.rstrip(),
            result.stderr.rstrip(),
        )
        return result

    def _observe(self, program: str, started: float, ok: bool) -> None:
        try:
            self._observer(BatchCommandRun(program, time.monotonic() - started, ok))
        except Exception:
            logger.exception("batch command observer failed")

    async def _run(
        self,
        args: tuple[str, ...],
        cwd: Path | None,
        env: dict[str, str] | None,
        timeout: float,  # noqa: ASYNC109
        stdin: Path | None,
    ) -> tuple[int, BoundedOutput, BoundedOutput]:
        stdout = BoundedOutput(self._output_limit)
        stderr = BoundedOutput(self._output_limit)
        # A script is small and local: opening it does not block the loop in practice.
        stdin_fd = os.open(stdin, os.O_RDONLY) if stdin is not None else subprocess.DEVNULL
        try:
            proc = await trio.lowlevel.open_process(
                args,
                cwd=cwd,
                env=env,
                stdin=stdin_fd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        finally:
            if stdin is not None:
                os.close(stdin_fd)
        pgid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    drained = trio.Event()

                    async def drain_both() -> None:
                        assert proc.stdout is not None and proc.stderr is not None
                        async with trio.open_nursery() as inner:
                            inner.start_soon(stdout.drain, proc.stdout)
                            inner.start_soon(stderr.drain, proc.stderr)
                        drained.set()

                    nursery.start_soon(drain_both)
                    await proc.wait()
                    # The command exited; children it left in its group may still hold the
                    # pipes: give them the grace, then end them too.
                    with trio.move_on_after(self._kill_grace):
                        await drained.wait()
                    if not drained.is_set():
                        logger.info("`%s` left processes behind; killing them", shlex.join(args))
                        _signal_group(pgid, signal.SIGKILL)
                        with trio.move_on_after(self._kill_grace):
                            await drained.wait()
                        nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    await self._end_group(proc, pgid)
                await proc.stdout.aclose()
                await proc.stderr.aclose()
        assert proc.returncode is not None
        return proc.returncode, stdout, stderr

    async def _end_group(self, proc: trio.Process, pgid: int) -> None:
        """SIGTERM to the whole group; SIGKILL to what is left after the grace."""
        logger.info("ending process group %d (%s)", pgid, proc.args)
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(self._kill_grace):
            await proc.wait()
            # The leader is reaped; its group lives on while any member does.
            while _signal_group(pgid, 0):  # noqa: ASYNC110 - no event for a group's end
                await trio.sleep(0.02)
        _signal_group(pgid, signal.SIGKILL)
        with trio.move_on_after(self._kill_grace):
            await proc.wait()
        if proc.returncode is None:  # pragma: no cover - SIGKILL cannot be ignored
            logger.error("process %d survived SIGKILL", proc.pid)


_default_runner = BatchCommandRunner()


async def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the CommandRunner interface; fail_after inside
    env: Mapping[str, str] | None = None,
    stdin: Path | None = None,
) -> CommandResult:
    """`BatchCommandRunner` with the default limits, reporting to nobody."""
    return await _default_runner(argv, cwd=cwd, timeout=timeout, env=env, stdin=stdin)


def make_runner(observer: CommandObserver | None) -> CommandRunner:
    """The runner a backend uses: `run_command` without an observer, else one of its own."""
    return run_command if observer is None else BatchCommandRunner(observer)


_check: CommandRunner = run_command
"""`run_command` is a `CommandRunner` (checked by mypy)."""
_check_class: CommandRunner = BatchCommandRunner()
