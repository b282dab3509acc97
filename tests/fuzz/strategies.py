"""What the fuzz tests throw: real messages of every type, then bytes and JSON mutated from them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hqpy.protocol import codec
from tests.unit.test_codec import UNIONS, derive, members

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Reproducible in CI: the same examples on every run, nothing remembered between runs."""

__all__ = ["FUZZ", "UNIONS", "encoded", "json_values", "members", "mutated_bytes", "mutated_json"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, including numbers and nesting no message field expects."""


def encoded(union: codec.Wire[Any]) -> st.SearchStrategy[tuple[type, bytes]]:
    """A real message of any member of `union`, encoded as it travels."""
    return st.sampled_from(members(union)).flatmap(
        lambda cls: derive(cls).map(lambda msg: (cls, codec.encode(msg, union)))
    )


SPLICES = [b"{", b"}", b"[", b'"', b"\\", b",", b":", b"\xff"]
"""Bytes that change how JSON parses."""


@st.composite
def mutated_bytes(draw: st.DrawFn, payload: bytes) -> bytes:
    """`payload` with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            data[at:at] = draw(st.sampled_from(SPLICES))
    return bytes(data)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value can be replaced (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, payload: bytes) -> bytes:
    """Valid JSON from a real message with a field replaced, removed, or one added."""
    doc = json.loads(payload)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        kind = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if not paths:
            kind = "add"
        if kind == "add":
            doc[draw(st.text(max_size=8))] = draw(json_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if kind == "replace":
            parent[path[-1]] = draw(json_values)
        else:
            del parent[path[-1]]
    return json.dumps(doc).encode()
