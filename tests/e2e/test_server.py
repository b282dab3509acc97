"""`hq server ...`: start-up, the server dir, info, stop, signals, access files, versions."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from tests.e2e.harness import HqEnv, free_ports, parse_table

pytestmark = pytest.mark.e2e

SERVER_INFO_ROWS = [
    "Server UID",
    "Client host",
    "Client port",
    "Worker host",
    "Worker port",
    "Version",
    "Pid",
    "Start date",
    "Journal path",
]


def test_server_start_writes_access_file(hq_env: HqEnv) -> None:
    hq_env.start_server()
    current = hq_env.server_dir / "hq-current"
    assert current.is_symlink()
    assert current.resolve() == (hq_env.server_dir / "001").resolve()

    access = hq_env.server_dir / "001" / "access.json"
    assert stat.S_IMODE(access.stat().st_mode) == 0o600
    record = json.loads(access.read_text())
    assert set(record) == {"version", "server_uid", "client", "worker"}
    assert isinstance(record["version"], str) and record["version"]
    assert len(record["server_uid"]) == 6 and record["server_uid"].isalnum()
    for role in ("client", "worker"):
        part = record[role]
        assert set(part) == {"host", "port", "secret_key"}
        assert isinstance(part["host"], str)
        assert isinstance(part["port"], int) and 0 < part["port"] < 65536
        assert isinstance(part["secret_key"], str) and part["secret_key"]
    assert record["client"]["secret_key"] != record["worker"]["secret_key"]


def test_server_info_cli(hq_env: HqEnv) -> None:
    server = hq_env.start_server()
    table = hq_env.table("server", "info")
    assert table.is_vertical
    assert table.keys() == SERVER_INFO_ROWS
    info = table.as_dict()
    assert info["Pid"] == str(server.pid)
    assert info["Journal path"] == ""
    assert info["Client host"] == info["Worker host"] == socket.gethostname()
    assert int(info["Client port"]) != int(info["Worker port"])
    assert len(info["Server UID"]) == 6 and info["Server UID"].isalnum()


def test_server_info_json(hq_env: HqEnv) -> None:
    server = hq_env.start_server()
    info = hq_env.command("server", "info", json=True)
    assert set(info) == {
        "worker_host",
        "client_host",
        "worker_port",
        "client_port",
        "server_dir",
        "version",
        "server_uid",
        "start_date",
        "pid",
        "journal_path",
    }
    assert info["server_dir"] is None
    assert info["journal_path"] is None
    assert info["pid"] == server.pid
    assert info["client_host"] == info["worker_host"] == socket.gethostname()
    for key in ("client_port", "worker_port"):
        assert isinstance(info[key], int) and 0 < info[key] < 65536
    assert len(info["server_uid"]) == 6 and info["server_uid"].isalnum()
    datetime.fromisoformat(info["start_date"])
    access = json.loads((hq_env.server_dir / "hq-current" / "access.json").read_text())
    assert info["client_port"] == access["client"]["port"]
    assert info["worker_port"] == access["worker"]["port"]
    assert info["server_uid"] == access["server_uid"]
    assert info["version"] == access["version"]


def test_server_stop(hq_env: HqEnv) -> None:
    hq_env.start_server()
    assert hq_env.stop_server() == 0
    assert not (hq_env.server_dir / "hq-current").exists()
    assert not (hq_env.server_dir / "hq-current").is_symlink()
    assert (hq_env.server_dir / "001" / "access.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_server_stops_on_signal(hq_env: HqEnv, sig: signal.Signals) -> None:
    server = hq_env.start_server()
    server.signal(sig)
    assert server.wait_exit() == 0
    assert not (hq_env.server_dir / "hq-current").is_symlink()
    assert (hq_env.server_dir / "001").is_dir()


def test_server_second_start_uses_next_dir(hq_env: HqEnv) -> None:
    hq_env.start_server()
    first_uid = hq_env.command("server", "info", json=True)["server_uid"]
    assert hq_env.stop_server() == 0
    hq_env.start_server()
    current = hq_env.server_dir / "hq-current"
    assert current.is_symlink()
    assert current.resolve() == (hq_env.server_dir / "002").resolve()
    assert (hq_env.server_dir / "001" / "access.json").is_file()
    info = hq_env.command("server", "info", json=True)
    assert info["server_uid"] != first_uid
    assert info["server_uid"] == json.loads((current / "access.json").read_text())["server_uid"]


def test_client_connects_shortly_after_server_start(hq_env: HqEnv) -> None:
    argv = hq_env.hq_argv("server", "start")
    with open(hq_env.logs_dir / "server.stderr", "wb") as err:
        popen = subprocess.Popen(
            argv,
            cwd=hq_env.work_dir,
            env=hq_env.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        time.sleep(0.2)
        result = hq_env.run("job", "list", check=False)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert parse_table(result.stdout).header == ["ID", "Name", "State", "Tasks"]
    finally:
        hq_env.run("server", "stop", check=False)
        try:
            assert popen.wait(20) == 0
        finally:
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()


def test_server_wait_timeout_without_server(hq_env: HqEnv) -> None:
    result = hq_env.run("server", "wait", "--timeout", "1s", expect_fail=True)
    assert result.returncode == 1
    assert "Timeout after 1s: Could not connect to server at" in result.stderr
    assert "Make sure that the server is running." in result.stderr


def test_client_refuses_other_version(hq_env: HqEnv) -> None:
    hq_env.start_server()
    access = json.loads((hq_env.server_dir / "hq-current" / "access.json").read_text())
    version = access["version"]
    access["version"] = version + ".1"
    copy = hq_env.root / "copied-server"
    (copy / "hq-current").mkdir(parents=True)
    (copy / "hq-current" / "access.json").write_text(json.dumps(access))

    output = hq_env.command("job", "list", expect_fail=True, server_dir=copy)
    assert "Hyperqueue version mismatch detected." in output
    assert f"Access record contains version {version}.1, but the current version is {version}." in (
        output
    )
    result = hq_env.run("job", "list", expect_fail=True, server_dir=copy)
    assert result.returncode == 1


def test_client_uses_plain_hq_current_dir(hq_env: HqEnv) -> None:
    hq_env.start_server()
    access = json.loads((hq_env.server_dir / "hq-current" / "access.json").read_text())
    del access["worker"]
    copy = hq_env.root / "copied-server"
    (copy / "hq-current").mkdir(parents=True)
    (copy / "hq-current" / "access.json").write_text(json.dumps(access))
    assert hq_env.command("job", "list", json=True, server_dir=copy) == []


def test_server_start_with_generated_access_file(hq_env: HqEnv) -> None:
    client_port, worker_port = free_ports(2)
    access_file = hq_env.root / "access.json"
    hq_env.command(
        "server",
        "generate-access",
        str(access_file),
        "--client-port",
        str(client_port),
        "--worker-port",
        str(worker_port),
    )
    record = json.loads(access_file.read_text())
    assert record["client"]["port"] == client_port
    assert record["worker"]["port"] == worker_port
    assert record["client"]["secret_key"] != record["worker"]["secret_key"]

    hq_env.start_server(f"--access-file={access_file}")
    served = json.loads((hq_env.server_dir / "hq-current" / "access.json").read_text())
    assert served == record
    info = hq_env.command("server", "info", json=True)
    assert info["client_port"] == client_port
    assert info["worker_port"] == worker_port
    assert info["server_uid"] == record["server_uid"]
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "true")
    assert hq_env.task_states() == {0: "finished"}


def test_server_start_twice_in_same_dir_fails(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("server", "start", expect_fail=True, timeout=30)
    assert result.returncode == 1
    # The running server is not disturbed.
    assert hq_env.command("job", "list", json=True) == []
    assert (hq_env.server_dir / "hq-current").resolve().name == "001"


def test_open_job_submits_without_array_take_the_next_task_id(hq_env: HqEnv) -> None:
    """Issue 14.4, as HyperQueue: the highest id + 1 (0 in an empty job)."""
    hq_env.start_server()
    hq_env.command("job", "open")
    hq_env.command("submit", "--job", "1", "--", "true")
    hq_env.command("submit", "--job", "1", "--", "true")
    hq_env.command("submit", "--job", "1", "--array", "7", "--", "true")
    hq_env.command("submit", "--job", "1", "--", "true")
    assert hq_env.command("job", "task-ids", "1") == "0-1,7-8\n"
    result = hq_env.run("submit", "--job", "1", "--array", "8", "--", "true", expect_fail=True)
    assert "Task 8 already exists in job 1." in result.stderr


def test_missing_ids_of_a_huge_range_are_one_line(hq_env: HqEnv) -> None:
    """Issue 8.2: `job info 100-50000000` walked the range and logged a line per id."""
    hq_env.start_server()
    hq_env.command("submit", "--", "true")
    result = hq_env.run("job", "info", "1,100-50000000")
    assert result.stderr.count("not found") == 1
    assert " ERROR Jobs 100-50000000 not found" in result.stderr
    result = hq_env.run("job", "cancel", "100-50000000")
    assert " ERROR Canceling jobs 100-50000000 failed; jobs not found" in result.stderr


def test_json_job_info_joins_the_pages_of_a_big_job(hq_env: HqEnv) -> None:
    """Issue 8.3: the tasks of `job info` come in pages; the client joins them."""
    hq_env.start_server()
    hq_env.command("submit", "--array", "0-44999", "--", "true")
    job = hq_env.job_info()
    assert [t["id"] for t in job["tasks"]] == list(range(45000))


def test_job_cat_prints_every_page_of_a_big_job_in_order(hq_env: HqEnv) -> None:
    """`job cat` prints page by page (memory flat in the job's size) and misses no task at the
    page boundaries; the tasks never ran, so each one is a warning."""
    hq_env.start_server()
    hq_env.command("submit", "--array", "0-44999", "--", "true")
    hq_env.command("job", "cancel", "1")
    result = hq_env.run("job", "cat", "1", "stdout")
    assert result.stdout == ""
    warnings = [line for line in result.stderr.splitlines() if "stream" in line]
    assert len(warnings) == 45000
    for i in (0, 19_999, 20_000, 39_999, 40_000, 44_999):
        assert warnings[i].endswith(f"Task {i} has no `stdout` stream associated with it")


def _poll(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _catches_sigterm(pid: int) -> bool:
    """Has the process installed its own SIGTERM handler (`server start` does so first)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return False
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
@pytest.mark.parametrize(
    "point", ["handlers-set", "handlers-set+20ms", "link-written", "link+50ms", "answering"]
)
def test_signal_during_start_up_is_a_clean_stop(
    hq_env: HqEnv, sig: signal.Signals, point: str
) -> None:
    """Wherever start-up is when the signal comes (imports, binding, the allocator, serving):
    exit 0, no traceback, no `hq-current` left behind. Points are found by polling, not by
    the clock: the handlers in /proc/PID/status, the link, a first answer."""
    current = hq_env.server_dir / "hq-current"
    stderr_path = hq_env.logs_dir / f"server-{sig.name}-{point}.stderr"
    with open(stderr_path, "wb") as err:
        popen = subprocess.Popen(
            hq_env.hq_argv("server", "start"),
            cwd=hq_env.work_dir,
            env=hq_env.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        # Before `hq` sets its handlers the interpreter is still starting: nothing to clean.
        _poll(lambda: _catches_sigterm(popen.pid))
        if point == "handlers-set+20ms":
            time.sleep(0.02)
        elif point.startswith("link"):
            _poll(lambda: (current / "access.json").exists())
            if point == "link+50ms":
                time.sleep(0.05)
        elif point == "answering":
            _poll(lambda: hq_env.run("server", "info", check=False).returncode == 0)
        popen.send_signal(sig)
        code = popen.wait(20)
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    stderr = stderr_path.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert not current.exists() and not current.is_symlink()


_SIGNAL_WHILE_PARSING = """
import os, signal, sys
import hqpy.cli.main as cli

build = cli.build_parser

def build_and_signal(noun):
    os.kill(os.getpid(), signal.{sig})
    return build(noun)

cli.build_parser = build_and_signal
cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_while_parsing_arguments_is_a_clean_stop(hq_env: HqEnv, sig: signal.Signals) -> None:
    """The signal comes before `server start` has parsed its arguments (argparse, imports):
    still exit 0, no traceback, nothing left in the server directory."""
    code = _SIGNAL_WHILE_PARSING.format(sig=sig.name)
    result = subprocess.run(
        [sys.executable, "-c", code, "--server-dir", str(hq_env.server_dir), "server", "start"],
        cwd=hq_env.work_dir,
        env=hq_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    current = hq_env.server_dir / "hq-current"
    assert not current.exists() and not current.is_symlink()


def test_client_interrupted_while_parsing_exits_130_quietly(hq_env: HqEnv) -> None:
    code = _SIGNAL_WHILE_PARSING.format(sig="SIGINT")
    result = subprocess.run(
        [sys.executable, "-c", code, "--server-dir", str(hq_env.server_dir), "job", "list"],
        cwd=hq_env.work_dir,
        env=hq_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 130
    assert "Traceback" not in result.stderr
