"""Ending workers without losing work: drain, hand-back, and why a task's instance ended.

A task whose worker goes because its allocation was drained (`hq alloc drain`), removed
(`alloc remove --force`) or reached its walltime goes back to waiting with a new instance id
and does not count towards `--crash-limit`; only a worker lost for another reason counts. The
walltime case is recognised by the worker's own deadline (its `--time-limit`, which an
allocation's worker always has): a worker lost within `WALLTIME_MARGIN` of it was ended by the
batch system at the allocation's walltime, not by a crash.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hqpy.common import drain as reasons
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server import multinode
from hqpy.server.jobs import Task
from hqpy.server.workers import Worker

if TYPE_CHECKING:
    from hqpy.server.state import ServerState

log = logging.getLogger(__name__)

WALLTIME_MARGIN = 30.0
"""Seconds before its deadline within which a lost worker counts as ended by the walltime (the
allocation starts its clock a little before the worker registers)."""
MAX_INSTANCE_HISTORY = 10
"""Earlier instances kept per task (the most recent ones)."""


def end_reason(worker: Worker, state: WorkerState, now: float) -> tuple[str, bool]:
    """Why the tasks the worker held ended, and whether that counts as a crash."""
    if worker.handback is not None:
        return worker.handback, False
    if state is WorkerState.TIME_LIMIT_REACHED:
        return reasons.WALLTIME, False
    if state.is_failure:
        if worker.deadline is not None and now >= worker.deadline - WALLTIME_MARGIN:
            return reasons.WALLTIME, False
        return reasons.LOST, True
    return reasons.STOPPED, False


def record_instance(task: Task, why: str) -> None:
    """Remember why the task's current instance ended (before its instance id goes up)."""
    history = task.history
    if history is None:
        history = task.history = []
    history.append((task.instance_id, why))
    if len(history) > MAX_INSTANCE_HISTORY:
        del history[0]


class ServerDrain:
    """The server's side of `AllocationControl`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _workers(self, allocation_id: str) -> list[Worker]:
        out = []
        for w in self.state.workers.values():
            manager = w.config.manager
            if (
                w.state is WorkerState.RUNNING
                and manager is not None
                and manager.allocation_id == allocation_id
            ):
                out.append(w)
        return out

    def drain(self, allocation_id: str) -> None:
        state = self.state
        now = state.clock()
        for w in self._workers(allocation_id):
            w.draining = True
            rows = []
            for task in [t for t in w.tasks.values() if t.state is not TaskState.RUNNING]:
                job = state.jobs.get(task.group.body.job_id)
                rows.append([task.group.body.job_id, task.id, task.instance_id])
                w.release(task, now)
                if task.nodes:
                    multinode.release(task, state.workers, now)
                    task.nodes = None
                if job is None or task.state is not TaskState.WAITING:
                    continue
                # A new instance: an update the worker may still send for it is ignored.
                task.instance_id += 1
                task.group.requeued.append(task)
                state.waiting_groups[task.group.group_id] = (job, task.group)
            if rows:
                state.send(w.id, m.CancelTasks(rows))
            if w.mn_task is not None and not w.tasks:
                continue  # held for a multi-node task rooted elsewhere: it ends with it
            if not w.tasks:
                state.request_worker_stop(w, "drained")
                state.on_worker_lost(w, WorkerState.STOPPED)
        log.info("Allocation %s is draining", allocation_id)
        state.on_schedule_needed()

    def busy(self, allocation_id: str) -> int:
        return sum(len(w.tasks) + (w.mn_task is not None) for w in self._workers(allocation_id))

    def hand_back(self, allocation_id: str, reason: str, stop: bool = True) -> None:
        state = self.state
        for w in self._workers(allocation_id):
            w.handback = reason
            if stop:
                state.request_worker_stop(w, "drained")
                state.on_worker_lost(w, WorkerState.STOPPED)
