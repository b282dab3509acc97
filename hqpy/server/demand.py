"""The server's side of `DemandSource`: the waiting tasks, grouped by request."""

from __future__ import annotations

from collections.abc import Iterable

from hqpy.common.demand import WaitingWork
from hqpy.server.jobs import Job, TaskGroup, sort_key
from hqpy.server.state import ServerState


class ServerDemand:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def waiting_work(self) -> list[WaitingWork]:
        """Tasks a pool holds back are no demand: a pool's groups count together at most as
        many tasks as it has free slots (in scheduling order). Nor is anything while a restored
        server waits for its workers to come back (`expected_back`): it hands out no task
        then, the returning workers may run them, and an allocation submitted meanwhile
        would be one too many."""
        if self.state.expected_back:
            return []
        work = []
        free: dict[str, int] = {}
        groups: Iterable[tuple[Job, TaskGroup]] = self.state.waiting_groups.values()
        if any(g.pool is not None for _, g in groups):
            groups = sorted(groups, key=lambda jg: sort_key(jg[1]))
        for _job, group in groups:
            count = group.waiting_count()
            pool = group.pool
            if pool is not None:
                left = free.setdefault(pool.name, pool.free())
                count = min(count, left)
                free[pool.name] = left - count
            if count:
                work.append(WaitingWork(group.body.request, count, group.tags))
        return work

    def schedule_now(self) -> None:
        self.state.schedule()
