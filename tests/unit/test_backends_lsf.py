"""LSF: script rendering, bsub/bjobs/bkill parsing on fixtures, commands through a fake."""

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
from hqpy.autoalloc.backends.lsf import (
    LsfBackend,
    format_lsf_walltime,
    parse_bjobs_json,
    parse_bsub_output,
    render_bsub_script,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lsf"
NOW = time.mktime(time.strptime("2026-11-26 12:00:00", "%Y-%m-%d %H:%M:%S"))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def request(**changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=2,
        name="hq-1-2",
        worker_count=1,
        time_limit=3630,
        additional_args=(),
        worker_command='/usr/bin/hq worker start --manager "detect"',
        workdir=Path("/srv/hq/001/autoalloc/1/002"),
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def test_render_single_node() -> None:
    assert render_bsub_script(request()) == (
        "#!/bin/bash\n"
        "#BSUB -J hq-1-2\n"
        "#BSUB -o /srv/hq/001/autoalloc/1/002/stdout\n"
        "#BSUB -e /srv/hq/001/autoalloc/1/002/stderr\n"
        "#BSUB -W 1:01\n"
        "#BSUB -n 1\n"
        '#BSUB -R "span[ptile=1]"\n'
        "\n"
        'export HQPY_ALLOCATION_ID="$LSB_JOBID"\n'
        '/usr/bin/hq worker start --manager "detect"\n'
    )


def test_render_multi_node_and_args() -> None:
    text = render_bsub_script(request(worker_count=3, additional_args=("-q", "short")))
    assert "#BSUB -n 3\n" in text
    assert "#BSUB -q short\n" in text
    assert text.endswith("blaunch bash -c '/usr/bin/hq worker start --manager \"detect\"'\n")


def test_walltime_rounds_up_to_minutes() -> None:
    assert [format_lsf_walltime(s) for s in (1, 60, 61, 3600, 96 * 3600)] == [
        "0:01",
        "0:01",
        "0:02",
        "1:00",
        "96:00",
    ]


def test_parse_bsub() -> None:
    assert parse_bsub_output(fixture("bsub_submitted.txt")) == "473713"
    assert parse_bsub_output(fixture("bsub_banner.txt")) == "72065926"
    with pytest.raises(ValueError, match="no job id in bsub output"):
        parse_bsub_output("Request from non-LSF host rejected\n")


def test_parse_bjobs_all_states() -> None:
    ids = ["101", "102", "103", "104", "105", "106", "107", "108", "66", "999"]
    statuses = parse_bjobs_json(fixture("bjobs_all_states.json"), ids, NOW)
    assert {k: (s.state, s.raw) for k, s in statuses.items()} == {
        "101": (ExternalState.QUEUED, "PEND"),
        "102": (ExternalState.QUEUED, "PSUSP"),
        "103": (ExternalState.RUNNING, "RUN"),
        "104": (ExternalState.RUNNING, "SSUSP"),
        "105": (ExternalState.FINISHED, "DONE"),
        "106": (ExternalState.FAILED, "EXIT"),
        "107": (ExternalState.FAILED, "ZOMBI"),
        "108": (ExternalState.RUNNING, "UNKWN"),
        "66": (ExternalState.FAILED, ""),
        "999": (ExternalState.FAILED, ""),
    }
    start = time.mktime(time.strptime("2026-11-26 10:01", "%Y-%m-%d %H:%M"))
    end = time.mktime(time.strptime("2026-11-26 10:05", "%Y-%m-%d %H:%M"))
    assert (statuses["105"].started_at, statuses["105"].finished_at) == (start, end)
    # A running job's FINISH_TIME is an estimate (`E`): not kept.
    assert (statuses["103"].started_at, statuses["103"].finished_at) == (start, None)
    assert statuses["101"].started_at is None


def test_parse_bjobs_year_wraps() -> None:
    january = time.mktime(time.strptime("2027-01-01 00:10:00", "%Y-%m-%d %H:%M:%S"))
    text = '{"RECORDS":[{"JOBID":"1","STAT":"RUN","START_TIME":"Dec 31 23:50"}]}'
    status = parse_bjobs_json(text, ["1"], january)["1"]
    assert status.started_at == time.mktime(time.strptime("2026-12-31 23:50", "%Y-%m-%d %H:%M"))


def test_parse_bjobs_skips_banner_and_rejects_garbage() -> None:
    text = "Please wait ...\n" + fixture("bjobs_all_states.json")
    assert parse_bjobs_json(text, ["101"], NOW)["101"].state is ExternalState.QUEUED
    with pytest.raises(ValueError, match="no JSON"):
        parse_bjobs_json("<html>503</html>", ["1"], NOW)
    with pytest.raises(ValueError, match="no RECORDS"):
        parse_bjobs_json('{"COMMAND":"bjobs"}', ["1"], NOW)


async def test_submit_reads_the_script_on_stdin(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("bsub", Answer(stdout=fixture("bsub_submitted.txt")))
    script = tmp_path / "hq-submit.sh"
    script.write_text("#!/bin/bash\n")
    assert await LsfBackend(runner).submit(request(workdir=tmp_path), script) == "473713"
    assert runner.argvs == [["bsub"]]
    assert (runner.calls[0].stdin, runner.calls[0].cwd) == (script, tmp_path)
    assert (tmp_path / "jobid").read_text() == "473713\n"


async def test_submit_failure_text(tmp_path: Path) -> None:
    answer = Answer(returncode=255, stderr=fixture("bsub_error_queue.stderr.txt"))
    runner = RecordingRunner().answer("bsub", answer)
    with pytest.raises(SubmitError) as info:
        await LsfBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")
    assert str(info.value) == (
        "bsub execution failed\nExit code: 255\nStderr: No such queue. Job not submitted.\nStdout: "
    )


async def test_query_is_one_bjobs_call() -> None:
    answer = Answer(returncode=255, stdout=fixture("bjobs_all_states.json"))
    runner = RecordingRunner().answer("bjobs", answer)
    statuses = await LsfBackend(runner).query(["103", "66"])
    assert runner.argvs == [
        [
            "bjobs",
            "-o",
            "jobid stat submit_time start_time finish_time pend_reason",
            "-json",
            "103",
            "66",
        ]
    ]
    assert statuses["103"].state is ExternalState.RUNNING
    assert statuses["66"].state is ExternalState.FAILED


async def test_query_none_found_is_gone() -> None:
    answer = Answer(stderr=fixture("bjobs_not_found.stderr.txt"))
    runner = RecordingRunner().answer("bjobs", answer)
    statuses = await LsfBackend(runner).query(["66"])
    assert (statuses["66"].state, statuses["66"].raw) == (ExternalState.FAILED, "")


async def test_query_failures_are_status_errors() -> None:
    down = Answer(returncode=255, stderr="LSF is down. Please wait ...\n")
    with pytest.raises(StatusQueryError, match="^bjobs execution failed\nExit code: 255"):
        await LsfBackend(RecordingRunner().answer("bjobs", down)).query(["1"])
    hang = Answer(error=BackendError("`bjobs -o ...` did not finish within 30s"))
    with pytest.raises(StatusQueryError, match="did not finish within 30s"):
        await LsfBackend(RecordingRunner().answer("bjobs", hang)).query(["1"])


async def test_cancel_many_is_one_bkill(tmp_path: Path) -> None:
    stdout = "Job <11> is being terminated\n"
    stderr = (
        "Job <33>: Job has already finished\n"
        "Job <66>: No matching job found\n"
        "Job <77>: User permission denied\n"
    )
    runner = RecordingRunner().answer("bkill", Answer(returncode=255, stdout=stdout, stderr=stderr))
    ids = ["11", "33", "66", "77"]
    outcome = await LsfBackend(runner).cancel_many([CancelTarget(i, tmp_path) for i in ids])
    assert runner.argvs == [["bkill", "11", "33", "66", "77"]]
    assert outcome == {"11": None, "33": None, "66": None, "77": "Job <77>: User permission denied"}


async def test_cancel_one(tmp_path: Path) -> None:
    ok = RecordingRunner().answer("bkill", Answer(stdout="Job <11> is being terminated\n"))
    await LsfBackend(ok).cancel("11", tmp_path)
    bad = RecordingRunner().answer(
        "bkill", Answer(returncode=255, stderr="Job <11>: User permission denied\n")
    )
    with pytest.raises(CancelError, match="^Job <11>: User permission denied$"):
        await LsfBackend(bad).cancel("11", tmp_path)
