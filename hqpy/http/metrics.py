"""Prometheus metrics of one server: gauges read from its state at scrape time, plus counters
and histograms fed by events.

The gauges (tasks, jobs, workers, queues, allocations by state) are computed by a custom
collector from the server's own objects when Prometheus scrapes, on the trio thread that owns
them: there is no second copy to drift and no HTTP thread racing the state. A scrape costs
O(jobs + workers + allocations), never O(tasks), because jobs keep per-state task counts, so a
million-task array costs what one task costs.

Everything lives in a private `CollectorRegistry`; ids of jobs, tasks and allocations are never
labels (they are unbounded). Queue ids are: an operator creates a handful of queues.
"""

from __future__ import annotations

import bisect
import logging
import os
import platform
from collections.abc import Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from hqpy import __version__
from hqpy.common.events import (
    AllocationSubmitted,
    AllocEventRecorded,
    BatchCommandRun,
    EventHub,
    JobForgotten,
    TaskEnded,
    TasksUnfittable,
    WorkerLost,
)
from hqpy.common.resources import FRACTIONS
from hqpy.common.states import (
    AllocationState,
    AllocEventKind,
    JobState,
    QueueState,
    TaskState,
    WorkerState,
)
from hqpy.protocol.readmodels import AllocatorReadModel, ServerReadModel, WorkerSummary

log = logging.getLogger(__name__)

QUEUE_WAIT_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    43200.0, 86400.0,
)  # fmt: skip
"""1 s to 1 day: a local allocation starts in a second, a big Slurm job may wait a day."""
TASK_DURATION_BUCKETS = (
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
)  # fmt: skip
BATCH_COMMAND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Up to the default command timeout (30 s) and a little past it."""

JOB_ORDER = (
    JobState.WAITING,
    JobState.RUNNING,
    JobState.FINISHED,
    JobState.FAILED,
    JobState.CANCELED,
    JobState.ABORTED,
    JobState.OPENED,
)
"""The order of the `hqpy_jobs` series (kept as it always was: dashboards sort by it)."""
DISCONNECT_REASONS = tuple(
    s.lower().replace(" ", "_") for s in WorkerState if s is not WorkerState.RUNNING
)
"""`connection_lost`, `heartbeat_lost`, ...: why a worker ended, as a Prometheus label."""
RUNNING_LABEL = WorkerState.RUNNING.lower()
WORKER_STATES = (RUNNING_LABEL, "stopping", *DISCONNECT_REASONS)
ENDED_OUTCOMES = (AllocationState.FINISHED.lower(), AllocationState.FAILED.lower())
"""The `outcome` label of `hqpy_allocations_ended_total`."""
ENDED_TASK_STATES = (TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELED, TaskState.ABORTED)
MAX_COMMAND_LABEL = 64


def worker_state_label(worker: WorkerSummary) -> str:
    """`running`, `stopping` (asked to stop, not gone yet) or why it ended (`idle_timeout`)."""
    if worker.state is WorkerState.RUNNING:
        return "stopping" if worker.stopping else RUNNING_LABEL
    return state_label(worker.state)


def state_label(state: str) -> str:
    """`CONNECTION LOST` -> `connection_lost`: label values in Prometheus' snake case."""
    return state.lower().replace(" ", "_")


