"""The status page's task history: bounded, per worker, per minute, failures per job."""

from __future__ import annotations

from hqpy.common.events import EventHub, TaskEnded
from hqpy.common.states import TaskState
from hqpy.http import taskstream
from hqpy.http.taskstream import TaskStream
from tests.factories import as_json

T0 = 1_700_000_040.0  # a minute starts at T0 - 40 + 60 k


def ended(
    task: int, state: TaskState = TaskState.FINISHED, at: float = T0, worker: int = 1, **kw: object
) -> TaskEnded:
    return TaskEnded(1, task, state, at - 1.0, at, worker, **kw)  # type: ignore[arg-type]


def test_runs_come_from_hub_events_with_worker_and_error() -> None:
    hub = EventHub()
    stream = TaskStream(hub)
    hub.publish(ended(0, worker=2))
    hub.publish(ended(1, TaskState.FAILED, worker=3, error="Program terminated with exit code 1."))
    snap = as_json(stream.snapshot(T0, {2, 3}, {1}))
    assert [(r["task"], r["worker"], r["state"]) for r in snap["runs"]] == [
        (0, 2, "finished"),
        (1, 3, "failed"),
    ]
    assert snap["failures"] == {"1": [snap["runs"][1]]}
    assert snap["runs"][1]["error"] == "Program terminated with exit code 1."
    # Only the shown workers' runs and the shown jobs' failures.
    assert as_json(stream.snapshot(T0, {2}, set())) == {
        "runs": [snap["runs"][0]],
        "per_minute": snap["per_minute"],
        "failures": {},
    }


def test_per_minute_counts_cover_the_last_hour_with_zeros() -> None:
    stream = TaskStream()
    for i in range(3):
        stream.on_task_ended(ended(i, at=T0))
    stream.on_task_ended(ended(9, TaskState.FAILED, at=T0 + 60))
    stream.on_task_ended(ended(10, at=T0 - 2 * 3600))  # a late report from long ago: not charted
    minutes = as_json(stream.snapshot(T0 + 60, set(), set()))["per_minute"]
    assert len(minutes) == taskstream.MINUTES
    assert minutes[-1] == {"minute": int((T0 + 60) // 60) * 60, "finished": 0, "failed": 1}
    assert minutes[-2] == {"minute": int(T0 // 60) * 60, "finished": 3, "failed": 0}
    assert sum(m["finished"] + m["failed"] for m in minutes) == 4


def test_everything_is_bounded() -> None:
    stream = TaskStream()
    n = taskstream.MAX_RUNS + 500
    for i in range(n):
        stream.on_task_ended(ended(i, TaskState.FAILED, at=T0 + i, error="x" * 10_000))
    assert len(stream.runs) == taskstream.MAX_RUNS
    assert len(stream.failures) == taskstream.MAX_FAILURES
    assert len(stream.per_minute) <= taskstream.MINUTES
    snap = as_json(stream.snapshot(T0 + n, {1}, {1}))
    assert snap["runs"][-1]["task"] == n - 1
    shown = snap["failures"]["1"]
    assert len(shown) == taskstream.MAX_FAILURES_PER_JOB
    assert shown[0]["task"] == n - 1  # newest first
    assert all(len(r["error"]) == taskstream.MAX_ERROR_CHARS for r in shown)


def test_a_task_without_an_end_time_is_ignored() -> None:
    stream = TaskStream()
    stream.on_task_ended(TaskEnded(1, 0, TaskState.FINISHED, None, None, 1))
    assert not stream.runs


def test_queue_errors_are_grouped_by_message_newest_first() -> None:
    from hqpy.http.status import MAX_QUEUE_ERRORS, _errors
    from hqpy.protocol import messages as m

    boom = "sbatch: error: Invalid account"
    events = [m.AllocEventView(T0 + i, "submit-failed", 1, None, boom) for i in range(12)]
    events.append(m.AllocEventView(T0 + 5, "allocation-failed", 1, "7", "boom"))
    events.append(m.AllocEventView(T0 + 6, "allocation-queued", 1, "8", "1 worker(s) requested"))
    grouped = _errors(events)
    assert grouped == [
        {
            "event": "submit-failed",
            "message": boom,
            "count": 12,
            "first": T0,
            "last": T0 + 11,
            "allocation_id": None,
        },
        {
            "event": "allocation-failed",
            "message": "boom",
            "count": 1,
            "first": T0 + 5,
            "last": T0 + 5,
            "allocation_id": "7",
        },
    ]
    many = [m.AllocEventView(T0 + i, "status-error", 1, None, f"e{i}") for i in range(20)]
    assert [e["message"] for e in _errors(many)] == [f"e{i}" for i in range(19, 14, -1)]
    assert len(_errors(many)) == MAX_QUEUE_ERRORS
