"""Bad input to the real `hq`: one clear error line and the right exit code, never a traceback
(issue 8, points 1, 10 and 11), and the server stays up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hqpy.client.blocking import ClientError, connect
from hqpy.common.resources import build_request
from hqpy.protocol import messages as m
from tests.e2e.harness import HqEnv

USAGE = 2
FAILURE = 1


def run_raw(
    hq_env: HqEnv, *args: str | bytes, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """`hq` with arguments that may be bytes (not UTF-8) and binary stdin."""
    argv: list[str | bytes] = [*hq_env.hq_argv(), *args]
    return subprocess.run(
        argv,
        cwd=hq_env.work_dir,
        env=hq_env.env,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def one_error_line(stderr: str | bytes) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, text
    return lines[0]


def server_still_answers(hq_env: HqEnv) -> None:
    assert isinstance(hq_env.command("job", "list", json=True), list)


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (("submit", "--array", "0-9223372036854775807", "--", "true"), "9223372036854775807"),
        (("task", "info", "1", "0-99999999999999999999"), "99999999999999999999"),
        (("task", "list", "1", "--tasks", "0-99999999999999999999"), "99999999999999999999"),
        (("job", "info", "0-99999999999999999999"), "99999999999999999999"),
        (("job", "cancel", "4294967296"), "4294967296"),
        (("job", "cat", "1", "stdout", "--tasks", "-3"), "-3"),
    ],
)
def test_ids_past_32_bits_are_refused_by_the_client(
    hq_env: HqEnv, args: tuple[str, ...], value: str
) -> None:
    hq_env.start_server()
    result = hq_env.run(*args, expect_fail=True)
    assert result.returncode == USAGE
    line = one_error_line(result.stderr)
    assert f"id {value} is " in line
    server_still_answers(hq_env)


def test_a_hand_written_client_gets_the_same_refusal(hq_env: HqEnv) -> None:
    """The server parses ids with the same parser: a request that skips the CLI is refused."""
    hq_env.start_server()
    desc = m.SubmitDesc(
        ids="0-9223372036854775807",
        args=("true",),
        env={},
        cwd=str(hq_env.work_dir),
        stdout=None,
        stderr=None,
        submit_dir=str(hq_env.work_dir),
        request=build_request(None, []),
    )
    with connect(hq_env.server_dir) as conn:
        with pytest.raises(ClientError, match="id 9223372036854775807 is out of range"):
            conn.request(m.SubmitRequest(submit=desc), m.SubmitResponse)
        with pytest.raises(ClientError, match="99999999999999999999"):
            conn.request(m.TaskListRequest("1", "0-99999999999999999999", ()), m.TaskListResponse)
    server_still_answers(hq_env)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        ((b"submit", b"--", b"\xff"), "argument is not valid UTF-8: '\\udcff'"),
        ((b"submit", b"--env", b"A=\xff", b"--", b"true"), "the value of --env"),
        ((b"submit", b"--cwd=/tmp/\xfe", b"--", b"true"), "the value of --cwd"),
        ((b"submit", b"--name", b"\xc3", b"--", b"true"), "the value of --name"),
    ],
)
def test_arguments_that_are_not_utf8_are_refused_in_one_line(
    hq_env: HqEnv, args: tuple[bytes, ...], shown: str
) -> None:
    result = run_raw(hq_env, *args)
    assert result.returncode == USAGE
    assert shown in one_error_line(result.stderr)


def test_binary_stdin_reaches_the_task_byte_for_byte(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    data = bytes(range(256)) * 40 + b"\xff\xfe\x00end"
    result = run_raw(
        hq_env, "submit", "--wait", "--stdin", "--", "sh", "-c", "cat > got.bin", stdin=data
    )
    assert result.returncode == 0, result.stderr
    assert (hq_env.work_dir / "got.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("--cpus", "1e23"), USAGE, "invalid request '1e23'"),
        (("--cpus", "100000000000000000000000"), USAGE, "is too large"),
        (("--cpus", "x"), USAGE, "argument --cpus"),
        (("--array", "1-"), USAGE, "argument --array"),
        (("--time-limit", "99999999999999999999h"), USAGE, "it is too large"),
        (("--time-request", "9" * 5000 + "s"), USAGE, "it is too large"),
        (("--max-fails", "-1"), USAGE, "`-1` is out of range"),
        (("--priority", "99999999999999999999"), USAGE, "out of range"),
        (("--env", "=x"), USAGE, "expected KEY=VALUE"),
    ],
)
def test_out_of_range_and_invalid_values_are_usage_errors(
    hq_env: HqEnv, args: tuple[str, ...], code: int, expected: str
) -> None:
    result = hq_env.run("submit", *args, "--", "true", expect_fail=True)
    assert result.returncode == code
    assert expected in one_error_line(result.stderr)


def test_input_files_that_cannot_be_used_are_named(hq_env: HqEnv) -> None:
    hq_env.start_server()
    work = hq_env.work_dir
    (work / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (work / "empty.json").write_text("[]")
    (work / "bad.txt").write_bytes(b"ok\nbad \xff\n")
    (work / "nul.txt").write_bytes(b"a\nb\x00c\n")
    (work / "file").write_text("")
    cases = [
        (("--from-json", "deep.json"), "`deep.json` is nested too deeply"),
        (("--from-json", "empty.json"), "`empty.json` is an empty array"),
        (("--each-line", "bad.txt"), "`bad.txt` is not valid UTF-8 (line 2"),
        (("--each-line", "nul.txt"), "line 2 of `nul.txt` contains a NUL character"),
        (("--stdout", "file/x"), f"`{work / 'file'}` is not a directory"),
        (("--stderr", "file/%{TASK_ID}.err"), f"`{work / 'file'}` is not a directory"),
    ]
    for args, expected in cases:
        result = hq_env.run("submit", *args, "--", "true", expect_fail=True)
        assert result.returncode == FAILURE
        assert expected in one_error_line(result.stderr), args
    assert hq_env.command("job", "list", "--all", json=True) == []


def test_words_after_double_dash_belong_to_the_command(hq_env: HqEnv) -> None:
    """`alloc` and `add` before `--` are option values here, not `hq alloc add`."""
    hq_env.start_server()
    (hq_env.work_dir / "alloc").mkdir()
    hq_env.command("submit", "--name", "add", "--cwd", "alloc", "--", "echo", "--", "x")
    job = hq_env.job_info()
    assert job["info"]["name"] == "add"
    submit = job["submits"][0]["array"]
    assert submit["program"]["args"] == ["echo", "--", "x"]
    assert submit["program"]["cwd"].endswith("/alloc")


def test_unknown_words_before_double_dash_of_alloc_add_are_refused(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run(
        "alloc", "add", "local", "--time-limit", "1h", "--bogus", "--", "-x", expect_fail=True
    )
    assert result.returncode == USAGE
    assert "unrecognized arguments: --bogus" in result.stderr


def test_generate_access_writes_partial_files_without_the_uid(hq_env: HqEnv) -> None:
    root = hq_env.root
    hq_env.command(
        "server",
        "generate-access",
        str(root / "full.json"),
        "--client-port",
        "1234",
        "--worker-port",
        "5678",
        "--client-host",
        "c.example",
        "--worker-host",
        "w.example",
        "--worker-file",
        str(root / "worker.json"),
    )
    full = json.loads((root / "full.json").read_text())
    worker = json.loads((root / "worker.json").read_text())
    assert set(full) == {"version", "server_uid", "client", "worker"}
    assert full["client"]["host"] == "c.example" and full["client"]["port"] == 1234
    assert worker == {"version": full["version"], "worker": full["worker"]}
    assert set(worker["worker"]) == {"host", "port", "secret_key"}
    assert not (root / "client.json").exists()

    hq_env.command(
        "server",
        "generate-access",
        str(root / "full2.json"),
        "--client-port=1",
        "--worker-port=2",
        "--host=h",
        "--client-file",
        str(root / "client.json"),
    )
    client = json.loads((root / "client.json").read_text())
    full2 = json.loads((root / "full2.json").read_text())
    assert client == {"version": full2["version"], "client": full2["client"]}
    assert full2["worker"]["host"] == "h"

    result = hq_env.run(
        "server",
        "generate-access",
        str(root / "x.json"),
        "--client-port=1",
        "--worker-port=2",
        "--host=h",
        "--client-host=c",
        expect_fail=True,
    )
    assert result.returncode == USAGE
    assert (
        "the argument '--host <HOST>' cannot be used with '--client-host <CLIENT_HOST>'"
        in result.stderr
    )


def test_job_cat_warns_only_for_tasks_the_job_does_not_have(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--array", "3-5", "--wait", "--", "sh", "-c", "echo $HQ_TASK_ID")
    result = hq_env.run("job", "cat", "1", "stdout", "--tasks", "3-7", "--task-status", "failed")
    assert "Task 6 of job 1 not found" in result.stderr
    assert "Task 7 of job 1 not found" in result.stderr
    assert "Task 3 of job 1 not found" not in result.stderr
    assert "No tasks were selected for job 1, there is nothing to print" in result.stderr
    assert result.stdout == ""

    result = hq_env.run("job", "cat", "1", "stdout", "--tasks", "5-6")
    assert result.stdout == "5\n"
    assert "Task 6 of job 1 not found" in result.stderr
    assert "nothing to print" not in result.stderr

    result = hq_env.run("job", "cat", "1", "stdout", "--tasks", f"0-{2**32 - 1}")
    assert result.stdout == "3\n4\n5\n"
    assert "Tasks 0-2 of job 1 not found" in result.stderr
    assert "Tasks 6-4294967295 of job 1 not found" in result.stderr
    assert len(result.stderr.splitlines()) == 2


def test_bad_path_in_server_dir_is_one_line(hq_env: HqEnv, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "f"
    not_a_dir.write_text("")
    result = hq_env.run("job", "list", server_dir=not_a_dir / "x", expect_fail=True)
    assert result.returncode == FAILURE
    one_error_line(result.stderr)
