"""Starting task processes fast, waiting for them without threads, and never leaving orphans.

`trio.lowlevel.open_process` runs `Popen` in a worker thread; for tasks that last a millisecond
that hand-off costs more than the spawn itself, and measured slower here even with two spawner
threads; a separate spawner process measured slower still (each task then costs two process
wake-ups more; see docs/benchmark.md). So tasks are spawned on the trio thread with
`os.posix_spawn` (vfork and exec, the environment encoded in C: `Popen` spends as long again in
Python building its arguments) and awaited through a pidfd: one spawn, one epoll wake-up and one
reap per task. Each task runs in its own session so its whole process group can be killed.

A worker killed with SIGKILL cannot kill its tasks. `OrphanGuard` is a tiny helper process that
waits for a pipe from the worker to close (the worker is gone, however it ended) and then kills
the process groups listed in a table the two share (a memfd the worker maps): a task's start and
end are each one store into that table, with no system call and no wake-up of the guard (writing
each change to the guard woke it, and cost the worker a context switch, once per batch of tasks).
A parent-death signal would need `preexec_fn` and make every spawn several times slower.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
from array import array
sys.stdin.buffer.read()  # returns at EOF: the worker closed the pipe or is gone
fd = int(sys.argv[1])  # the table, shared with the worker
table = array("i")
table.frombytes(os.pread(fd, os.fstat(fd).st_size, 0))
for pgid in table:
    if pgid > 0:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
"""
GUARD_TABLE_SLOTS = 1024
"""Slots the shared table starts with (4 bytes each); it doubles when every slot is taken."""


def _shared_table_fd() -> int:
    """A file only this worker and its guard can reach: a memfd, or where the kernel has none
    (before Linux 3.17) a temporary file removed at once."""
    try:
        return os.memfd_create("hq-orphan-guard", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        fd, path = tempfile.mkstemp(prefix="hq-orphan-guard-")
        os.unlink(path)
        return fd


class OrphanGuard:
    """Kills the tasks of a worker that died without doing it itself (see the module doc)."""

    def __init__(self) -> None:
        self._table_fd = _shared_table_fd()
        self._map: mmap.mmap | None = None
        self._slots: memoryview | None = None
        self._free: list[int] = []
        """Slots not in use, the lowest last (taken first)."""
        self._grow(GUARD_TABLE_SLOTS)
        self._slot_of: dict[int, int] = {}
        read, self._write = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _GUARD, str(self._table_fd)],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(self._table_fd,),
            start_new_session=True,
        )
        os.close(read)

    def _grow(self, slots: int) -> None:
        """Grow the table to `slots` (its first size at start), the new slots free; the old
        mapping stays in use on failure."""
        size = len(self._slots or ())
        os.ftruncate(self._table_fd, slots * 4)
        new_map = mmap.mmap(self._table_fd, slots * 4)
        if self._slots is not None:
            self._slots.release()
        if self._map is not None:
            self._map.close()
        self._map = new_map
        self._slots = memoryview(new_map).cast("i")
        self._free.extend(range(slots - 1, size - 1, -1))

    def add(self, pgid: int) -> None:
        if pgid in self._slot_of:
            return
        if not self._free:
            try:
                self._grow(2 * len(self._slots or ()))
            except (OSError, ValueError):  # no room for a bigger table: this task goes unguarded
                return
        slot = self._free.pop()
        self._slot_of[pgid] = slot
        assert self._slots is not None
        self._slots[slot] = pgid

    def remove(self, pgid: int) -> None:
        slot = self._slot_of.pop(pgid, None)
        if slot is not None:
            assert self._slots is not None
            self._slots[slot] = 0
            self._free.append(slot)

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
        if self._slots is not None:
            self._slots.release()
        if self._map is not None:
            self._map.close()
        os.close(self._table_fd)


def process_age() -> float | None:
    """Seconds since this process started (to 10 ms), from /proc; None where unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read(4096)
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
