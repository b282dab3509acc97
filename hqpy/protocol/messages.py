"""Every message that crosses a connection, as frozen attrs classes.

Each direction has one tagged union (`op` tag, kebab-case names from `OPS`), so renaming a class
never changes the wire format. The hot path (task assignment and task updates) carries rows of
plain values instead of nested objects: one frame holds many tasks and costs little to encode.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import attrs
else:  # the same classes, created faster (every `hq` call builds all of them)
    from hqpy.common import lightattrs as attrs

from hqpy.common.placeholders import fill_placeholders
from hqpy.common.resources import ResourceDescriptorItem, ResourceRequest
from hqpy.common.states import TaskState, WorkerFilter, WorkerState

# ---------------------------------------------------------------------------------------------
# Handshake (sent before authentication; kept tiny).


@attrs.frozen
class ServerHello:
    protocol: str
    version: str
    nonce: str


@attrs.frozen
class PeerHello:
    protocol: str
    version: str
    role: str
    """`client` or `worker`: which secret the proof is made with."""
    nonce: str
    proof: str


@attrs.frozen
class Welcome:
    proof: str


@attrs.frozen
class Refused:
    reason: str


# ---------------------------------------------------------------------------------------------
# Shared data.


@attrs.frozen
class ManagerInfo:
    """The batch system allocation a worker runs in."""

    manager: str
    """`SLURM`, `PBS` or `LOCAL` (upper case, as HyperQueue shows it)."""
    allocation_id: str
    time_limit: float | None = None


@attrs.frozen
class WorkerConfiguration:
    hostname: str
    work_dir: str
    listen_address: str
    heartbeat_interval: float
    idle_timeout: float | None
    time_limit: float | None
    """Seconds of life the worker had when it registered; None for unlimited."""
    resources: tuple[ResourceDescriptorItem, ...]
    group: str
    on_server_lost: str
    pid: int
    manager: ManagerInfo | None = None
    overview_interval: float | None = None
    min_utilization: float = 0.0
    filter_tags: tuple[str, ...] = ()
    """`--filter-tag` (and a split part's tags): the worker runs only tasks that carry them."""
    server_lost_grace: float = 0.0
    """`--server-lost-grace`: how long the worker keeps its tasks and reconnects after losing
    the server (the restored server holds those tasks for it that long)."""


@attrs.frozen
class TaskBody:
    """What all tasks of one submit share; sent to a worker once, then referred to by `group_id`."""

    group_id: int
    job_id: int
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    stdout: str | None
    """A path template with placeholders, or None for `--stdout none`."""
    stderr: str | None
    submit_dir: str
    request: ResourceRequest
    priority: int = 0
    time_limit: float | None = None
    task_dir: bool = False
    stdin: bytes | None = None
    server_uid: str = ""
    tags: tuple[str, ...] = ()
    pool: str | None = None

    def resolve_paths(self, task_id: int, instance_id: int) -> tuple[str, str | None, str | None]:
        """One task's cwd, stdout and stderr with their `%{...}` placeholders filled."""
        values = {
            "JOB_ID": str(self.job_id),
            "TASK_ID": str(task_id),
            "INSTANCE_ID": str(instance_id),
            "SUBMIT_DIR": self.submit_dir,
            "SERVER_UID": self.server_uid,
        }
        cwd = fill_placeholders(self.cwd, values)
        values["CWD"] = cwd
        out = None if self.stdout is None else fill_placeholders(self.stdout, values)
        err = None if self.stderr is None else fill_placeholders(self.stderr, values)
        return cwd, out, err


@attrs.frozen
class QueueParams:
    """The recipe of an allocation queue, as `hq alloc add` gives it."""

    manager: str
    """Backend name: `slurm`, `pbs` or `local`."""
    time_limit: float
    backlog: int = 1
    workers_per_alloc: int = 1
    max_worker_count: int | None = None
    name: str | None = None
    idle_timeout: float = 300.0
    worker_time_limit: float | None = None
    worker_start_cmd: str | None = None
    worker_stop_cmd: str | None = None
    worker_wrap_cmd: str | None = None
    on_server_lost: str = "finish-running"
    cpus: str | None = None
    """As typed after `--cpus` (the worker gets it verbatim)."""
    resources: tuple[str, ...] = ()
    """As typed after each `--resource`."""
    additional_args: tuple[str, ...] = ()
    group: str | None = None
    coupling: str | None = None
    no_hyper_threading: bool = False
    detect_resources: str | None = None
    overview_interval: float | None = None
    min_utilization: float = 0.0
    env_script: str | None = None
    """`--env-script`: an absolute path, sourced first in every allocation script."""
    worker_env: tuple[str, ...] = ()
    """`--worker-env KEY=VALUE`, as typed: exported before the worker starts."""
    python: str | None = None
    """`--python`: the interpreter that runs the worker (None: the server's own)."""
    worker_dir: str | None = None
    """`--worker-dir`: an absolute path, the worker's working directory."""
    script_template: str | None = None
    """`--script-template`: the template's text (read by `hq alloc add`), see
    `autoalloc.templates`."""
    template_params: tuple[str, ...] = ()
    """`-x key=value`, as typed: the template's own placeholders."""
    splits: tuple[str, ...] = ()
    """`--split KIND:COUNT[:TAG,...]`, as typed (see `autoalloc.partitions`)."""
    filter_tags: tuple[str, ...] = ()
    """`--filter-tag`: the queue's workers run only tasks that carry all of them."""
    preallocate: int = 0
    """`--preallocate N`: a pool of N allocations submitted at once (0: an ordinary queue)."""
    persist: bool = False
    """`--persist`: the pool is kept up from creation, with or without work."""
    memory: int | None = None
    """`--memory` (bytes): requested from the batch system per node, and the workers' `mem`."""
    parallel_environment: str | None = None
    """`--pe NAME` (Grid Engine): the parallel environment of allocations of several workers."""


# ---------------------------------------------------------------------------------------------
# Worker <-> server.


@attrs.frozen
class RegisterWorker:
    configuration: WorkerConfiguration
    previous_worker_id: int | None = None
    """Set when the worker registers again after losing the server (`--server-lost-grace`)."""
    tasks: list[list[int]] = attrs.Factory(list)
    """Rows `[job_id, task_id, instance_id]` the worker still runs, or that ended while it was
    away (their ends follow as `TaskUpdates`): the server adopts them or tells it to kill them."""


@attrs.frozen
class WorkerRegistered:
    worker_id: int
    server_uid: str
    idle_timeout: float | None


Row = list[Any]
"""A row of plain JSON values of mixed types (ints, floats, a string or None): `Any` because
typing cannot say which position holds which; plain arrays keep the hot path small, and the
codec checks their shape only (its reader checks each row as it applies it)."""

ComputeRow = Row
"""`[job_id, task_id, instance_id, group_id, entry]`."""


@attrs.frozen
class ComputeTasks:
    """Tasks for a worker to run: rows `[job_id, task_id, instance_id, group_id, entry]`."""

    bodies: list[TaskBody]
    tasks: list[ComputeRow]


@attrs.frozen
class CancelTasks:
    """Rows `[job_id, task_id, instance_id]` the worker should kill or drop."""

    tasks: list[list[int]]


SERVER_STOPPED = "server-stopped"
"""`StopWorker.reason` of an orderly server stop: the worker exits as on losing the server."""


@attrs.frozen
class StopWorker:
    reason: str
    """`stopped`, `idle-timeout`: recorded by the server as the worker's final state."""


TaskUpdateRow = Row
"""`[job_id, task_id, instance_id, status, started_at, ended_at, error]`: the server checks each
row as it applies it and drops a session whose rows are malformed."""


@attrs.frozen
class TaskUpdates:
    """Rows `[job_id, task_id, instance_id, status, started_at, ended_at, error]`.

    `status` is one of `TASK_RUNNING`, `TASK_FINISHED`, `TASK_FAILED`, `TASK_CANCELED`; a task
    that starts and ends within one batch is reported once, finished, with its start time.
    """

    updates: list[TaskUpdateRow]


TASK_RUNNING = TaskState.RUNNING
TASK_FINISHED = TaskState.FINISHED
TASK_FAILED = TaskState.FAILED
TASK_CANCELED = TaskState.CANCELED
"""Task statuses in updates are `TaskState` members on the wire (their ints)."""


@attrs.frozen
class Heartbeat:
    pass


@attrs.frozen
class WorkerStopping:
    """The worker is ending on its own (`time-limit`, `idle-timeout`); its tasks are handed back."""

    reason: str


@attrs.frozen
class AllocationEnded:
    """Sent instead of `RegisterWorker` by an allocation script's exit trap
    (`hq worker report-end`): the allocation ended, with this exit code and stderr tail."""

    allocation_id: str
    exit_code: int
    stderr_tail: str


ToWorker = WorkerRegistered | ComputeTasks | CancelTasks | StopWorker
FromWorker = RegisterWorker | TaskUpdates | Heartbeat | WorkerStopping | AllocationEnded

# ---------------------------------------------------------------------------------------------
# Views: what the server tells clients about its state.


@attrs.frozen
class TaskStats:
    waiting: int = 0
    running: int = 0
    finished: int = 0
    failed: int = 0
    canceled: int = 0
    aborted: int = 0


@attrs.frozen
class JobView:
    id: int
    name: str
    task_count: int
    task_stats: TaskStats
    is_open: bool
    cancel_reason: str | None = None


@attrs.frozen
class SubmitView:
    ids: str
    """The task ids of this submit as an id set (`1-10,20`)."""
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    stdout: str | None
    stderr: str | None
    request: ResourceRequest
    priority: int
    time_limit: float | None
    crash_limit: int
    task_dir: bool
    has_entries: bool
    tags: tuple[str, ...] = ()
    pool: str | None = None


@attrs.frozen
class TaskView:
    id: int
    state: TaskState
    """On the wire its lower-case label (`waiting`, `running`, ...), not the int of updates."""
    instance_id: int = 0
    workers: tuple[str, ...] = ()
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    cwd: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    crash_count: int = 0
    group: int = 0
    """Index of the submit the task came from, into `JobDetailView.submits`."""
    nodes: tuple[int, ...] = ()
    """A multi-node task: the ids of its workers, root first (`workers` has their hosts)."""
    instances: tuple[tuple[int, str], ...] = ()
    """Earlier instances that ended without a result: (instance id, why it ended)."""


@attrs.frozen
class JobDetailView:
    info: JobView
    submits: tuple[SubmitView, ...]
    submitted_at: float
    submit_dir: str
    started_at: float | None
    finished_at: float | None
    max_fails: int | None
    workers: tuple[str, ...]
    """Hostnames of the workers that ran its tasks, in order of first use."""
    failed_tasks: tuple[TaskView, ...]
    """Up to 5 failed tasks, by id, for the table under `job info`."""
    tasks: tuple[TaskView, ...] | None = None


@attrs.frozen
class WorkerView:
    id: int
    state: WorkerState
    """On the wire its value: `RUNNING`, `CONNECTION LOST`, `HEARTBEAT LOST`, ..."""
    configuration: WorkerConfiguration
    started_at: float
    ended_at: float | None
    assigned_tasks: int
    running_tasks: int
    last_task_started: float | None


@attrs.frozen
class ServerInfoView:
    server_uid: str
    client_host: str
    client_port: int
    worker_host: str
    worker_port: int
    version: str
    pid: int
    start_date: float
    server_dir: str
    journal_path: str | None = None


@attrs.frozen
class QueueView:
    id: int
    params: QueueParams
    state: str
    """`ACTIVE` or `PAUSED`."""
    known_resources: tuple[ResourceDescriptorItem, ...] | None
    pause_reason: str | None = None
    self_paused: bool = False
    """Paused by itself after repeated failures (not by `hq alloc pause`)."""
    removed: bool = False
    event_count: int = 0
    """Events ever recorded for the queue (the oldest may have been dropped)."""
    local_cpus: str | None = None
    """`--cpus` the workers of a local queue without `--cpus` are started with (their share of
    the server's machine): their shape is known before one connects."""
    prealloc_started: bool = False
    """A pool started by `hq alloc preallocate` (or persistent): it keeps its N up."""
    prealloc_stopped: bool = False
    """A pool ended by `hq alloc stop --preallocated`: it submits for work only."""


@attrs.frozen
class AllocationView:
    id: str
    state: str
    """`QUEUED`, `RUNNING`, `FINISHED` or `FAILED`."""
    workdir: str
    worker_count: int
    queued_at: float
    started_at: float | None
    ended_at: float | None
    connected_workers: int = 0
    pending_reason: str | None = None
    """Why a QUEUED allocation waits, in the batch system's words (Slurm `Priority`)."""


@attrs.frozen
class AllocEventView:
    time: float
    event: str
    queue_id: int
    allocation_id: str | None
    message: str


def describe_ids(noun: str, ids: str) -> str:
    """`Job 5` or `Jobs 3,5-9` (from an id-set string): the subject of a one-line message about
    the ids a reply lists as missing."""
    return f"{noun} {ids}" if ids.isdigit() else f"{noun}s {ids}"


@attrs.frozen
class LogLine:
    level: str
    """`INFO`, `WARN` or `ERROR`: how the client logs `text`."""
    text: str


# ---------------------------------------------------------------------------------------------
# Client requests.


@attrs.frozen
class SubmitDesc:
    """One `hq submit`: a task array sharing one body."""

    ids: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    stdout: str | None
    stderr: str | None
    submit_dir: str
    request: ResourceRequest
    entries: list[str] | None = None
    priority: int = 0
    time_limit: float | None = None
    crash_limit: int = 5
    """0 means unlimited, -1 never restart."""
    task_dir: bool = False
    stdin: bytes | None = None
    auto_ids: bool = False
    """The ids were not given (`--array`): in an open job the tasks take the ids after the
    job's highest one (HyperQueue); `ids` then counts from 0."""
    tags: tuple[str, ...] = ()
    """`--tag`: workers with filter tags run the tasks only if they carry all of them."""
    pool: str | None = None
    """`--pool`: a concurrency pool (`hq pool set`) that caps how many of them run at once."""
    task_tags: list[list[str]] | None = None
    """Tags of each entry (`"hq_tags"` of a `--from-json` item), added to `tags`."""


@attrs.frozen
class ServerInfoRequest:
    pass


@attrs.frozen
class StopServerRequest:
    pass


@attrs.frozen
class SubmitRequest:
    submit: SubmitDesc
    name: str | None = None
    max_fails: int | None = None
    job_id: int | None = None
    """Submit into this open job instead of creating a new one."""


@attrs.frozen
class OpenJobRequest:
    name: str | None = None
    max_fails: int | None = None


@attrs.frozen
class CloseJobsRequest:
    selector: str


@attrs.frozen
class CancelJobsRequest:
    selector: str
    reason: str | None = None


@attrs.frozen
class ForgetJobsRequest:
    selector: str
    states: tuple[str, ...] = ()


@attrs.frozen
class ListJobsRequest:
    states: tuple[str, ...] | None = None
    """None: all jobs."""


@attrs.frozen
class JobDetailsRequest:
    """With `include_tasks`, paged as `TaskListRequest`: at most `TASK_PAGE` tasks a reply."""

    selector: str
    include_tasks: bool = False
    after: tuple[int, int] | None = None
    """Resume after this (job id, task id): the `next` of the previous page."""


@attrs.frozen
class WaitJobsRequest:
    selector: str
    without_close: bool = False


@attrs.frozen
class TaskListRequest:
    """One page of the tasks of some jobs. A reply holds at most `TASK_PAGE` tasks; the client
    asks again with `after` set to the reply's `next` until `next` is None."""

    selector: str
    task_ids: str | None = None
    states: tuple[str, ...] = ()
    after: tuple[int, int] | None = None
    """Resume after this (job id, task id): the `next` of the previous page."""


@attrs.frozen
class TaskInfoRequest:
    """One page of some tasks of one job (paged as `TaskListRequest`)."""

    job_id: int
    task_ids: str
    after: int | None = None
    """Resume after this task id: the `next` of the previous page."""


@attrs.frozen
class TaskExplainRequest:
    """`hq task explain`: why a task can or cannot run, worker by worker and queue by queue."""

    job_id: int
    task_id: int


TASK_PAGE = 20_000
"""Tasks per reply of a paged request: a page stays a few MB, far under the frame limit, and
the server answers other requests and workers between two pages."""


@attrs.frozen
class TaskIdsRequest:
    selector: str
    states: tuple[str, ...] = ()


@attrs.frozen
class ListWorkersRequest:
    filter: WorkerFilter = WorkerFilter.RUNNING


@attrs.frozen
class WorkerInfoRequest:
    selector: str


@attrs.frozen
class StopWorkersRequest:
    selector: str


@attrs.frozen
class WaitWorkersRequest:
    count: int


@attrs.frozen
class AllocAddRequest:
    params: QueueParams
    dry_run: bool = True


@attrs.frozen
class AllocDryRunRequest:
    params: QueueParams
    print_script: bool = False
    """Only render the script (kept in the dry run's dir, answered with `AllocLogResponse`)."""


@attrs.frozen
class AllocListRequest:
    pass


@attrs.frozen
class AllocInfoRequest:
    queue_id: int


@attrs.frozen
class AllocEventsRequest:
    queue_id: int
    after: int = 0
    """Return only events after this many; with `wait`, block until there is one."""
    wait: bool = False


class QueueAction(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    REMOVE = "remove"


@attrs.frozen
class AllocQueueRequest:
    """Pause, resume or remove a queue."""

    action: QueueAction
    queue_id: int
    force: bool = False


@attrs.frozen
class AllocLogRequest:
    allocation_id: str


@attrs.frozen
class AllocDrainRequest:
    """`hq alloc drain <allocation> [--grace DURATION]`."""

    allocation_id: str
    grace: float = 0.0


@attrs.frozen
class AllocPreallocateRequest:
    """`hq alloc preallocate [QUEUE...]`: start the pools' allocations now (none: every pool)."""

    queues: tuple[str, ...] = ()


@attrs.frozen
class AllocStopPreallocatedRequest:
    """`hq alloc stop --preallocated [QUEUE...] [--now]`."""

    queues: tuple[str, ...] = ()
    now: bool = False


@attrs.frozen
class AllocLoadRequest:
    """`hq alloc load FILE`: the queues of a checked configuration, all added or none."""

    queues: tuple[QueueParams, ...]


@attrs.frozen
class AllocQueuesResponse:
    """The queues a request touched, by id."""

    queue_ids: tuple[int, ...]


@attrs.frozen
class PoolSetRequest:
    """Create a concurrency pool or resize it (`hq pool set NAME SIZE`)."""

    name: str
    size: int


@attrs.frozen
class PoolRemoveRequest:
    name: str


@attrs.frozen
class PoolListRequest:
    pass


ClientRequest = (
    ServerInfoRequest
    | StopServerRequest
    | SubmitRequest
    | OpenJobRequest
    | CloseJobsRequest
    | CancelJobsRequest
    | ForgetJobsRequest
    | ListJobsRequest
    | JobDetailsRequest
    | WaitJobsRequest
    | TaskListRequest
    | TaskInfoRequest
    | TaskIdsRequest
    | ListWorkersRequest
    | WorkerInfoRequest
    | StopWorkersRequest
    | WaitWorkersRequest
    | AllocAddRequest
    | AllocDryRunRequest
    | AllocListRequest
    | AllocInfoRequest
    | AllocEventsRequest
    | AllocQueueRequest
    | AllocLogRequest
    | AllocDrainRequest
    | AllocPreallocateRequest
    | AllocStopPreallocatedRequest
    | AllocLoadRequest
    | PoolSetRequest
    | PoolRemoveRequest
    | PoolListRequest
    | TaskExplainRequest
)

# ---------------------------------------------------------------------------------------------
# Responses.


@attrs.frozen
class ErrorResponse:
    message: str


@attrs.frozen
class OkResponse:
    pass


@attrs.frozen
class SubmitResponse:
    job_id: int
    warnings: list[str] = attrs.Factory(list)
    """Fit check: tasks that no connected worker and no queue could ever run, and why."""


@attrs.frozen
class LogLinesResponse:
    lines: list[LogLine]


@attrs.frozen
class JobListResponse:
    jobs: list[JobView]
    total: int
    missing: str = ""
    """Ids a selector named that are no jobs, as an id set (`job wait`)."""


@attrs.frozen
class JobDetailsResponse:
    jobs: list[JobDetailView]
    missing: str
    """Ids the selector named that are no jobs, as an id set (`100-50000000`)."""
    next: tuple[int, int] | None = None
    """More tasks follow: ask again with `after` set to this."""


@attrs.frozen
class TaskListResponse:
    jobs: list[tuple[int, list[TaskView]]]
    missing: str
    """Ids the selector named that are no jobs, as an id set; only in the first page."""
    next: tuple[int, int] | None = None
    """More tasks follow: ask again with `after` set to this."""


@attrs.frozen
class TaskInfoResponse:
    job: JobDetailView | None
    tasks: list[TaskView]
    missing: str
    """Task ids asked for that the job does not have, as an id set; only in the first page."""
    next: int | None = None
    """More tasks follow: ask again with `after` set to this."""


@attrs.frozen
class TaskIdsResponse:
    jobs: list[tuple[int, str]]


@attrs.frozen
class WorkerListResponse:
    workers: list[WorkerView]


@attrs.frozen
class ServerInfoResponse:
    info: ServerInfoView


@attrs.frozen
class QueueCreatedResponse:
    queue_id: int


@attrs.frozen
class QueueListResponse:
    queues: list[QueueView]


@attrs.frozen
class AllocationListResponse:
    queue: QueueView
    allocations: list[AllocationView]


@attrs.frozen
class AllocEventsResponse:
    events: list[AllocEventView]
    total: int
    """Events recorded so far; ask for those `after` it next time."""
    queue_removed: bool


@attrs.frozen
class AllocLogResponse:
    workdir: str


@attrs.frozen
class PoolView:
    """A concurrency pool: at most `size` of its tasks run at once across all workers."""

    name: str
    size: int
    running: int
    waiting: int


@attrs.frozen
class PoolListResponse:
    pools: list[PoolView]


@attrs.frozen
class ExplainVariant:
    """One requirement of a task checked against one worker (or a queue's worker)."""

    kind: str
    """`resource`, `time`, `nodes` or `tags`."""
    name: str
    provides: str
    request: str
    ok: bool


@attrs.frozen
class ExplainWorker:
    worker: str
    """A worker id (`1`) or a queue's worker (`queue 2`)."""
    runnable: bool
    variants: list[ExplainVariant]


@attrs.frozen
class TaskExplainResponse:
    job_id: int
    task_id: int
    found: bool
    state: str = ""
    """Lower case, as in `TaskView`."""
    workers: list[ExplainWorker] = attrs.Factory(list)
    queues: list[ExplainWorker] = attrs.Factory(list)


ClientResponse = (
    ErrorResponse
    | OkResponse
    | SubmitResponse
    | LogLinesResponse
    | JobListResponse
    | JobDetailsResponse
    | TaskListResponse
    | TaskInfoResponse
    | TaskIdsResponse
    | WorkerListResponse
    | ServerInfoResponse
    | QueueCreatedResponse
    | QueueListResponse
    | AllocationListResponse
    | AllocEventsResponse
    | AllocLogResponse
    | AllocQueuesResponse
    | PoolListResponse
    | TaskExplainResponse
)
