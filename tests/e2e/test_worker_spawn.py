"""How a real worker process starts tasks: bad tasks fail alone, argv[0], task dirs, stdin, and
killing a task's whole process group.

The poison-task test plays the server itself (loopback, real handshake, real `hq worker start`),
so its messages bypass every check of the CLI and the server: the worker must survive them.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel

from hqpy import __version__
from hqpy.common import serverdir
from hqpy.common.process import OrphanGuard, devnull, spawn
from hqpy.common.resources import (
    ResourceAmountRequest,
    ResourceDescriptorItem,
    ResourceKind,
    ResourceRequest,
)
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import new_secret, server_handshake
from hqpy.protocol.framing import FramedStream
from hqpy.worker.agent import WorkerAgent, WorkerOptions
from tests.e2e.harness import HqEnv, parse_table, process_alive, wait_until

pytestmark = pytest.mark.e2e

ONE_CPU = ResourceRequest((ResourceAmountRequest("cpus", 1),))


def _body(group_id: int, tmp: Path, **changes: Any) -> m.TaskBody:
    body = m.TaskBody(
        group_id=group_id,
        job_id=group_id,
        args=("true",),
        env={},
        cwd=str(tmp),
        stdout=None,
        stderr=None,
        submit_dir=str(tmp),
        request=ONE_CPU,
    )
    return attrs.evolve(body, **changes)


def _raw_frame(message: m.ComputeTasks) -> bytes:
    """The message as JSON with `\\uXXXX` escapes, so text that cannot be encoded (a lone
    surrogate) reaches the worker as it is."""
    data = codec.converter.unstructure(message, unstructure_as=m.ComputeTasks)
    data["op"] = codec.OPS[m.ComputeTasks]
    return json.dumps(data, ensure_ascii=True).encode()


class FakeServer:
    """A listening socket and an access file, as a server would leave them."""

    def __init__(self, tmp_path: Path) -> None:
        self.server_dir = tmp_path / "server"
        self.server_dir.mkdir()
        self.secret = new_secret()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        port = self.sock.getsockname()[1]
        instance = serverdir.create_instance_dir(self.server_dir)
        record = serverdir.AccessRecord(
            __version__, "fake-server", None, serverdir.Endpoint("127.0.0.1", port, self.secret)
        )
        serverdir.write_access(instance / "access.json", record)
        serverdir.link_current(self.server_dir, instance)

    async def run_tasks(self, bodies: list[m.TaskBody]) -> dict[int, list[Any]]:
        """Register the worker that connects, send it `bodies` (one task each), return the
        final update of each task (by job id), then ask the worker to stop."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        with trio.fail_after(60):
            stream = await listener.accept()
            framed = FramedStream(stream)
            assert await server_handshake(framed, {"worker": self.secret}) == "worker"
            framed.limit = 1 << 24
            register = await framed.receive(codec.FROM_WORKER)
            assert isinstance(register, m.RegisterWorker)
            await framed.send(m.WorkerRegistered(1, "fake-server", None), codec.TO_WORKER)
            tasks = [[b.job_id, 0, 0, b.group_id, None] for b in bodies]
            await framed.send_frame(_raw_frame(m.ComputeTasks(bodies, tasks)))
            final: dict[int, list[Any]] = {}
            while len(final) < len(bodies):
                msg = await framed.receive(codec.FROM_WORKER)
                assert msg is not None, "the worker hung up"
                if isinstance(msg, m.TaskUpdates):
                    for row in msg.updates:
                        if row[3] != m.TASK_RUNNING:
                            final[row[0]] = row
            await framed.send(m.StopWorker("test"), codec.TO_WORKER)
            await framed.aclose()
        await listener.aclose()
        return final


