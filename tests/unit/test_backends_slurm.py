"""Slurm backend: script rendering, parsers on real Slurm 22.05 output, command shapes."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BackendError,
    CancelError,
    CancelTarget,
    ExternalState,
    StatusQueryError,
    SubmitError,
)
from hqpy.autoalloc.backends.slurm import (
    SlurmBackend,
    parse_sbatch_output,
    parse_scontrol_output,
    parse_squeue_output,
    render_sbatch_script,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "slurm"
WORKER = (
    '/opt/hq/bin/hq worker start --idle-timeout "5m" --manager "slurm" '
    '--server-dir "/srv/hq/001" --on-server-lost "finish-running" '
    '--server-lost-grace "5m" --time-limit "1h"'
)
DIR = Path("/srv/hq/001/autoalloc/1/001")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def local(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def request(**changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=1,
        name="hq-1-1",
        worker_count=1,
        time_limit=3600,
        additional_args=(),
        worker_command=WORKER,
        workdir=DIR,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


# --- rendering -------------------------------------------------------------------------------


def test_render_single_node() -> None:
    assert render_sbatch_script(request(time_limit=180)) == (
        "#!/bin/bash\n"
        "#SBATCH --nodes=1\n"
        "#SBATCH --job-name=hq-1-1\n"
        f"#SBATCH --output={DIR}/stdout\n"
        f"#SBATCH --error={DIR}/stderr\n"
        "#SBATCH --time=00:03:00\n"
        "\n"
        f"{WORKER}\n"
    )


def test_render_additional_args_on_one_line() -> None:
    script = render_sbatch_script(
        request(additional_args=("--partition=p1", "--account=abc", "-q", "x"), name="foo-2")
    )
    lines = script.splitlines()
    assert lines[2] == "#SBATCH --job-name=foo-2"
    assert lines[6] == "#SBATCH --partition=p1 --account=abc -q x"
    assert lines[7] == ""
    assert lines[8] == WORKER
    assert len(lines) == 9


def test_render_walltime_hours_not_folded() -> None:
    assert "#SBATCH --time=96:00:00\n" in render_sbatch_script(request(time_limit=96 * 3600))


def test_render_multi_node_uses_srun() -> None:
    script = render_sbatch_script(request(worker_count=3))
    assert "#SBATCH --nodes=3\n" in script
    assert script.endswith(f"\n\nsrun --overlap --ntasks=3 --nodes=3 {WORKER}\n")


def test_render_multi_node_compound_line_runs_under_bash() -> None:
    line = f"init.sh && HQPY_LOG=debug {WORKER}; stop.sh"
    script = render_sbatch_script(request(worker_count=2, worker_command=line))
    assert script.endswith(
        f"\n\nsrun --overlap --ntasks=2 --nodes=2 bash -c 'init.sh && HQPY_LOG=debug {WORKER};"
        " stop.sh'\n"
    )


def test_render_has_exactly_one_command_line() -> None:
    script = render_sbatch_script(request(additional_args=("--mem=1G",), worker_count=2))
    commands = [x for x in script.splitlines() if x and not x.startswith("#")]
    assert len(commands) == 1


# --- sbatch ----------------------------------------------------------------------------------


def test_parse_sbatch_real_output() -> None:
    assert parse_sbatch_output(fixture("sbatch_submitted.txt")) == "1"


def test_parse_sbatch_with_banner_lines() -> None:
    text = "Welcome to the cluster!\nYour budget: 100 h\nsubmitted Batch Job 4242\n"
    assert parse_sbatch_output(text) == "4242"


def test_parse_sbatch_parsable() -> None:
    assert parse_sbatch_output(fixture("sbatch_parsable.txt")) == "7"
    assert parse_sbatch_output("123;cluster2\n") == "123"


def test_parse_sbatch_no_id() -> None:
    with pytest.raises(ValueError, match="no job id"):
        parse_sbatch_output("sbatch: something odd happened\n")


# --- squeue ----------------------------------------------------------------------------------


def test_parse_squeue_all_states() -> None:
    statuses = parse_squeue_output(fixture("squeue_all_states.txt"))
    assert {k: (v.state, v.raw) for k, v in statuses.items()} == {
        "1": (ExternalState.FINISHED, "COMPLETED"),
        "2": (ExternalState.FAILED, "FAILED"),
        "3": (ExternalState.RUNNING, "RUNNING"),
        "4": (ExternalState.FAILED, "CANCELLED"),
        "5": (ExternalState.FINISHED, "TIMEOUT"),
        "6": (ExternalState.FAILED, "CANCELLED"),
        "7": (ExternalState.FINISHED, "COMPLETED"),
        "8": (ExternalState.QUEUED, "PENDING"),
    }
    assert statuses["1"].started_at == local("2026-11-22T03:07:38")
    assert statuses["1"].finished_at == local("2026-11-22T03:07:41")
    # A running job's %e is start + limit, not an end.
    assert statuses["3"].started_at == local("2026-11-22T03:07:40")
    assert statuses["3"].finished_at is None
    # A pending job's %S is an estimate.
    assert statuses["8"].started_at is None
    assert statuses["8"].finished_at is None


def test_parse_squeue_not_yet_scheduled() -> None:
    statuses = parse_squeue_output(fixture("squeue_pending_running.txt"))
    assert statuses["7"].state is ExternalState.QUEUED
    assert statuses["7"].started_at is None
    assert statuses["5"].state is ExternalState.RUNNING


def test_parse_squeue_empty_and_garbage() -> None:
    assert parse_squeue_output("") == {}
    with pytest.raises(ValueError, match="unexpected squeue line"):
        parse_squeue_output("<html>503</html>\n")


# --- scontrol --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "state", "raw"),
    [
        ("scontrol_pending_resources.txt", ExternalState.QUEUED, "PENDING"),
        ("scontrol_pending_priority.txt", ExternalState.QUEUED, "PENDING"),
        ("scontrol_running.txt", ExternalState.RUNNING, "RUNNING"),
        ("scontrol_running_multinode.txt", ExternalState.RUNNING, "RUNNING"),
        ("scontrol_completed.txt", ExternalState.FINISHED, "COMPLETED"),
        ("scontrol_timeout.txt", ExternalState.FINISHED, "TIMEOUT"),
        ("scontrol_failed.txt", ExternalState.FAILED, "FAILED"),
        ("scontrol_cancelled_running.txt", ExternalState.FAILED, "CANCELLED"),
        ("scontrol_cancelled_pending.txt", ExternalState.FAILED, "CANCELLED"),
    ],
)
def test_parse_scontrol_states(name: str, state: ExternalState, raw: str) -> None:
    status = parse_scontrol_output(fixture(name))
    assert (status.state, status.raw) == (state, raw)


def test_parse_scontrol_times() -> None:
    pending = parse_scontrol_output(fixture("scontrol_pending_resources.txt"))
    assert pending.started_at is None and pending.finished_at is None
    running = parse_scontrol_output(fixture("scontrol_running.txt"))
    assert running.started_at == local("2026-11-22T03:07:42")
    assert running.finished_at is None
    done = parse_scontrol_output(fixture("scontrol_timeout.txt"))
    assert done.started_at == local("2026-11-22T03:07:55")
    assert done.finished_at == local("2026-11-22T03:09:00")


def test_parse_scontrol_gone() -> None:
    assert fixture("scontrol_invalid.stdout.txt") == ""
    for text in ("", fixture("scontrol_invalid.stderr.txt")):
        status = parse_scontrol_output(text)
        assert (status.state, status.raw) == (ExternalState.FAILED, "")


def test_parse_scontrol_minimal_hyperqueue_mock() -> None:
    text = "JobState=RUNNING\nStartTime=2026-01-02T03:04:05\nRunTime=00:01:00\nTimeLimit=01:00:00\n"
    status = parse_scontrol_output(text)
    assert status.state is ExternalState.RUNNING
    assert status.started_at == local("2026-01-02T03:04:05")


def test_parse_scontrol_garbage() -> None:
    with pytest.raises(ValueError, match="no JobState"):
        parse_scontrol_output("<html>503</html>")


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("PENDING", ExternalState.QUEUED),
        ("CONFIGURING", ExternalState.QUEUED),
        ("REQUEUED", ExternalState.QUEUED),
        ("RUNNING", ExternalState.RUNNING),
        ("COMPLETING", ExternalState.RUNNING),
        ("SUSPENDED", ExternalState.RUNNING),
        ("COMPLETED", ExternalState.FINISHED),
        ("TIMEOUT", ExternalState.FINISHED),
        ("PREEMPTED", ExternalState.FINISHED),
        ("CANCELLED", ExternalState.FAILED),
        ("FAILED", ExternalState.FAILED),
        ("NODE_FAIL", ExternalState.FAILED),
        ("OUT_OF_MEMORY", ExternalState.FAILED),
        ("BOOT_FAIL", ExternalState.FAILED),
        ("DEADLINE", ExternalState.FAILED),
        ("SOMETHING_NEW", ExternalState.FAILED),
    ],
)
def test_state_table(raw: str, state: ExternalState) -> None:
    status = parse_squeue_output(f"9|{raw}|N/A|N/A\n")["9"]
    assert (status.state, status.raw) == (state, raw)


# --- commands --------------------------------------------------------------------------------


async def test_submit(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("sbatch", Answer(stdout="Submitted batch job 77\n"))
    backend = SlurmBackend(runner, timeout=12)
    script = tmp_path / "hq-submit.sh"
    assert await backend.submit(request(workdir=tmp_path), script) == "77"
    assert runner.argvs == [["sbatch", str(script)]]
    assert runner.calls[0].cwd == tmp_path
    assert runner.calls[0].timeout == 12
    assert (tmp_path / "jobid").read_text() == "77\n"


async def test_submit_failure_text(tmp_path: Path) -> None:
    stderr = fixture("sbatch_error_nodes.stderr.txt")
    runner = RecordingRunner().answer("sbatch", Answer(returncode=1, stderr=stderr))
    with pytest.raises(SubmitError) as info:
        await SlurmBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")
    assert str(info.value) == (
        "sbatch execution failed\nExit code: 1\n"
        "Stderr: sbatch: error: Batch job submission failed: Node count specification invalid\n"
        "Stdout: "
    )
    assert not (tmp_path / "jobid").exists()


async def test_submit_program_missing(tmp_path: Path) -> None:
    error = BackendError("sbatch start failed: No such file or directory")
    runner = RecordingRunner().answer("sbatch", Answer(error=error))
    with pytest.raises(SubmitError, match="^sbatch start failed: No such file or directory$"):
        await SlurmBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")


async def test_submit_unparsable_output(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("sbatch", Answer(stdout="ok\n"))
    with pytest.raises(SubmitError, match="sbatch execution failed\nno job id"):
        await SlurmBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")


async def test_query_is_one_squeue_call() -> None:
    runner = RecordingRunner().answer("squeue", Answer(stdout=fixture("squeue_all_states.txt")))
    statuses = await SlurmBackend(runner).query(["3", "8", "1"])
    assert runner.argvs == [
        [
            "squeue",
            "--noheader",
            "--states=all",
            "--format=%i|%T|%S|%e|%r",
            "--jobs=3,8,1",
        ]
    ]
    assert list(statuses) == ["3", "8", "1"]
    assert statuses["8"].state is ExternalState.QUEUED


async def test_query_nothing_runs_nothing() -> None:
    runner = RecordingRunner()
    assert await SlurmBackend(runner).query([]) == {}
    assert runner.calls == []


async def test_query_falls_back_to_scontrol_for_missing_ids() -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(stdout=fixture("squeue_known_and_unknown.txt")))
        .answer(
            "scontrol",
            Answer(returncode=1, stderr=fixture("scontrol_invalid.stderr.txt")),
        )
    )
    statuses = await SlurmBackend(runner).query(["1", "999"])
    assert runner.argvs[1:] == [["scontrol", "show", "job", "999"]]
    assert statuses["1"].state is ExternalState.FINISHED
    assert (statuses["999"].state, statuses["999"].raw) == (ExternalState.FAILED, "")


async def test_query_squeue_invalid_job_id_asks_each() -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(returncode=1, stderr=fixture("squeue_invalid.stderr.txt")))
        .answer_argv(
            ["scontrol", "show", "job", "1"], Answer(stdout=fixture("scontrol_completed.txt"))
        )
        .answer_argv(
            ["scontrol", "show", "job", "2"],
            Answer(returncode=1, stderr=fixture("scontrol_invalid.stderr.txt")),
        )
    )
    statuses = await SlurmBackend(runner).query(["1", "2"])
    assert sorted(runner.argvs[1:]) == [
        ["scontrol", "show", "job", "1"],
        ["scontrol", "show", "job", "2"],
    ]
    assert list(statuses) == ["1", "2"]
    assert statuses["1"].state is ExternalState.FINISHED
    assert statuses["2"].state is ExternalState.FAILED


SQUEUE_BROKEN = [
    Answer(returncode=1, stderr="squeue: error: Unable to contact slurm controller"),
    Answer(stdout="<html>503</html>\n"),
    Answer(error=BackendError("`squeue --noheader` did not finish within 5s")),
    Answer(error=BackendError("squeue start failed: No such file or directory")),
]


@pytest.mark.parametrize("broken", SQUEUE_BROKEN, ids=["fails", "garbage", "hangs", "missing"])
async def test_query_falls_back_to_scontrol_when_squeue_is_broken(broken: Answer) -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", broken)
        .answer_argv(
            ["scontrol", "show", "job", "1"], Answer(stdout=fixture("scontrol_running.txt"))
        )
        .answer_argv(
            ["scontrol", "show", "job", "2"], Answer(stdout=fixture("scontrol_timeout.txt"))
        )
    )
    statuses = await SlurmBackend(runner).query(["1", "2"])
    assert runner.argvs[0][0] == "squeue"
    assert sorted(runner.argvs[1:]) == [
        ["scontrol", "show", "job", "1"],
        ["scontrol", "show", "job", "2"],
    ]
    assert (statuses["1"].state, statuses["1"].raw) == (ExternalState.RUNNING, "RUNNING")
    assert statuses["1"].started_at is not None and statuses["1"].finished_at is None
    assert (statuses["2"].state, statuses["2"].raw) == (ExternalState.FINISHED, "TIMEOUT")
    assert statuses["2"].finished_at is not None


async def test_squeue_gets_a_short_timeout() -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(stdout=fixture("squeue_pending_running.txt")))
        .answer("scontrol", Answer(stdout=fixture("scontrol_running.txt")))
    )
    await SlurmBackend(runner, timeout=30, squeue_timeout=3).query(["1"])
    assert [c.timeout for c in runner.calls][0] == 3
    await SlurmBackend(runner, timeout=2).query(["1"])
    assert [c.timeout for c in runner.calls if c.argv[0] == "squeue"][1] == 2


async def test_query_squeue_and_scontrol_both_failing() -> None:
    answer = Answer(returncode=1, stderr="squeue: error: Unable to contact slurm controller")
    runner = (
        RecordingRunner()
        .answer("squeue", answer)
        .answer("scontrol", Answer(returncode=1, stderr="scontrol: error: Unable to contact"))
    )
    with pytest.raises(StatusQueryError) as info:
        await SlurmBackend(runner).query(["1"])
    assert str(info.value) == (
        "scontrol execution failed\nExit code: 1\n"
        "Stderr: scontrol: error: Unable to contact\nStdout: "
    )


async def test_query_scontrol_without_jobstate_is_a_status_error() -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(stdout="<html>503</html>\n"))
        .answer("scontrol", Answer(stdout="<html>503</html>\n"))
    )
    with pytest.raises(StatusQueryError, match="scontrol output not understood"):
        await SlurmBackend(runner).query(["1"])


async def test_query_scontrol_failure() -> None:
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(stdout=""))
        .answer("scontrol", Answer(returncode=1, stderr="scontrol: error: timeout"))
    )
    with pytest.raises(StatusQueryError, match="scontrol execution failed\nExit code: 1"):
        await SlurmBackend(runner).query(["1"])


async def test_query_scontrol_timeout_is_a_status_error() -> None:
    error = BackendError("`scontrol show job 1` did not finish within 30s")
    runner = (
        RecordingRunner()
        .answer("squeue", Answer(error=BackendError("squeue start failed: No such file")))
        .answer("scontrol", Answer(error=error))
    )
    with pytest.raises(StatusQueryError, match="did not finish within 30s"):
        await SlurmBackend(runner).query(["1"])


async def test_cancel(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("scancel", Answer())
    await SlurmBackend(runner).cancel("5", tmp_path)
    assert runner.argvs == [["scancel", "5"]]
    assert runner.calls[0].cwd == tmp_path


async def test_cancel_failure(tmp_path: Path) -> None:
    answer = Answer(returncode=1, stderr="scancel: error: Unable to contact slurm controller")
    runner = RecordingRunner().answer("scancel", answer)
    with pytest.raises(CancelError, match="^scancel execution failed\nExit code: 1\nStderr: "):
        await SlurmBackend(runner).cancel("5", tmp_path)


def test_render_script_method_is_the_pure_function() -> None:
    assert SlurmBackend().render_script(request()) == render_sbatch_script(request())
    assert SlurmBackend.manager == "SLURM"


def targets(tmp_path: Path, *ids: str) -> list[CancelTarget]:
    return [CancelTarget(i, tmp_path / i) for i in ids]


async def test_cancel_many_is_one_scancel(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("scancel", Answer())
    outcome = await SlurmBackend(runner).cancel_many(targets(tmp_path, "5", "6", "7"))
    assert runner.argvs == [["scancel", "5", "6", "7"]]
    assert outcome == {"5": None, "6": None, "7": None}


async def test_cancel_many_per_id_errors(tmp_path: Path) -> None:
    # `scancel -v` style (and other Slurm versions): one line per refused id.
    stderr = (
        "scancel: error: Kill job error on job id 6: Invalid job id specified\n"
        "scancel: error: Kill job error on job id 7: Access/permission denied\n"
        "scancel: error: Kill job error on job id 8: Job/step already completing or completed\n"
    )
    runner = RecordingRunner().answer("scancel", Answer(returncode=1, stderr=stderr))
    outcome = await SlurmBackend(runner).cancel_many(targets(tmp_path, "5", "6", "7", "8"))
    assert outcome == {
        "5": None,
        "6": None,
        "7": "scancel: error: Kill job error on job id 7: Access/permission denied",
        "8": None,
    }


async def test_cancel_many_whole_failure(tmp_path: Path) -> None:
    answer = Answer(returncode=1, stderr="scancel: error: Unable to contact slurm controller")
    runner = RecordingRunner().answer("scancel", answer)
    outcome = await SlurmBackend(runner).cancel_many(targets(tmp_path, "5", "6"))
    text = (
        "scancel execution failed\nExit code: 1\n"
        "Stderr: scancel: error: Unable to contact slurm controller\nStdout: "
    )
    assert outcome == {"5": text, "6": text}


async def test_cancel_many_hanging_leaves_every_id_unconfirmed(tmp_path: Path) -> None:
    error = BackendError("`scancel 5 6` did not finish within 30s")
    runner = RecordingRunner().answer("scancel", Answer(error=error))
    outcome = await SlurmBackend(runner).cancel_many(targets(tmp_path, "5", "6"))
    text = "`scancel 5 6` did not finish within 30s; the cancellation is unconfirmed"
    assert outcome == {"5": text, "6": text}


async def test_cancel_many_chunks_long_lists(tmp_path: Path) -> None:
    ids = [str(i) for i in range(1, 451)]
    runner = RecordingRunner().answer("scancel", Answer())
    outcome = await SlurmBackend(runner).cancel_many(targets(tmp_path, *ids))
    assert sorted(len(argv) - 1 for argv in runner.argvs) == [50, 200, 200]
    assert sorted(i for argv in runner.argvs for i in argv[1:]) == sorted(ids)
    assert outcome == dict.fromkeys(ids)


async def test_cancel_many_nothing_runs_nothing(tmp_path: Path) -> None:
    runner = RecordingRunner()
    assert await SlurmBackend(runner).cancel_many([]) == {}
    assert runner.calls == []


async def test_broken_squeue_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    broken = Answer(returncode=1, stderr="squeue: error: Unable to contact slurm controller")
    runner = (
        RecordingRunner()
        .answer("squeue", broken, broken, Answer(stdout=fixture("squeue_pending_running.txt")))
        .answer("scontrol", Answer(stdout=fixture("scontrol_running.txt")))
    )
    backend = SlurmBackend(runner)
    with caplog.at_level("DEBUG", logger="hqpy.autoalloc.backends.slurm"):
        await backend.query(["3"])
        await backend.query(["3"])
        await backend.query(["3"])
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels == [
        ("WARNING", "squeue failed, asking scontrol per allocation"),
        ("DEBUG", "squeue failed, asking scontrol per allocation"),
        ("INFO", "squeue answers again"),
    ]
