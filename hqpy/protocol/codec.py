"""One cattrs converter for the whole wire protocol.

Unions are tagged with `op` and an explicit kebab-case name per class (`OPS`), so the wire format
does not depend on Python class names. Encoding is JSON (compact separators, UTF-8).

The tag is handled here rather than with `cattrs.strategies.configure_tagged_union`, which builds
the hooks of every member of a union up front: a client that sends one request would pay for
generating code for all of them. Here each class's hooks are generated on its first use.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing
from typing import Generic, TypeVar

import cattrs
from cattrs.dispatch import StructureHook, UnstructureHook
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from hqpy.common.states import TaskState
from hqpy.protocol import messages as m

T = TypeVar("T")

OPS: dict[type, str] = {
    m.ServerHello: "server-hello",
    m.PeerHello: "peer-hello",
    m.Welcome: "welcome",
    m.Refused: "refused",
    m.RegisterWorker: "register-worker",
    m.WorkerRegistered: "worker-registered",
    m.ComputeTasks: "compute-tasks",
    m.CancelTasks: "cancel-tasks",
    m.StopWorker: "stop-worker",
    m.TaskUpdates: "task-updates",
    m.Heartbeat: "heartbeat",
    m.WorkerStopping: "worker-stopping",
    m.AllocationEnded: "allocation-ended",
    m.ServerInfoRequest: "server-info",
    m.StopServerRequest: "stop-server",
    m.SubmitRequest: "submit",
    m.OpenJobRequest: "job-open",
    m.CloseJobsRequest: "job-close",
    m.CancelJobsRequest: "job-cancel",
    m.ForgetJobsRequest: "job-forget",
    m.ListJobsRequest: "job-list",
    m.JobDetailsRequest: "job-details",
    m.WaitJobsRequest: "job-wait",
    m.TaskListRequest: "task-list",
    m.TaskInfoRequest: "task-info",
    m.TaskIdsRequest: "task-ids",
    m.ListWorkersRequest: "worker-list",
    m.WorkerInfoRequest: "worker-info",
    m.StopWorkersRequest: "worker-stop",
    m.WaitWorkersRequest: "worker-wait",
    m.AllocAddRequest: "alloc-add",
    m.AllocDryRunRequest: "alloc-dry-run",
    m.AllocListRequest: "alloc-list",
    m.AllocInfoRequest: "alloc-info",
    m.AllocEventsRequest: "alloc-events",
    m.AllocQueueRequest: "alloc-queue",
    m.AllocLogRequest: "alloc-log",
    m.PoolSetRequest: "pool-set",
    m.PoolRemoveRequest: "pool-remove",
    m.PoolListRequest: "pool-list",
    m.TaskExplainRequest: "task-explain",
    m.QueueCreatedResponse: "queue-created",
    m.QueueListResponse: "queues",
    m.AllocationListResponse: "allocations",
    m.AllocEventsResponse: "alloc-events-result",
    m.AllocLogResponse: "alloc-log-result",
    m.PoolListResponse: "pool-list-result",
    m.TaskExplainResponse: "task-explain-result",
    m.ErrorResponse: "error",
    m.OkResponse: "ok",
    m.SubmitResponse: "submitted",
    m.LogLinesResponse: "log-lines",
    m.JobListResponse: "jobs",
    m.JobDetailsResponse: "job-details-result",
    m.TaskListResponse: "tasks",
    m.TaskInfoResponse: "task-info-result",
    m.TaskIdsResponse: "task-ids-result",
    m.WorkerListResponse: "workers",
    m.ServerInfoResponse: "server-info-result",
}

Handshake = m.ServerHello | m.PeerHello | m.Welcome | m.Refused


class DecodeError(Exception):
    """A frame that is not a valid message of the expected union."""


converter = make_converter(forbid_extra_keys=True)


def _rows(value: object, _: object) -> list[m.Row]:
    """Rows of plain values (the hot path) are checked for shape only, not element by element."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise ValueError("expected a list of rows")
    return value


def _exact(value: object, target: type) -> object:
    """No silent conversions (`"12"` into 12, `null` into `"None"`): wrong types are errors."""
    if target is float:
        ok = type(value) in (int, float)
    elif issubclass(target, str):
        ok = isinstance(value, str)
    else:
        ok = type(value) is target
    if not ok:
        raise TypeError(f"expected {target.__name__}, got {type(value).__name__}")
    return target(value)


for _kind in (int, float, str, bool):
    converter.register_structure_hook(_kind, _exact)


