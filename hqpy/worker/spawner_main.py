"""The worker's spawner process: it starts the task processes, reports their exits, and kills
them when the worker goes away.

It runs as `python -S spawner_main.py` (stdlib only, so it starts in a few milliseconds) with the
worker's requests on fd 0 and its reports on fd 1. Both carry frames: a 4-byte little-endian
length, then a pickled list of tuples (the two ends are the same program, so pickle is safe).

Why a process: `posix_spawn` (like `Popen`, which uses vfork) returns only once the child has
called `exec`, a few hundred microseconds per task. Here that wait is spent off the worker's event
loop, which only moves messages, and on the other core when there is one.

Requests (worker -> spawner):
- `("group", group_id, env)`: the base environment of a group of tasks, sent once.
- `("spawn", key, executable, argv, group_id, extra_env, cwd, stdout, stderr, stdin, error_file,
  task_dir_prefix)`: start a task in its own session (so its whole process group can be killed).
  `stdout`/`stderr` are paths or None (/dev/null), `stdin` bytes or None, `error_file` the value of
  `HQ_ERROR_FILENAME` (or None when `task_dir_prefix` asks for a task directory, which holds it).
- `("kill", key)`: kill the task's process group, if the task has not been reaped yet.
- `("forget", group_id)`: drop a group's environment.

Reports (spawner -> worker):
- `("started", key, pid)`.
- `("failed", key, stage, errno, text)`: the task could not be started; `stage` is `cwd`,
  `output`, `exec` or `other`; `errno` may be None.
- `("exited", key, code, error)`: `code` as `Popen.returncode` (negative: killed by that signal);
  `error` the content of the task's error file when it failed and wrote one.

When fd 0 reaches its end (the worker ended, however it ended, even by SIGKILL), the spawner
kills the process groups of the tasks still running and exits: no task outlives its worker.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import shutil
import signal
import struct
import sys
import threading
from typing import Any

HEADER = struct.Struct("<I")
ERROR_FILE_LIMIT = 2048
READ_SIZE = 1 << 16
RESET_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)
"""Python ignores these; a task gets them back at their defaults, as `Popen` does."""


def encode_frame(items: list[tuple[Any, ...]]) -> bytes:
    data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def split_frames(buffer: bytearray) -> list[list[tuple[Any, ...]]]:
    """Remove and decode the whole frames at the start of `buffer`."""
    out = []
    pos = 0
    while len(buffer) - pos >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, pos)
        end = pos + HEADER.size + size
        if len(buffer) < end:
            break
        out.append(pickle.loads(buffer[pos + HEADER.size : end]))
        pos = end
    del buffer[:pos]
    return out


def read_error_file(path: str) -> str | None:
    """The error a task wrote to `HQ_ERROR_FILENAME` (removed once read), or None."""
    try:
        with open(path, "rb") as f:
            data = f.read(ERROR_FILE_LIMIT + 1)
    except OSError:
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    if not data:
        return "Task created an error file, but it is empty"
    text = data[:ERROR_FILE_LIMIT].decode(errors="replace")
    if len(data) > ERROR_FILE_LIMIT:
        text += "\n[The message was truncated]"
    return text


class _Running:
    __slots__ = ("key", "error_file", "task_dir")

    def __init__(self, key: int, error_file: str, task_dir: str | None) -> None:
        self.key = key
        self.error_file = error_file
        self.task_dir = task_dir


class SpawnFailed(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.stage = stage
        self.error = error


class Spawner:
    def __init__(self, requests: int, reports: int) -> None:
        self.requests = requests
        self.reports = reports
        self.envs: dict[int, dict[str, str]] = {}
        self.running: dict[int, _Running] = {}
        """Unreaped tasks by pid (= process group id)."""
        self.pids: dict[int, int] = {}
        """key -> pid of the unreaped tasks."""
        self.out: list[tuple[Any, ...]] = []
        self.made_dirs: set[str] = set()
        self.base_cwd = os.getcwd()
        self.cwd = self.base_cwd
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.cleanup: queue.SimpleQueue[str] | None = None
        self.task_dir_count = 0

    # -- requests --------------------------------------------------------------------------

    def handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "spawn":
            self.spawn(*item[1:])
        elif kind == "kill":
            pid = self.pids.get(item[1])
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        elif kind == "group":
            self.envs[item[1]] = item[2]
        elif kind == "forget":
            self.envs.pop(item[1], None)

    def spawn(
        self,
        key: int,
        executable: str,
        argv: list[str],
        group_id: int,
        extra_env: dict[str, str],
        cwd: str,
        stdout: str | None,
        stderr: str | None,
        stdin: bytes | None,
        error_file: str | None,
        task_dir_prefix: str | None,
    ) -> None:
        fds: list[int] = []
        task_dir = None
        try:
            env = dict(self.envs[group_id])
            env.update(extra_env)
            if task_dir_prefix is not None:
                task_dir = self.make_task_dir(task_dir_prefix)
                env["HQ_TASK_DIR"] = task_dir
                error_file = os.path.join(task_dir, "hq-error")
            assert error_file is not None
            env["HQ_ERROR_FILENAME"] = error_file
            out = self.open_output(stdout, fds)
            err = self.open_output(stderr, fds)
            if stdin is None:
                inp = self.devnull
            else:
                inp = os.memfd_create("hq-stdin")
                fds.append(inp)
                _write_all(inp, stdin)
                os.lseek(inp, 0, os.SEEK_SET)
            if cwd != self.cwd:
                try:
                    os.chdir(cwd)
                except (OSError, ValueError) as e:
                    raise SpawnFailed("cwd", e) from None
                self.cwd = cwd
            try:
                pid = os.posix_spawn(
                    executable,
                    argv,
                    env,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, inp, 0),
                        (os.POSIX_SPAWN_DUP2, out, 1),
                        (os.POSIX_SPAWN_DUP2, err, 2),
                    ],
                    setsid=True,
                    setsigdef=RESET_SIGNALS,
                )
            except OSError as e:
                raise SpawnFailed("exec", e) from None
        except SpawnFailed as e:
            self.failed(key, e.stage, e.error, task_dir)
        except OSError as e:
            self.failed(key, "output" if e.filename in (stdout, stderr) else "other", e, task_dir)
        except Exception as e:  # any bad input fails this task only
            self.failed(key, "other", e, task_dir)
        else:
            self.running[pid] = _Running(key, error_file, task_dir)
            self.pids[key] = pid
            self.out.append(("started", key, pid))
        finally:
            for fd in fds:
                os.close(fd)

    def failed(self, key: int, stage: str, e: BaseException, task_dir: str | None) -> None:
        code = e.errno if isinstance(e, OSError) else None
        text = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        self.out.append(("failed", key, stage, code, text))
        if task_dir is not None:
            self.remove_dir(task_dir)

    def open_output(self, path: str | None, fds: list[int]) -> int:
        if path is None:
            return self.devnull
        path = os.path.join(self.base_cwd, path)
        parent = os.path.dirname(path)
        if parent and parent not in self.made_dirs:
            os.makedirs(parent, exist_ok=True)
            self.made_dirs.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        fds.append(fd)
        return fd

    def make_task_dir(self, prefix: str) -> str:
        while True:
            self.task_dir_count += 1
            path = f"{prefix}{self.task_dir_count}"
            try:
                os.mkdir(path, 0o700)
                return path
            except FileExistsError:
                continue

    def remove_dir(self, path: str) -> None:
        """Task directories are removed by a thread, so a big one does not delay spawning."""
        if self.cleanup is None:
            self.cleanup = queue.SimpleQueue()
            threading.Thread(target=_cleaner, args=(self.cleanup,), daemon=True).start()
        self.cleanup.put(path)

    # -- exits -----------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task = self.running.pop(pid, None)
            if task is None:
                continue
            del self.pids[task.key]
            code = os.waitstatus_to_exitcode(status)
            error = None if code == 0 else read_error_file(task.error_file)
            self.out.append(("exited", task.key, code, error))
            if task.task_dir is not None:
                self.remove_dir(task.task_dir)

    def kill_all(self) -> None:
        for pid in self.running:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def flush(self) -> None:
        if not self.out:
            return
        data = encode_frame(self.out)
        self.out = []
        view = memoryview(data)
        while view:
            n = os.write(self.reports, view)
            view = view[n:]

    # -- loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        poller = select.poll()
        poller.register(self.requests, select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        buffer = bytearray()
        try:
            while True:
                events = poller.poll()
                for fd, _ in events:
                    if fd == wake_read:
                        try:
                            while os.read(wake_read, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    data = os.read(self.requests, READ_SIZE)
                    if not data:
                        return
                    buffer += data
                    for batch in split_frames(buffer):
                        for item in batch:
                            self.handle(item)
                self.reap()
                self.flush()
        finally:
            self.kill_all()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _cleaner(paths: queue.SimpleQueue[str]) -> None:
    while True:
        shutil.rmtree(paths.get(), ignore_errors=True)


def main() -> int:
    spawner = Spawner(0, 1)
    try:
        spawner.serve()
    except BrokenPipeError:
        spawner.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
