"""The end-to-end harness: real `hq` server, worker and client processes on loopback.

`HqEnv` owns one server dir under the test's tmp dir and every process it starts. Each process
runs as a session leader (`start_new_session=True`) and carries a per-test marker variable in its
environment; tasks inherit it from their worker, so teardown can prove that nothing the test
started (directly or through hq) is still running.

Nothing here asserts on timings: `wait_until` polls a condition up to a generous timeout.
"""

from __future__ import annotations

import json as jsonlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

HQ = [sys.executable, "-m", "hqpy"]

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARN|ERROR) \S")
"""A log line as HyperQueue prints it on stderr (no `--debug`)."""

COMMAND_TIMEOUT = 60.0
DEFAULT_WAIT = 20.0

T = TypeVar("T")

_STRIPPED_ENV = ("HQ_SERVER_DIR", "HQ_OUTPUT_MODE", "HQ_DEBUG", "HQPY_LOG", "RUST_LOG")
_STRIPPED_PREFIXES = ("SLURM_", "PBS_", "HQ_", "HQPY_")


def wait_until(
    predicate: Callable[[], T], timeout: float = DEFAULT_WAIT, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail on timeout."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not reached within {timeout} s{': ' + what if what else ''} "
                f"(last value: {last!r})"
            )
        time.sleep(interval)
        last = predicate()
    return last


# ---------------------------------------------------------------------------------------------
# Tables


class Table:
    """One cli-table as a reader sees it: stripped cells, multi-line cells joined with `\\n`."""

    def __init__(self, header: list[str] | None, rows: list[list[str]]) -> None:
        self.header = header
        self.rows = rows

    @property
    def is_vertical(self) -> bool:
        return self.header is None

    def as_dict(self) -> dict[str, str]:
        """A vertical table's `key -> value`; keys must be unique."""
        assert self.is_vertical, "not a vertical table"
        keys = [r[0] for r in self.rows]
        assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
        return {r[0]: r[1] for r in self.rows}

    def keys(self) -> list[str]:
        assert self.is_vertical
        return [r[0] for r in self.rows]

    def records(self) -> list[dict[str, str]]:
        """A horizontal table's rows as `header -> cell` dicts."""
        assert self.header is not None, "not a horizontal table"
        return [dict(zip(self.header, r, strict=True)) for r in self.rows]

    def column(self, name: str) -> list[str]:
        return [r[name] for r in self.records()]

    def __repr__(self) -> str:
        return f"Table(header={self.header!r}, rows={self.rows!r})"


def _cells(line: str) -> list[str]:
    line = line.strip()
    assert line.startswith("|") and line.endswith("|"), f"not a table row: {line!r}"
    return [c.strip() for c in line[1:-1].split("|")]


def parse_tables(text: str) -> list[Table]:
    """Every table in `text`; free text between tables is skipped."""
    tables: list[Table] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            tables.append(_parse_block(block))
            block.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("+-"):
            block.append(stripped)
            # A border after a data row of a horizontal table ends that table.
            if _block_complete(block):
                flush()
        elif stripped.startswith("|"):
            block.append(stripped)
        else:
            flush()
    flush()
    return tables


def _block_complete(block: list[str]) -> bool:
    borders = [i for i, line in enumerate(block) if line.startswith("+-")]
    # Horizontal: border, header, border, rows..., border (3 borders, the second right under
    # the header). Vertical: border, rows..., border.
    if len(borders) == 3:
        return True
    if len(borders) == 2 and borders[1] != 2:
        return True
    return False


def _parse_block(block: list[str]) -> Table:
    borders = [i for i, line in enumerate(block) if line.startswith("+-")]
    rows_raw = [_cells(line) for line in block if not line.startswith("+-")]
    horizontal = len(borders) == 3 or (len(borders) == 2 and borders[1] == 2)
    header: list[str] | None = None
    if horizontal:
        header, rows_raw = rows_raw[0], rows_raw[1:]
    rows: list[list[str]] = []
    for cells in rows_raw:
        if rows and cells[0] == "":
            for i, cell in enumerate(cells):
                if cell:
                    rows[-1][i] += "\n" + cell
        else:
            rows.append(cells)
    return Table(header, rows)


def parse_table(text: str) -> Table:
    """The single table of `text`."""
    tables = parse_tables(text)
    assert len(tables) == 1, f"expected one table, got {len(tables)}:\n{text}"
    return tables[0]


# ---------------------------------------------------------------------------------------------
# Processes


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def process_alive(pid: int) -> bool:
    """Is `pid` a live process (not a zombie)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _marked_processes(marker: bytes) -> list[tuple[int, str]]:
    """Live processes whose environment carries `marker`, with their command lines."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            if not process_alive(int(entry.name)):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ProcessLookupError):
            continue
        found.append((int(entry.name), cmdline))
    return found


