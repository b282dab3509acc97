"""Starting task processes fast, waiting for them without threads, and never leaving orphans.

`trio.lowlevel.open_process` runs `Popen` in a worker thread; for tasks that last a millisecond
that hand-off costs more than the spawn itself, and measured slower here even with two spawner
threads; a separate spawner process measured slower still (each task then costs two process
wake-ups more; see docs/benchmark.md). So tasks are spawned on the trio thread with
`os.posix_spawn` (vfork and exec, the environment encoded in C: `Popen` spends as long again in
Python building its arguments) and awaited through a pidfd: one spawn, one epoll wake-up and one
reap per task. Each task runs in its own session so its whole process group can be killed.

A worker killed with SIGKILL cannot kill its tasks. `OrphanGuard` is a tiny helper process that
learns each task's process group through a pipe; when the pipe closes (the worker is gone, however
it ended) it kills the groups still listed. Changes are sent in batches with the worker's task
updates, so a task that ends within one batch costs nothing; a parent-death signal would need
`preexec_fn` and make every spawn several times slower.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import trio

GUARD_CLOSE_TIMEOUT = 5.0
"""Seconds the orphan guard gets to kill the groups still listed and exit."""
RESET_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)
"""Python ignores these; a task gets them back at their defaults, as with `Popen`."""

_devnull: int | None = None


def devnull() -> int:
    """One shared read-write descriptor of /dev/null, instead of opening it for every task."""
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return _devnull


def resolve_program(program: str, path: str | None) -> str:
    """The absolute path of `program` along `path`, so `Popen` does not search for it again
    for every task; the name as it is when not found (`Popen` then reports the error)."""
    if os.sep in program:
        return program
    return shutil.which(program, path=path) or program


class ChangeDirError(OSError):
    """The task's working directory cannot be entered."""


class SpawnedProcess:
    """A task process started by `spawn`, in its own session; awaited through a pidfd."""

    __slots__ = ("pid", "returncode", "_pidfd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # out of descriptors: fall back to polling
            self._pidfd = None

    async def wait(self) -> int:
        """Wait for the exit; returns the code (negative: killed by that signal)."""
        if self.returncode is not None:
            return self.returncode
        if self._pidfd is not None:
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
            finally:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
        code = _reap(self.pid)
        if code is None:  # no pidfd: wait in a thread, without reaping (it may be abandoned)
            await trio.to_thread.run_sync(
                os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT, abandon_on_cancel=True
            )
            code = _reap(self.pid)
            assert code is not None
        self.returncode = code
        return code

    def kill(self) -> None:
        """Kill the process and everything it started (not once it was reaped: its pid and
        group id may belong to someone else by then)."""
        if self.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def keep_descriptors_private() -> None:
    """Mark every descriptor above stderr close-on-exec. `posix_spawn` does not close what it
    was not asked to (unlike `Popen(close_fds=True)`), and a descriptor this process inherited
    (a pipe of whoever started it) must not leak into every task."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the descriptor of the listing itself, already closed


def _reap(pid: int) -> int | None:
    """The exit code of an ended child (reaping it), or None while it runs; never blocks."""
    reaped, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if reaped else None


def spawn(
    executable: str,
    argv: list[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
) -> SpawnedProcess:
    """Start a task process in a new session with `os.posix_spawn`.

    `posix_spawn` cannot change the child's directory, so this process moves to `cwd` first and
    stays there (the worker uses only absolute paths). It moves for every task, even to the same
    path: one cheap syscall, and a directory removed and made again is the new one.

    Raises `ChangeDirError` for a bad `cwd`, OSError for a program that cannot be executed,
    ValueError (NUL, `=` in a name, text that cannot be encoded) for bad arguments or
    environment.
    """
    try:
        os.chdir(cwd)
    except (OSError, ValueError) as e:
        raise ChangeDirError(getattr(e, "errno", None), str(e)) from e
    pid = os.posix_spawn(
        executable,
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
        setsid=True,
        setsigdef=RESET_SIGNALS,
    )
    return SpawnedProcess(pid)


class TaskProcess:
    """A process started with `Popen` in its own session (for batch scripts, where `cwd` must
    not move this process)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = os.pidfd_open(self.pid)

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> TaskProcess:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        return cls(popen)

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended, else None (it is reaped on the way)."""
        return self.popen.poll()

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


_GUARD = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    sign, pgid = line[0], int(line[1:])
    (groups.add if sign == "+" else groups.discard)(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class OrphanGuard:
    """Kills the tasks of a worker that died without doing it itself (see the module doc)."""

    def __init__(self) -> None:
        read, self._write = os.pipe()
        os.set_inheritable(self._write, False)
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _GUARD],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(read)
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def add(self, pgid: int) -> None:
        self._added.add(pgid)

    def remove(self, pgid: int) -> None:
        if pgid in self._added:
            self._added.discard(pgid)
        else:
            self._removed.add(pgid)

    def flush(self) -> None:
        """Tell the guard what changed since the last flush, in one write."""
        if not self._added and not self._removed:
            return
        lines = [f"+{pgid}\n" for pgid in self._added] + [f"-{pgid}\n" for pgid in self._removed]
        self._added.clear()
        self._removed.clear()
        try:
            os.write(self._write, "".join(lines).encode())
        except OSError:
            pass

    async def aclose(self) -> None:
        """Let the guard go: it kills whatever is still listed and exits. Awaited through a
        pidfd, bounded in time, so the event loop never blocks on it."""
        try:
            os.close(self._write)
        except OSError:
            pass
        pidfd = os.pidfd_open(self._proc.pid)
        try:
            with trio.move_on_after(GUARD_CLOSE_TIMEOUT):
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            trio.lowlevel.notify_closing(pidfd)
            os.close(pidfd)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def process_age() -> float | None:
    """Seconds since this process started (to 10 ms), from /proc; None where unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read(4096)
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
