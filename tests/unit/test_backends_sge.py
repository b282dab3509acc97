"""Grid Engine: script rendering, qsub/qstat/qacct/qdel parsing on fixtures, commands through a
fake (the real gridengine test is `tests/backends/test_real_sge.py`)."""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    BackendError,
    CancelTarget,
    ExternalState,
    StatusQueryError,
    SubmitError,
)
from hqpy.autoalloc.backends.sge import (
    SgeBackend,
    SgeScriptError,
    parse_qacct_output,
    parse_qstat_xml,
    parse_qsub_terse_output,
    render_qsub_sge_script,
)
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sge"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def request(**changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=2,
        name="hq-1-2",
        worker_count=1,
        time_limit=5400,
        additional_args=(),
        worker_command='/usr/bin/hq worker start --manager "detect"',
        workdir=Path("/srv/hq/001/autoalloc/1/002"),
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def test_render_single_node() -> None:
    assert render_qsub_sge_script(request(), None) == (
        "#!/bin/bash\n"
        "#$ -N hq-1-2\n"
        "#$ -o /srv/hq/001/autoalloc/1/002/stdout\n"
        "#$ -e /srv/hq/001/autoalloc/1/002/stderr\n"
        "#$ -l h_rt=01:30:00\n"
        "#$ -S /bin/bash\n"
        "#$ -cwd\n"
        "\n"
        'export HQPY_ALLOCATION_ID="$JOB_ID"\n'
        '/usr/bin/hq worker start --manager "detect"\n'
    )


def test_render_multi_node_needs_a_parallel_environment() -> None:
    with pytest.raises(
        SgeScriptError,
        match=r"needs a parallel environment: add `--pe NAME` \(one of `qconf -spl`\) or set "
        "HQPY_SGE_PE",
    ):
        render_qsub_sge_script(request(worker_count=2), None)
    text = render_qsub_sge_script(request(worker_count=2, additional_args=("-q", "all.q")), "mpi")
    assert "#$ -pe mpi 2\n#$ -q all.q\n" in text
    # One worker per slot; quoted twice, as qrsh hands one joined line to the remote shell.
    assert (
        'while read -r host slots _; do\n    for _ in $(seq "$slots"); do\n'
        "        qrsh -inherit -V \"$host\" 'bash -c '\\''/usr/bin/hq worker start --manager "
        "\"detect\"'\\''' &\n    done\ndone <\"$PE_HOSTFILE\"\nwait\n"
    ) in text


def test_backend_reads_the_pe_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HQPY_SGE_PE", "smp")
    assert "#$ -pe smp 3\n" in SgeBackend().render_script(request(worker_count=3))
    assert "#$ -pe orte 3\n" in SgeBackend(parallel_environment="orte").render_script(
        request(worker_count=3)
    )
    # The queue's `--pe` wins over the server's default.
    assert "#$ -pe mpi 3\n" in SgeBackend().render_script(
        request(worker_count=3, parallel_environment="mpi")
    )


def test_parse_qsub_terse() -> None:
    assert parse_qsub_terse_output(fixture("qsub_terse.txt")) == "8"
    assert parse_qsub_terse_output(fixture("qsub_terse_warning.txt")) == "9"
    with pytest.raises(ValueError, match="no job id"):
        parse_qsub_terse_output("Exiting.\n")


def test_parse_qstat_xml() -> None:
    statuses = parse_qstat_xml(fixture("qstat.xml"))
    assert {k: (s.state, s.raw) for k, s in statuses.items()} == {
        "3": (ExternalState.RUNNING, "r"),
        "4": (ExternalState.FAILED, "dr"),
        "5": (ExternalState.RUNNING, "s"),
        "6": (ExternalState.QUEUED, "qw"),
        "7": (ExternalState.QUEUED, "hqw"),
        "8": (ExternalState.FAILED, "Eqw"),
    }
    start = time.mktime(time.strptime("2026-11-26T10:01:00", "%Y-%m-%dT%H:%M:%S"))
    assert statuses["3"].started_at == start
    assert statuses["6"].started_at is None


def test_parse_qstat_xml_empty_and_garbage() -> None:
    assert parse_qstat_xml("<?xml version='1.0'?>\n<job_info>\n</job_info>\n") == {}
    with pytest.raises(ValueError, match="not XML"):
        parse_qstat_xml("error: commlib error: got select error (Connection refused)")
    with pytest.raises(ValueError, match="not <job_info>"):
        parse_qstat_xml("<html/>")


def test_parse_qacct() -> None:
    done = parse_qacct_output(fixture("qacct_done.txt"))
    assert (done.state, done.raw) == (ExternalState.FINISHED, "exit_status 0")
    assert done.started_at == time.mktime(time.strptime("2026-11-26 10:00:01", "%Y-%m-%d %H:%M:%S"))
    assert done.finished_at == time.mktime(
        time.strptime("2026-11-26 10:00:11", "%Y-%m-%d %H:%M:%S")
    )
    killed = parse_qacct_output(fixture("qacct_killed.txt"))
    assert killed.state is ExternalState.FAILED
    with pytest.raises(ValueError, match="no exit_status"):
        parse_qacct_output("")


