"""The metrics collector and the status document on a ServerState without I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.service import AutoAllocService
from hqpy.autoalloc.state import Allocation
from hqpy.common.events import AllocationSubmitted, BatchCommandRun
from hqpy.common.resources import (
    FRACTIONS,
    ResourceAmountRequest,
    ResourceRequest,
)
from hqpy.common.states import WorkerState
from hqpy.http.metrics import ServerMetrics
from hqpy.http.status import MAX_EVENTS, MAX_JOBS, build_status
from hqpy.protocol import messages as m
from hqpy.server import commands
from hqpy.server.demand import ServerDemand
from hqpy.server.state import ServerState
from hqpy.server.views import ServerViews
from hqpy.server.workers import Worker
from tests import factories

ALLOWED_LABELS = {"state", "queue", "manager", "outcome", "command", "reason", "version", "python"}
"""No label may carry a job, task or allocation id (unbounded)."""


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(metrics: ServerMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name, each keyed by its sorted labels."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples[name][tuple(sorted(labels.items()))])


def submit(state: ServerState, ids: str, cpus: int = 1) -> int:
    return state.submit(
        m.SubmitRequest(
            m.SubmitDesc(
                ids=ids,
                args=("true",),
                env={},
                cwd="%{SUBMIT_DIR}",
                stdout=None,
                stderr=None,
                submit_dir="/tmp",
                request=ResourceRequest((ResourceAmountRequest("cpus", cpus * FRACTIONS),)),
            )
        )
    )


def worker_config(cpus: int, allocation: str | None = None) -> m.WorkerConfiguration:
    manager = None if allocation is None else m.ManagerInfo("LOCAL", allocation)
    return factories.worker_config(cpus, heartbeat_interval=3600.0, manager=manager)


def report(state: ServerState, worker: Worker, status: int, n: int, duration: float) -> None:
    """The worker reports `n` of its assigned tasks with `status`."""
    now = state.clock()
    rows = []
    for (job_id, task_id), task in list(worker.tasks.items())[:n]:
        ended = None if status == m.TASK_RUNNING else now
        rows.append([job_id, task_id, task.instance_id, status, now - duration, ended, None])
    state.on_task_updates(worker, rows)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> ServerState:
    return ServerState("uid1", clock=clock)


@pytest.fixture
def service(state: ServerState, tmp_path: Path, clock: Clock) -> AutoAllocService:
    config = AutoAllocConfig()
    return AutoAllocService(ServerDemand(state), state.hub, tmp_path, config, clock=clock)


@pytest.fixture
def metrics(state: ServerState, service: AutoAllocService) -> ServerMetrics:
    return ServerMetrics(ServerViews(state), service, state.hub, 123.0)


async def test_tasks_jobs_and_workers_are_counted_at_scrape_time(
    state: ServerState, metrics: ServerMetrics
) -> None:
    submit(state, "0-9")
    worker = state.add_worker(worker_config(4))
    assert state.schedule() == 4
    report(state, worker, m.TASK_FINISHED, 2, duration=3.0)
    report(state, worker, m.TASK_FAILED, 1, duration=0.05)
    report(state, worker, m.TASK_RUNNING, 1, duration=0.0)
    s = scrape(metrics)
    assert value(s, "hqpy_tasks", state="waiting") == 6
    assert value(s, "hqpy_tasks", state="running") == 1
    assert value(s, "hqpy_tasks", state="finished") == 2
    assert value(s, "hqpy_tasks", state="failed") == 1
    assert value(s, "hqpy_jobs", state="running") == 1
    assert value(s, "hqpy_jobs", state="finished") == 0
    assert value(s, "hqpy_tasks_finished_total", outcome="finished") == 2
    assert value(s, "hqpy_tasks_finished_total", outcome="failed") == 1
    assert value(s, "hqpy_task_duration_seconds_count") == 3
    assert value(s, "hqpy_task_duration_seconds_bucket", le="0.1") == 1
    assert value(s, "hqpy_task_duration_seconds_bucket", le="5.0") == 3
    assert value(s, "hqpy_task_duration_seconds_sum") == pytest.approx(6.05)
    assert value(s, "hqpy_workers", state="running") == 1
    assert value(s, "hqpy_worker_cpus") == 4
    assert value(s, "hqpy_worker_cpus_assigned") == 1
    assert value(s, "hqpy_server_start_time_seconds") == 123.0
    [labels] = s["hqpy_build_info"]
    assert dict(labels)["version"] and s["hqpy_build_info"][labels] == 1


async def test_finished_counters_survive_forget_and_cancel(
    state: ServerState, metrics: ServerMetrics
) -> None:
    submit(state, "0-2")
    worker = state.add_worker(worker_config(4))
    state.schedule()
    report(state, worker, m.TASK_FINISHED, 3, duration=1.0)
    submit(state, "0-99")
    commands.cancel_jobs(state, "2", None)
    s = scrape(metrics)
    assert value(s, "hqpy_tasks_finished_total", outcome="canceled") == 100
    commands.forget_jobs(state, "all", ())
    s = scrape(metrics)
    assert value(s, "hqpy_tasks", state="finished") == 0
    assert value(s, "hqpy_tasks_finished_total", outcome="finished") == 3
    assert value(s, "hqpy_tasks_finished_total", outcome="canceled") == 100


async def test_a_million_task_array_is_scraped_without_touching_its_tasks(
    state: ServerState, metrics: ServerMetrics
) -> None:
    submit(state, "0-999999")
    s = scrape(metrics)
    assert value(s, "hqpy_tasks", state="waiting") == 1_000_000
    assert value(s, "hqpy_jobs", state="waiting") == 1
    # The collector read the job's counts: no task object was made.
    assert len(state.jobs[1].tasks) == 0
    doc = factories.as_json(build_status(ServerViews(state), None, 0.0, 1.0))
    assert doc["jobs"][0]["task_count"] == 1_000_000
    assert len(state.jobs[1].tasks) == 0


async def test_worker_disconnections_by_reason(state: ServerState, metrics: ServerMetrics) -> None:
    w1 = state.add_worker(worker_config(1))
    w2 = state.add_worker(worker_config(1))
    w3 = state.add_worker(worker_config(1))
    state.on_worker_lost(w1, WorkerState.CONNECTION_LOST)
    state.on_worker_lost(w2, WorkerState.HEARTBEAT_LOST)
    state.request_worker_stop(w3, "idle-timeout")
    s = scrape(metrics)
    assert value(s, "hqpy_workers", state="stopping") == 1
    state.on_worker_stopping(w3, "idle-timeout")
    s = scrape(metrics)
    assert value(s, "hqpy_worker_disconnections_total", reason="connection_lost") == 1
    assert value(s, "hqpy_worker_disconnections_total", reason="heartbeat_lost") == 1
    assert value(s, "hqpy_worker_disconnections_total", reason="idle_timeout") == 1
    assert value(s, "hqpy_worker_disconnections_total", reason="stopped") == 0
    assert value(s, "hqpy_workers", state="running") == 0
    assert value(s, "hqpy_workers", state="idle_timeout") == 1
    assert value(s, "hqpy_worker_cpus") == 0


def add_allocation(service: AutoAllocService, queue_id: int, allocation_id: str) -> Allocation:
    queue = service.state.queues[queue_id]
    alloc = Allocation(allocation_id, queue_id, queue.next_seq, 1, Path("/tmp"), service.clock())
    queue.next_seq += 1
    service.state.add_allocation(queue, alloc)
    service.hub.publish(AllocationSubmitted(queue_id, "local", True))
    return alloc


async def test_allocation_metrics_follow_events(
    state: ServerState, service: AutoAllocService, metrics: ServerMetrics, clock: Clock
) -> None:
    queue = service.state.add_queue(m.QueueParams("local", 600.0), 3)
    s = scrape(metrics)
    assert value(s, "hqpy_alloc_queues", state="active") == 1
    assert value(s, "hqpy_allocation_submissions_total", queue="1", manager="local",
                 outcome="failure") == 0  # fmt: skip
    add_allocation(service, 1, "local-1")
    add_allocation(service, 1, "local-2")
    service.hub.publish(AllocationSubmitted(1, "local", False))
    clock.now += 42.0
    state.add_worker(worker_config(2, "local-1"))
    s = scrape(metrics)
    labels = {"queue": "1", "manager": "local"}
    assert value(s, "hqpy_allocations", state="queued", **labels) == 1
    assert value(s, "hqpy_allocations", state="running", **labels) == 1
    assert value(s, "hqpy_allocation_submissions_total", outcome="success", **labels) == 2
    assert value(s, "hqpy_allocation_submissions_total", outcome="failure", **labels) == 1
    assert value(s, "hqpy_allocation_queue_wait_seconds_count", **labels) == 1
    assert value(s, "hqpy_allocation_queue_wait_seconds_sum", **labels) == 42.0
    assert value(s, "hqpy_allocation_queue_wait_seconds_bucket", le="30.0", **labels) == 0
    assert value(s, "hqpy_allocation_queue_wait_seconds_bucket", le="60.0", **labels) == 1
    assert value(s, "hqpy_alloc_queue_self_paused", **labels) == 0
    # Allocation 2 fails three times over (the limit): the queue pauses itself.
    for n in range(3):
        alloc = add_allocation(service, 1, f"local-f{n}")
        service.state.end(queue, alloc, True, "crashed")
    assert service.state.pause_if_failing(queue)
    s = scrape(metrics)
    assert value(s, "hqpy_allocations_ended_total", outcome="failed", **labels) == 3
    assert value(s, "hqpy_allocations", state="failed", **labels) == 3
    assert value(s, "hqpy_alloc_queues", state="paused") == 1
    assert value(s, "hqpy_alloc_queue_self_paused", **labels) == 1
    service.resume(1)
    service.pause(1)
    s = scrape(metrics)
    assert value(s, "hqpy_alloc_queue_self_paused", **labels) == 0


async def test_no_label_is_an_id(
    state: ServerState, service: AutoAllocService, metrics: ServerMetrics
) -> None:
    service.state.add_queue(m.QueueParams("local", 600.0), 3)
    add_allocation(service, 1, "local-1")
    submit(state, "0-9")
    state.add_worker(worker_config(2, "local-1"))
    state.hub.publish(BatchCommandRun("/usr/bin/sbatch", 0.2, True))
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        assert family.name.startswith("hqpy_")
        for sample in family.samples:
            names.update(k for k in sample.labels if k != "le")
            assert "local-1" not in sample.labels.values()
    assert names <= ALLOWED_LABELS, names - ALLOWED_LABELS
    assert "_created" not in metrics.render().decode()


async def test_batch_commands_are_recorded_from_the_hub(
    state: ServerState, metrics: ServerMetrics
) -> None:
    state.hub.publish(BatchCommandRun("/usr/bin/sbatch", 0.3, True))
    state.hub.publish(BatchCommandRun("sbatch", 40.0, False))
    state.hub.publish(BatchCommandRun("squeue", 0.02, True))
    s = scrape(metrics)
    assert value(s, "hqpy_batch_command_duration_seconds_count", command="sbatch") == 2
    assert value(s, "hqpy_batch_command_duration_seconds_bucket", command="sbatch", le="0.5") == 1
    assert value(s, "hqpy_batch_command_failures_total", command="sbatch") == 1
    assert value(s, "hqpy_batch_command_failures_total", command="squeue") == 0


async def test_status_document_is_bounded_and_newest_first(
    state: ServerState, service: AutoAllocService, clock: Clock
) -> None:
    for _ in range(MAX_JOBS + 20):
        submit(state, "0-3")
    queue = service.state.add_queue(m.QueueParams("local", 600.0, name="gpu"), 3)
    for n in range(60):
        clock.now += 1
        alloc = add_allocation(service, 1, f"local-{n}")
        if n < 55:
            service.state.end(queue, alloc, n % 2 == 0, "done")
    queue.allocations["local-58"].pending_reason = "Priority"
    worker = state.add_worker(worker_config(4, "local-57"))
    state.schedule()
    doc = factories.as_json(build_status(ServerViews(state), service, 0.0, clock.now))
    assert [j["id"] for j in doc["jobs"]] == list(range(MAX_JOBS + 20, 20, -1))
    assert doc["totals"]["jobs"] == MAX_JOBS + 20
    assert doc["totals"]["tasks"]["waiting"] == 4 * (MAX_JOBS + 20)  # assigned still wait
    [q] = doc["queues"]
    assert q["name"] == "gpu" and q["state"] == "active"
    ids = [a["id"] for a in q["allocations"]]
    assert len(ids) == 40 and ids[-5:] == [f"local-{n}" for n in range(55, 60)]
    reasons = {a["id"]: a["pending_reason"] for a in q["allocations"][-5:]}
    assert reasons == {f"local-{n}": "Priority" if n == 58 else None for n in range(55, 60)}
    assert q["allocation_counts"] == {"queued": 4, "running": 1, "finished": 27, "failed": 28}
    assert len(doc["events"]) == MAX_EVENTS
    times = [e["time"] for e in doc["events"]]
    assert times == sorted(times, reverse=True)
    [w] = doc["workers"]
    assert w["id"] == worker.id and w["allocation"] == "local-57"
    assert w["cpus"] == 4 and w["cpus_assigned"] == 4 and w["tasks"] == 4


async def test_unfittable_tasks_are_counted(state: ServerState, metrics: ServerMetrics) -> None:
    assert value(scrape(metrics), "hqpy_tasks_unfittable_total") == 0
    state.add_worker(worker_config(2))
    submit(state, "0-9", cpus=4)
    assert state.check_fit(1, 1) != []
    submit(state, "0-4", cpus=2)
    assert state.check_fit(2, 2) == []
    assert value(scrape(metrics), "hqpy_tasks_unfittable_total") == 10
