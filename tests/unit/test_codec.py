"""The wire codec: every message of every union survives a round trip; anything else is refused."""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqpy.common.resources import AllocationPolicy, ResourceAmountRequest, ResourceRequest
from hqpy.common.states import TaskState, WorkerFilter, WorkerState
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.codec import OPS, DecodeError, Handshake, decode, encode
from tests.factories import worker_config

PER_CLASS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Per-message tests run for each of ~60 classes: fewer examples each, no per-example deadline."""
UNION_WIDE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNIONS: tuple[codec.Wire[Any], ...] = (
    codec.HANDSHAKE,
    codec.TO_WORKER,
    codec.FROM_WORKER,
    codec.CLIENT_REQUEST,
    codec.CLIENT_RESPONSE,
)

# --- strategies ----------------------------------------------------------------------------------

texts = st.text(max_size=12)
ids = st.integers(min_value=0, max_value=2**53)
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
maybe_seconds = st.none() | seconds
maybe_text = st.none() | texts

compute_rows = st.lists(st.tuples(ids, ids, ids, ids, maybe_text).map(list), max_size=5)
update_rows = st.lists(
    st.tuples(
        ids,
        ids,
        ids,
        st.sampled_from([m.TASK_RUNNING, m.TASK_FINISHED, m.TASK_FAILED, m.TASK_CANCELED]),
        maybe_seconds,
        maybe_seconds,
        maybe_text,
    ).map(list),
    max_size=5,
)

TUNED: dict[Any, st.SearchStrategy[Any]] = {
    str: texts,
    int: st.integers(min_value=-(2**53), max_value=2**53),
    float: seconds,
    bool: st.booleans(),
    type(None): st.none(),
    ResourceAmountRequest: st.builds(
        ResourceAmountRequest,
        resource=texts,
        amount=st.integers(min_value=-1, max_value=10**9),
        policy=st.sampled_from(AllocationPolicy),
    ),
    m.ComputeTasks: st.builds(
        m.ComputeTasks,
        bodies=st.lists(st.deferred(lambda: derive(m.TaskBody)), max_size=3),
        tasks=compute_rows,
    ),
    m.CancelTasks: st.builds(
        m.CancelTasks, tasks=st.lists(st.tuples(ids, ids, ids).map(list), max_size=5)
    ),
    m.TaskUpdates: st.builds(m.TaskUpdates, updates=update_rows),
}
"""Strategies written by hand where the field types say too little (rows of plain values)."""


def derive(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any message type, from its annotations (so new messages are covered)."""
    if tp in TUNED:
        return TUNED[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return st.none() | ids | texts
    if tp is bytes:
        return st.binary(max_size=20)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(derive(a) for a in args))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(derive(args[0]), max_size=2).map(tuple)
        return st.tuples(*(derive(a) for a in args))
    if origin is list:
        return st.lists(derive(args[0]), max_size=2)
    if origin is dict:
        return st.dictionaries(derive(args[0]), derive(args[1]), max_size=2)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = {f.name: derive(hints[f.name]) for f in attrs.fields(tp)}
        return st.builds(tp, **fields)
    raise TypeError(f"no strategy for {tp!r}")


def lazy(tp: Any) -> st.SearchStrategy[Any]:
    """`derive` at draw time, so a message type it cannot handle fails its tests, not collection."""
    return st.deferred(lambda: derive(tp))


def members(union: codec.Wire[Any]) -> tuple[type, ...]:
    return tuple(union.by_op.values())


ALL_MEMBERS = sorted({cls for union in UNIONS for cls in members(union)}, key=lambda c: c.__name__)
UNION_OF = {cls: union for union in UNIONS for cls in members(union)}


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MEMBERS, ids=lambda c: c.__name__)
@PER_CLASS
@given(data=st.data())
def test_every_message_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(derive(cls))
    union = UNION_OF[cls]
    assert decode(encode(msg, union), union) == msg


@UNION_WIDE
@given(lazy(Handshake))
def test_handshake_messages_round_trip(msg: Any) -> None:
    assert decode(encode(msg, codec.HANDSHAKE), codec.HANDSHAKE) == msg


