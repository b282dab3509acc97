"""Multi-node tasks: N whole idle workers of one worker group, the task runs on the first.

Rules (pure, called by the scheduler only when a multi-node task waits, so single-node work
pays nothing for them):

- A worker's group is its `--group` (by default its allocation id; `default` for workers
  started by hand). A task of `--nodes N` runs on N workers of one group that hold no task.
- The root (first) worker gets the task; the others are held for it (`Worker.mn_task`) and run
  nothing else until it ends.
- No starvation: the scheduler walks waiting task groups in priority, then submission, order.
  When a multi-node task comes up and no group has N idle workers, it *reserves* N workers of
  the group with the most idle workers (ties: the group of the lowest worker id): the idle ones
  and then the busy ones with the fewest tasks. Task groups that come later in the order (lower
  priority or submitted later) get no new task on reserved workers, so each reserved worker
  becomes idle as its current tasks end, and the task starts once N are idle. Earlier (higher
  priority or older) single-node tasks still go first, as the order says. The reserved group's
  idle count never falls, so the choice can only move to a group with more idle workers.
"""

from __future__ import annotations

from hqpy.common.resources import ResourceRequest
from hqpy.server.jobs import Job, Task, TaskGroup
from hqpy.server.pools import pool_full
from hqpy.server.workers import Worker


def fits_time(worker: Worker, request: ResourceRequest, now: float) -> bool:
    """Does the task's time request fit in the worker's remaining lifetime (equal fits)?"""
    if request.min_time > 0 and worker.deadline is not None:
        return request.min_time <= worker.deadline - now
    return True


def _group_rank(workers: list[Worker]) -> tuple[int, int]:
    return (-sum(1 for w in workers if not w.tasks), min(w.id for w in workers))


def place(
    job: Job, group: TaskGroup, workers: list[Worker], now: float, reserved: set[int]
) -> list[tuple[Task, list[Worker]]]:
    """Start what the group's multi-node tasks can start now; reserve workers for the next one.

    `workers` are the running workers that hold no multi-node task; `reserved` collects the ids
    of workers that later task groups must leave alone (reserved, or just given a task here).
    Returns each started task with its workers (root first), already assigned.
    """
    request = group.body.request
    n = request.n_nodes
    tags = group.tags
    by_group: dict[str, list[Worker]] = {}
    for w in workers:
        if w.id in reserved or w.mn_task is not None or not fits_time(w, request, now):
            continue
        if not w.takes(tags):
            continue
        by_group.setdefault(w.config.group, []).append(w)
    out: list[tuple[Task, list[Worker]]] = []
    pool = group.pool
    while group.has_waiting():
        if pool_full(pool):
            break
        candidates = [ws for ws in by_group.values() if len(ws) >= n]
        if not candidates:
            break
        best = min(candidates, key=_group_rank)
        idle = sorted((w for w in best if not w.tasks), key=lambda w: w.id)
        if len(idle) < n:
            busy = sorted((w for w in best if w.tasks), key=lambda w: (len(w.tasks), w.id))
            reserved.update(w.id for w in idle + busy[: n - len(idle)])
            break
        task = group.take(job)
        if task is None:
            break
        chosen = idle[:n]
        occupy(task, chosen)
        out.append((task, chosen))
        taken = {w.id for w in chosen}
        reserved.update(taken)
        by_group[chosen[0].config.group] = [w for w in best if w.id not in taken]
    return out


def occupy(task: Task, workers: list[Worker]) -> None:
    """The task goes to the first worker; all of them are held for it."""
    key = (task.group.body.job_id, task.id)
    workers[0].assign(task)
    task.nodes = tuple((w.id, w.config.hostname) for w in workers)
    for w in workers:
        w.mn_task = key
        w.idle_since = None


def release(task: Task, workers: dict[int, Worker], now: float) -> None:
    """The task ended or went back to waiting: its other workers are free again."""
    nodes = task.nodes
    if not nodes:
        return
    key = (task.group.body.job_id, task.id)
    for worker_id, _host in nodes:
        w = workers.get(worker_id)
        if w is not None and w.mn_task == key:
            w.mn_task = None
            if not w.tasks:
                w.idle_since = now


def host_rows(task: Task) -> list[str]:
    """The hosts of a multi-node task, root first (the worker writes them to `HQ_HOST_FILE`)."""
    return [host for _id, host in task.nodes or ()]
