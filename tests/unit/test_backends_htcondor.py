"""HTCondor: script and submit description, condor_submit/condor_q/condor_history/condor_rm
parsing on fixtures, commands through a fake."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelTarget,
    ExternalState,
    StatusQueryError,
    SubmitError,
)
from hqpy.autoalloc.backends.common import write_script
from hqpy.autoalloc.backends.htcondor import (
    ATTRIBUTES,
    HtcondorBackend,
    parse_condor_json,
    parse_condor_submit_output,
    render_condor_script,
    submit_description,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "htcondor"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def request(
    workdir: Path = Path("/srv/hq/001/autoalloc/1/002"), **changes: object
) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=2,
        name="hq-1-2",
        worker_count=1,
        time_limit=600,
        additional_args=(),
        worker_command='/usr/bin/hq worker start --manager "detect"',
        workdir=workdir,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def test_render_single_node() -> None:
    d = "/srv/hq/001/autoalloc/1/002"
    assert render_condor_script(request()) == (
        "#!/bin/bash\n"
        "#CONDOR universe = vanilla\n"
        '#CONDOR batch_name = "hq-1-2"\n'
        f"#CONDOR output = {d}/stdout\n"
        f"#CONDOR error = {d}/stderr\n"
        f"#CONDOR log = {d}/condor.log\n"
        f"#CONDOR initialdir = {d}\n"
        "#CONDOR getenv = True\n"
        "#CONDOR should_transfer_files = NO\n"
        "#CONDOR periodic_remove = (JobStatus == 2) && (time() - EnteredCurrentStatus > 600)\n"
        "\n"
        'export HQPY_ALLOCATION_ID="$(sed -n "s/^ClusterId = //p" "$_CONDOR_JOB_AD")"\n'
        '/usr/bin/hq worker start --manager "detect"\n'
    )


def test_render_multi_node_and_args() -> None:
    text = render_condor_script(
        request(worker_count=4, additional_args=("request_cpus = 8", "+MaxRuntime = 3600"))
    )
    assert "#CONDOR universe = parallel\n#CONDOR machine_count = 4\n" in text
    assert '#CONDOR +ParallelShutdownPolicy = "WAIT_FOR_ALL"\n' in text
    # The lines after `--` come last: they override ours.
    assert text.index("#CONDOR request_cpus = 8") > text.index("#CONDOR periodic_remove")
    assert "#CONDOR +MaxRuntime = 3600\n" in text


def test_submit_description() -> None:
    script = Path("/d/hq-submit.sh")
    text = render_condor_script(request())
    description = submit_description(text, script)
    lines = description.splitlines()
    assert lines[0] == "executable = /d/hq-submit.sh"
    assert lines[1] == "universe = vanilla"
    assert lines[-1] == "queue"
    assert not any(line.startswith(("#", "export", "/usr")) for line in lines)


def test_parse_condor_submit() -> None:
    assert parse_condor_submit_output(fixture("condor_submit.txt")) == "1351043"
    with pytest.raises(ValueError, match="no cluster id"):
        parse_condor_submit_output("Submitting job(s).\n")


def test_parse_condor_q_and_history() -> None:
    statuses = {**parse_condor_json(fixture("condor_q.json"))}
    statuses.update(parse_condor_json(fixture("condor_history.json")))
    assert {k: (s.state, s.raw) for k, s in statuses.items()} == {
        "11": (ExternalState.QUEUED, "1"),
        "12": (ExternalState.RUNNING, "2"),
        "13": (ExternalState.FAILED, "5"),  # held: needs a human
        "14": (ExternalState.RUNNING, "7"),
        "21": (ExternalState.FINISHED, "4"),
        "22": (ExternalState.FAILED, "4"),  # ExitCode 3
        "23": (ExternalState.FINISHED, "3"),  # removed at its walltime
        "24": (ExternalState.FAILED, "3"),  # condor_rm
    }
    assert (statuses["12"].started_at, statuses["12"].finished_at) == (1764151260.0, None)
    assert (statuses["21"].started_at, statuses["21"].finished_at) == (1764151260.0, 1764151500.0)
    assert statuses["23"].finished_at == 1764151500.0  # no CompletionDate: the status change
    assert statuses["11"].started_at is None


def test_parse_condor_json_empty_and_garbage() -> None:
    assert parse_condor_json("") == {}
    with pytest.raises(ValueError, match="not JSON"):
        parse_condor_json("<html>")
    with pytest.raises(ValueError, match="not a job ad"):
        parse_condor_json('[{"JobStatus": 1}]')


async def test_submit_writes_the_description(tmp_path: Path) -> None:
    req = request(tmp_path)
    script = write_script(req, render_condor_script(req))
    runner = RecordingRunner().answer("condor_submit", Answer(stdout=fixture("condor_submit.txt")))
    assert await HtcondorBackend(runner).submit(request(workdir=tmp_path), script) == "1351043"
    assert runner.argvs == [["condor_submit", str(tmp_path / "hq-submit.sub")]]
    assert (tmp_path / "hq-submit.sub").read_text() == submit_description(
        script.read_text(), script
    )
    assert (tmp_path / "jobid").read_text() == "1351043\n"


async def test_submit_failure_text(tmp_path: Path) -> None:
    req = request(tmp_path)
    script = write_script(req, render_condor_script(req))
    stderr = fixture("condor_submit_error.stderr.txt")
    runner = RecordingRunner().answer("condor_submit", Answer(returncode=1, stderr=stderr))
    with pytest.raises(SubmitError) as info:
        await HtcondorBackend(runner).submit(request(workdir=tmp_path), script)
    assert str(info.value).startswith(
        "condor_submit execution failed\nExit code: 1\n"
        "Stderr: ERROR: Failed to connect to local queue manager\n"
    )


async def test_query_asks_history_only_for_ended_jobs() -> None:
    runner = (
        RecordingRunner()
        .answer("condor_q", Answer(stdout=fixture("condor_q.json")))
        .answer("condor_history", Answer(stdout=fixture("condor_history.json")))
    )
    statuses = await HtcondorBackend(runner).query(["12", "21", "99"])
    assert runner.argvs == [
        ["condor_q", "12", "21", "99", "-json", "-attributes", ATTRIBUTES],
        ["condor_history", "21", "99", "-json", "-attributes", ATTRIBUTES, "-match", "2"],
    ]
    assert statuses["12"].state is ExternalState.RUNNING
    assert statuses["21"].state is ExternalState.FINISHED
    assert (statuses["99"].state, statuses["99"].raw) == (ExternalState.FAILED, "")


async def test_query_all_in_queue_skips_history() -> None:
    runner = RecordingRunner().answer("condor_q", Answer(stdout=fixture("condor_q.json")))
    await HtcondorBackend(runner).query(["11", "12"])
    assert [argv[0] for argv in runner.argvs] == ["condor_q"]


async def test_query_failure() -> None:
    answer = Answer(returncode=1, stderr="-- Failed to fetch ads from: <127.0.0.1:9618>\n")
    runner = RecordingRunner().answer("condor_q", answer)
    with pytest.raises(StatusQueryError, match="^condor_q execution failed\nExit code: 1"):
        await HtcondorBackend(runner).query(["1"])


async def test_cancel_many_is_one_condor_rm(tmp_path: Path) -> None:
    stdout = fixture("condor_rm.txt")
    stderr = fixture("condor_rm_gone.stderr.txt")
    runner = RecordingRunner().answer(
        "condor_rm", Answer(returncode=1, stdout=stdout, stderr=stderr)
    )
    outcome = await HtcondorBackend(runner).cancel_many(
        [CancelTarget("7", tmp_path), CancelTarget("5", tmp_path)]
    )
    assert runner.argvs == [["condor_rm", "7", "5"]]
    assert outcome == {"7": None, "5": None}