@UNION_WIDE
@given(lazy(m.ClientRequest))
def test_client_requests_round_trip(msg: Any) -> None:
    assert decode(encode(msg, codec.CLIENT_REQUEST), codec.CLIENT_REQUEST) == msg


@UNION_WIDE
@given(lazy(m.SubmitRequest))
def test_submit_request_round_trips_with_its_resource_request(msg: m.SubmitRequest) -> None:
    decoded = decode(encode(msg, codec.CLIENT_REQUEST), codec.CLIENT_REQUEST)
    assert decoded == msg
    assert isinstance(decoded.submit, m.SubmitDesc)
    assert isinstance(decoded.submit.request, ResourceRequest)
    assert all(isinstance(e.policy, AllocationPolicy) for e in decoded.submit.request.entries)


@UNION_WIDE
@given(lazy(m.ClientResponse))
def test_client_responses_round_trip(msg: Any) -> None:
    assert decode(encode(msg, codec.CLIENT_RESPONSE), codec.CLIENT_RESPONSE) == msg


@UNION_WIDE
@given(lazy(m.JobDetailsResponse))
def test_job_details_response_round_trips_nested_views(msg: m.JobDetailsResponse) -> None:
    decoded = decode(encode(msg, codec.CLIENT_RESPONSE), codec.CLIENT_RESPONSE)
    assert decoded == msg
    for job in decoded.jobs:
        assert isinstance(job.info.task_stats, m.TaskStats)
        assert all(isinstance(s, m.SubmitView) for s in job.submits)
        assert all(isinstance(t, m.TaskView) for t in job.failed_tasks)


@UNION_WIDE
@given(lazy(m.ToWorker))
def test_messages_to_workers_round_trip(msg: Any) -> None:
    assert decode(encode(msg, codec.TO_WORKER), codec.TO_WORKER) == msg


@UNION_WIDE
@given(lazy(m.ComputeTasks))
def test_compute_tasks_round_trips_bodies_and_rows(msg: m.ComputeTasks) -> None:
    decoded = decode(encode(msg, codec.TO_WORKER), codec.TO_WORKER)
    assert decoded == msg
    assert all(isinstance(body, m.TaskBody) for body in decoded.bodies)


@UNION_WIDE
@given(lazy(m.FromWorker))
def test_messages_from_workers_round_trip(msg: Any) -> None:
    assert decode(encode(msg, codec.FROM_WORKER), codec.FROM_WORKER) == msg


@UNION_WIDE
@given(lazy(m.TaskUpdates))
def test_task_updates_round_trip_rows(msg: m.TaskUpdates) -> None:
    assert decode(encode(msg, codec.FROM_WORKER), codec.FROM_WORKER) == msg


# --- tags ----------------------------------------------------------------------------------------


def test_encoded_frame_is_tagged_with_the_ops_name() -> None:
    frame = encode(m.CloseJobsRequest("3"), codec.CLIENT_REQUEST)
    assert json.loads(frame) == {"op": "job-close", "selector": "3"}


@pytest.mark.parametrize("cls", ALL_MEMBERS, ids=lambda c: c.__name__)
@settings(PER_CLASS, max_examples=5)
@given(data=st.data())
def test_every_message_is_tagged_with_its_ops_name(cls: type, data: st.DataObject) -> None:
    msg = data.draw(derive(cls))
    assert json.loads(encode(msg, UNION_OF[cls]))["op"] == OPS[cls]


def test_tags_are_unique_within_each_union() -> None:
    for union in UNIONS:
        tags = [OPS[cls] for cls in members(union)]
        assert len(tags) == len(set(tags))


# --- what decode refuses -------------------------------------------------------------------------


def test_unknown_op_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(b'{"op":"no-such-op"}', codec.CLIENT_REQUEST)


def test_missing_op_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(b'{"selector":"1"}', codec.CLIENT_REQUEST)


def test_op_of_another_union_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(encode(m.CloseJobsRequest("1"), codec.CLIENT_REQUEST), codec.CLIENT_RESPONSE)


