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
import types
import typing
from collections.abc import Callable
from typing import Generic, TypeVar

import cattrs
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
    m.AllocDrainRequest: "alloc-drain",
    m.AllocPreallocateRequest: "alloc-preallocate",
    m.AllocStopPreallocatedRequest: "alloc-stop-preallocated",
    m.AllocLoadRequest: "alloc-load",
    m.PoolSetRequest: "pool-set",
    m.PoolRemoveRequest: "pool-remove",
    m.PoolListRequest: "pool-list",
    m.TaskExplainRequest: "task-explain",
    m.QueueCreatedResponse: "queue-created",
    m.QueueListResponse: "queues",
    m.AllocationListResponse: "allocations",
    m.AllocEventsResponse: "alloc-events-result",
    m.AllocLogResponse: "alloc-log-result",
    m.AllocQueuesResponse: "alloc-queues-result",
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


# Flat classes sent by the ten thousand (a 100,000-task `task list` is 100,000 `TaskView`s):
# their hooks are generated here as straight-line code, with the same checks as `_exact` and
# `forbid_extra_keys`, at a fraction of the per-object cost of cattrs's generic hooks.

FlatHooks = tuple[Callable[[object, object], object], Callable[[object], object]]
"""A flat class's generated (structure, unstructure) functions."""

_FLAT_CHECKS: dict[object, str] = {
    int: "{v}.__class__ is int",
    bool: "{v}.__class__ is bool",
    str: "isinstance({v}, str)",
    float: "{v}.__class__ is float or {v}.__class__ is int",
}


_FLAT_TUPLES: dict[object, tuple[str, str, str]] = {
    # type: (check of one item `x`, conversion of the list `{v}`, dump of the tuple `{v}`)
    tuple[str, ...]: ("isinstance(x, str)", "tuple({v})", "list({v})"),
    tuple[int, ...]: ("x.__class__ is int", "tuple({v})", "list({v})"),
    tuple[tuple[int, str], ...]: (
        "x.__class__ is list and len(x) == 2 and x[0].__class__ is int and isinstance(x[1], str)",
        "tuple([(x[0], x[1]) for x in {v}])",
        "[list(x) for x in {v}]",
    ),
}


def _flat_hooks(cls: type) -> FlatHooks | None:
    """(structure, unstructure) functions of an attrs class whose fields are plain values,
    `X | None` of those, or the tuples of `_FLAT_TUPLES`; None for any other class."""
    import attrs

    hints = typing.get_type_hints(cls)
    structure = [
        "def structure(d, _):",
        "    if d.__class__ is not dict:",
        "        raise TypeError(f'expected an object, got {type(d).__name__}')",
        "    if not KEYS.issuperset(d):",
        "        raise ValueError(f'extra fields: {sorted(set(d) - KEYS)}')",
        "    if len(d) != len(KEYS):",
        "        d = {**DEFAULTS, **d}",
    ]
    defaults: dict[str, object] = {}
    out = []
    for i, a in enumerate(attrs.fields(cls)):
        t, v = hints[a.name], f"v{i}"
        optional = False
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [x for x in typing.get_args(t) if x is not type(None)]
            if len(args) != 1 or len(typing.get_args(t)) != 2:
                return None
            t, optional = args[0], True
        if t in _FLAT_TUPLES:
            item, convert, dump = _FLAT_TUPLES[t]
            check = f"{v}.__class__ is list and all([{item} for x in {v}])"
            convert, dump = convert.format(v=v), dump.format(v=f"o.{a.name}")
        elif t is TaskState:  # a view's task state travels as its label (`failed`)
            check = f"{v}.__class__ is str and {v} in LABELS"
            convert, dump = f"LABELS[{v}]", f"o.{a.name}.label"
        elif t in _FLAT_CHECKS:
            check = _FLAT_CHECKS[t].format(v=v)
            convert = f"float({v})" if t is float else v
            dump = f"o.{a.name}"
        else:
            return None
        if optional:
            check = f"{v} is None or {check}"
            convert = f"None if {v} is None else {convert}"
            dump = f"None if o.{a.name} is None else {dump}" if t not in _FLAT_TUPLES else dump
        fail = f"raise TypeError(f'{a.name}: expected {t.__name__}, got {{type({v}).__name__}}')"
        if isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
            return None
        if a.default is not attrs.NOTHING:  # as it arrives: checked and converted as sent
            defaults[a.name] = list(a.default) if isinstance(a.default, tuple) else a.default
        structure.append(f"    {v} = d[{a.name!r}]")
        structure += [f"    if not ({check}):", f"        {fail}", f"    {v} = {convert}"]
        out.append(f"{a.name!r}: {dump}")
    names = [a.name for a in attrs.fields(cls)]
    structure.append(f"    return cls({', '.join(f'{n}=v{i}' for i, n in enumerate(names))})")
    source = "\n".join(structure) + "\n\ndef unstructure(o):\n    return {" + ", ".join(out) + "}\n"
    scope: dict[str, object] = {
        "cls": cls,
        "KEYS": frozenset(names),
        "DEFAULTS": defaults,
        "LABELS": _TASK_STATE_LABELS,
    }
    exec(compile(source, f"<hqpy flat hooks {cls.__name__}>", "exec"), scope)
    return typing.cast(FlatHooks, (scope["structure"], scope["unstructure"]))


def _register_flat(cls: type) -> None:
    """Generate `cls`'s flat hooks on its first use, so a client that never sees one pays
    nothing. (Hooks built before that keep calling these stubs: they forward to the real ones.)"""
    hooks: list[FlatHooks] = []

    def install() -> FlatHooks:
        if not hooks:
            found = _flat_hooks(cls)
            if found is None:
                raise TypeError(f"{cls.__name__} is not a flat class")
            hooks.append(found)
            converter.register_structure_hook(cls, found[0])
            converter.register_unstructure_hook(cls, found[1])
        return hooks[0]

    def structure(data: object, target: object) -> object:
        return (hooks[0] if hooks else install())[0](data, target)

    def unstructure(obj: object) -> object:
        return (hooks[0] if hooks else install())[1](obj)

    converter.register_structure_hook(cls, structure)
    converter.register_unstructure_hook(cls, unstructure)


_register_flat(m.TaskView)


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