class HqProcess:
    """A long-running `hq` process (server or worker) with its output in files."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], stdout: Path, stderr: Path):
        self.name = name
        self.popen = popen
        self.stdout_path = stdout
        self.stderr_path = stderr
        self.worker_id: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float = DEFAULT_WAIT) -> int:
        """Wait for the process to exit by itself and return its exit code."""
        wait_until(lambda: not self.is_running(), timeout, what=f"{self.name} exits")
        code = self.popen.returncode
        assert code is not None
        return code

    def signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def describe(self) -> str:
        code = self.popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"--- {self.name} (pid {self.pid}, {state}) stdout:\n{self.stdout()}"
            f"--- stderr:\n{self.stderr()}"
        )


class HqEnv:
    """One test's hq world: a server dir, a work dir (the submit dir), and its processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.server_dir = tmp_path / "hq-server"
        self.work_dir = tmp_path / "work"
        self.work_dir.mkdir()
        self.logs_dir = tmp_path / "logs"
        self.logs_dir.mkdir()
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        self.marker = f"HQ_E2E_MARKER={uuid.uuid4().hex}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _STRIPPED_ENV and not k.startswith(_STRIPPED_PREFIXES)
        }
        key, _, value = self.marker.partition("=")
        env[key] = value
        env["TMPDIR"] = str(tmp)
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.processes: list[HqProcess] = []
        self.server: HqProcess | None = None
        self.workers: dict[int, HqProcess] = {}
        self._next_worker_id = 1

    # -----------------------------------------------------------------------------------------
    # Clients

    def hq_argv(self, *args: str, server_dir: Path | None = None) -> list[str]:
        return [*HQ, "--server-dir", str(server_dir or self.server_dir), *args]

    def run(
        self,
        *args: str,
        expect_fail: bool = False,
        check_stderr: bool = True,
        server_dir: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run one client command to its end.

        With `check`, a success must exit 0 and (with `check_stderr`) print nothing on stderr
        but HyperQueue-style log lines; `expect_fail` requires a non-zero exit code.
        """
        argv = self.hq_argv(*args, server_dir=server_dir)
        result = subprocess.run(
            argv,
            cwd=cwd or self.work_dir,
            env=self.env if env is None else env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        if not check:
            return result
        context = (
            f"command: {' '.join(args)}\nexit code: {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        if expect_fail:
            assert result.returncode != 0, f"expected a failure\n{context}"
        else:
            assert result.returncode == 0, f"expected success\n{context}"
            if check_stderr:
                bad = [ln for ln in result.stderr.splitlines() if ln and not LOG_LINE.match(ln)]
                assert not bad, f"unexpected stderr lines {bad}\n{context}"
        return result

    def command(
        self,
        *args: str,
        expect_fail: bool = False,
        json: bool = False,
        mode: str | None = None,
        **kw: Any,
    ) -> Any:
        """Run a client command; returns its stdout (parsed with `json=True`).

        With `expect_fail` and no `json`, returns stdout + stderr: everything the command said.
        """
        if json:
            mode = "json"
        if mode is not None:
            args = ("--output-mode", mode, *args)
        result = self.run(*args, expect_fail=expect_fail, **kw)
        if json:
            try:
                return jsonlib.loads(result.stdout)
            except ValueError as e:
                raise AssertionError(
                    f"stdout of `{' '.join(args)}` is not one JSON document ({e}):\n"
                    f"{result.stdout}\nstderr:\n{result.stderr}"
                ) from None
        if expect_fail:
            return result.stdout + result.stderr
        return result.stdout

    def table(self, *args: str, **kw: Any) -> Table:
        return parse_table(self.command(*args, **kw))

    # -----------------------------------------------------------------------------------------
    # Long-running processes

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> HqProcess:
        index = len(self.processes)
        out = self.logs_dir / f"{index}-{name}.stdout"
        err = self.logs_dir / f"{index}-{name}.stderr"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                argv,
                cwd=self.work_dir,
                env=env or self.env,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
        proc = HqProcess(name, popen, out, err)
        self.processes.append(proc)
        return proc

    def start_server(self, *args: str, server_dir: Path | None = None) -> HqProcess:
        """Start `hq server start` and wait until `hq server info` answers."""
        argv = self.hq_argv("server", "start", *args, server_dir=server_dir)
        proc = self._spawn("server", argv, None)
        self.server = proc

        def alive() -> None:
            if not proc.is_running():
                raise AssertionError(f"the server died during start-up\n{proc.describe()}")

        def access_written() -> bool:
            alive()
            return (server_dir or self.server_dir).joinpath("hq-current", "access.json").exists()

        def ready() -> bool:
            alive()
            return self.run("server", "info", server_dir=server_dir, check=False).returncode == 0

        # A cheap check first, so that the (slow) client call is not made too early.
        wait_until(access_written, interval=0.05, what="the access file is written")
        wait_until(ready, what="`hq server info` answers")
        return proc

    def start_worker(
        self,
        *args: str,
        cpus: str | None = "1",
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> HqProcess:
        """Start `hq worker start` and wait until it is RUNNING in `worker list`.

        Workers are started one at a time, so the n-th started worker gets id n.
        """
        argv = self.hq_argv("worker", "start", *args)
        if cpus is not None:
            argv += ["--cpus", cpus]
        proc = self._spawn(f"worker{self._next_worker_id}", argv, env)
        proc.worker_id = self._next_worker_id
        self.workers[self._next_worker_id] = proc
        self._next_worker_id += 1
        if wait:
            self.wait_for_worker(proc)
        return proc

    def wait_for_worker(self, proc: HqProcess) -> None:
        # Client calls are slow, so first wait (briefly, best effort) for the worker to log
        # its registration; `worker list` below is what decides.
        with suppress(AssertionError):
            wait_until(
                lambda: not proc.is_running() or "registered" in proc.stderr().lower(),
                timeout=5,
                interval=0.05,
            )

        def running() -> bool:
            if not proc.is_running():
                raise AssertionError(f"the worker died during start-up\n{proc.describe()}")
            workers = self.command("worker", "list", json=True)
            for w in workers:
                if w["id"] == proc.worker_id:
                    return bool(w.get("state", "RUNNING") == "RUNNING")
            return False

        wait_until(running, what=f"worker {proc.worker_id} is RUNNING")

    def kill_worker(self, worker_id: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the worker process itself (not its tasks)."""
        proc = self.workers[worker_id]
        proc.signal(sig)
        if sig == signal.SIGKILL:
            proc.wait_exit()

    def stop_server(self) -> int:
        """`hq server stop`, then wait for the server process to exit; returns its exit code."""
        assert self.server is not None
        self.command("server", "stop")
        return self.server.wait_exit()

    # -----------------------------------------------------------------------------------------
    # Helpers for tests

    def path(self, *parts: str) -> Path:
        """A path inside the work dir (the submit dir and default task cwd)."""
        return self.work_dir.joinpath(*parts)

    def wait_job(self, job_id: int = 1) -> None:
        self.command("job", "wait", str(job_id))

    def job_info(self, job_id: int = 1) -> dict[str, Any]:
        jobs = self.command("job", "info", str(job_id), json=True)
        assert isinstance(jobs, list) and len(jobs) == 1, jobs
        job: dict[str, Any] = jobs[0]
        return job

    def task_states(self, job_id: int = 1) -> dict[int, str]:
        data = self.command("task", "list", str(job_id), json=True)
        return {t["id"]: t["state"] for t in data[str(job_id)]}

    def wait_task_states(
        self, predicate: Callable[[dict[int, str]], bool], job_id: int = 1, what: str = ""
    ) -> dict[int, str]:
        result: dict[int, str] = {}

        def check() -> bool:
            nonlocal result
            result = self.task_states(job_id)
            return predicate(result)

        wait_until(check, what=what or "task states")
        return result

    # -----------------------------------------------------------------------------------------
    # Teardown

    def close(self) -> None:
        """Stop the server, end every process this env started and check nothing is left."""
        problems: list[str] = []
        if self.server is not None and self.server.is_running():
            with suppress(subprocess.TimeoutExpired):
                self.run("server", "stop", check=False, timeout=15)
            with suppress(AssertionError):
                self.server.wait_exit(10)
        for proc in reversed(self.processes):
            if proc.is_running():
                proc.signal_group(signal.SIGCONT)
                proc.signal_group(signal.SIGTERM)
        for proc in reversed(self.processes):
            with suppress(AssertionError):
                proc.wait_exit(5)
            if proc.is_running():
                problems.append(f"{proc.name} ignored SIGTERM\n{proc.describe()}")
            proc.signal_group(signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        for proc in self.processes:
            if _group_alive(proc.pid):
                # Members of the group that outlive their leader.
                proc.signal_group(signal.SIGKILL)
        marker = self.marker.encode()
        try:
            wait_until(lambda: not _marked_processes(marker), timeout=5)
        except AssertionError:
            leaked = _marked_processes(marker)
            for pid, _ in leaked:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            problems.append(
                "processes left running after teardown (killed now):\n"
                + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in leaked)
            )
        if problems:
            raise AssertionError("\n".join(problems))


def hq_env_fixture(tmp_path: Path) -> Iterator[HqEnv]:
    env = HqEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()


def free_ports(n: int) -> list[int]:
    """Ports that were free a moment ago (bound and released together, so they differ)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
