"""Running one task as a process: its environment, output files, time limit and error text."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from hqpy.common.process import OrphanGuard, TaskProcess, devnull, resolve_program
from hqpy.common.resources import ResourceGrant
from hqpy.protocol.messages import TaskBody

ERROR_FILE_LIMIT = 2048


class TaskOutcome:
    __slots__ = ("ok", "error", "canceled")

    def __init__(self, ok: bool, error: str | None = None, canceled: bool = False) -> None:
        self.ok = ok
        self.error = error
        self.canceled = canceled


class Launcher:
    """Starts task processes for one worker; caches what is shared by the tasks of a group."""

    def __init__(self, work_dir: Path, hq_path: str, guard: OrphanGuard | None = None) -> None:
        self.work_dir = work_dir
        self.hq_path = hq_path
        self.guard = guard
        self._base_env: dict[int, dict[str, str]] = {}
        self._argv: dict[int, list[str]] = {}
        self._made_dirs: set[str] = set()

    def base_env(self, body: TaskBody) -> dict[str, str]:
        env = self._base_env.get(body.group_id)
        if env is None:
            env = dict(os.environ)
            env.update(body.env)
            env["HQ_JOB_ID"] = str(body.job_id)
            env["HQ_SUBMIT_DIR"] = body.submit_dir
            env["HQ"] = self.hq_path
            self._base_env[body.group_id] = env
        return env

    def argv(self, body: TaskBody) -> list[str]:
        """The task's argv with the program resolved once per group, not once per task."""
        argv = self._argv.get(body.group_id)
        if argv is None:
            path = self.base_env(body).get("PATH")
            argv = [resolve_program(body.args[0], path), *body.args[1:]]
            self._argv[body.group_id] = argv
        return argv

    def _ensure_parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent and parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)

    def _open_output(self, path: str | None) -> int:
        if path is None:
            return -1
        self._ensure_parent(path)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    async def run(
        self,
        body: TaskBody,
        task_id: int,
        instance_id: int,
        entry: str | None,
        allocation: ResourceGrant | None,
        on_started: Any,
        cancel_scope: trio.CancelScope,
    ) -> TaskOutcome:
        """Run the task to its end; `on_started(time)` is called once the process exists."""
        cwd, stdout_path, stderr_path = body.resolve_paths(task_id, instance_id)
        env = dict(self.base_env(body))
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
        task_dir: str | None = None
        if body.task_dir:
            task_dir = tempfile.mkdtemp(prefix=f"t{body.job_id}-{task_id}-", dir=self.work_dir)
            env["HQ_TASK_DIR"] = task_dir
            error_file = os.path.join(task_dir, "hq-error")
        else:
            error_file = str(self.work_dir / f"hq-error-{body.job_id}-{task_id}-{instance_id}")
        env["HQ_ERROR_FILENAME"] = error_file
        stdout = stderr = -1
        try:
            stdout = self._open_output(stdout_path)
            stderr = self._open_output(stderr_path)
            return await self._spawn(
                body,
                cwd,
                env,
                devnull() if stdout < 0 else stdout,
                devnull() if stderr < 0 else stderr,
                error_file,
                on_started,
                cancel_scope,
            )
        except OSError as e:
            return TaskOutcome(False, f"Cannot create the task's output files: {e}")
        finally:
            for fd in (stdout, stderr):
                if fd >= 0:
                    os.close(fd)
            if task_dir is not None:
                shutil.rmtree(task_dir, ignore_errors=True)

    async def _spawn(
        self,
        body: TaskBody,
        cwd: str,
        env: Mapping[str, str],
        stdout: int,
        stderr: int,
        error_file: str,
        on_started: Any,
        cancel_scope: trio.CancelScope,
    ) -> TaskOutcome:
        stdin = devnull()
        stdin_file = None
        if body.stdin is not None:
            stdin_file = tempfile.TemporaryFile(dir=self.work_dir)
            stdin_file.write(body.stdin)
            stdin_file.seek(0)
            stdin = stdin_file.fileno()
        try:
            proc = TaskProcess.start(
                self.argv(body), cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr
            )
        except OSError as e:
            return TaskOutcome(False, spawn_error(body.args, cwd, e))
        finally:
            if stdin_file is not None:
                stdin_file.close()
        on_started(time.time())
        if self.guard is not None:
            self.guard.add(proc.pid)
        timed_out = False
        try:
            if body.time_limit is not None:
                with trio.move_on_after(body.time_limit) as limit:
                    code = await proc.wait()
                if limit.cancelled_caught:
                    timed_out = True
                    proc.kill()
                    code = await proc.wait()
            else:
                code = await proc.wait()
        finally:
            if proc.popen.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            if self.guard is not None:
                self.guard.remove(proc.pid)
        if cancel_scope.cancel_called:
            return TaskOutcome(False, canceled=True)
        if timed_out:
            return TaskOutcome(False, "Time limit reached")
        if code == 0:
            return TaskOutcome(True)
        error = read_error_file(error_file)
        if error is None:
            if code < 0:
                sig = -code
                try:
                    name = signal.Signals(sig).name
                except ValueError:
                    name = f"signal {sig}"
                error = f"Program terminated with exit code -1. Received signal {sig} ({name})."
            else:
                error = f"Program terminated with exit code {code}."
        return TaskOutcome(False, error)


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
    except FileNotFoundError:
        return None
    _remove_quietly(path)
    if not data:
        return "Task created an error file, but it is empty"
    text = data[:ERROR_FILE_LIMIT].decode(errors="replace")
    if len(data) > ERROR_FILE_LIMIT:
        text += "\n[The message was truncated]"
    return text


def spawn_error(args: tuple[str, ...], cwd: str, e: OSError) -> str:
    """HyperQueue's text for a program that could not be started."""
    program = args[0] if args else ""
    text = f'Cannot execute "{" ".join(args)}": {os.strerror(e.errno or 0)} (os error {e.errno})'
    if e.errno == errno.ENOENT:
        text += f"\nThe program that you have tried to execute (`{program}`) was not found."
        candidate = Path(cwd) / program
        if "/" not in program and candidate.exists():
            text += f"\nThe file `{candidate}` exists, maybe you have meant `./{program}` instead?"
    elif e.errno == errno.EACCES:
        text += (
            f"\nThe script that you have tried to execute (`{program}`) is not executable."
            "\nTry making it executable or add a shebang line to it."
        )
    return text
