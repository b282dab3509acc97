"""ServerState with a fake clock and list outboxes: jobs, workers and task updates, without I/O."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
import trio

from hqpy.common.errors import RequestError
from hqpy.common.idset import IdSet
from hqpy.common.resources import (
    FRACTIONS,
    ResourceAmountRequest,
    ResourceRequest,
)
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server import commands, views
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker
from tests.factories import worker_config

LOST_MESSAGE = (
    "Task was running on a worker that was lost; the task has occurred {n} times in this "
    "situation and limit was reached."
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Outbox:
    """Collects what the state sends to one worker."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def send_nowait(self, message: Any) -> None:
        self.messages.append(message)

    def take(self) -> list[Any]:
        out, self.messages = self.messages, []
        return out

    def compute_rows(self) -> list[list[Any]]:
        return [row for msg in self.take() if isinstance(msg, m.ComputeTasks) for row in msg.tasks]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> ServerState:
    return ServerState("uid123", clock=clock)


def desc(ids: str = "0-9", cpus: int = 1, crash_limit: int = 5) -> m.SubmitDesc:
    return m.SubmitDesc(
        ids=ids,
        args=("/bin/sleep", "1"),
        env={},
        cwd="%{SUBMIT_DIR}",
        stdout="%{CWD}/job-%{JOB_ID}/%{TASK_ID}.stdout",
        stderr=None,
        submit_dir="/home/user",
        request=ResourceRequest((ResourceAmountRequest("cpus", cpus * FRACTIONS),)),
        crash_limit=crash_limit,
    )


def submit(
    state: ServerState,
    ids: str = "0-9",
    *,
    crash_limit: int = 5,
    max_fails: int | None = None,
    job_id: int | None = None,
    name: str | None = None,
) -> int:
    req = m.SubmitRequest(desc(ids, crash_limit=crash_limit), name, max_fails, job_id)
    return state.submit(req)


def add_worker(state: ServerState, cpus: int = 4, hostname: str = "node1") -> tuple[Worker, Outbox]:
    config = worker_config(cpus, hostname)
    outbox = Outbox()
    return state.add_worker(config, outbox), outbox


def update(
    job_id: int,
    task_id: int,
    status: int,
    instance_id: int = 0,
    started: float | None = 1000.0,
    ended: float | None = 1001.0,
    error: str | None = None,
) -> list[Any]:
    if status == m.TASK_RUNNING:
        ended = None
    return [job_id, task_id, instance_id, status, started, ended, error]


def counts(job: Job) -> dict[str, int]:
    return {s.name.lower(): job.counts[s] for s in TaskState if job.counts[s]}


def texts(lines: list[m.LogLine]) -> list[tuple[str, str]]:
    return [(line.level, line.text) for line in lines]


def run_one(state: ServerState, cpus: int = 1) -> tuple[Worker, Outbox, Task]:
    """Submit one task, give it to a new worker and report it running."""
    job_id = submit(state, "0", crash_limit=2)
    worker, outbox = add_worker(state, cpus=cpus)
    state.schedule()
    outbox.take()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING)])
    return worker, outbox, state.jobs[job_id].tasks[0]


# --- submit --------------------------------------------------------------------------------------


def test_submit_counts_waiting_tasks_without_materialising_them(state: ServerState) -> None:
    job_id = submit(state, "0-999999")
    job = state.jobs[job_id]
    assert job.task_count == 1_000_000
    assert counts(job) == {"waiting": 1_000_000}
    assert len(job.tasks) == 0


def test_submit_gives_consecutive_job_ids(state: ServerState) -> None:
    assert [submit(state), submit(state), submit(state)] == [1, 2, 3]


def test_submit_names_the_job_after_its_program(state: ServerState) -> None:
    assert state.jobs[submit(state)].name == "sleep"


def test_submit_records_the_submit_time(state: ServerState, clock: FakeClock) -> None:
    clock.now = 1234.5
    assert state.jobs[submit(state)].submitted_at == 1234.5


def test_submit_with_a_bad_id_set_is_a_request_error(state: ServerState) -> None:
    with pytest.raises(RequestError):
        submit(state, "5-1")


def test_submit_asks_for_scheduling(state: ServerState) -> None:
    asked: list[bool] = []
    state.on_schedule_needed = lambda: asked.append(True)
    submit(state)
    assert asked