@pytest.mark.parametrize(
    ("payload", "union"),
    [
        (b'{"op":"ok","extra":1}', codec.CLIENT_RESPONSE),
        (b'{"op":"job-close","selector":"1","force":true}', codec.CLIENT_REQUEST),
        (b'{"op":"welcome","proof":"p","version":"1"}', Handshake),
    ],
)
def test_extra_keys_are_a_decode_error(payload: bytes, union: Any) -> None:
    with pytest.raises(DecodeError):
        decode(payload, union)


def test_extra_key_in_a_nested_object_is_a_decode_error() -> None:
    frame = b'{"op":"log-lines","lines":[{"level":"INFO","text":"x","colour":"red"}]}'
    with pytest.raises(DecodeError):
        decode(frame, codec.CLIENT_RESPONSE)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"op":"submitted"}', id="missing-field"),
        pytest.param(b'{"op":"submitted","job_id":null}', id="null-for-int"),
        pytest.param(b'{"op":"submitted","job_id":"x"}', id="word-for-int"),
        pytest.param(b'{"op":"submitted","job_id":"12"}', id="numeric-string-for-int"),
        pytest.param(b'{"op":"submitted","job_id":1.5}', id="float-for-int"),
        pytest.param(b'{"op":"submitted","job_id":true}', id="bool-for-int"),
        pytest.param(b'{"op":"submitted","job_id":[1]}', id="list-for-int"),
        pytest.param(b'{"op":"error","message":5}', id="number-for-str"),
        pytest.param(b'{"op":"error","message":null}', id="null-for-str"),
        pytest.param(b'{"op":"error","message":["a"]}', id="list-for-str"),
        pytest.param(b'{"op":"log-lines","lines":"abc"}', id="str-for-list"),
        pytest.param(b'{"op":"log-lines","lines":{"a":1}}', id="object-for-list"),
        pytest.param(b'{"op":"log-lines","lines":[5]}', id="int-for-object"),
    ],
)
def test_wrong_types_are_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, codec.CLIENT_RESPONSE)


def test_string_for_the_task_update_rows_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(b'{"op":"task-updates","updates":"abc"}', codec.FROM_WORKER)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="words"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b'{"op":"ok"', id="truncated"),
        pytest.param(b'{"op":"ok"}{"op":"ok"}', id="two-documents"),
        pytest.param(b"{'op': 'ok'}", id="python-repr"),
    ],
)
def test_non_json_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, codec.CLIENT_RESPONSE)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b"1", id="number"),
        pytest.param(b'"ok"', id="string"),
        pytest.param(b"true", id="bool"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'["ok"]', id="array-of-tag"),
    ],
)
def test_json_that_is_not_an_object_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, codec.CLIENT_RESPONSE)


@pytest.mark.parametrize("payload", [b"null", b"[]", b'"peer-hello"'])
def test_json_that_is_not_an_object_is_a_decode_error_in_the_handshake(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, codec.HANDSHAKE)


def test_deeply_nested_json_is_a_decode_error() -> None:
    depth = 100_000
    with pytest.raises(DecodeError):
        decode(b"[" * depth + b"]" * depth, codec.CLIENT_RESPONSE)


def test_deeply_nested_value_inside_a_message_is_a_decode_error() -> None:
    depth = 100_000
    payload = b'{"op":"task-updates","updates":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(DecodeError):
        decode(payload, codec.FROM_WORKER)


@UNION_WIDE
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    try:
        decoded = decode(payload, codec.CLIENT_REQUEST)
    except DecodeError:
        return
    assert type(decoded) in members(codec.CLIENT_REQUEST)


@UNION_WIDE
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=10,
    )
)
def test_arbitrary_json_decodes_or_raises_decode_error(value: Any) -> None:
    try:
        decoded = decode(json.dumps(value).encode(), codec.CLIENT_REQUEST)
    except DecodeError:
        return
    assert type(decoded) in members(codec.CLIENT_REQUEST)


