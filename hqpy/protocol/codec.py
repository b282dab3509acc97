"""The wire codec: messages to JSON frames and back.

Unions are tagged with `op` and an explicit kebab-case name per class (`OPS`), so the wire format
does not depend on Python class names. Encoding is JSON (compact separators, UTF-8). Each class's
hooks are generated on its first use (see "generated hooks" below), so a client that sends one
request pays only for the classes it meets; attrs and cattrs stay out of a client's start-up.

`converter`, a cattrs converter with the same rules, is made on first access for the journal,
whose records nest messages.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import enum
import functools
import json
import operator
import sys
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from hqpy.common import lightattrs
from hqpy.common.states import TaskState
from hqpy.protocol import messages as m

if TYPE_CHECKING:
    import cattrs

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


# --- generated hooks ------------------------------------------------------------------------------
#
# Each message class gets a `structure` (JSON data -> instance) and an `unstructure` (instance ->
# JSON data) function, made from its annotations on the class's first use, one direction at a
# time: its first `COMPILE_AFTER` objects go through a loop over its fields, later ones through
# straight-line code generated for it. A client that sends one request pays for a few loops, not
# for generating code for a hundred classes, and neither attrs nor cattrs is imported on the wire
# path; a server that converts thousands of objects runs generated code. The rules are those the
# protocol always had:
# no silent conversions (`"12"` is not 12, `null` is not `"None"`), no extra keys, JSON arrays for
# lists and tuples, enums by value, bytes as base64 text, rows of plain values checked for shape.

Hook = Callable[[Any], Any]
"""A structure or unstructure function of one type."""

_TASK_STATE_LABELS = {state.label: state for state in TaskState}

_CHECKS: dict[object, str] = {
    int: "{v}.__class__ is int",
    bool: "{v}.__class__ is bool",
    str: "isinstance({v}, str)",
    float: "{v}.__class__ is float or {v}.__class__ is int",
}
"""Inline checks of plain values (an int where a float goes is accepted and converted)."""

_PLAIN: dict[object, Callable[[object], bool]] = {
    int: lambda v: v.__class__ is int,
    bool: lambda v: v.__class__ is bool,
    str: lambda v: isinstance(v, str),
    float: lambda v: v.__class__ is float or v.__class__ is int,
}
"""The same checks as functions, for plain values inside containers."""

_INLINE_TUPLES: dict[object, tuple[str, str]] = {
    # type: (check of one item `x`, conversion of the list `{v}`)
    tuple[str, ...]: ("isinstance(x, str)", "tuple({v})"),
    tuple[int, ...]: ("x.__class__ is int", "tuple({v})"),
    tuple[tuple[int, str], ...]: (
        "x.__class__ is list and len(x) == 2 and x[0].__class__ is int and isinstance(x[1], str)",
        "tuple([(x[0], x[1]) for x in {v}])",
    ),
}
"""Tuples of the hot classes (`TaskView`) checked and converted inline."""

_structure_hooks: dict[object, Hook] = {}
_unstructure_hooks: dict[object, Hook] = {}


def structure_hook(t: object) -> Hook:
    """The function that checks JSON data and makes a value of type `t` of it."""
    hook = _structure_hooks.get(t)
    if hook is None:
        hook = _structure_hooks[t] = _make_structure(t)
    return hook


def unstructure_hook(t: object) -> Hook:
    """The function that makes JSON data of a value of type `t`."""
    hook = _unstructure_hooks.get(t)
    if hook is None:
        hook = _unstructure_hooks[t] = _make_unstructure(t)
    return hook


def _fail(t: object, value: object) -> TypeError:
    return TypeError(f"expected {getattr(t, '__name__', t)}, got {type(value).__name__}")


def _optional_of(t: object) -> object | None:
    """`X` of `X | None`, else None."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if len(args) == 2 and type(None) in args:
            inner: object = args[0] if args[1] is type(None) else args[1]
            return inner
        raise TypeError(f"no codec for the union {t}")
    return None


