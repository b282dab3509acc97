"""The Grid Engine parsers on output captured from the real gridengine 8.1.9 of
`scripts/sge-local.sh` (tests/fixtures/README.md), where it differs from the man-page samples."""

from __future__ import annotations

from pathlib import Path

from hqpy.autoalloc.backends.base import CancelTarget, ExternalState
from hqpy.autoalloc.backends.sge import (
    SgeBackend,
    parse_qacct_output,
    parse_qstat_xml,
    parse_qsub_terse_output,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sge"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_qstat_xml_real_states() -> None:
    statuses = parse_qstat_xml(fixture("qstat_real.xml"))
    assert {k: (s.state, s.raw) for k, s in statuses.items()} == {
        "8": (ExternalState.RUNNING, "r"),
        "5": (ExternalState.QUEUED, "qw"),
        "7": (ExternalState.FAILED, "Eqw"),
        "4": (ExternalState.QUEUED, "hqw"),
    }
    assert statuses["8"].started_at is not None
    assert statuses["5"].started_at is None


def test_qacct_real_records() -> None:
    done = parse_qacct_output(fixture("qacct_done_real.txt"))
    assert (done.state, done.raw) == (ExternalState.FINISHED, "exit_status 0")
    assert done.started_at is not None and done.finished_at is not None
    deleted = parse_qacct_output(fixture("qacct_deleted_running_real.txt"))
    assert (deleted.state, deleted.raw) == (ExternalState.FAILED, "exit_status 137 (Killed)")


def test_qsub_terse_real_id() -> None:
    assert parse_qsub_terse_output("12\n") == "12"


async def test_qacct_before_any_job_ended_means_gone() -> None:
    # A new cell has no accounting file until its first job ends: qacct exits 1 saying so.
    no_file = Answer(
        returncode=1,
        stdout=fixture("qacct_no_accounting_file.stdout.txt"),
        stderr=fixture("qacct_no_accounting_file.stderr.txt"),
    )
    runner = (
        RecordingRunner()
        .answer("qstat", Answer(stdout="<job_info></job_info>"))
        .answer("qacct", no_file)
    )
    statuses = await SgeBackend(runner).query(["2"])
    assert (statuses["2"].state, statuses["2"].raw) == (ExternalState.FAILED, "")


async def test_qacct_not_found_real_means_gone() -> None:
    not_found = Answer(returncode=1, stderr=fixture("qacct_not_found_real.stderr.txt"))
    runner = (
        RecordingRunner()
        .answer("qstat", Answer(stdout="<job_info></job_info>"))
        .answer("qacct", not_found)
    )
    statuses = await SgeBackend(runner).query(["99"])
    assert statuses["99"].state is ExternalState.FAILED


async def test_qdel_real_texts(tmp_path: Path) -> None:
    # Real qdel prints both the accepted and the `denied: ... does not exist` lines on stdout.
    stdout = fixture("qdel_real.txt") + fixture("qdel_gone_real.txt")
    runner = RecordingRunner().answer("qdel", Answer(returncode=1, stdout=stdout))
    outcome = await SgeBackend(runner).cancel_many(
        [CancelTarget("5", tmp_path), CancelTarget("999", tmp_path)]
    )
    assert outcome == {"5": None, "999": None}


async def test_a_job_that_just_left_qstat_keeps_its_status_until_qacct_has_it() -> None:
    # Real: qacct finds a job only a second or so after it left qstat.
    now = [100.0]
    not_found = Answer(returncode=1, stderr=fixture("qacct_not_found_real.stderr.txt"))
    runner = (
        RecordingRunner()
        .answer_argv(["qstat", "-xml"], Answer(stdout=fixture("qstat_real.xml")))
        .answer("qacct", not_found)
    )
    backend = SgeBackend(runner, clock=lambda: now[0])
    assert (await backend.query(["8"]))["8"].state is ExternalState.RUNNING
    runner.answer_argv(["qstat", "-xml"], Answer(stdout="<job_info></job_info>"))
    now[0] += 5
    assert (await backend.query(["8"]))["8"].state is ExternalState.RUNNING
    now[0] += 30
    gone = (await backend.query(["8"]))["8"]
    assert (gone.state, gone.raw) == (ExternalState.FAILED, "")
    runner.answer_argv(["qacct", "-j", "2"], Answer(stdout=fixture("qacct_done_real.txt")))
    assert (await backend.query(["2"]))["2"].state is ExternalState.FINISHED
