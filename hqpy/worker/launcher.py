"""Running one task as a process: its environment, output files, time limit and error text.

The process itself is started and reaped by the worker's spawner process (`spawner`), so the
worker's event loop does no fork, no file-system work and no blocking wait per task.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from hqpy.common.process import resolve_program
from hqpy.common.resources import Allocation
from hqpy.protocol.messages import TaskBody
from hqpy.worker.spawner import Spawner, SpawnResult


class TaskOutcome:
    __slots__ = ("ok", "error", "canceled")

    def __init__(self, ok: bool, error: str | None = None, canceled: bool = False) -> None:
        self.ok = ok
        self.error = error
        self.canceled = canceled


class Launcher:
    """Prepares task processes for one worker; caches what is shared by the tasks of a group."""

    def __init__(
        self,
        work_dir: Path,
        hq_path: str,
        spawner: Spawner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.work_dir = work_dir
        self.hq_path = hq_path
        self.spawner = spawner
        self.clock = clock
        self._work_prefix = str(work_dir)
        self._base_env: dict[int, dict[str, str]] = {}
        self._program: dict[int, tuple[str, list[str]]] = {}

    def base_env(self, body: TaskBody) -> dict[str, str]:
        """The environment every task of the body's group starts from."""
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

    async def run(
        self,
        body: TaskBody,
        task_id: int,
        instance_id: int,
        entry: str | None,
        allocation: Allocation | None,
        on_started: Callable[[float], None],
    ) -> TaskOutcome:
        """Run the task to its end. Any error in starting it is the task's failure, never the
        worker's: `on_started(time)` is called once the process exists. Cancelled (the caller's
        scope), it kills the task's process group and re-raises."""
        assert self.spawner is not None, "the launcher needs a spawner to run tasks"
        cwd = body.cwd
        try:
            cwd, stdout, stderr = body.resolve_paths(task_id, instance_id)
            executable, argv = self.program(body)
        except Exception as e:  # bad input from the submit is the task's failure
            return TaskOutcome(False, spawn_error(body.args, cwd, None, str(e)))
        extra = {"HQ_TASK_ID": str(task_id), "HQ_INSTANCE_ID": str(instance_id)}
        if entry is not None:
            extra["HQ_ENTRY"] = entry
        if allocation is not None:
            for name, indices in allocation.indices.items():
                if not indices:
                    continue
                joined = ",".join(indices)
                if name == "cpus":
                    extra["HQ_CPUS"] = joined
                else:
                    extra["HQ_RESOURCE_VALUES_" + _env_name(name)] = joined
        if body.task_dir:
            error_file = None
            task_dir_prefix = f"{self._work_prefix}/t{body.job_id}-{task_id}-{instance_id}-"
        else:
            error_file = f"{self._work_prefix}/hq-error-{body.job_id}-{task_id}-{instance_id}"
            task_dir_prefix = None
        data: str | bytes | None = body.stdin
        stdin = data.encode(errors="surrogateescape") if isinstance(data, str) else data
        clock = self.clock
        result, timed_out = await self.spawner.run(
            executable=executable,
            argv=argv,
            group_id=body.group_id,
            group_env=lambda: self.base_env(body),
            extra_env=extra,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            error_file=error_file,
            task_dir_prefix=task_dir_prefix,
            time_limit=body.time_limit,
            on_started=lambda: on_started(clock()),
        )
        if result.stage is not None:
            return TaskOutcome(False, start_error(body.args, cwd, result))
        if timed_out:
            return TaskOutcome(False, "Time limit reached")
        code = result.code
        if code == 0:
            return TaskOutcome(True)
        if result.error is not None:
            return TaskOutcome(False, result.error)
        assert code is not None
        if code < 0:
            sig = -code
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return TaskOutcome(
                False, f"Program terminated with exit code -1. Received signal {sig} ({name})."
            )
        return TaskOutcome(False, f"Program terminated with exit code {code}.")


def _env_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def start_error(args: tuple[str, ...], cwd: str, result: SpawnResult) -> str:
    """The task's error text for a process that could not be started."""
    text = result.error or ""
    if result.stage == "output":
        return f"Cannot create the task's output files: {text}"
    if result.stage == "cwd":
        reason = _os_error(result.errno, text)
        return f'Cannot execute "{_command(args)}": the working directory `{cwd}`: {reason}'
    if result.stage == "exec":
        return spawn_error(args, cwd, result.errno, text)
    return spawn_error(args, cwd, None, text)


def _command(args: tuple[str, ...]) -> str:
    return " ".join(args).encode(errors="backslashreplace").decode()


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
                f"\nThe file `{Path(cwd) / program}` exists,"
                f" maybe you have meant `./{program}` instead?"
            )
    elif code == errno.EACCES:
        out += (
            f"\nThe script that you have tried to execute (`{program}`) is not executable."
            "\nTry making it executable or add a shebang line to it."
        )
    return out