def test_poison_tasks_fail_alone(tmp_path: Path) -> None:
    ok_file = tmp_path / "ok"
    poisons = {
        1: _body(1, tmp_path, env={"A=B": "x"}),
        2: _body(2, tmp_path, env={"A\0B": "x"}),
        3: _body(3, tmp_path, env={"A": "x\0y"}),
        4: _body(4, tmp_path, args=("echo", "a\0b")),
        5: _body(5, tmp_path, args=("echo", "\ud800")),
        6: _body(6, tmp_path, args=("no-such-program-hqpy",)),
        7: _body(7, tmp_path, cwd=str(tmp_path / "missing")),
        8: _body(8, tmp_path, stdout="/proc/no-such/out"),
        9: _body(9, tmp_path, args=()),
        10: _body(10, tmp_path, cwd="bad\0cwd"),
    }
    good = _body(11, tmp_path, args=("bash", "-c", f"echo ok > {ok_file}"))
    server = FakeServer(tmp_path)
    log_path = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "hqpy", "--server-dir", str(server.server_dir)]
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [*argv, "worker", "start", "--cpus", "1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        final = trio.run(server.run_tasks, [*poisons.values(), good])
        # The worker ran every task, and stops cleanly when asked.
        assert worker.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log_text = log_path.read_text()
    assert "Traceback" not in log_text, log_text
    errors = {job: row[6] for job, row in final.items() if row[3] == m.TASK_FAILED}
    assert set(errors) == set(poisons), final
    assert final[11][3] == m.TASK_FINISHED
    assert ok_file.read_text() == "ok\n"
    assert "illegal environment variable name" in errors[1]
    assert "embedded null byte" in errors[2]
    assert "embedded null byte" in errors[3]
    assert errors[4].startswith('Cannot execute "echo a\\0b": embedded null byte')
    assert errors[5].startswith('Cannot execute "echo \\ud800": ')
    assert "surrogates not allowed" in errors[5]
    assert errors[6] == (
        'Cannot execute "no-such-program-hqpy": No such file or directory (os error 2)\n'
        "The program that you have tried to execute (`no-such-program-hqpy`) was not found."
    )
    assert errors[7] == (
        f'Cannot execute "true": cannot enter the working directory `{tmp_path / "missing"}`:'
        " No such file or directory (os error 2)"
    )
    assert errors[8].startswith("Cannot create the task's output files: ")
    assert "the task has no program to run" in errors[9]
    assert "cannot enter the working directory `bad\\0cwd`" in errors[10]


def test_argv0_is_what_the_user_typed(hq_env: HqEnv) -> None:
    """`hq submit -- ls x` runs `ls` as `ls`: its messages start `ls: `, not `/usr/bin/ls: `."""
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "ls", "/no-such-path-hqpy")
    stderr = hq_env.path("job-1", "0.stderr").read_text()
    assert stderr.startswith("ls: "), stderr
    # The PATH lookup still chooses the file: a shell reports its $0 as typed too.
    hq_env.command("submit", "--wait", "--", "bash", "-c", 'echo "$BASH_ARGV0 $0"')
    assert hq_env.path("job-2", "0.stdout").read_text() == "bash bash\n"


def _gone(path: str) -> bool:
    return not os.path.exists(path)