class FastHistogram:
    """A label-less histogram for the task hot path: one `bisect` and two additions per task.

    prometheus-client's `Histogram.observe` takes a lock and costs several microseconds; a
    server finishing tens of thousands of tasks a second should not pay that per task.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip([*map(float, self.bounds), float("inf")], self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class ServerMetrics:
    """The metrics of one server: counters fed by the event hub, gauges read at scrape time."""

    def __init__(
        self,
        server: ServerReadModel,
        allocator: AllocatorReadModel | None,
        hub: EventHub,
        started_at: float,
    ) -> None:
        # The `_created` series of counters would double the output and mean nothing here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.server = server
        self.allocator = allocator
        self.started_at = started_at
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.submissions = Counter(
            "hqpy_allocation_submissions_total",
            "Allocations submitted to a batch system, by outcome (success or failure)",
            ("queue", "manager", "outcome"),
            registry=r,
        )
        self.allocations_ended = Counter(
            "hqpy_allocations_ended_total",
            "Allocations that ended, by outcome (finished or failed)",
            ("queue", "manager", "outcome"),
            registry=r,
        )
        self.queue_wait = Histogram(
            "hqpy_allocation_queue_wait_seconds",
            "Time from an allocation's submission until it started (its first worker "
            "registered or the batch system reported it running)",
            ("queue", "manager"),
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "hqpy_batch_command_duration_seconds",
            "Wall time of batch-system commands (sbatch, squeue, qsub, ...)",
            ("command",),
            buckets=BATCH_COMMAND_BUCKETS,
            registry=r,
        )
        self.batch_failures = Counter(
            "hqpy_batch_command_failures_total",
            "Batch-system commands that exited non-zero, could not start or timed out",
            ("command",),
            registry=r,
        )
        self.worker_disconnections = Counter(
            "hqpy_worker_disconnections_total",
            "Workers that left the server, by reason",
            ("reason",),
            registry=r,
        )
        for reason in DISCONNECT_REASONS:
            self.worker_disconnections.labels(reason)
        self.unfittable = Counter(
            "hqpy_tasks_unfittable_total",
            "Submitted tasks that no connected worker and no queue could run (the fit check)",
            registry=r,
        )
        self.task_duration = FastHistogram(TASK_DURATION_BUCKETS)
        self.forgotten = [0] * len(TaskState)
        """Per-state task counts of jobs removed by `hq job forget`, so counters never drop."""
        r.register(_StateCollector(self))
        hub.subscribe(TaskEnded, self.on_task_ended)
        hub.subscribe(JobForgotten, self.on_job_forgotten)
        hub.subscribe(WorkerLost, self.on_worker_lost)
        hub.subscribe(AllocationSubmitted, self.on_submission)
        hub.subscribe(AllocEventRecorded, self.on_alloc_event)
        hub.subscribe(BatchCommandRun, self.on_batch_command)
        hub.subscribe(TasksUnfittable, lambda e: self.unfittable.inc(e.count))
        if allocator is not None:
            for queue in allocator.queue_views():
                self._init_queue(queue.id, queue.params.manager)

    # -----------------------------------------------------------------------------------------
    # Events

    def on_task_ended(self, event: TaskEnded) -> None:
        if event.started_at is not None and event.ended_at is not None:
            self.task_duration.observe(max(0.0, event.ended_at - event.started_at))

    def on_job_forgotten(self, event: JobForgotten) -> None:
        for state in ENDED_TASK_STATES:
            self.forgotten[state] += event.task_counts[state]

    def on_worker_lost(self, event: WorkerLost) -> None:
        self.worker_disconnections.labels(state_label(event.state)).inc()

    def on_submission(self, event: AllocationSubmitted) -> None:
        outcome = "success" if event.success else "failure"
        self.submissions.labels(str(event.queue_id), event.manager, outcome).inc()

    def on_alloc_event(self, event: AllocEventRecorded) -> None:
        if event.kind is AllocEventKind.QUEUE_CREATED:
            self._init_queue(event.queue_id, event.manager)
            return
        labels = (str(event.queue_id), event.manager)
        if event.kind is AllocEventKind.ALLOCATION_STARTED and event.queue_wait is not None:
            self.queue_wait.labels(*labels).observe(event.queue_wait)
        elif event.kind is AllocEventKind.ALLOCATION_FINISHED:
            self.allocations_ended.labels(*labels, ENDED_OUTCOMES[0]).inc()
        elif event.kind is AllocEventKind.ALLOCATION_FAILED:
            self.allocations_ended.labels(*labels, ENDED_OUTCOMES[1]).inc()

    def on_batch_command(self, event: BatchCommandRun) -> None:
        self.observe_batch_command(event.program, event.seconds, event.ok)

    def _init_queue(self, queue_id: int, manager: str) -> None:
        """Create a queue's series at zero, so rates and alerts see them from the start."""
        labels = (str(queue_id), manager)
        for outcome in ("success", "failure"):
            self.submissions.labels(*labels, outcome)
        for outcome in ENDED_OUTCOMES:
            self.allocations_ended.labels(*labels, outcome)
        self.queue_wait.labels(*labels)

    def observe_batch_command(self, command: str, seconds: float, ok: bool) -> None:
        name = os.path.basename(command)[:MAX_COMMAND_LABEL] or "unknown"
        self.batch_duration.labels(name).observe(max(0.0, seconds))
        failures = self.batch_failures.labels(name)
        if not ok:
            failures.inc()

    # -----------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of every metric (what `/metrics` answers)."""
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges computed from the server's state at scrape time, and the task counters/histogram."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self.metrics
        server = metrics.server
        info = GaugeMetricFamily(
            "hqpy_build_info",
            "Always 1; the labels tell the hqpy and Python versions",
            labels=("version", "python"),
        )
        info.add_metric((__version__, platform.python_version()), 1)
        yield info
        yield GaugeMetricFamily(
            "hqpy_server_start_time_seconds",
            "When the server started, in seconds since the Unix epoch",
            value=metrics.started_at,
        )

        task_counts = server.task_state_totals()
        job_counts = server.job_state_totals()
        tasks = GaugeMetricFamily("hqpy_tasks", "Tasks by state", labels=("state",))
        for task_state in TaskState:
            tasks.add_metric((task_state.label,), task_counts[task_state])
        yield tasks
        jobs = GaugeMetricFamily(
            "hqpy_jobs", "Jobs by state (as `hq job list` shows it)", labels=("state",)
        )
        for job_state in JOB_ORDER:
            jobs.add_metric((job_state.lower(),), job_counts[job_state])
        yield jobs
        finished = CounterMetricFamily(
            "hqpy_tasks_finished",
            "Tasks that reached an end state, by outcome",
            labels=("outcome",),
        )
        for ended in ENDED_TASK_STATES:
            finished.add_metric((ended.label,), task_counts[ended] + metrics.forgotten[ended])
        yield finished
        yield metrics.task_duration.family(
            "hqpy_task_duration_seconds",
            "Run time of tasks that finished or failed on a worker (start to end)",
        )

        worker_counts = dict.fromkeys(WORKER_STATES, 0)
        cpus = 0
        cpus_assigned = 0
        for worker in server.worker_summaries():
            label = worker_state_label(worker)
            worker_counts[label] = worker_counts.get(label, 0) + 1
            if worker.state is WorkerState.RUNNING:
                cpus += worker.cpus
                cpus_assigned += worker.cpus_assigned
        workers = GaugeMetricFamily(
            "hqpy_workers",
            "Workers by state; ended ones by why they ended",
            labels=("state",),
        )
        for name, n in worker_counts.items():
            workers.add_metric((name,), n)
        yield workers
        yield GaugeMetricFamily(
            "hqpy_worker_cpus",
            "CPUs of the connected workers",
            value=cpus / FRACTIONS,
        )
        yield GaugeMetricFamily(
            "hqpy_worker_cpus_assigned",
            "CPUs of the connected workers that are assigned to tasks",
            value=cpus_assigned / FRACTIONS,
        )
        yield from self._autoalloc()

    def _autoalloc(self) -> Iterable[Metric]:
        allocator = self.metrics.allocator
        queues = [] if allocator is None else allocator.queue_views()
        queue_counts = dict.fromkeys(QueueState, 0)
        self_paused = GaugeMetricFamily(
            "hqpy_alloc_queue_self_paused",
            "1 while a queue is paused because its submissions or allocations kept failing",
            labels=("queue", "manager"),
        )
        allocations = GaugeMetricFamily(
            "hqpy_allocations",
            "Allocations of live queues, by state",
            labels=("queue", "manager", "state"),
        )
        for queue in queues:
            queue_counts[QueueState(queue.state)] += 1
            labels = (str(queue.id), queue.params.manager)
            self_paused.add_metric(labels, 1 if queue.self_paused else 0)
            counts = dict.fromkeys(AllocationState, 0)
            assert allocator is not None
            for alloc in allocator.allocation_views(queue.id):
                counts[AllocationState(alloc.state)] += 1
            for alloc_state, n in counts.items():
                allocations.add_metric((*labels, alloc_state.lower()), n)
        alloc_queues = GaugeMetricFamily(
            "hqpy_alloc_queues", "Allocation queues by state", labels=("state",)
        )
        for queue_state, n in queue_counts.items():
            alloc_queues.add_metric((queue_state.lower(),), n)
        yield alloc_queues
        yield self_paused
        yield allocations