def _make_structure(t: object) -> Hook:
    if t in _CHECKS:
        check = _PLAIN[t]
        convert: Callable[[Any], object] = float if t is float else _same

        def plain(value: object) -> object:
            if not check(value):
                raise _fail(t, value)
            return convert(value)

        return plain
    if t is bytes:
        return _bytes_in
    if t is Any:
        return lambda value: value
    if t == list[m.Row]:
        return _rows
    inner = _optional_of(t)
    if inner is not None:
        hook = structure_hook(inner)
        return lambda value: None if value is None else hook(value)
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is list:
        item = structure_hook(args[0])
        return lambda value: [item(x) for x in _array(value)]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = structure_hook(args[0])
        return lambda value: tuple([item(x) for x in _array(value)])
    if origin is tuple:
        items = [structure_hook(a) for a in args]

        def fixed(value: object) -> tuple[object, ...]:
            value = _array(value)
            if len(value) != len(items):
                raise ValueError(f"expected {len(items)} items, got {len(value)}")
            return tuple([hook(x) for hook, x in zip(items, value, strict=True)])

        return fixed
    if origin is dict:
        key, val = structure_hook(args[0]), structure_hook(args[1])

        def mapping(value: object) -> dict[object, object]:
            if value.__class__ is not dict:
                raise _fail(dict, value)
            return {key(k): val(v) for k, v in value.items()}

        return mapping
    if t is TaskState:  # a view's task state travels as its label (`failed`)
        return _task_state_in
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return t
    if isinstance(t, type) and lightattrs.is_light(t):
        return _tiered(t, _interpreted_structure, _class_structure)
    raise TypeError(f"no codec for {t}")


def _make_unstructure(t: object) -> Hook:
    if t in _CHECKS or t is Any or t == list[m.Row]:
        return _same
    if t is bytes:
        return _bytes_out
    inner = _optional_of(t)
    if inner is not None:
        hook = unstructure_hook(inner)
        if hook is _same:
            return _same
        return lambda value: None if value is None else hook(value)
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (list, tuple):
        items = [unstructure_hook(a) for a in args if a is not Ellipsis]
        if all(hook is _same for hook in items):
            return list
        if len(args) == 1 or args[1] is Ellipsis:
            item = items[0]
            return lambda value: [item(x) for x in value]
        return lambda value: [hook(x) for hook, x in zip(items, value, strict=True)]
    if origin is dict:
        key, val = unstructure_hook(args[0]), unstructure_hook(args[1])
        if key is _same and val is _same:
            return _same
        return lambda value: {key(k): val(v) for k, v in value.items()}
    if t is TaskState:
        return operator.attrgetter("label")
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return operator.attrgetter("value")
    if isinstance(t, type) and lightattrs.is_light(t):
        return _tiered(t, _interpreted_unstructure, _class_unstructure)
    raise TypeError(f"no codec for {t}")


def _task_state_in(value: object) -> TaskState:
    if value.__class__ is not str or value not in _TASK_STATE_LABELS:
        raise _fail(TaskState, value)
    return _TASK_STATE_LABELS[value]


def _same(value: object) -> object:
    return value


def _array(value: object) -> list[object]:
    if value.__class__ is not list:
        raise _fail(list, value)
    return value


def _rows(value: object) -> list[m.Row]:
    """Rows of plain values (the hot path) are checked for shape only, not element by element."""
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise ValueError("expected a list of rows")
    return value


def _bytes_in(value: object) -> bytes:
    """Bytes travel as base64 text (a task's `--stdin` may be any binary data)."""
    if not isinstance(value, str):
        raise TypeError(f"expected base64 text, got {type(value).__name__}")
    return base64.b64decode(value, validate=True)


