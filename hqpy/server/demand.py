"""The server's side of `DemandSource`: the waiting tasks, grouped by request."""

from __future__ import annotations

from hqpy.common.demand import WaitingWork
from hqpy.common.states import TaskState
from hqpy.server.state import ServerState


class ServerDemand:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def waiting_work(self) -> list[WaitingWork]:
        work = []
        for _job, group in self.state.waiting_groups.values():
            count = len(group.requeued)
            if group.untouched_state is TaskState.WAITING:
                count += group.untouched
            if count:
                work.append(WaitingWork(group.body.request, count))
        return work

    def schedule_now(self) -> None:
        self.state.schedule()