# --- scheduling ----------------------------------------------------------------------------------


def test_schedule_puts_compute_tasks_into_the_worker_outbox(state: ServerState) -> None:
    job_id = submit(state)
    _, outbox = add_worker(state, cpus=4)
    assert state.schedule() == 4
    [msg] = outbox.take()
    assert isinstance(msg, m.ComputeTasks)
    [body] = msg.bodies
    assert body.job_id == job_id and body.args == ("/bin/sleep", "1")
    assert msg.tasks == [[job_id, i, 0, body.group_id, None] for i in range(4)]


def test_schedule_of_a_million_task_array_materialises_only_assigned_tasks(
    state: ServerState,
) -> None:
    job_id = submit(state, "0-999999")
    add_worker(state, cpus=4)
    state.schedule()
    job = state.jobs[job_id]
    assert len(job.tasks) == 4
    assert counts(job) == {"waiting": 1_000_000}


def test_schedule_sends_a_task_body_to_a_worker_only_once(state: ServerState) -> None:
    job_id = submit(state)
    worker, outbox = add_worker(state, cpus=2)
    state.schedule()
    outbox.take()
    state.on_task_updates(worker, [update(job_id, i, m.TASK_FINISHED) for i in (0, 1)])
    state.schedule()
    [msg] = outbox.take()
    assert msg.bodies == []
    assert [row[1] for row in msg.tasks] == [2, 3]


def test_schedule_without_workers_assigns_nothing(state: ServerState) -> None:
    submit(state)
    assert state.schedule() == 0


def test_schedule_skips_a_worker_asked_to_stop(state: ServerState) -> None:
    submit(state)
    worker, outbox = add_worker(state)
    state.request_worker_stop(worker, "stopped")
    assert state.schedule() == 0
    assert outbox.take() == [m.StopWorker("stopped")]


# --- task updates --------------------------------------------------------------------------------


def test_running_update_moves_a_task_to_running(state: ServerState) -> None:
    job_id = submit(state)
    worker, _ = add_worker(state, cpus=2)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING, started=1000.5)])
    job = state.jobs[job_id]
    assert counts(job) == {"waiting": 9, "running": 1}
    assert job.tasks[0].started_at == 1000.5
    assert job.started_at == 1000.5
    assert worker.running == 1


def test_finished_updates_complete_the_job(state: ServerState, clock: FakeClock) -> None:
    job_id = submit(state, "0-3")
    worker, _ = add_worker(state, cpus=4)
    state.schedule()
    clock.now = 2000.0
    state.on_task_updates(worker, [update(job_id, i, m.TASK_FINISHED) for i in range(4)])
    job = state.jobs[job_id]
    assert counts(job) == {"finished": 4}
    assert job.finished_at == 2000.0
    assert job.state() == "FINISHED"


def test_job_is_not_finished_while_a_task_remains(state: ServerState) -> None:
    job_id = submit(state, "0-3")
    worker, _ = add_worker(state, cpus=4)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, i, m.TASK_FINISHED) for i in range(3)])
    assert state.jobs[job_id].finished_at is None


def test_finished_task_frees_the_worker(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state, cpus=1)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    assert worker.tasks == {}
    assert worker.assigned["cpus"] == 0


def test_failed_update_records_the_error(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FAILED, error="exit code 1")])
    job = state.jobs[job_id]
    assert counts(job) == {"failed": 1}
    assert job.tasks[0].error == "exit code 1"
    assert job.state() == "FAILED"
    assert job.finished_at is not None


def test_finished_task_records_its_duration_for_prefill(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(
        worker, [update(job_id, 0, m.TASK_FINISHED, started=1000.0, ended=1000.5)]
    )
    group = state.jobs[job_id].groups[0]
    assert group.mean_duration() == 0.5


def test_job_waiter_is_woken_when_the_job_finishes(state: ServerState) -> None:
    job_id = submit(state, "0")
    event = trio.Event()
    state.jobs[job_id].waiters.append(event)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    assert event.is_set()


# --- stale updates -------------------------------------------------------------------------------


def test_update_with_an_old_instance_id_is_ignored(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED, instance_id=1)])
    assert counts(state.jobs[job_id]) == {"waiting": 1}