def _bytes_out(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


COMPILE_AFTER = 32
"""Objects of a class converted by a generic loop before its straight-line code is generated:
generating it costs more than converting the few objects a client usually meets."""


def _tiered(
    cls: type, interpreted: Callable[[type], Hook], compiled: Callable[[type], Hook]
) -> Hook:
    """A class's hook: a loop over its fields for its first `COMPILE_AFTER` objects, then its
    generated code (the same checks and results, faster on many objects)."""
    slow = interpreted(cls)
    fast: list[Hook] = []
    uses = 0

    def hook(value: Any) -> Any:
        nonlocal uses
        if fast:
            return fast[0](value)
        uses += 1
        if uses > COMPILE_AFTER:
            fast.append(compiled(cls))
        return slow(value)

    return hook


def _interpreted_structure(cls: type) -> Hook:
    fields = _field_types(cls)
    keys = frozenset(f.name for f, _ in fields)
    hooks = [(f.name, structure_hook(t), f.default) for f, t in fields]
    defaults = {
        f.name: None if f.default is None else unstructure_hook(t)(f.default)
        for f, t in fields
        if f.default is not lightattrs.NOTHING and not isinstance(f.default, lightattrs.Factory)
    }
    new, set_ = object.__new__, object.__setattr__

    def structure(d: Any) -> Any:
        if d.__class__ is not dict:
            raise TypeError(f"expected an object, got {type(d).__name__}")
        if not keys.issuperset(d):
            raise ValueError(f"extra fields: {sorted(set(d) - keys)}")
        if len(d) != len(keys):
            d = {**defaults, **d}
        o: Any = new(cls)
        for name, hook, default in hooks:
            if name not in d and isinstance(default, lightattrs.Factory):
                set_(o, name, default.factory())
                continue
            try:
                set_(o, name, hook(d[name]))
            except TypeError as e:
                raise TypeError(f"{name}: {e}") from None
        return o

    return structure


def _interpreted_unstructure(cls: type) -> Hook:
    hooks = [(f.name, unstructure_hook(t)) for f, t in _field_types(cls)]
    return lambda o: {name: hook(getattr(o, name)) for name, hook in hooks}


def _field_types(cls: type) -> list[tuple[lightattrs.Field, object]]:
    """A class's fields with their annotations resolved (`typing.get_type_hints` compiles
    each annotation text anew: this resolves each distinct text once)."""
    namespace = vars(sys.modules[cls.__module__])
    return [(f, _resolve(f.annotation, namespace)) for f in lightattrs.fields_of(cls)]


_resolved: dict[tuple[int, object], object] = {}


def _resolve(annotation: object, namespace: dict[str, Any]) -> object:
    if not isinstance(annotation, str):
        return annotation
    key = (id(namespace), annotation)
    found = _resolved.get(key, _resolved)
    if found is _resolved:
        if annotation.isidentifier():  # the most common: `int`, `TaskStats`
            found = namespace.get(annotation) or getattr(builtins, annotation)
        elif annotation.endswith(" | None") and annotation[:-7].isidentifier():
            found = _resolve(annotation[:-7], namespace) | None  # type: ignore[operator]
        else:
            found = eval(annotation, namespace)
        _resolved[key] = found
    return found


def _plain_field(t: object) -> tuple[object, object | None] | None:
    """(type, inner type of `X | None`) of a field checked inline, else None."""
    inner = _optional_of(t)
    plain = inner if inner is not None else t
    if plain in _CHECKS or plain in _INLINE_TUPLES or plain is TaskState:
        return plain, inner
    return None


def _class_structure(cls: type) -> Hook:
    """A message class's structure function, as straight-line code: plain fields are checked
    inline, the others through their type's hook; a missing field takes its default, checked and
    converted as if it was sent."""
    fields = _field_types(cls)
    names = [f.name for f, _ in fields]
    scope: dict[str, object] = {
        "cls": cls,
        "KEYS": frozenset(names),
        "LABELS": _TASK_STATE_LABELS,
        "MISSING": lightattrs.NOTHING,
        "NEW": object.__new__,
        "SET": object.__setattr__,
    }
    source = [
        "def structure(d):",
        "    if d.__class__ is not dict:",
        "        raise TypeError(f'expected an object, got {type(d).__name__}')",
        "    if not KEYS.issuperset(d):",
        "        raise ValueError(f'extra fields: {sorted(set(d) - KEYS)}')",
        "    if len(d) != len(KEYS):",
        "        d = {**DEFAULTS, **d}",
    ]
    defaults: dict[str, object] = {}
    for i, (f, t) in enumerate(fields):
        v = f"v{i}"
        plain = _plain_field(t)
        if plain is not None:
            kind, inner = plain
            if kind in _INLINE_TUPLES:
                item, convert = _INLINE_TUPLES[kind]
                check = f"{v}.__class__ is list and all([{item} for x in {v}])"
                convert = convert.format(v=v)
            elif kind is TaskState:
                check, convert = f"{v}.__class__ is str and {v} in LABELS", f"LABELS[{v}]"
            else:
                check = _CHECKS[kind].format(v=v)
                convert = f"float({v})" if kind is float else v
            if inner is not None:
                check = f"{v} is None or {check}"
                convert = f"None if {v} is None else {convert}"
            name = getattr(kind, "__name__", str(kind))
            fail = f"raise TypeError(f'{f.name}: expected {name}, got {{type({v}).__name__}}')"
            lines = [f"    if not ({check}):", f"        {fail}", f"    {v} = {convert}"]
        else:
            scope[f"S{i}"] = structure_hook(t)
            lines = [f"    {v} = S{i}({v})"]
        if isinstance(f.default, lightattrs.Factory):
            scope[f"F{i}"] = f.default.factory
            source += [f"    {v} = d.get({f.name!r}, MISSING)", f"    if {v} is MISSING:"]
            source += [f"        {v} = F{i}()", "    else:"]
            source += ["    " + line for line in lines]
        else:
            if f.default is not lightattrs.NOTHING:
                defaults[f.name] = None if f.default is None else unstructure_hook(t)(f.default)
            source.append(f"    {v} = d[{f.name!r}]")
            source += lines
    scope["DEFAULTS"] = defaults
    # The instance is filled in directly: checked values need no `__init__`, whose code a
    # class would otherwise compile on its first decode.
    source.append("    o = NEW(cls)")
    source += [f"    SET(o, {n!r}, v{i})" for i, n in enumerate(names)]
    source.append("    return o")
    return _compiled("structure", source, cls, scope)


def _class_unstructure(cls: type) -> Hook:
    """A message class's unstructure function: one dict display, fields in order."""
    scope: dict[str, object] = {}
    out = []
    for i, (f, t) in enumerate(_field_types(cls)):
        attr = f"o.{f.name}"
        plain = _plain_field(t)
        if plain is not None:
            kind, inner = plain
            dump = attr
            if kind in _INLINE_TUPLES:
                dump = f"list({attr})"
            elif kind is TaskState:
                dump = f"{attr}.label"
            if inner is not None and dump != attr:
                dump = f"None if {attr} is None else {dump}"
        else:
            hook = scope[f"U{i}"] = unstructure_hook(t)
            dump = attr if hook is _same else f"U{i}({attr})"
        out.append(f"{f.name!r}: {dump}")
    return _compiled(
        "unstructure", ["def unstructure(o):", f"    return {{{', '.join(out)}}}"], cls, scope
    )


def _compiled(name: str, source: list[str], cls: type, scope: dict[str, object]) -> Hook:
    # `exec` of the text, not of `compile(...)`: the builtin `compile` sets up the `ast` module's
    # classes on its first call, ~3 ms that a client would pay for nothing.
    exec("\n".join(source) + "\n", scope)
    hook: Hook = scope[name]  # type: ignore[assignment]
    return hook


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
    data = unstructure_hook(cls)(message)
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
        message: T = structure_hook(cls)(data)
        return message
    except (ValueError, TypeError, KeyError, binascii.Error) as e:
        raise DecodeError(f"malformed message: {_short(e)}") from None
    except RecursionError:
        raise DecodeError("malformed message: nested too deeply") from None
    except MemoryError:
        raise DecodeError("malformed message: too large to decode") from None


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."


def __getattr__(name: str) -> cattrs.Converter:
    """`converter`, made on first access: a cattrs converter with the wire's rules (exact plain
    types, bytes as base64, rows checked for shape) for the journal's records."""
    if name != "converter":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _make_converter()


@functools.cache
def _make_converter() -> cattrs.Converter:
    from cattrs.preconf.json import make_converter

    converter = make_converter(forbid_extra_keys=True)

    def exact(value: object, target: type) -> object:
        return structure_hook(target)(value)

    for kind in (int, float, str, bool):
        converter.register_structure_hook(kind, exact)
    converter.register_structure_hook(bytes, lambda value, _: _bytes_in(value))
    converter.register_unstructure_hook(bytes, _bytes_out)
    converter.register_structure_hook_func(lambda t: bool(t == list[m.Row]), exact)
    converter.register_unstructure_hook_func(lambda t: bool(t == list[m.Row]), _same)
    converter.register_structure_hook(m.TaskView, exact)
    converter.register_unstructure_hook(m.TaskView, unstructure_hook(m.TaskView))
    return converter
