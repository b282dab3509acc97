"""The three output modes of every command: `cli` (tables), `json` and `quiet`.

Commands call one method of an `Output` per result; each mode decides how it looks.
"""

from __future__ import annotations

from typing import Protocol

from hqpy.protocol import messages as m


class Output(Protocol):
    def server_started(self, info: m.ServerInfoView) -> None:
        """`hq server start`, once it listens."""

    def server_info(self, info: m.ServerInfoView) -> None: ...

    def job_submitted(self, job_id: int) -> None: ...

    def job_opened(self, job_id: int) -> None: ...

    def job_list(self, jobs: list[m.JobView], total: int, verbose: bool) -> None:
        """`total` is how many jobs the server has; more than shown means some are hidden."""

    def job_details(self, jobs: list[m.JobDetailView]) -> None: ...

    def job_summary(self, jobs: list[m.JobView]) -> None: ...

    def job_wait_result(self, jobs: list[m.JobView], duration: float) -> None: ...

    def task_list(self, jobs: list[tuple[int, list[m.TaskView]]], verbose: bool) -> None: ...

    def task_info(self, job: m.JobDetailView, tasks: list[m.TaskView], verbose: bool) -> None: ...

    def task_ids(self, jobs: list[tuple[int, str]]) -> None: ...

    def worker_list(self, workers: list[m.WorkerView]) -> None: ...

    def worker_info(self, workers: list[m.WorkerView]) -> None: ...

    def worker_address(self, hostname: str) -> None: ...

    def queue_list(self, queues: list[m.QueueView]) -> None: ...

    def allocation_list(self, queue: m.QueueView, allocations: list[m.AllocationView]) -> None: ...

    def alloc_events(self, events: list[m.AllocEventView], follow: bool) -> None:
        """With `follow`, called again for each new batch of events."""

    def task_explain(self, resp: m.TaskExplainResponse) -> None:
        """`hq task explain`: the task's checks against each worker and each queue."""

    def pool_list(self, pools: list[m.PoolView]) -> None: ...

    def empty(self) -> None:
        """A command with nothing to show (`{}` in JSON)."""

    def error(self, message: str) -> None:
        """A failed command: text on stderr, or `{"error": ...}` on stdout in JSON mode."""


def make_output(mode: str, colors: str) -> Output:
    if mode == "json":
        from hqpy.cli.output.json import JsonOutput

        return JsonOutput()
    if mode == "quiet":
        from hqpy.cli.output.quiet import QuietOutput

        return QuietOutput()
    from hqpy.cli.output.cli import CliOutput

    return CliOutput(colors)
