"""Starting and waiting for a task process without a thread per call.

`trio.lowlevel.open_process` runs `subprocess.Popen` in a worker thread; for tasks that last a
millisecond that hand-off costs more than the fork itself (CPython forks with vfork). Here the
fork happens on the trio thread and the exit is awaited through a pidfd, so one task costs one
fork, one epoll wake-up and one reap.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

import trio

_devnull: int | None = None


def devnull() -> int:
    """One shared read-write descriptor of /dev/null, instead of opening it for every task."""
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return _devnull


class TaskProcess:
    """A started process in its own session (so its whole group can be killed)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> None:
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._pidfd: int | None = os.pidfd_open(self.pid)

    async def wait(self) -> int:
        """Wait for the exit; returns the code (negative: killed by that signal)."""
        if self._pidfd is not None:
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
            finally:
                if self.popen.poll() is not None:
                    self._close()
        code = self.popen.wait()
        self._close()
        return code

    def kill(self) -> None:
        """Kill the process and everything it started."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _close(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
