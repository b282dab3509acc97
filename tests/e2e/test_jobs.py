"""`hq submit`, `hq job ...`, `hq task ...`: what tasks see, how they end, and job management."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.harness import HqEnv, parse_table, parse_tables, process_alive, wait_until

pytestmark = pytest.mark.e2e

SUBMITTED = "Job submitted successfully, job ID: 1"
PRINT_IDS = 'echo "$HQ_JOB_ID $HQ_TASK_ID $HQ_INSTANCE_ID"'


def task_errors(hq_env: HqEnv, job_id: int = 1) -> dict[str, str]:
    """Task id -> Error cell of `task list -v` (full, multi-line errors)."""
    table = parse_table(hq_env.command("task", "list", str(job_id), "-v"))
    assert table.header is not None and table.header[-1] == "Error", table.header
    return {r["Task ID"]: r["Error"] for r in table.records()}


def task_info_row(hq_env: HqEnv, row: str, job_id: int = 1, task_id: int = 0) -> str:
    table = parse_table(hq_env.command("task", "info", str(job_id), str(task_id), "-v"))
    return table.as_dict()[row]


def test_submit_array_sets_task_env(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    out = hq_env.command("submit", "--array", "1-10,20", "--", "bash", "-c", PRINT_IDS)
    assert out.strip() == SUBMITTED
    hq_env.wait_job()
    ids = [*range(1, 11), 20]
    files = {p.name for p in hq_env.path("job-1").iterdir()}
    assert files == {f"{i}.{s}" for i in ids for s in ("stdout", "stderr")}
    for i in ids:
        assert hq_env.path("job-1", f"{i}.stdout").read_text() == f"1 {i} 0\n"
        assert hq_env.path("job-1", f"{i}.stderr").read_text() == ""


def test_submit_each_line(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.path("input.txt").write_text("first line\nsecond\nthird one\n")
    hq_env.command(
        "submit",
        "--wait",
        "--each-line",
        "input.txt",
        "--",
        "bash",
        "-c",
        'echo "$HQ_TASK_ID:$HQ_ENTRY"',
    )
    outputs = [hq_env.path("job-1", f"{i}.stdout").read_text() for i in range(3)]
    assert outputs == ["0:first line\n", "1:second\n", "2:third one\n"]


def test_submit_from_json(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    items = [{"a": 1, "b": [1, 2]}, [3, "x"], "text"]
    hq_env.path("input.json").write_text(json.dumps(items))
    hq_env.command(
        "submit", "--wait", "--from-json", "input.json", "--", "bash", "-c", 'echo "$HQ_ENTRY"'
    )
    for i, item in enumerate(items):
        assert json.loads(hq_env.path("job-1", f"{i}.stdout").read_text()) == item


def test_submit_stdout_none_creates_no_files(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command(
        "submit", "--wait", "--stdout", "none", "--stderr", "none", "--", "bash", "-c", "echo hello"
    )
    assert hq_env.job_info()["info"]["task_stats"]["finished"] == 1
    assert not hq_env.path("job-1").exists()
    assert list(hq_env.work_dir.iterdir()) == []


def test_submit_custom_stdout_creates_parent_dir(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command(
        "submit",
        "--wait",
        "--array",
        "1-2",
        "--stdout",
        "out/%{TASK_ID}.txt",
        "--",
        "bash",
        "-c",
        PRINT_IDS,
    )
    assert hq_env.path("out", "1.txt").read_text() == "1 1 0\n"
    assert hq_env.path("out", "2.txt").read_text() == "1 2 0\n"
    assert {p.name for p in hq_env.path("out").iterdir()} == {"1.txt", "2.txt"}


def test_submit_env(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command(
        "submit",
        "--wait",
        "--env",
        "FOO=bar baz",
        "--env=NUM=42",
        "--",
        "bash",
        "-c",
        'echo "$FOO|$NUM"',
    )
    assert hq_env.path("job-1", "0.stdout").read_text() == "bar baz|42\n"


def test_submit_cwd(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    sub = hq_env.path("sub", "dir")
    sub.mkdir(parents=True)
    hq_env.command("submit", "--wait", "--cwd", "sub/dir", "--", "bash", "-c", "pwd -P")
    # The default output paths are relative to the task's cwd.
    assert hq_env.path("sub", "dir", "job-1", "0.stdout").read_text() == f"{sub.resolve()}\n"
    assert not hq_env.path("job-1").exists()


def test_task_time_limit(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--time-limit", "500ms", "--", "sleep", "5")
    assert task_errors(hq_env) == {"0": "Time limit reached"}


def test_task_failed_exit_code(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "bash", "-c", "exit 3")
    assert task_errors(hq_env) == {"0": "Program terminated with exit code 3."}
    table = parse_table(hq_env.command("job", "list", "--all"))
    assert table.records() == [{"ID": "1", "Name": "bash", "State": "FAILED", "Tasks": "1"}]


def test_task_program_not_found(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "non-existent-program", "--foo", "bar")
    error = task_info_row(hq_env, "Error")
    assert error.startswith('Cannot execute "non-existent-program --foo bar"'), error
    assert "The program that you have tried to execute (`non-existent-program`) was not found." in (
        error
    )
    # The output files are created even though the program never ran.
    assert hq_env.path("job-1", "0.stdout").read_text() == ""
    assert hq_env.path("job-1", "0.stderr").read_text() == ""


def test_task_error_file_becomes_error(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command(
        "submit",
        "--wait",
        "--",
        "bash",
        "-c",
        'printf "custom error\\nsecond line" > "$HQ_ERROR_FILENAME"; exit 1',
    )
    assert task_errors(hq_env) == {"0": "custom error\nsecond line"}


def test_max_fails_cancels_rest_of_job(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    # Tasks 1 and 2 fail at once; the others would run for a long time unless canceled.
    hq_env.command(
        "submit",
        "--wait",
        "--array",
        "1-10",
        "--max-fails",
        "1",
        "--",
        "bash",
        "-c",
        'if [ "$HQ_TASK_ID" -le 2 ]; then exit 1; fi; sleep 100',
    )
    job = hq_env.job_info()
    assert job["max_fails"] == 1
    stats = job["info"]["task_stats"]
    assert stats["failed"] == 2, stats
    # HyperQueue >= 0.26 aborts (not cancels) the rest of a job that hit --max-fails.
    assert stats["aborted"] == 8, stats
    others = ("canceled", "finished", "running", "waiting")
    assert all(stats[k] == 0 for k in others), stats
    table = parse_tables(hq_env.command("job", "list", "--all"))[0]
    assert table.column("State") == ["FAILED"]


def test_job_priority(hq_env: HqEnv) -> None:
    hq_env.start_server()
    log = 'echo "$HQ_JOB_ID" >> order.txt'
    hq_env.command("submit", "--array", "1-3", "--", "bash", "-c", log)
    hq_env.command("submit", "--array", "1-3", "--priority", "10", "--", "bash", "-c", log)
    hq_env.command("submit", "--array", "1-3", "--priority=-1", "--", "bash", "-c", log)
    hq_env.start_worker(cpus="1")
    hq_env.command("job", "wait", "all")
    assert hq_env.path("order.txt").read_text().split() == ["2"] * 3 + ["1"] * 3 + ["3"] * 3


def test_job_cancel_running(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    hq_env.command(
        "submit",
        "--array",
        "1-3",
        "--",
        "bash",
        "-c",
        'echo $$ > "pid-$HQ_TASK_ID"; exec sleep 100',
    )

    def written_pids() -> list[int]:
        texts = [p.read_text() for p in hq_env.work_dir.glob("pid-*")]
        return [int(t) for t in texts if t.endswith("\n")]

    def two_pids() -> list[int]:
        pids = written_pids()
        return pids if len(pids) == 2 else []

    # Two cpus: two tasks run, the third waits.
    pids = wait_until(two_pids)

    result = hq_env.run("job", "cancel", "1")
    lines = [ln for ln in result.stderr.splitlines() if ln]
    assert len(lines) == 1, result.stderr
    message = "Job 1 canceled (3 tasks canceled, 0 tasks already finished)"
    assert lines[0].endswith(f" INFO {message}"), lines[0]
    assert hq_env.task_states() == {1: "canceled", 2: "canceled", 3: "canceled"}
    wait_until(lambda: not any(process_alive(p) for p in pids), what="task processes end")
    assert len(written_pids()) == 2
    table = parse_table(hq_env.command("job", "list", "--all"))
    assert table.column("State") == ["CANCELED"]


def test_job_cancel_unknown_job(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("job", "cancel", "5")
    assert " ERROR Canceling job 5 failed; job not found" in result.stderr
    assert result.stdout == ""


def test_job_info_unknown_job(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("job", "info", "5")
    assert "Job 5 not found" in result.stderr


def test_job_wait_exits_0_for_failed_job(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--array", "1-2", "--", "bash", "-c", "exit 1")
    result = hq_env.run("job", "wait", "1")
    assert result.returncode == 0
    assert hq_env.task_states() == {1: "failed", 2: "failed"}


def test_submit_wait_exits_0_for_failed_job(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    result = hq_env.run("submit", "--wait", "--", "bash", "-c", "exit 1")
    assert result.returncode == 0
    assert result.stdout.startswith(SUBMITTED)
    assert hq_env.task_states() == {0: "failed"}


def test_job_task_ids(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.command("submit", "--array", "1-10,20", "--", "true")
    assert hq_env.command("job", "task-ids", "1") == "1-10,20\n"


def test_job_cat_stdout(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command(
        "submit", "--wait", "--array", "1-3", "--", "bash", "-c", 'echo "out $HQ_TASK_ID"'
    )
    assert hq_env.command("job", "cat", "1", "stdout") == "out 1\nout 2\nout 3\n"
    assert hq_env.command("job", "cat", "1", "stderr") == ""


def test_open_job_submit_and_close(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("job", "open")
    out = hq_env.command("submit", "--job", "1", "--array", "1-2", "--", "bash", "-c", PRINT_IDS)
    assert out.strip() == SUBMITTED
    hq_env.command("submit", "--job", "1", "--array", "3-4", "--", "bash", "-c", PRINT_IDS)
    listing = hq_env.command("job", "list")
    assert parse_tables(listing)[0].column("ID") == ["*1"]
    assert "* = Open jobs" in listing

    result = hq_env.run("job", "close", "1")
    assert " INFO Job 1 closed" in result.stderr
    hq_env.wait_job()
    job = hq_env.job_info()
    assert job["info"]["is_open"] is False
    assert job["info"]["task_count"] == 4
    assert job["info"]["task_stats"]["finished"] == 4
    assert len(job["submits"]) == 2
    for i in range(1, 5):
        assert hq_env.path("job-1", f"{i}.stdout").read_text() == f"1 {i} 0\n"


def test_submit_to_open_job_with_name_fails(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.command("job", "open")
    result = hq_env.run("submit", "--job", "1", "--name", "x", "--", "true", expect_fail=True)
    assert result.returncode == 1
    assert "Parameter --name is not allowed when submitting to an open job." in result.stderr
    assert hq_env.job_info()["info"]["task_count"] == 0


def test_job_forget(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "true")
    result = hq_env.run("job", "forget", "1")
    assert " INFO 1 job were forgotten" in result.stderr
    assert hq_env.command("job", "list", "--all", json=True) == []
    assert "Job 1 not found" in hq_env.run("job", "info", "1").stderr


def test_job_list_hides_finished_jobs(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "true")
    out = hq_env.command("job", "list")
    table = parse_tables(out)[0]
    assert table.header == ["ID", "Name", "State", "Tasks"]
    assert table.rows == []
    assert "There is 1 job in total. Use `--all` to display all jobs." in out
    table = parse_table(hq_env.command("job", "list", "--all"))
    assert table.records() == [{"ID": "1", "Name": "true", "State": "FINISHED", "Tasks": "1"}]


def test_job_summary_json(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--", "true")
    hq_env.command("submit", "--wait", "--", "false")
    hq_env.command("submit", "--array", "1-2", "--cpus", "4", "--", "true")
    summary = hq_env.command("job", "summary", json=True)
    assert summary == {
        "Aborted": 0,
        "Canceled": 0,
        "Failed": 1,
        "Finished": 1,
        "Running": 0,
        "Waiting": 1,
    }


def test_submit_progress_without_tty_writes_no_stderr(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    result = hq_env.run("submit", "--progress", "--array", "1-3", "--", "true")
    assert result.stderr == ""
    assert result.stdout.startswith(SUBMITTED)
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert hq_env.task_states() == {1: "finished", 2: "finished", 3: "finished"}


def test_submit_reads_directives_and_runs_a_script_through_its_shebang(hq_env: HqEnv) -> None:
    """Issue 14.7: `#HQ` lines become options (the command line wins); the shebang runs a
    script that is not executable."""
    script = hq_env.work_dir / "job.sh"
    script.write_text(
        "#!/bin/bash -e\n#HQ --name from-directive --priority 2\n#HQ --env WHO=directive\n"
        'echo "$WHO $1"\n'
    )
    script.chmod(0o644)
    hq_env.start_server()
    hq_env.start_worker()
    hq_env.command("submit", "--wait", "--env", "X=1", "--", "./job.sh", "arg")
    hq_env.command("submit", "--wait", "--name", "from-cli", "--", "./job.sh", "two")
    first, second = hq_env.job_info(1), hq_env.job_info(2)
    assert (first["info"]["name"], second["info"]["name"]) == ("from-directive", "from-cli")
    assert first["submits"][0]["array"]["priority"] == 2
    assert first["submits"][0]["array"]["program"]["args"] == ["/bin/bash", "-e", "./job.sh", "arg"]
    assert first["submits"][0]["array"]["program"]["env"] == {"WHO": "directive", "X": "1"}
    assert hq_env.command("job", "cat", "1", "stdout") == "directive arg\n"
    assert hq_env.command("job", "cat", "2", "stdout") == "directive two\n"
    # Without directives the script runs as it is, and it is not executable.
    hq_env.command("submit", "--wait", "--directives", "off", "--", "./job.sh")
    tasks = hq_env.job_info(3)["tasks"]
    assert [t["state"] for t in tasks] == ["failed"]
    assert (
        "The script that you have tried to execute (`./job.sh`) is not executable."
        in (tasks[0]["error"])
    )


def test_directives_from_stdin_and_stdin_for_the_task_share_one_read(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker()
    text = "#HQ --name piped\nhello\n"
    argv = hq_env.hq_argv("submit", "--wait", "--directives", "stdin", "--stdin", "--", "cat")
    done = subprocess.run(
        argv, input=text.encode(), env=hq_env.env, cwd=hq_env.work_dir, timeout=60, check=False
    )
    assert done.returncode == 0
    assert hq_env.job_info(1)["info"]["name"] == "piped"
    assert hq_env.command("job", "cat", "1", "stdout") == text


def test_directives_from_stdin_need_stdin_for_the_task(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("submit", "--directives", "stdin", "--", "bash", expect_fail=True)
    assert result.returncode == 1
    assert "You have to use `--stdin` when you specify `--directives=stdin`." in result.stderr
    assert hq_env.command("job", "list", "--all", "--output-mode", "json") == "[]\n"