def test_update_from_another_worker_is_ignored(state: ServerState) -> None:
    job_id = submit(state, "0")
    owner, _ = add_worker(state, hostname="owner")
    state.schedule()
    other, _ = add_worker(state, hostname="other")
    state.on_task_updates(other, [update(job_id, 0, m.TASK_FINISHED)])
    job = state.jobs[job_id]
    assert counts(job) == {"waiting": 1}
    assert job.tasks[0].worker_id == owner.id


def test_update_from_the_lost_worker_after_requeue_is_ignored(state: ServerState) -> None:
    lost, _, task = run_one(state)
    state.on_worker_lost(lost, WorkerState.CONNECTION_LOST)
    state.on_task_updates(lost, [update(1, 0, m.TASK_FINISHED, instance_id=0)])
    assert task.state is TaskState.WAITING


def test_update_for_an_unknown_job_or_task_is_ignored(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(
        worker, [update(99, 0, m.TASK_FINISHED), update(job_id, 5, m.TASK_FINISHED)]
    )
    assert counts(state.jobs[job_id]) == {"waiting": 1}


def test_repeated_finished_update_is_counted_once(state: ServerState) -> None:
    job_id = submit(state, "0-1")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)] * 2)
    assert counts(state.jobs[job_id]) == {"waiting": 1, "finished": 1}


def test_finished_tasks_give_up_their_objects_and_keep_their_views(
    state: ServerState, clock: FakeClock
) -> None:
    job_id = submit(state, "0-20:2,100-104")
    worker, _ = add_worker(state, cpus=4, hostname="node7")
    job = state.jobs[job_id]
    ids = [t for t, _, _ in job.iter_tasks()]
    for _ in range(3):
        state.schedule()
        rows = [update(job_id, t.id, m.TASK_FINISHED, t.instance_id) for t in worker.tasks.values()]
        rows[0][3] = m.TASK_FAILED
        rows[0][6] = "boom"
        state.on_task_updates(worker, rows)
    state.schedule()
    state.on_task_updates(
        worker,
        [update(job_id, t.id, m.TASK_FINISHED, 0, None, 1002.0) for t in worker.tasks.values()],
    )
    assert job.counts[TaskState.FINISHED] + job.counts[TaskState.FAILED] == len(ids)
    # Only the failed tasks keep objects; the finished ones are columns of their group.
    assert {t.state for t in job.tasks.values()} == {TaskState.FAILED}
    listed = {v.id: v for v in views.task_views(job, None, None)}
    assert sorted(listed) == ids
    for task_id, view in listed.items():
        if view.state is TaskState.FINISHED:
            assert view.ended_at in (1001.0, 1002.0)
            started = view.ended_at == 1001.0
            assert view.started_at == (1000.0 if started else None)
            assert view.workers == (("node7",) if started else ())
            assert view.stdout == f"/home/user/job-{job_id}/{task_id}.stdout"
        else:
            assert (view.state, view.error) == (TaskState.FAILED, "boom")
    # A late update for a retired task changes nothing.
    finished = next(i for i, v in listed.items() if v.state is TaskState.FINISHED)
    state.on_task_updates(worker, [update(job_id, finished, m.TASK_FAILED, error="late")])
    assert next(views.task_views(job, IdSet([finished]), None)).state is TaskState.FINISHED


def test_a_task_restored_ahead_of_the_cursor_runs_once(state: ServerState) -> None:
    """A task made ahead of its group's cursor (restored as running from a journal) that then
    finishes and gives up its object is not handed out again when the cursor reaches it."""
    job_id = submit(state, "0-5")
    state.restore_started(job_id, IdSet([3]), 0)
    worker, _ = add_worker(state, cpus=1)
    job = state.jobs[job_id]
    given: list[int] = []
    while job.counts[TaskState.FINISHED] < 6:
        assert state.schedule() == 1
        [task] = worker.tasks.values()
        given.append(task.id)
        state.on_task_updates(worker, [update(job_id, task.id, m.TASK_FINISHED, task.instance_id)])
    assert given == [3, 0, 1, 2, 4, 5]
    assert state.schedule() == 0


# --- lost workers --------------------------------------------------------------------------------


