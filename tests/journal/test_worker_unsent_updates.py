"""A worker that loses its server keeps every task end it had not delivered: put back before
the updates made meanwhile, the ends that follow still replace their own starts (else another
task's end is lost, never presented to a restarted server, and that task runs twice)."""

from __future__ import annotations

from pathlib import Path

import attrs

from hqpy.common.states import TaskState
from hqpy.protocol import messages as m
from hqpy.worker.agent import WorkerAgent, WorkerOptions
from tests.factories import cpu_resources


@attrs.frozen
class Item:
    job_id: int
    task_id: int
    instance_id: int


def agent(tmp_path: Path) -> WorkerAgent:
    options = WorkerOptions(
        tmp_path, cpu_resources(1), work_dir=tmp_path / "work", server_lost_grace=60.0
    )
    return WorkerAgent(options, "hq")


def report(worker: WorkerAgent, task_id: int, status: TaskState) -> None:
    worker._report(Item(1, task_id, 0), status, 1.0, None, None)  # type: ignore[arg-type]


def test_end_after_a_failed_send_replaces_its_own_start(tmp_path: Path) -> None:
    worker = agent(tmp_path)
    report(worker, 1, m.TASK_RUNNING)
    report(worker, 1, m.TASK_FINISHED)
    # The flush takes the updates; meanwhile task 2 starts; the send fails (server lost).
    taken, worker.updates = worker.updates, []
    worker.unsent_running.clear()
    report(worker, 2, m.TASK_RUNNING)
    worker._requeue_updates(taken)
    report(worker, 2, m.TASK_FINISHED)
    assert [(row[1], row[3]) for row in worker.updates] == [
        (1, m.TASK_FINISHED),
        (2, m.TASK_FINISHED),
    ]
    assert worker._held_tasks() == [[1, 1, 0], [1, 2, 0]]


async def test_recent_ends_put_back_on_reconnect_keep_the_starts_in_place(tmp_path: Path) -> None:
    worker = agent(tmp_path)
    report(worker, 1, m.TASK_FINISHED)
    worker._remember_sent(worker.updates)  # sent to the server that then died
    worker.updates = []
    report(worker, 2, m.TASK_RUNNING)
    worker._requeue_updates([row for _, row in worker.recent])
    report(worker, 2, m.TASK_FAILED)
    assert [(row[1], row[3]) for row in worker.updates] == [
        (1, m.TASK_FINISHED),
        (2, m.TASK_FAILED),
    ]
