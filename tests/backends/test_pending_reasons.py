"""Why a queued allocation waits (hq #13.4): each backend's parser on its fixtures, Grid
Engine's extra `qstat -j` call, and the allocator's state keeping the reason until it runs."""

from __future__ import annotations

import time
from pathlib import Path

from hqpy.autoalloc.backends.base import ExternalState, ExternalStatus
from hqpy.autoalloc.backends.htcondor import parse_condor_json
from hqpy.autoalloc.backends.lsf import parse_bjobs_json
from hqpy.autoalloc.backends.pbs import parse_qstat_json
from hqpy.autoalloc.backends.sge import SgeBackend, parse_qstat_j_reasons
from hqpy.autoalloc.backends.slurm import parse_scontrol_output, parse_squeue_output
from hqpy.autoalloc.state import Allocation, AutoAllocState
from hqpy.autoalloc.views import allocation_view
from hqpy.common.states import AllocationState
from hqpy.protocol.messages import QueueParams
from tests.backends.fakes import Answer, RecordingRunner

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(path: str) -> str:
    return (FIXTURES / path).read_text()


def reasons(statuses: dict[str, ExternalStatus]) -> dict[str, tuple[str, str | None]]:
    return {k: (s.state.value, s.reason) for k, s in statuses.items()}


def test_slurm_squeue_reason_of_pending_jobs_only() -> None:
    # Real Slurm 22.05: a held job, one with --begin in an hour, a running one.
    assert reasons(parse_squeue_output(fixture("slurm/squeue_reasons.txt"))) == {
        "22": ("queued", "JobHeldUser"),
        "23": ("queued", "BeginTime"),
        "24": ("running", None),
    }
    # The four-field form still parses, without reasons.
    assert parse_squeue_output(fixture("slurm/squeue_all_states.txt"))["8"].reason is None


def test_slurm_scontrol_reason() -> None:
    assert parse_scontrol_output(fixture("slurm/scontrol_pending_held.txt")).reason == (
        "JobHeldUser"
    )
    assert parse_scontrol_output(fixture("slurm/scontrol_pending_priority.txt")).reason == (
        "Priority"
    )
    assert parse_scontrol_output(fixture("slurm/scontrol_pending_resources.txt")).reason == (
        "Resources"
    )
    # A running or ended job's Reason (`None`, `NonZeroExitCode`) is not a pending reason.
    assert parse_scontrol_output(fixture("slurm/scontrol_running.txt")).reason is None
    assert parse_scontrol_output(fixture("slurm/scontrol_failed.txt")).reason is None


def test_pbs_comment_of_queued_jobs_only() -> None:
    ids = ["101.pbsserver", "102.pbsserver", "108.pbsserver", "104.pbsserver"]
    assert reasons(parse_qstat_json(fixture("pbs/qstat_openpbs.json"), ids)) == {
        "101.pbsserver": (
            "queued",
            "Not Running: Insufficient amount of resource: ncpus (R: 4 A: 2 T: 2)",
        ),
        "102.pbsserver": ("running", None),
        "108.pbsserver": ("queued", "job held, too many failed attempts to run"),
        "104.pbsserver": ("finished", None),
    }


def test_lsf_pend_reason() -> None:
    now = time.mktime(time.strptime("2026-11-26 12:00:00", "%Y-%m-%d %H:%M:%S"))
    statuses = parse_bjobs_json(fixture("lsf/bjobs_all_states.json"), ["101", "102", "103"], now)
    assert reasons(statuses) == {
        "101": ("queued", "New job is waiting for scheduling"),
        "102": ("queued", "The job was suspended by the user while pending"),
        "103": ("running", None),
    }


def test_htcondor_idle_and_hold_reasons() -> None:
    statuses = parse_condor_json(fixture("htcondor/condor_q.json"))
    assert statuses["11"].reason == "no match found"
    assert statuses["12"].reason is None
    held = statuses["13"]
    assert held.state is ExternalState.FAILED
    assert held.reason is not None and held.reason.startswith("Error from slot1@node1: ")


def test_sge_scheduling_info_per_job() -> None:
    # Real gridengine 8.1.9: `qstat -xml -j '*'` with a PE job that cannot fit, a job in
    # error, a held one (and a running one, which has no message).
    assert parse_qstat_j_reasons(fixture("sge/qstat_j_real.xml"), ["5", "7", "4", "8"]) == {
        "5": 'cannot run in PE "hq" because it only offers 1 slots',
        "7": "Job is in error state",
        "4": "Job is in hold state",
    }
    assert parse_qstat_j_reasons("<detailed_job_info></detailed_job_info>", ["1"]) == {}


def test_sge_global_scheduling_info_when_a_job_has_none() -> None:
    # Real: a busy machine (load above the queue's default threshold) holds every job back.
    assert parse_qstat_j_reasons(fixture("sge/qstat_j_overloaded_real.xml"), ["69"]) == {
        "69": 'queue instance "all.q@vm" dropped because it is overloaded: '
        "np_load_avg=2.909424 (no load adjustment) >= 1.75; "
        "All queues dropped because of overload or full"
    }


async def test_sge_query_asks_qstat_j_for_queued_ids_only() -> None:
    runner = (
        RecordingRunner()
        .answer_argv(["qstat", "-xml"], Answer(stdout=fixture("sge/qstat_real.xml")))
        .answer("qstat", Answer(stdout=fixture("sge/qstat_j_real.xml")))
    )
    statuses = await SgeBackend(runner).query(["8", "5", "4"])
    assert runner.argvs == [["qstat", "-xml"], ["qstat", "-xml", "-j", "5,4"]]
    assert reasons(statuses) == {
        "8": ("running", None),
        "5": ("queued", 'cannot run in PE "hq" because it only offers 1 slots'),
        "4": ("queued", "Job is in hold state"),
    }


async def test_sge_query_without_scheduling_info_keeps_the_statuses() -> None:
    runner = (
        RecordingRunner()
        .answer_argv(["qstat", "-xml"], Answer(stdout=fixture("sge/qstat_real.xml")))
        .answer("qstat", Answer(returncode=1, stderr="error: commlib error\n"))
    )
    statuses = await SgeBackend(runner).query(["5"])
    assert (statuses["5"].state, statuses["5"].reason) == (ExternalState.QUEUED, None)


def test_state_keeps_the_reason_while_queued() -> None:
    state = AutoAllocState(lambda: 1000.0)
    queue = state.add_queue(QueueParams(manager="slurm", time_limit=3600.0), max_allocation_fails=3)
    alloc = Allocation("7", queue.id, 1, 1, Path("/tmp/001"), queued_at=1000.0)
    state.add_allocation(queue, alloc)
    state.on_external_status(
        queue, alloc, ExternalStatus(ExternalState.QUEUED, raw="PENDING", reason="Priority")
    )
    assert alloc.pending_reason == "Priority"
    assert allocation_view(alloc).pending_reason == "Priority"
    state.on_external_status(queue, alloc, ExternalStatus(ExternalState.RUNNING, raw="RUNNING"))
    view = allocation_view(alloc)  # read afresh: mypy keeps the narrowing of the assert above
    assert (view.state, view.pending_reason) == (AllocationState.RUNNING.value, None)