def test_lost_worker_requeues_running_task_with_new_instance(state: ServerState) -> None:
    lost, _, task = run_one(state)
    state.on_worker_lost(lost, WorkerState.CONNECTION_LOST)
    assert task.state is TaskState.WAITING
    assert (task.instance_id, task.crash_count, task.worker_id) == (1, 1, None)
    assert counts(state.jobs[1]) == {"waiting": 1}
    assert lost.state == WorkerState.CONNECTION_LOST


def test_requeued_task_goes_to_another_worker_with_its_new_instance(state: ServerState) -> None:
    lost, _, task = run_one(state)
    state.on_worker_lost(lost, WorkerState.CONNECTION_LOST)
    _, outbox = add_worker(state, hostname="node2")
    state.schedule()
    [[job_id, task_id, instance_id, _, _]] = outbox.compute_rows()
    assert (job_id, task_id, instance_id) == (1, 0, 1)


def test_lost_worker_requeues_assigned_task_without_counting_a_crash(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    task = state.jobs[job_id].tasks[0]
    assert (task.state, task.instance_id, task.crash_count) == (TaskState.WAITING, 1, 0)


def test_lost_worker_fails_task_at_the_crash_limit(state: ServerState) -> None:
    first, _, task = run_one(state)
    state.on_worker_lost(first, WorkerState.CONNECTION_LOST)
    second, outbox = add_worker(state, hostname="node2")
    state.schedule()
    state.on_task_updates(second, [update(1, 0, m.TASK_RUNNING, instance_id=1)])
    state.on_worker_lost(second, WorkerState.CONNECTION_LOST)
    job = state.jobs[1]
    assert task.state is TaskState.FAILED
    assert task.error == LOST_MESSAGE.format(n=2)
    assert counts(job) == {"failed": 1}
    assert job.finished_at is not None


def test_heartbeat_loss_counts_a_crash(state: ServerState) -> None:
    lost, _, task = run_one(state)
    state.on_worker_lost(lost, WorkerState.HEARTBEAT_LOST)
    assert task.crash_count == 1


NEVER_RESTART_MESSAGE = "Task was running on a lost worker while never restart flag was set."


@pytest.mark.parametrize("reason", list(WorkerState)[1:])
def test_never_restart_fails_the_task_whatever_ended_its_worker(
    state: ServerState, reason: WorkerState
) -> None:
    """Issue 14.8: `--crash-limit never-restart` (-1) fails a running task however its worker
    goes away (stop, idle timeout, time limit, crash), with HyperQueue's text."""
    job_id = submit(state, "0", crash_limit=-1)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING)])
    state.on_worker_lost(worker, reason)
    task = state.jobs[job_id].tasks[0]
    assert task.state is TaskState.FAILED
    assert task.error == NEVER_RESTART_MESSAGE


def test_never_restart_requeues_a_task_that_was_only_assigned(state: ServerState) -> None:
    job_id = submit(state, "0", crash_limit=-1)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_worker_lost(worker, WorkerState.STOPPED)
    task = state.jobs[job_id].tasks[0]
    assert (task.state, task.instance_id) == (TaskState.WAITING, 1)


@pytest.mark.parametrize("reason", [WorkerState.STOPPED, WorkerState.IDLE_TIMEOUT])
def test_numeric_crash_limit_counts_only_real_failures(
    state: ServerState, reason: WorkerState
) -> None:
    job_id = submit(state, "0", crash_limit=1)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING)])
    state.on_worker_lost(worker, reason)
    task = state.jobs[job_id].tasks[0]
    assert (task.state, task.crash_count) == (TaskState.WAITING, 0)


def test_open_job_submits_without_ids_take_the_next_ids(state: ServerState) -> None:
    """Issue 14.4: the tasks go after the job's highest id (0 in an empty job)."""
    job_id = state.open_job(None, None)

    def add(ids: str = "0", entries: list[str] | None = None, auto: bool = True) -> None:
        d = attrs.evolve(desc(ids), entries=entries, auto_ids=auto)
        state.submit(m.SubmitRequest(d, job_id=job_id))

    add()
    add()
    add("0-2", entries=["a", "b", "c"])
    add("10", auto=False)
    add()
    job = state.jobs[job_id]
    assert [str(g.ids) for g in job.groups] == ["0", "1", "2-4", "10", "11"]
    assert [job.groups[2].entry(i) for i in (2, 3, 4)] == ["a", "b", "c"]
    with pytest.raises(RequestError, match=r"^Task 11 already exists in job 1\.$"):
        add("11", auto=False)