def test_task_dir_is_created_and_removed(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    script = 'echo "$HQ_TASK_DIR"; touch "$HQ_TASK_DIR/x"; test -f "$HQ_TASK_DIR/x"'
    hq_env.command("submit", "--wait", "--task-dir", "--array", "1-3", "--", "bash", "-c", script)
    dirs = [hq_env.path("job-1", f"{t}.stdout").read_text().strip() for t in (1, 2, 3)]
    assert len(set(dirs)) == 3
    for path in dirs:
        assert path
        wait_until(partial(_gone, path), what=f"{path} is removed")
    # Without --task-dir there is none.
    hq_env.command("submit", "--wait", "--", "bash", "-c", 'echo "[${HQ_TASK_DIR-unset}]"')
    assert hq_env.path("job-2", "0.stdout").read_text() == "[unset]\n"


def test_task_error_file_in_task_dir(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    script = 'echo "my error" > "$HQ_ERROR_FILENAME"; exit 1'
    hq_env.command("submit", "--wait", "--task-dir", "--", "bash", "-c", script)
    [task] = parse_table(hq_env.command("task", "list", "1", "-v")).records()
    assert task["Error"] == "my error"


def test_stdin_reaches_the_task(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    data = b"line 1\nline 2\n" * 5000  # larger than a pipe's buffer
    argv = hq_env.hq_argv("submit", "--wait", "--stdin", "--", "cat")
    done = subprocess.run(
        argv, cwd=hq_env.work_dir, env=hq_env.env, input=data, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert hq_env.path("job-1", "0.stdout").read_bytes() == data


def test_time_limit_kills_the_whole_group(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    script = "sleep 100 & echo $! > child.pid; wait"
    hq_env.command("submit", "--wait", "--time-limit", "1s", "--", "bash", "-c", script)
    [task] = parse_table(hq_env.command("task", "list", "1", "-v")).records()
    assert task["Error"] == "Time limit reached"
    pid = int(hq_env.path("child.pid").read_text())
    wait_until(lambda: not process_alive(pid), what="the task's child ends")


def test_cancel_kills_the_whole_group(hq_env: HqEnv) -> None:
    hq_env.start_server()
    worker = hq_env.start_worker()
    hq_env.command("submit", "--", "bash", "-c", "sleep 100 & echo $! > child.pid; wait")
    wait_until(lambda: hq_env.path("child.pid").exists() and hq_env.path("child.pid").read_text())
    pid = int(hq_env.path("child.pid").read_text())
    hq_env.command("job", "cancel", "1")
    wait_until(lambda: not process_alive(pid), what="the task's child ends")
    assert worker.is_running()
    hq_env.command("submit", "--wait", "--", "true")
    assert hq_env.task_states(2) == {0: "finished"}


async def _until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (under the caller's timeout)."""
    for _ in itertools.count():
        if condition():
            return
        await trio.sleep(0.02)


def _no_memfd(name: str, flags: int = 0) -> int:
    raise OSError(errno.ENOSYS, "Function not implemented")


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "no-memfd"])
async def test_orphan_guard_kills_listed_groups_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memfd: bool
) -> None:
    """Closing the guard (as a worker does when it ends) kills the groups still listed, and
    waits for the guard without blocking the event loop; also where the kernel has no memfd
    for the table the two share."""
    if not memfd:
        monkeypatch.setattr(os, "memfd_create", _no_memfd)
    proc = spawn(
        "/bin/sh",
        ["sh", "-c", "sleep 100 & echo $! > child.pid; wait"],
        cwd=str(tmp_path),
        env=dict(os.environ),
        stdin=devnull(),
        stdout=devnull(),
        stderr=devnull(),
    )
    guard = OrphanGuard()
    unreal = range(1 << 30, (1 << 30) + 1500)  # no process has these ids; the table grows
    for pgid in unreal:
        guard.add(pgid)
    guard.add(proc.pid)
    for pgid in unreal:
        guard.remove(pgid)
    pid_file = tmp_path / "child.pid"
    with trio.fail_after(20):
        await _until(lambda: pid_file.exists() and bool(pid_file.read_text().strip()))
        child = int(pid_file.read_text())
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await trio.lowlevel.checkpoint()
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            await guard.aclose()
            nursery.cancel_scope.cancel()
        assert await proc.wait() == -9
        await _until(lambda: not process_alive(child))
    assert ticks > 0  # the loop ran while the guard was closing


def test_inherited_descriptors_do_not_leak_into_tasks(hq_env: HqEnv) -> None:
    """`posix_spawn` closes nothing by itself: a pipe the worker inherited stays out of tasks."""
    hq_env.start_server()
    read, write = os.pipe()
    fd = 37
    os.dup2(write, fd)
    try:
        worker = subprocess.Popen(
            hq_env.hq_argv("worker", "start", "--cpus", "1"),
            cwd=hq_env.work_dir,
            env=hq_env.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            start_new_session=True,
        )
    finally:
        for each in (read, write, fd):
            os.close(each)
    try:
        script = f"if [ -e /proc/self/fd/{fd} ]; then echo leaked; else echo private; fi"
        hq_env.command("submit", "--wait", "--", "bash", "-c", script)
        assert hq_env.path("job-1", "0.stdout").read_text() == "private\n"
    finally:
        worker.kill()
        worker.wait()


def test_task_variables_win_over_the_worker_environment(hq_env: HqEnv) -> None:
    """A worker started inside another task (with its HQ_* variables) gives its own tasks
    their own values."""
    hq_env.start_server()
    env = dict(hq_env.env)
    env.update(HQ_TASK_ID="99", HQ_ERROR_FILENAME="/nonexistent/e", HQ_TASK_DIR="/nonexistent")
    hq_env.start_worker(env=env)
    script = 'echo "$HQ_TASK_ID $HQ_TASK_DIR"; echo "own error" > "$HQ_ERROR_FILENAME"; exit 1'
    hq_env.command("submit", "--wait", "--task-dir", "--", "bash", "-c", script)
    task_id, task_dir = hq_env.path("job-1", "0.stdout").read_text().split()
    assert task_id == "0"
    assert task_dir != "/nonexistent"
    [task] = parse_table(hq_env.command("task", "list", "1", "-v")).records()
    assert task["Error"] == "own error"


async def test_worker_times_come_from_its_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task start and end times are read through the worker's injected clock (here a fixed
    one), with real task processes."""
    monkeypatch.chdir(tmp_path)  # the worker moves to each task's directory
    server = FakeServer(tmp_path)
    options = WorkerOptions(
        server_dir=server.server_dir,
        resources=(ResourceDescriptorItem("cpus", ResourceKind.RANGE, start=0, end=1),),
        work_dir=tmp_path / "work",
    )
    agent = WorkerAgent(options, "hq", clock=lambda: 1234.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        ok = _body(1, tmp_path)
        failing = _body(2, tmp_path, args=("false",))
        final = await server.run_tasks([ok, failing])
    assert final[1][3:] == [m.TASK_FINISHED, 1234.5, 1234.5, None]
    assert final[2][3:] == [m.TASK_FAILED, 1234.5, 1234.5, "Program terminated with exit code 1."]
