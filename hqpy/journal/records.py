"""What the journal holds, one attrs class per record kind, encoded with the protocol's cattrs
converter (JSON, tagged with `op`).

Arrays stay compact: a submit is one record however many tasks it has, and task completions are
written per flush as id ranges per job, not one record per task.
"""

from __future__ import annotations

import json

import attrs
import cattrs

from hqpy.common.jsontypes import JsonObject
from hqpy.protocol import messages as m
from hqpy.protocol.codec import converter


@attrs.frozen
class ServerStarted:
    """Each server run that writes to the journal starts with this."""

    at: float
    version: str


@attrs.frozen
class JobOpened:
    job_id: int
    name: str | None
    max_fails: int | None
    at: float


@attrs.frozen
class JobSubmitted:
    """A submit that was accepted: a new job (or new tasks of an open job) with its tasks."""

    job_id: int
    group_id: int
    at: float
    request: m.SubmitRequest


@attrs.frozen
class JobsClosed:
    """`hq job close`, with the ids its selector named then; replayed as such (the journal is
    one ordered stream, so replay meets the same state)."""

    selector: str


@attrs.frozen
class JobsCanceled:
    selector: str
    reason: str | None


@attrs.frozen
class JobsForgotten:
    selector: str
    states: tuple[str, ...]


@attrs.frozen
class TasksUpdated:
    """What tasks did during one flush period.

    `started`: rows `[job, instance, first, last]` of tasks that started (a restored task that
    had started and not ended gets a higher instance id). `finished`: rows `[job, first, last]`
    (inclusive id ranges). `failed`: rows `[job, task, error]`. `crashed`: rows
    `[job, task, crash_count, instance]` of tasks handed back by a lost worker (the next
    instance id). `instances` (absent in journals of older hqpy: none): rows
    `[job, task, instance, why]` of task instances that ended without the task ending (a lost,
    drained or stopped worker), what `hq task info` shows as earlier instances."""

    started: list[m.Row] = attrs.Factory(list)
    finished: list[m.Row] = attrs.Factory(list)
    failed: list[m.Row] = attrs.Factory(list)
    crashed: list[m.Row] = attrs.Factory(list)
    instances: list[m.Row] = attrs.Factory(list)


@attrs.frozen
class WorkerJoined:
    """A worker registered: a restored server keeps worker ids unique and holds the tasks of
    workers that may still come back (for their `grace`) instead of re-running them at once."""

    worker_id: int
    grace: float


@attrs.frozen
class WorkerLeft:
    worker_id: int


@attrs.frozen
class QueueAdded:
    """`hq alloc add`, with the id it got."""

    queue_id: int
    params: m.QueueParams
    at: float


@attrs.frozen
class AllocationPlanned:
    """Written (durable) before an allocation is submitted: after a crash between the two,
    its work dir (and its name in the batch system) say what became of it."""

    queue_id: int
    seq: int
    workers: int
    workdir: str


@attrs.frozen
class AllocEventLogged:
    """One entry of a queue's event log; replayed, it also moves the queue's and its
    allocations' states (queued, started, ended, paused, removed)."""

    time: float
    kind: str
    queue_id: int
    allocation_id: str | None
    message: str


@attrs.frozen
class AllocationDraining:
    """`hq alloc drain` (journals of older hqpy have none): a restored server goes on draining
    the allocation, with what is left of the grace (from `at`)."""

    queue_id: int
    allocation_id: str
    grace: float
    at: float


@attrs.frozen
class IdsUsed:
    """Ids handed out so far (a compacted journal keeps counting after jobs it dropped)."""

    next_job_id: int
    next_group_id: int


@attrs.frozen
class PoolChanged:
    """`hq pool set NAME SIZE`, or `hq pool remove NAME` (size 0)."""

    name: str
    size: int


Record = (
    ServerStarted
    | JobOpened
    | JobSubmitted
    | JobsClosed
    | JobsCanceled
    | JobsForgotten
    | TasksUpdated
    | IdsUsed
    | QueueAdded
    | AllocationPlanned
    | AllocEventLogged
    | AllocationDraining
    | PoolChanged
    | WorkerJoined
    | WorkerLeft
)

OPS: dict[type, str] = {
    ServerStarted: "server-started",
    JobOpened: "job-opened",
    JobSubmitted: "job-submitted",
    JobsClosed: "jobs-closed",
    JobsCanceled: "jobs-canceled",
    JobsForgotten: "jobs-forgotten",
    TasksUpdated: "tasks-updated",
    IdsUsed: "ids-used",
    QueueAdded: "queue-added",
    AllocationPlanned: "allocation-planned",
    AllocEventLogged: "alloc-event",
    AllocationDraining: "allocation-draining",
    PoolChanged: "pool-changed",
    WorkerJoined: "worker-joined",
    WorkerLeft: "worker-left",
}
BY_OP = {op: cls for cls, op in OPS.items()}


class RecordError(Exception):
    """A record whose checksum is right but whose content is not a record this version knows."""


def unstructure(record: Record) -> JsonObject:
    data: JsonObject = converter.unstructure(record, unstructure_as=type(record))
    data["op"] = OPS[type(record)]
    return data


def encode(record: Record) -> bytes:
    return json.dumps(unstructure(record), separators=(",", ":")).encode()


def decode(payload: bytes) -> Record:
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise RecordError("expected a JSON object")
        op = data.pop("op", None)
        cls = BY_OP.get(op) if isinstance(op, str) else None
        if cls is None:
            raise RecordError(f"unknown record kind {op!r}")
        record: Record = converter.structure(data, cls)
        return record
    except (ValueError, TypeError, KeyError, cattrs.BaseValidationError) as e:
        raise RecordError(str(e)[:200]) from None