def _bytes_in(value: object, _: object) -> bytes:
    """Bytes travel as base64 text (a task's `--stdin` may be any binary data)."""
    if not isinstance(value, str):
        raise TypeError(f"expected base64 text, got {type(value).__name__}")
    return base64.b64decode(value, validate=True)


converter.register_structure_hook(bytes, _bytes_in)
converter.register_unstructure_hook(bytes, lambda data: base64.b64encode(data).decode("ascii"))


def _is_rows(t: object) -> bool:
    return bool(t == list[m.Row])


converter.register_structure_hook_func(_is_rows, _rows)
converter.register_unstructure_hook_func(_is_rows, lambda rows: rows)


_TASK_STATE_LABELS = {state.label: state for state in TaskState}


def _task_state_in(value: object, _: object) -> TaskState:
    """A view's task state travels as its lower-case label (`failed`), as `hq` prints it."""
    state = _TASK_STATE_LABELS.get(value) if isinstance(value, str) else None
    if state is None:
        raise ValueError(f"expected a task state label, got {value!r}")
    return state


def _task_view_hook(cls: type) -> StructureHook:
    """`TaskView.state` only: a `TaskState` elsewhere is its int (task updates)."""
    return make_dict_structure_fn(cls, converter, state=override(struct_hook=_task_state_in))


def _task_view_unhook(cls: type) -> UnstructureHook:
    return make_dict_unstructure_fn(
        cls, converter, state=override(unstruct_hook=lambda state: state.label)
    )


converter.register_structure_hook_factory(lambda t: t is m.TaskView, _task_view_hook)
converter.register_unstructure_hook_factory(lambda t: t is m.TaskView, _task_view_unhook)


class Wire(Generic[T]):
    """A union of messages as a value that keeps its static type, so that `decode(payload,
    CLIENT_REQUEST)` is typed `ClientRequest`: a union alias such as `m.ClientRequest` is a
    `types.UnionType` to mypy, which no TypeVar binds to its members. Each constant below
    states its union twice (annotation and value); `test_codec` checks that they agree."""

    __slots__ = ("by_op", "union")

    def __init__(self, union: object) -> None:
        self.union = union
        self.by_op: dict[str, type] = {OPS[cls]: cls for cls in typing.get_args(union)}

    def __repr__(self) -> str:
        return f"Wire({self.union})"


HANDSHAKE: Wire[Handshake] = Wire(Handshake)
CLIENT_REQUEST: Wire[m.ClientRequest] = Wire(m.ClientRequest)
CLIENT_RESPONSE: Wire[m.ClientResponse] = Wire(m.ClientResponse)
TO_WORKER: Wire[m.ToWorker] = Wire(m.ToWorker)
FROM_WORKER: Wire[m.FromWorker] = Wire(m.FromWorker)

_wires: dict[object, Wire[object]] = {}


def _wire(union: Wire[T] | object) -> Wire[object]:
    """A raw union alias (the older calling form, still accepted at run time) as its `Wire`."""
    if isinstance(union, Wire):
        return typing.cast("Wire[object]", union)
    found = _wires.get(union)
    if found is None:
        found = _wires[union] = Wire(union)
    return found


def members(union: Wire[T] | object) -> dict[str, type]:
    """The classes of a union by their `op` tag."""
    return _wire(union).by_op


def encode(message: T, union: Wire[T]) -> bytes:
    """Encode `message`, a member of `union`, with its `op` tag."""
    cls = type(message)
    wire = _wire(union)
    if cls not in wire.by_op.values():
        raise TypeError(f"{cls.__name__} is not a member of {wire.union}")
    data = converter.unstructure(message, unstructure_as=cls)
    data["op"] = OPS[cls]
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Text with lone surrogates (a peer sent `"\udcff"`): JSON escapes carry it unchanged.
        return json.dumps(data, separators=(",", ":")).encode()


def decode(payload: bytes, union: Wire[T]) -> T:
    """Decode a frame into a member of `union`, raising `DecodeError` for anything else."""
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise DecodeError("malformed message: expected a JSON object")
        op = data.pop("op", None)
        cls = _wire(union).by_op.get(op) if isinstance(op, str) else None
        if cls is None:
            raise DecodeError(f"malformed message: unknown op {op!r}")
        message: T = converter.structure(data, cls)
        return message
    except (ValueError, TypeError, KeyError, binascii.Error, cattrs.BaseValidationError) as e:
        raise DecodeError(f"malformed message: {_short(e)}") from None
    except RecursionError:
        raise DecodeError("malformed message: nested too deeply") from None
    except MemoryError:
        raise DecodeError("malformed message: too large to decode") from None


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