def test_stdin_bytes_travel_as_base64() -> None:
    """Binary `--stdin` (not UTF-8) crosses the wire unchanged, as compact base64 text."""
    data = bytes(range(256))
    request = m.SubmitRequest(submit=attrs.evolve(_submit_desc(), stdin=data))
    payload = codec.encode(request, codec.CLIENT_REQUEST)
    assert b'"stdin":"AAECAwQF' in payload
    decoded = codec.decode(payload, codec.CLIENT_REQUEST)
    assert isinstance(decoded, m.SubmitRequest) and decoded.submit.stdin == data


def test_stdin_that_is_not_base64_is_a_decode_error() -> None:
    payload = codec.encode(m.SubmitRequest(submit=_submit_desc()), codec.CLIENT_REQUEST)
    bad = payload.replace(b'"stdin":null', b'"stdin":"not base64!"')
    assert bad != payload
    with pytest.raises(codec.DecodeError, match="malformed message"):
        codec.decode(bad, codec.CLIENT_REQUEST)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_lists_in_a_field_are_a_decode_error(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    with pytest.raises(codec.DecodeError, match="malformed message"):
        codec.decode(b'{"op":"job-list","states":' + nested + b"}", codec.CLIENT_REQUEST)


def test_text_with_lone_surrogates_still_encodes() -> None:
    request = m.ListJobsRequest(("\udcff",))
    decoded = codec.decode(codec.encode(request, codec.CLIENT_REQUEST), codec.CLIENT_REQUEST)
    assert decoded == request


def _submit_desc() -> m.SubmitDesc:
    from hqpy.common.resources import build_request

    return m.SubmitDesc(
        ids="0",
        args=("cat",),
        env={},
        cwd="/tmp",
        stdout=None,
        stderr=None,
        submit_dir="/tmp",
        request=build_request(None, []),
    )


def test_each_wire_is_typed_as_the_union_it_holds() -> None:
    hints = typing.get_type_hints(codec)
    wires = {name: value for name, value in vars(codec).items() if isinstance(value, codec.Wire)}
    assert set(wires) == {
        "HANDSHAKE",
        "CLIENT_REQUEST",
        "CLIENT_RESPONSE",
        "TO_WORKER",
        "FROM_WORKER",
    }
    for name, wire in wires.items():
        assert typing.get_args(hints[name]) == (wire.union,), name
        assert set(wire.by_op.values()) == set(typing.get_args(wire.union)), name


def test_a_raw_union_alias_is_still_accepted_at_run_time() -> None:
    payload = codec.encode(m.ServerInfoRequest(), codec.CLIENT_REQUEST)
    raw: typing.Any = m.ClientRequest
    assert codec.decode(payload, raw) == m.ServerInfoRequest()


def test_typed_view_states_keep_their_wire_text() -> None:
    """States became enums in the views; the bytes are those of the string fields before."""
    tasks = m.TaskListResponse(
        jobs=[
            (
                1,
                [
                    m.TaskView(id=0, state=TaskState.WAITING),
                    m.TaskView(id=3, state=TaskState.FAILED, error="boom", workers=("n1",)),
                ],
            )
        ],
        missing="",
    )
    payload = encode(tasks, codec.CLIENT_RESPONSE)
    assert b'[{"id":0,"state":"waiting","instance_id":0,"workers":[],' in payload
    assert b'{"id":3,"state":"failed","instance_id":0,"workers":["n1"],' in payload
    assert decode(payload, codec.CLIENT_RESPONSE) == tasks

    worker = m.WorkerView(
        id=1,
        state=WorkerState.CONNECTION_LOST,
        configuration=worker_config(),
        started_at=1.0,
        ended_at=2.0,
        assigned_tasks=0,
        running_tasks=0,
        last_task_started=None,
    )
    payload = encode(m.WorkerListResponse([worker]), codec.CLIENT_RESPONSE)
    assert payload.startswith(b'{"workers":[{"id":1,"state":"CONNECTION LOST","configuration":{')
    assert decode(payload, codec.CLIENT_RESPONSE) == m.WorkerListResponse([worker])

    request = m.ListWorkersRequest(WorkerFilter.OFFLINE)
    payload = encode(request, codec.CLIENT_REQUEST)
    assert payload == b'{"filter":"offline","op":"worker-list"}'
    assert decode(payload, codec.CLIENT_REQUEST) == request
    assert encode(m.ListWorkersRequest(), codec.CLIENT_REQUEST) == (
        b'{"filter":"running","op":"worker-list"}'
    )


@pytest.mark.parametrize("state", ['"FAILED"', '" failed"', "3", '"bogus"', "null"])
def test_a_task_view_state_is_its_lower_case_label_only(state: str) -> None:
    payload = b'{"op":"tasks","jobs":[[1,[{"id":0,"state":%s}]]],"missing":""}' % state.encode()
    with pytest.raises(DecodeError):
        decode(payload, codec.CLIENT_RESPONSE)


@pytest.mark.parametrize(
    "payload",
    [b'{"op":"worker-list","filter":"everything"}', b'{"op":"worker-list","filter":1}'],
)
def test_an_unknown_worker_filter_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload, codec.CLIENT_REQUEST)