def test_crash_limit_zero_never_fails_the_task(state: ServerState) -> None:
    job_id = submit(state, "0", crash_limit=0)
    for n in range(10):
        worker, _ = add_worker(state, hostname=f"node{n}")
        state.schedule()
        state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING, instance_id=n)])
        state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    task = state.jobs[job_id].tasks[0]
    assert (task.state, task.crash_count, task.instance_id) == (TaskState.WAITING, 10, 10)


def test_stopped_worker_does_not_count_a_crash(state: ServerState) -> None:
    worker, _, task = run_one(state)
    state.on_worker_lost(worker, WorkerState.STOPPED)
    assert (task.state, task.instance_id, task.crash_count) == (TaskState.WAITING, 1, 0)
    assert worker.state == WorkerState.STOPPED


def test_connection_lost_after_a_stop_request_is_a_stop(state: ServerState) -> None:
    worker, _, task = run_one(state)
    state.request_worker_stop(worker, "stopped")
    state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    assert task.crash_count == 0
    assert worker.state == WorkerState.STOPPED


def test_worker_stopping_on_its_own_hands_back_its_tasks(state: ServerState) -> None:
    worker, _, task = run_one(state)
    state.on_worker_stopping(worker, "time-limit")
    assert (task.state, task.crash_count) == (TaskState.WAITING, 0)
    assert worker.state == WorkerState.TIME_LIMIT_REACHED


def test_losing_a_worker_twice_requeues_once(state: ServerState) -> None:
    worker, _, task = run_one(state)
    state.on_worker_lost(worker, WorkerState.CONNECTION_LOST)
    state.on_worker_lost(worker, WorkerState.HEARTBEAT_LOST)
    assert (task.instance_id, task.crash_count) == (1, 1)
    assert worker.state == WorkerState.CONNECTION_LOST


# --- workers -------------------------------------------------------------------------------------


def test_stop_workers_sends_stop_worker(state: ServerState) -> None:
    worker, outbox = add_worker(state)
    lines = commands.stop_workers(state, str(worker.id))
    assert texts(lines) == [("INFO", "Worker 1 stopped")]
    assert outbox.take() == [m.StopWorker("stopped")]


def test_stop_workers_twice_warns(state: ServerState) -> None:
    add_worker(state)
    commands.stop_workers(state, "1")
    assert texts(commands.stop_workers(state, "1")) == [
        ("WARN", "Stopping worker 1 failed; worker is already stopped")
    ]


def test_stop_missing_worker_is_an_error_line(state: ServerState) -> None:
    assert texts(commands.stop_workers(state, "4")) == [
        ("ERROR", "Stopping worker 4 failed; worker not found")
    ]


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_untouched_array_cancels_without_materialising(state: ServerState) -> None:
    job_id = submit(state, "0-999999")
    lines = commands.cancel_jobs(state, str(job_id), None)
    job = state.jobs[job_id]
    assert texts(lines) == [
        ("INFO", "Job 1 canceled (1000000 tasks canceled, 0 tasks already finished)")
    ]
    assert counts(job) == {"canceled": 1_000_000}
    assert len(job.tasks) == 0


def test_cancel_counts_finished_tasks_in_its_message(state: ServerState) -> None:
    job_id = submit(state, "0-9")
    worker, _ = add_worker(state, cpus=2)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, i, m.TASK_FINISHED) for i in (0, 1)])
    lines = commands.cancel_jobs(state, "1", None)
    assert texts(lines) == [("INFO", "Job 1 canceled (8 tasks canceled, 2 tasks already finished)")]
    assert counts(state.jobs[job_id]) == {"finished": 2, "canceled": 8}


def test_cancel_sends_cancel_tasks_for_assigned_tasks(state: ServerState) -> None:
    job_id = submit(state, "0-9")
    worker, outbox = add_worker(state, cpus=2)
    state.schedule()
    outbox.take()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_RUNNING)])
    commands.cancel_jobs(state, "1", None)
    [msg] = outbox.take()
    assert isinstance(msg, m.CancelTasks)
    assert sorted(msg.tasks) == [[1, 0, 0], [1, 1, 0]]
    assert worker.tasks == {} and worker.running == 0


