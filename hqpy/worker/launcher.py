"""Running one task as a process: its environment, output files, time limit and error text.

Per task the event loop does only what cannot be shared: one dict copy of the group's prepared
environment, the output files (when asked for), one `posix_spawn` and one pidfd wait. No
temporary directory unless `--task-dir` asks for one; that one is removed in a thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import trio

from hqpy.common.process import (
    ChangeDirError,
    OrphanGuard,
    SpawnedProcess,
    devnull,
    keep_descriptors_private,
    resolve_program,
    spawn,
)
from hqpy.common.resources import ResourceGrant
from hqpy.protocol.messages import TaskBody

ERROR_FILE_LIMIT = 2048


class TaskOutcome:
    __slots__ = ("ok", "error", "canceled", "killed_by")

    def __init__(
        self,
        ok: bool,
        error: str | None = None,
        canceled: bool = False,
        killed_by: int | None = None,
    ) -> None:
        self.ok = ok
        self.error = error
        self.canceled = canceled
        self.killed_by = killed_by
        """The signal that ended the process, if one did."""


class TaskStartError(Exception):
    """A task could not be started; the message is the task's error text."""


class Launcher:
    """Starts task processes for one worker; caches what is shared by the tasks of a group."""

    def __init__(
        self,
        work_dir: Path,
        hq_path: str,
        guard: OrphanGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.work_dir = Path(os.path.abspath(work_dir))
        self.hq_path = hq_path
        self.guard = guard
        self.clock = clock
        self._work_prefix = str(self.work_dir)
        self._base_env: dict[int, dict[str, str]] = {}
        self._program: dict[int, tuple[str, list[str]]] = {}
        self._made_dirs: set[str] = set()
        keep_descriptors_private()

    def base_env(self, body: TaskBody) -> dict[str, str]:
        """The environment every task of the body's group starts from, built once."""
        env = self._base_env.get(body.group_id)
        if env is None:
            env = dict(os.environ)
            env.update(body.env)
            env["HQ_JOB_ID"] = str(body.job_id)
            env["HQ_SUBMIT_DIR"] = body.submit_dir
            env["HQ"] = self.hq_path
            self._base_env[body.group_id] = env
        return env

    def program(self, body: TaskBody) -> tuple[str, list[str]]:
        """The file to execute and the argv, once per group. The PATH lookup only chooses the
        file: argv[0] stays what the user typed (`ls`, so its errors start `ls: `)."""
        program = self._program.get(body.group_id)
        if program is None:
            if not body.args:
                raise ValueError("the task has no program to run")
            path = self.base_env(body).get("PATH")
            program = (resolve_program(body.args[0], path), list(body.args))
            self._program[body.group_id] = program
        return program

    def _open_output(self, path: str | None, fds: list[int]) -> int:
        if path is None:
            return devnull()
        parent = os.path.dirname(path)
        if parent and parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        fds.append(fd)
        return fd

    def _start(
        self,
        body: TaskBody,
        task_id: int,
        instance_id: int,
        entry: str | None,
        allocation: ResourceGrant | None,
        files: dict[str, str],
    ) -> SpawnedProcess:
        """Start the process (`files`: the task's `HQ_ERROR_FILENAME` and `HQ_TASK_DIR`). An
        error is a `TaskStartError` with the task's error text: whatever a submit holds, it
        fails that task only."""
        cwd = body.cwd
        try:
            cwd, stdout_path, stderr_path = body.resolve_paths(task_id, instance_id)
            executable, argv = self.program(body)
            env = dict(self.base_env(body))
            env.update(files)
            env["HQ_TASK_ID"] = str(task_id)
            env["HQ_INSTANCE_ID"] = str(instance_id)
            if entry is not None:
                env["HQ_ENTRY"] = entry
            if allocation is not None:
                for name, indices in allocation.indices.items():
                    if not indices:
                        continue
                    joined = ",".join(indices)
                    if name == "cpus":
                        env["HQ_CPUS"] = joined
                    else:
                        env["HQ_RESOURCE_VALUES_" + _env_name(name)] = joined
        except Exception as e:
            raise TaskStartError(spawn_error(body.args, cwd, None, str(e))) from None
        fds: list[int] = []
        try:
            try:
                stdout = self._open_output(stdout_path, fds)
                stderr = self._open_output(stderr_path, fds)
            except (OSError, ValueError) as e:
                raise TaskStartError(f"Cannot create the task's output files: {e}") from None
            stdin = devnull()
            data: str | bytes | None = body.stdin
            if data is not None:
                if isinstance(data, str):
                    data = data.encode(errors="surrogateescape")
                # In memory: no file to create and remove, nothing to wait for on a disk.
                stdin = os.memfd_create("hq-stdin")
                fds.append(stdin)
                _write_all(stdin, data)
                os.lseek(stdin, 0, os.SEEK_SET)
            try:
                proc = spawn(
                    executable,
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                )
            except ChangeDirError as e:
                reason = _os_error(e.errno, e.strerror or str(e))
                raise TaskStartError(
                    f'Cannot execute "{_command(body.args)}":'
                    f" cannot enter the working directory `{_printable(cwd)}`: {reason}"
                ) from None
            except OSError as e:
                raise TaskStartError(spawn_error(body.args, cwd, e.errno, str(e))) from None
            except Exception as e:
                raise TaskStartError(spawn_error(body.args, cwd, None, str(e))) from None
        except TaskStartError:
            raise
        except Exception as e:  # anything else about this task is still its own failure
            raise TaskStartError(spawn_error(body.args, cwd, None, repr(e))) from None
        finally:
            for fd in fds:
                os.close(fd)
        if self.guard is not None:
            self.guard.add(proc.pid)
        return proc

    def start_now(
        self,
        body: TaskBody,
        task_id: int,
        instance_id: int,
        entry: str | None,
        allocation: ResourceGrant | None,
    ) -> SpawnedProcess | TaskOutcome | None:
        """Start a task that needs no task dir at once, on the caller's step (the worker
        starts the next task in the same step that saw the last one end, so a core is not left
        idle while the loop does other work first): the process to `wait` for, the outcome
        when it could not start, or None when the task needs `run` (a task dir)."""
        if body.task_dir:
            return None
        files = {"HQ_ERROR_FILENAME": self.error_file(body, task_id, instance_id)}
        try:
            return self._start(body, task_id, instance_id, entry, allocation, files)
        except TaskStartError as e:
            return TaskOutcome(False, str(e))

    def error_file(self, body: TaskBody, task_id: int, instance_id: int) -> str:
        return f"{self._work_prefix}/hq-error-{body.job_id}-{task_id}-{instance_id}"

    async def run(
        self,
        body: TaskBody,
        task_id: int,
        instance_id: int,
        entry: str | None,
        allocation: ResourceGrant | None,
        on_started: Callable[[float], None],
        nodes: list[str] | None = None,
    ) -> TaskOutcome:
        """Run the task to its end; `on_started(time)` is called once the process exists. An
        error in starting it is the task's failure, never the worker's. Cancelled (by the
        caller's scope), it kills the task's process group and re-raises. A multi-node task
        (`nodes`: its hosts, this one first) always gets a task dir with its host files."""
        files: dict[str, str] = {}
        task_dir: str | None = None
        if body.task_dir or nodes:
            task_dir = f"{self._work_prefix}/t{body.job_id}-{task_id}-{instance_id}"
            try:
                os.mkdir(task_dir, 0o700)  # one syscall; the removal is the slow part
            except FileExistsError:
                await _remove_tree(task_dir)
                os.mkdir(task_dir, 0o700)
            except OSError as e:
                return TaskOutcome(False, f"Cannot create the task directory: {e}")
            files["HQ_TASK_DIR"] = task_dir
            error_file = task_dir + "/hq-error"
            if nodes:
                try:
                    files.update(write_node_files(task_dir, nodes))
                except OSError as e:
                    return TaskOutcome(False, f"Cannot write the task's host files: {e}")
        else:
            error_file = self.error_file(body, task_id, instance_id)
        files["HQ_ERROR_FILENAME"] = error_file
        try:
            try:
                proc = self._start(body, task_id, instance_id, entry, allocation, files)
            except TaskStartError as e:
                return TaskOutcome(False, str(e))
            on_started(self.clock())
            return await self.wait(proc, body.time_limit, error_file)
        finally:
            if task_dir is not None:
                with trio.CancelScope(shield=True):
                    await _remove_tree(task_dir)

    async def wait(
        self, proc: SpawnedProcess, time_limit: float | None, error_file: str
    ) -> TaskOutcome:
        """Wait for a started task to end (killing it past `time_limit` or when cancelled)."""
        timed_out = False
        try:
            if time_limit is not None:
                with trio.move_on_after(time_limit) as limit:
                    code = await proc.wait()
                if limit.cancelled_caught:
                    timed_out = True
                    proc.kill()
                    code = await proc.wait()
            else:
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            if self.guard is not None:
                self.guard.remove(proc.pid)
        if timed_out:
            return TaskOutcome(False, "Time limit reached")
        if code == 0:
            return TaskOutcome(True)
        error = read_error_file(error_file)
        if error is not None:
            return TaskOutcome(False, error)
        if code < 0:
            sig = -code
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return TaskOutcome(
                False,
                f"Program terminated with exit code -1. Received signal {sig} ({name}).",
                killed_by=sig,
            )
        return TaskOutcome(False, f"Program terminated with exit code {code}.")


def write_node_files(task_dir: str, hosts: list[str]) -> dict[str, str]:
    """`hq-hostfile` (full host names) and `hq-nodefile` (short names), one a line, root
    first; returns the variables that name them, as HyperQueue sets them."""
    host_file = task_dir + "/hq-hostfile"
    node_file = task_dir + "/hq-nodefile"
    with open(host_file, "w") as f:
        f.writelines(h + "\n" for h in hosts)
    with open(node_file, "w") as f:
        f.writelines(h.split(".", 1)[0] + "\n" for h in hosts)
    return {"HQ_NUM_NODES": str(len(hosts)), "HQ_HOST_FILE": host_file, "HQ_NODE_FILE": node_file}


async def _remove_tree(path: str) -> None:
    """Remove a task directory in a thread: it may hold many files."""
    await trio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _env_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_error_file(path: str) -> str | None:
    """The error a task wrote to `HQ_ERROR_FILENAME`, or None when it wrote none."""
    try:
        with open(path, "rb") as f:
            data = f.read(ERROR_FILE_LIMIT + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    _remove_quietly(path)
    if not data:
        return "Task created an error file, but it is empty"
    text = data[:ERROR_FILE_LIMIT].decode(errors="replace")
    if len(data) > ERROR_FILE_LIMIT:
        text += "\n[The message was truncated]"
    return text


def _printable(text: str) -> str:
    """`text` as it can be shown: NUL and text that cannot be encoded escaped."""
    return text.replace("\0", "\\0").encode(errors="backslashreplace").decode()


def _command(args: tuple[str, ...]) -> str:
    return _printable(" ".join(args))


def _os_error(code: int | None, text: str) -> str:
    if code is None:
        return text
    return f"{os.strerror(code)} (os error {code})"


def spawn_error(args: tuple[str, ...], cwd: str, code: int | None, text: str = "") -> str:
    """HyperQueue's text for a program that could not be started."""
    program = _command(args[:1])
    out = f'Cannot execute "{_command(args)}": {_os_error(code, text)}'
    if code == errno.ENOENT:
        out += f"\nThe program that you have tried to execute (`{program}`) was not found."
        try:
            exists = "/" not in program and (Path(cwd) / program).exists()
        except (OSError, ValueError):
            exists = False
        if exists:
            out += (
                f"\nThe file `{_printable(str(Path(cwd) / program))}` exists,"
                f" maybe you have meant `./{program}` instead?"
            )
    elif code == errno.EACCES:
        out += (
            f"\nThe script that you have tried to execute (`{program}`) is not executable."
            "\nTry making it executable or add a shebang line to it."
        )
    return out
