"""The `quiet` output mode: bare ids and states for shell scripts, nothing else on success."""

from __future__ import annotations

import sys

from hqpy.cli.output.common import job_state
from hqpy.protocol import messages as m


class QuietOutput:
    """Commands without a defined quiet form print nothing."""

    def server_started(self, info: m.ServerInfoView) -> None:
        pass

    def server_info(self, info: m.ServerInfoView) -> None:
        pass

    def job_submitted(self, job_id: int) -> None:
        print(job_id)

    def job_opened(self, job_id: int) -> None:
        print(job_id)

    def job_list(self, jobs: list[m.JobView], total: int, verbose: bool) -> None:
        for job in jobs:
            print(f"{job.id} {job_state(job)}")

    def job_details(self, jobs: list[m.JobDetailView]) -> None:
        pass

    def job_summary(self, jobs: list[m.JobView]) -> None:
        pass

    def job_wait_result(self, jobs: list[m.JobView], duration: float) -> None:
        pass

    def task_list(self, jobs: list[tuple[int, list[m.TaskView]]], verbose: bool) -> None:
        pass

    def task_info(self, job: m.JobDetailView, tasks: list[m.TaskView], verbose: bool) -> None:
        pass

    def task_ids(self, jobs: list[tuple[int, str]]) -> None:
        """The same as `cli`: scripts read this output in every mode."""
        if len(jobs) == 1:
            print(jobs[0][1])
            return
        for job_id, ids in jobs:
            print(f"{job_id}: {ids}")

    def worker_list(self, workers: list[m.WorkerView]) -> None:
        for worker in sorted(workers, key=lambda w: w.id):
            print(f"{worker.id} {worker.state}")

    def worker_info(self, workers: list[m.WorkerView]) -> None:
        pass

    def worker_address(self, hostname: str) -> None:
        pass

    def queue_list(self, queues: list[m.QueueView]) -> None:
        for q in queues:
            pool = f" preallocate={q.params.preallocate}" if q.params.preallocate > 0 else ""
            print(f"{q.id} {q.state}{pool}")

    def allocation_list(self, queue: m.QueueView, allocations: list[m.AllocationView]) -> None:
        for a in allocations:
            print(f"{a.id} {a.state}")

    def alloc_events(self, events: list[m.AllocEventView], follow: bool) -> None:
        pass

    def task_explain(self, resp: m.TaskExplainResponse) -> None:
        pass

    def pool_list(self, pools: list[m.PoolView]) -> None:
        for p in pools:
            print(f"{p.name} {p.size}")

    def empty(self) -> None:
        pass

    def error(self, message: str) -> None:
        print(message, file=sys.stderr)