def test_canceled_job_is_complete(state: ServerState, clock: FakeClock) -> None:
    job_id = submit(state)
    clock.now = 3000.0
    commands.cancel_jobs(state, "1", "no longer needed")
    job = state.jobs[job_id]
    assert job.finished_at == 3000.0
    assert job.state() == "CANCELED"
    assert job.cancel_reason == "no longer needed"


def test_canceled_tasks_are_never_scheduled(state: ServerState) -> None:
    submit(state)
    commands.cancel_jobs(state, "1", None)
    _, outbox = add_worker(state)
    assert state.schedule() == 0
    assert outbox.take() == []


def test_cancel_finished_job_is_an_error_line(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    assert texts(commands.cancel_jobs(state, "1", None)) == [
        ("ERROR", "Canceling job 1 failed; all tasks are already finished")
    ]


def test_cancel_missing_job_is_an_error_line(state: ServerState) -> None:
    assert texts(commands.cancel_jobs(state, "7", None)) == [
        ("ERROR", "Canceling job 7 failed; job not found")
    ]


def test_cancel_all_with_nothing_to_cancel(state: ServerState) -> None:
    assert texts(commands.cancel_jobs(state, "all", None)) == [
        ("INFO", "There is nothing to cancel")
    ]


def test_cancel_all_reports_only_jobs_it_canceled(state: ServerState) -> None:
    done = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(done, 0, m.TASK_FINISHED)])
    submit(state, "0-2")
    assert texts(commands.cancel_jobs(state, "all", None)) == [
        ("INFO", "Job 2 canceled (3 tasks canceled, 0 tasks already finished)")
    ]


def test_update_for_a_canceled_task_is_ignored(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    state.schedule()
    commands.cancel_jobs(state, "1", None)
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    assert counts(state.jobs[job_id]) == {"canceled": 1}


# --- max fails -----------------------------------------------------------------------------------


def test_max_fails_aborts_the_rest_of_the_job(state: ServerState) -> None:
    job_id = submit(state, "0-9", max_fails=1)
    worker, outbox = add_worker(state, cpus=4)
    state.schedule()
    outbox.take()
    state.on_task_updates(worker, [update(job_id, i, m.TASK_FAILED, error="boom") for i in (0, 1)])
    job = state.jobs[job_id]
    assert counts(job) == {"failed": 2, "aborted": 8}
    assert job.finished_at is not None
    [msg] = outbox.take()
    assert sorted(msg.tasks) == [[1, 2, 0], [1, 3, 0]]


def test_failures_up_to_max_fails_do_not_abort(state: ServerState) -> None:
    job_id = submit(state, "0-9", max_fails=1)
    worker, _ = add_worker(state, cpus=4)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FAILED, error="boom")])
    assert counts(state.jobs[job_id]) == {"waiting": 9, "failed": 1}


def test_aborted_tasks_are_never_scheduled(state: ServerState) -> None:
    job_id = submit(state, "0-9", max_fails=0)
    worker, outbox = add_worker(state, cpus=1)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FAILED, error="boom")])
    outbox.take()
    assert state.schedule() == 0


# --- open jobs -----------------------------------------------------------------------------------


