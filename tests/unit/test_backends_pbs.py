"""PBS backend: script rendering, `qstat -F json` parsing, command shapes."""

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
from hqpy.autoalloc.backends.pbs import (
    PbsBackend,
    parse_qstat_json,
    parse_qsub_output,
    render_qsub_script,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pbs"
WORKER = (
    '/opt/hq/bin/hq worker start --idle-timeout "5m" --manager "pbs" '
    '--server-dir "/srv/hq/001" --on-server-lost "finish-running" '
    '--server-lost-grace "5m" --time-limit "1h"'
)
DIR = Path("/srv/hq/001/autoalloc/1-foo/001")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def local(text: str) -> float:
    return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


def request(**changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=1,
        name="foo-1",
        worker_count=1,
        time_limit=3600,
        additional_args=(),
        worker_command=WORKER,
        workdir=DIR,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


# --- rendering -------------------------------------------------------------------------------


def test_render_single_node() -> None:
    assert render_qsub_script(request()) == (
        "#!/bin/bash\n"
        "#PBS -l select=1\n"
        "#PBS -N foo-1\n"
        f"#PBS -o {DIR}/stdout\n"
        f"#PBS -e {DIR}/stderr\n"
        "#PBS -l walltime=01:00:00\n"
        "\n"
        f"{WORKER}\n"
    )


def test_render_extra_args_and_dry_run() -> None:
    script = render_qsub_script(
        request(additional_args=("--foo=bar", "a", "b", "--baz", "42"), dry_run=True)
    )
    lines = script.splitlines()
    assert lines[6:9] == ["#PBS --foo=bar a b --baz 42", "#PBS -h", ""]
    assert lines[9] == WORKER


def test_render_multi_node_uses_pbsdsh() -> None:
    line = f"init.sh && {WORKER}; echo 'done'"
    script = render_qsub_script(request(worker_count=4, worker_command=line))
    assert "#PBS -l select=4\n" in script
    assert script.endswith(f"\n\npbsdsh -- bash -l -c 'init.sh && {WORKER}; echo '\\''done'\\'''\n")


def test_render_walltime() -> None:
    assert "#PBS -l walltime=100:00:01\n" in render_qsub_script(request(time_limit=360001))


# --- parsing ---------------------------------------------------------------------------------


def test_parse_qsub_output() -> None:
    assert parse_qsub_output("1.job\n") == "1.job"
    assert parse_qsub_output("  4242.pbs-server.cluster  \n") == "4242.pbs-server.cluster"
    with pytest.raises(ValueError, match="no job id"):
        parse_qsub_output("\n")


def test_parse_qstat_openpbs() -> None:
    ids = [f"{n}.pbsserver" for n in range(101, 109)]
    statuses = parse_qstat_json(fixture("qstat_openpbs.json"), ids)
    assert {k.split(".")[0]: (v.state, v.raw) for k, v in statuses.items()} == {
        "101": (ExternalState.QUEUED, "Q"),
        "102": (ExternalState.RUNNING, "R"),
        "103": (ExternalState.RUNNING, "E"),
        "104": (ExternalState.FINISHED, "F"),
        "105": (ExternalState.FAILED, "F"),
        "106": (ExternalState.FINISHED, "F"),  # walltime reached (-29)
        "107": (ExternalState.FAILED, "F"),  # qdel'ed while running (256 + SIGTERM)
        "108": (ExternalState.QUEUED, "H"),
    }
    queued = statuses["101.pbsserver"]
    assert queued.started_at is None and queued.finished_at is None
    running = statuses["102.pbsserver"]
    assert running.started_at == local("Thu Mar 19 15:09:46 2026")
    assert running.finished_at is None
    done = statuses["104.pbsserver"]
    assert done.started_at == local("Thu Mar 19 15:09:48 2026")
    assert done.finished_at == local("Thu Mar 19 15:10:35 2026")


def test_parse_qstat_pbspro18_layout_and_space_padded_day() -> None:
    status = parse_qstat_json(fixture("qstat_pbspro18.json"), ["13.pbsworks"])["13.pbsworks"]
    assert (status.state, status.raw) == (ExternalState.RUNNING, "R")
    assert status.started_at == local("Mon Apr 09 16:33:30 2018")


def test_parse_qstat_missing_job_is_failed() -> None:
    statuses = parse_qstat_json(fixture("qstat_openpbs.json"), ["101.pbsserver", "999.pbsserver"])
    assert (statuses["999.pbsserver"].state, statuses["999.pbsserver"].raw) == (
        ExternalState.FAILED,
        "",
    )
    empty = '{"timestamp": 1, "pbs_version": "2022.1.1", "pbs_server": "s"}'
    assert parse_qstat_json(empty, ["1.s"])["1.s"].state is ExternalState.FAILED
    assert parse_qstat_json("", ["1.s"])["1.s"].state is ExternalState.FAILED


def test_parse_qstat_hyperqueue_mock_shape() -> None:
    text = '{"Jobs": {"1.job": {"job_state": "F", "Exit_status": 0}, "2.job": {"job_state": "W"}}}'
    statuses = parse_qstat_json(text, ["1.job", "2.job"])
    assert statuses["1.job"].state is ExternalState.FINISHED
    assert statuses["2.job"].state is ExternalState.QUEUED


def test_parse_qstat_short_and_long_server_names() -> None:
    text = '{"Jobs": {"7.pbs.example.org": {"job_state": "R"}}}'
    assert parse_qstat_json(text, ["7.pbs"])["7.pbs"].state is ExternalState.RUNNING


@pytest.mark.parametrize(
    ("letter", "state"),
    [
        ("Q", ExternalState.QUEUED),
        ("H", ExternalState.QUEUED),
        ("W", ExternalState.QUEUED),
        ("T", ExternalState.QUEUED),
        ("R", ExternalState.RUNNING),
        ("E", ExternalState.RUNNING),
        ("S", ExternalState.RUNNING),
        ("Z", ExternalState.FAILED),
    ],
)
def test_state_letters(letter: str, state: ExternalState) -> None:
    text = f'{{"Jobs": {{"1.s": {{"job_state": "{letter}"}}}}}}'
    status = parse_qstat_json(text, ["1.s"])["1.s"]
    assert (status.state, status.raw) == (state, letter)


def test_finished_without_exit_status_is_failed() -> None:
    text = '{"Jobs": {"1.s": {"job_state": "F"}}}'
    assert parse_qstat_json(text, ["1.s"])["1.s"].state is ExternalState.FAILED


def test_parse_qstat_garbage() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        parse_qstat_json("<html>", ["1.s"])
    with pytest.raises(ValueError, match="no `Jobs` object"):
        parse_qstat_json('{"Jobs": []}', ["1.s"])


# --- commands --------------------------------------------------------------------------------


async def test_submit(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qsub", Answer(stdout="1.job\n"))
    script = tmp_path / "hq-submit.sh"
    assert await PbsBackend(runner).submit(request(workdir=tmp_path), script) == "1.job"
    assert runner.argvs == [["qsub", str(script)]]
    assert runner.calls[0].cwd == tmp_path
    assert (tmp_path / "jobid").read_text() == "1.job\n"


async def test_submit_failure_text(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qsub", Answer(returncode=1, stderr="FOOBAR\n"))
    with pytest.raises(SubmitError) as info:
        await PbsBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")
    assert str(info.value) == "qsub execution failed\nExit code: 1\nStderr: FOOBAR\nStdout: "


async def test_submit_program_missing(tmp_path: Path) -> None:
    error = BackendError("qsub start failed: No such file or directory")
    runner = RecordingRunner().answer("qsub", Answer(error=error))
    with pytest.raises(SubmitError, match="^qsub start failed"):
        await PbsBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")


async def test_query_is_one_qstat_call() -> None:
    runner = RecordingRunner().answer("qstat", Answer(stdout=fixture("qstat_openpbs.json")))
    statuses = await PbsBackend(runner).query(["101.pbsserver", "104.pbsserver"])
    assert runner.argvs == [
        ["qstat", "-f", "101.pbsserver", "-f", "104.pbsserver", "-F", "json", "-x"]
    ]
    assert runner.calls[0].cwd is None
    assert statuses["104.pbsserver"].state is ExternalState.FINISHED


async def test_query_with_an_unknown_id() -> None:
    answer = Answer(
        returncode=153,
        stdout=fixture("qstat_openpbs.json"),
        stderr="qstat: Unknown Job Id 999.pbsserver\n",
    )
    runner = RecordingRunner().answer("qstat", answer)
    statuses = await PbsBackend(runner).query(["101.pbsserver", "999.pbsserver"])
    assert statuses["101.pbsserver"].state is ExternalState.QUEUED
    assert statuses["999.pbsserver"].state is ExternalState.FAILED


async def test_query_failure() -> None:
    answer = Answer(returncode=1, stderr="Connection refused\nqstat: cannot connect to server")
    runner = RecordingRunner().answer("qstat", answer)
    with pytest.raises(StatusQueryError) as info:
        await PbsBackend(runner).query(["1.s"])
    assert str(info.value) == (
        "qstat execution failed\nExit code: 1\n"
        "Stderr: Connection refused\nqstat: cannot connect to server\nStdout: "
    )


async def test_query_garbage() -> None:
    runner = RecordingRunner().answer("qstat", Answer(stdout="<html>"))
    with pytest.raises(StatusQueryError, match="qstat output not understood"):
        await PbsBackend(runner).query(["1.s"])


async def test_cancel(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qdel", Answer())
    await PbsBackend(runner).cancel("1.job", tmp_path)
    assert runner.argvs == [["qdel", "1.job"]]
    assert runner.calls[0].cwd == tmp_path


@pytest.mark.parametrize(
    "stderr", ["qdel: Unknown Job Id 1.job\n", "qdel: Job has finished 1.job\n"]
)
async def test_cancel_of_a_gone_job_is_fine(tmp_path: Path, stderr: str) -> None:
    runner = RecordingRunner().answer("qdel", Answer(returncode=153, stderr=stderr))
    await PbsBackend(runner).cancel("1.job", tmp_path)


async def test_cancel_failure(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qdel", Answer(returncode=1, stderr="qdel: Unauthorized"))
    with pytest.raises(CancelError, match="^qdel execution failed\nExit code: 1"):
        await PbsBackend(runner).cancel("1.job", tmp_path)


def test_manager_name() -> None:
    assert PbsBackend.manager == "PBS"
    assert PbsBackend().render_script(request()) == render_qsub_script(request())


async def test_cancel_many_is_one_qdel(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qdel", Answer())
    ids = ["1.server", "2.server"]
    outcome = await PbsBackend(runner).cancel_many([CancelTarget(i, tmp_path) for i in ids])
    assert runner.argvs == [["qdel", "1.server", "2.server"]]
    assert outcome == {"1.server": None, "2.server": None}


async def test_cancel_many_reads_qdel_per_id_errors(tmp_path: Path) -> None:
    stderr = (
        "qdel: Unknown Job Id 2.server\n"
        "qdel: Job has finished 3.server.example.org\n"
        "qdel: Unauthorized Request  4.server\n"
    )
    runner = RecordingRunner().answer("qdel", Answer(returncode=153, stderr=stderr))
    ids = ["1.server", "2.server", "3.server", "4.server"]
    outcome = await PbsBackend(runner).cancel_many([CancelTarget(i, tmp_path) for i in ids])
    assert outcome == {
        "1.server": None,
        "2.server": None,
        "3.server": None,
        "4.server": "qdel: Unauthorized Request  4.server",
    }


async def test_cancel_many_hanging_qdel(tmp_path: Path) -> None:
    error = BackendError("`qdel 1.server` did not finish within 30s")
    runner = RecordingRunner().answer("qdel", Answer(error=error))
    outcome = await PbsBackend(runner).cancel_many([CancelTarget("1.server", tmp_path)])
    assert outcome == {
        "1.server": "`qdel 1.server` did not finish within 30s; the cancellation is unconfirmed"
    }