def test_task_states_in_updates_stay_ints() -> None:
    """Only `TaskView.state` travels as a label: the hook must not reach other `TaskState`s."""
    update = m.TaskUpdates([[1, 0, 0, m.TASK_FAILED, 1.0, 2.0, "boom"]])
    assert b"[[1,0,0,3,1.0,2.0," in encode(update, codec.FROM_WORKER)


def test_task_view_of_a_multi_node_task_handed_back_round_trips() -> None:
    """The generated TaskView hooks cover the node ids and the earlier instances too."""
    view = m.TaskView(
        id=7,
        state=TaskState.WAITING,
        instance_id=2,
        workers=("n1", "n2"),
        nodes=(4, 5),
        instances=((0, "allocation drained"), (1, "walltime reached")),
    )
    response = m.TaskInfoResponse(job=None, tasks=[view], missing="")
    decoded = codec.decode(codec.encode(response, codec.CLIENT_RESPONSE), codec.CLIENT_RESPONSE)
    assert decoded == response


@pytest.mark.parametrize(
    "field, value",
    [("nodes", ["4"]), ("nodes", 4), ("instances", [[0]]), ("instances", [["0", "x"]])],
)
def test_task_view_with_a_malformed_field_is_a_decode_error(field: str, value: object) -> None:
    payload: dict[str, object] = {"op": OPS[m.TaskInfoResponse], "job": None, "missing": ""}
    payload["tasks"] = [{"id": 1, "state": "waiting", field: value}]
    with pytest.raises(codec.DecodeError):
        codec.decode(json.dumps(payload).encode(), codec.CLIENT_RESPONSE)


@pytest.mark.parametrize("cls", ALL_MEMBERS, ids=lambda c: c.__name__)
@PER_CLASS
@given(data=st.data())
def test_a_class_s_loop_and_its_generated_code_agree(cls: type, data: st.DataObject) -> None:
    """A class's first objects go through a generic loop, later ones through generated code."""
    msg = data.draw(derive(cls))
    loop_out, code_out = codec._interpreted_unstructure(cls), codec._class_unstructure(cls)
    wire = json.loads(json.dumps(code_out(msg)))
    assert json.loads(json.dumps(loop_out(msg))) == wire
    assert codec._interpreted_structure(cls)(wire) == codec._class_structure(cls)(wire) == msg


@pytest.mark.parametrize(
    "data",
    [
        {"id": "1", "state": "waiting"},
        {"id": 1, "state": "bogus"},
        {"id": 1},
        {"id": 1, "state": "waiting", "extra": 0},
        {"id": 1, "state": "waiting", "nodes": ["4"]},
        [],
    ],
)
def test_a_class_s_loop_and_its_generated_code_refuse_alike(data: object) -> None:
    errors = []
    for make in (codec._interpreted_structure, codec._class_structure):
        with pytest.raises((TypeError, ValueError, KeyError)) as info:
            make(m.TaskView)(data)
        errors.append((type(info.value), str(info.value).split(":")[0]))
    assert errors[0] == errors[1]  # the same error, about the same field