def test_submits_into_an_open_job_add_tasks(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    assert submit(state, "0-4", job_id=job_id) == job_id
    assert submit(state, "5-9", job_id=job_id) == job_id
    job = state.jobs[job_id]
    assert job.task_count == 10
    assert counts(job) == {"waiting": 10}


def test_open_job_rejects_a_duplicate_task_id(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    submit(state, "0-4", job_id=job_id)
    with pytest.raises(RequestError, match=r"^Task 0 already exists in job 1\.$"):
        submit(state, "0", job_id=job_id)


def test_open_job_rejects_the_lowest_duplicate_id(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    submit(state, "0-4", job_id=job_id)
    with pytest.raises(RequestError, match=r"^Task 3 already exists in job 1\.$"):
        submit(state, "3-8", job_id=job_id)


def test_open_job_rejects_name(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    with pytest.raises(
        RequestError, match=r"^Parameter --name is not allowed when submitting to an open job\.$"
    ):
        submit(state, job_id=job_id, name="x")


def test_open_job_rejects_max_fails(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    with pytest.raises(
        RequestError,
        match=r"^Parameter --max-fails is not allowed when submitting to an open job\.$",
    ):
        submit(state, job_id=job_id, max_fails=1)


def test_submit_into_a_missing_job_is_rejected(state: ServerState) -> None:
    with pytest.raises(RequestError, match=r"^Job 123 not found\.$"):
        submit(state, job_id=123)


def test_submit_into_a_closed_job_is_rejected(state: ServerState) -> None:
    submit(state)
    with pytest.raises(RequestError, match=r"^Job 1 is not opened\.$"):
        submit(state, job_id=1)


def test_open_job_with_all_tasks_done_is_not_complete(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    submit(state, "0", job_id=job_id)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    job = state.jobs[job_id]
    assert job.finished_at is None
    assert job.state() == "OPENED"


def test_closing_an_open_job_with_done_tasks_completes_it(
    state: ServerState, clock: FakeClock
) -> None:
    job_id = state.open_job(None, None)
    submit(state, "0", job_id=job_id)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    clock.now = 5000.0
    assert texts(commands.close_jobs(state, "1")) == [("INFO", "Job 1 closed")]
    job = state.jobs[job_id]
    assert job.finished_at == 5000.0
    assert job.state() == "FINISHED"


def test_closing_an_empty_open_job_completes_it(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    commands.close_jobs(state, str(job_id))
    assert state.jobs[job_id].finished_at is not None


def test_closing_a_closed_or_missing_job_is_an_error_line(state: ServerState) -> None:
    submit(state)
    assert texts(commands.close_jobs(state, "1,5")) == [
        ("ERROR", "Closing job 1 failed; job is already closed"),
        ("ERROR", "Closing job 5 failed; job not found"),
    ]


def test_submit_into_a_finished_open_job_reopens_its_work(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    submit(state, "0", job_id=job_id)
    worker, _ = add_worker(state)
    state.schedule()
    state.on_task_updates(worker, [update(job_id, 0, m.TASK_FINISHED)])
    submit(state, "1", job_id=job_id)
    assert state.jobs[job_id].state() == "WAITING"


# --- forget --------------------------------------------------------------------------------------


def finish_job(state: ServerState, job_id: int, worker: Worker) -> None:
    state.schedule()
    job = state.jobs[job_id]
    rows = [update(job_id, t.id, m.TASK_FINISHED, t.instance_id) for t in job.tasks.values()]
    state.on_task_updates(worker, rows)
    assert job.finished_at is not None


def test_forget_removes_a_completed_job(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    finish_job(state, job_id, worker)
    assert texts(commands.forget_jobs(state, "1", ())) == [("INFO", "1 job were forgotten")]
    assert job_id not in state.jobs


def test_forget_uses_the_plural_for_several_jobs(state: ServerState) -> None:
    submit(state)
    submit(state)
    commands.cancel_jobs(state, "all", None)
    assert texts(commands.forget_jobs(state, "all", ())) == [("INFO", "2 jobs were forgotten")]
    assert state.jobs == {}


def test_forget_ignores_an_unfinished_job(state: ServerState) -> None:
    done = submit(state, "0")
    worker, _ = add_worker(state)
    finish_job(state, done, worker)
    waiting = submit(state, "0")
    assert texts(commands.forget_jobs(state, "all", ())) == [
        ("INFO", "1 job were forgotten, 1 were ignored due to wrong state or invalid ID")
    ]
    assert list(state.jobs) == [waiting]


def test_forget_ignores_an_open_job(state: ServerState) -> None:
    job_id = state.open_job(None, None)
    assert texts(commands.forget_jobs(state, str(job_id), ())) == [
        ("INFO", "0 jobs were forgotten, 1 were ignored due to wrong state or invalid ID")
    ]
    assert job_id in state.jobs


def test_forget_counts_a_missing_id_as_ignored(state: ServerState) -> None:
    submit(state)
    commands.cancel_jobs(state, "1", None)
    assert texts(commands.forget_jobs(state, "1,9", ())) == [
        ("INFO", "1 job were forgotten, 1 were ignored due to wrong state or invalid ID")
    ]


def test_forget_with_a_state_filter_keeps_other_states(state: ServerState) -> None:
    job_id = submit(state, "0")
    worker, _ = add_worker(state)
    finish_job(state, job_id, worker)
    assert texts(commands.forget_jobs(state, "1", ("failed",))) == [
        ("INFO", "0 jobs were forgotten, 1 were ignored due to wrong state or invalid ID")
    ]
    assert job_id in state.jobs


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"env": {"A=B": "1"}}, "Invalid environment variable name 'A=B'"),
        ({"env": {"A\0": "1"}}, "Invalid environment variable name 'A\\x00'"),
        ({"env": {"": "1"}}, "Invalid environment variable name ''"),
        ({"env": {"A": "x\0y"}}, "The value of environment variable A contains a NUL"),
        ({"args": ("/bin/echo", "a\0b")}, "Argument 1 of the task contains a NUL"),
        ({"cwd": "/tmp/\0"}, "The task's cwd path contains a NUL"),
        ({"stdout": "/tmp/\0"}, "The task's stdout path contains a NUL"),
    ],
)
def test_submit_refuses_what_would_poison_a_worker(
    state: ServerState, change: dict[str, Any], reason: str
) -> None:
    """Issue 8.4: these made `Popen` raise in every worker that took the task."""
    bad = attrs.evolve(desc("0"), **change)
    with pytest.raises(RequestError, match=re.escape(reason)):
        state.submit(m.SubmitRequest(bad))
    assert state.jobs == {}


def test_commands_on_huge_ranges_say_the_missing_ids_in_one_line(state: ServerState) -> None:
    """Issue 8.2: each missing id was its own line (and the range was walked id by id)."""
    submit(state, "0")
    submit(state, "0")
    assert texts(commands.cancel_jobs(state, "1-4000000000", None)) == [
        ("INFO", "Job 1 canceled (1 tasks canceled, 0 tasks already finished)"),
        ("INFO", "Job 2 canceled (1 tasks canceled, 0 tasks already finished)"),
        ("ERROR", "Canceling jobs 3-4000000000 failed; jobs not found"),
    ]
    assert texts(commands.close_jobs(state, "7")) == [
        ("ERROR", "Closing job 7 failed; job not found")
    ]
    assert texts(commands.stop_workers(state, "0-10:2")) == [
        ("ERROR", "Stopping workers 0-10:2 failed; workers not found")
    ]
    assert texts(commands.forget_jobs(state, "1-4000000000", ())) == [
        ("INFO", "2 jobs were forgotten, 3999999998 were ignored due to wrong state or invalid ID")
    ]


def test_a_huge_stepped_array_into_an_open_job_is_checked_on_ranges(state: ServerState) -> None:
    """The collision check must not expand `0-4000000000:2` id by id."""
    job_id = state.open_job(None, None)
    submit(state, "0-10", job_id=job_id)
    with pytest.raises(RequestError, match=r"^Task 0 already exists in job 1\.$"):
        submit(state, "0-4000000000:2", job_id=job_id)
    submit(state, "12-4000000000:2", job_id=job_id)
    assert state.jobs[job_id].task_count == 11 + 1999999995


@pytest.mark.parametrize(
    ("cwd", "stdout"),
    [
        ("%{SUBMIT_DIR}", "%{CWD}/job-%{JOB_ID}/%{TASK_ID}.stdout"),
        ("/w/%{TASK_ID}-%{INSTANCE_ID}/%{CWD}", "%{CWD}%{CWD}x%{SERVER_UID}%{NOPE}%{}%{TASK_ID"),
        ("plain", "plain.out"),
        ("%{JOB_ID}%{TASK_ID}", "%%{TASK_ID}}{%{INSTANCE_ID}"),
    ],
)
def test_view_paths_are_the_paths_a_worker_resolves(cwd: str, stdout: str) -> None:
    body = attrs.evolve(
        m.TaskBody(7, 3, ("x",), {}, cwd, stdout, None, "/sub", desc().request),
        server_uid="UID",
    )
    group = TaskGroup(body, IdSet.from_range(0, 9), None, 5, 0)
    for task_id, instance_id in ((0, 0), (9, 4)):
        expected = body.resolve_paths(task_id, instance_id)
        assert views.task_paths(group, task_id, instance_id) == expected