async def test_submit(tmp_path: Path) -> None:
    runner = RecordingRunner().answer("qsub", Answer(stdout=fixture("qsub_terse.txt")))
    script = tmp_path / "hq-submit.sh"
    assert await SgeBackend(runner).submit(request(workdir=tmp_path), script) == "8"
    assert runner.argvs == [["qsub", "-terse", str(script)]]
    assert (tmp_path / "jobid").read_text() == "8\n"


async def test_submit_failure_text(tmp_path: Path) -> None:
    answer = Answer(returncode=1, stderr=fixture("qsub_error.stderr.txt"))
    runner = RecordingRunner().answer("qsub", answer)
    with pytest.raises(SubmitError) as info:
        await SgeBackend(runner).submit(request(workdir=tmp_path), tmp_path / "hq-submit.sh")
    assert str(info.value).startswith(
        "qsub execution failed\nExit code: 1\nStderr: Unable to run job: denied: "
    )


async def test_query_qstat_then_qacct_for_the_rest() -> None:
    runner = (
        RecordingRunner()
        .answer("qstat", Answer(stdout=fixture("qstat.xml")))
        .answer_argv(["qacct", "-j", "1"], Answer(stdout=fixture("qacct_done.txt")))
        .answer_argv(
            ["qacct", "-j", "123"],
            Answer(returncode=1, stderr=fixture("qacct_not_found.stderr.txt")),
        )
    )
    statuses = await SgeBackend(runner).query(["3", "1", "123"])
    assert runner.argvs[0] == ["qstat", "-xml"]
    assert sorted(runner.argvs[1:]) == [["qacct", "-j", "1"], ["qacct", "-j", "123"]]
    assert statuses["3"].state is ExternalState.RUNNING
    assert statuses["1"].state is ExternalState.FINISHED
    assert (statuses["123"].state, statuses["123"].raw) == (ExternalState.FAILED, "")


async def test_query_failures() -> None:
    down = Answer(returncode=1, stderr="error: commlib error: got select error\n")
    with pytest.raises(StatusQueryError, match="^qstat execution failed"):
        await SgeBackend(RecordingRunner().answer("qstat", down)).query(["1"])
    runner = (
        RecordingRunner()
        .answer("qstat", Answer(stdout="<job_info></job_info>"))
        .answer("qacct", Answer(returncode=1, stderr="error: accounting file not readable\n"))
    )
    with pytest.raises(StatusQueryError, match="^qacct execution failed"):
        await SgeBackend(runner).query(["1"])


async def test_cancel_many_is_one_qdel(tmp_path: Path) -> None:
    stdout = "hq has registered the job 8 for deletion\nhq has deleted job 9\n"
    runner = RecordingRunner().answer(
        "qdel", Answer(returncode=1, stdout=stdout, stderr=fixture("qdel_gone.stderr.txt"))
    )
    outcome = await SgeBackend(runner).cancel_many(
        [CancelTarget(i, tmp_path) for i in ("8", "9", "123")]
    )
    assert runner.argvs == [["qdel", "8", "9", "123"]]
    assert outcome == {"8": None, "9": None, "123": None}


async def test_hanging_qstat_is_a_status_error() -> None:
    hang = Answer(error=BackendError("`qstat -xml` did not finish within 30s"))
    with pytest.raises(StatusQueryError, match="^`qstat -xml` did not finish within 30s$"):
        await SgeBackend(RecordingRunner().answer("qstat", hang)).query(["1"])


async def test_hanging_qdel_leaves_the_ids_unconfirmed(tmp_path: Path) -> None:
    hang = Answer(error=BackendError("`qdel 8 9` did not finish within 30s"))
    outcome = await SgeBackend(RecordingRunner().answer("qdel", hang)).cancel_many(
        [CancelTarget("8", tmp_path), CancelTarget("9", tmp_path)]
    )
    text = "`qdel 8 9` did not finish within 30s; the cancellation is unconfirmed"
    assert outcome == {"8": text, "9": text}


def test_pe_option_rules() -> None:
    from hqpy.autoalloc.params import parallel_environment_error
    from hqpy.protocol.messages import QueueParams

    def error(manager: str, workers: int, pe: str | None, default: str | None = None) -> str | None:
        params = QueueParams(
            manager=manager, time_limit=60.0, workers_per_alloc=workers, parallel_environment=pe
        )
        return parallel_environment_error(params, default)

    assert error("sge", 1, None) is None
    assert error("sge", 2, "mpi") is None
    assert error("sge", 2, None, default="smp") is None
    assert error("sge", 2, None) == (
        "an allocation of 2 workers on Grid Engine needs a parallel environment: "
        "add `--pe NAME` (one of `qconf -spl`)"
    )
    assert error("slurm", 1, "mpi") == (
        "--pe is a Grid Engine option; queue manager `slurm` has none"
    )
    assert error("sge", 2, "a b") == (
        "--pe `a b` is not a parallel environment name (letters, digits, `_.-`)"
    )
