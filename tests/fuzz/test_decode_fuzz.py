"""The decoder against anything: arbitrary bytes and mutated real frames of every message type.

Whatever the bytes, `codec.decode` returns a member of the union it was asked for or raises
`DecodeError`; no other exception reaches the sessions that call it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqpy.protocol import codec
from tests.fuzz.strategies import FUZZ, UNIONS, encoded, members, mutated_bytes, mutated_json
from tests.unit.test_codec import UNION_OF, derive

UNION_IDS = ["handshake", "to-worker", "from-worker", "client-request", "client-response"]


def _decodes_or_refuses(payload: bytes, union: Any) -> None:
    try:
        msg = codec.decode(payload, union)
    except codec.DecodeError:
        return
    assert type(msg) in members(union)
    # What was accepted is a real message: it encodes again.
    codec.encode(msg, union)


@pytest.mark.parametrize("union", UNIONS, ids=UNION_IDS)
@settings(FUZZ, max_examples=100)
@given(payload=st.binary(max_size=512))
def test_arbitrary_bytes(union: Any, payload: bytes) -> None:
    _decodes_or_refuses(payload, union)


@pytest.mark.parametrize("union", UNIONS, ids=UNION_IDS)
@settings(FUZZ, max_examples=100)
@given(payload=st.text(alphabet='{}[]":,0123456789.-eE truefalsnop\\u', max_size=200))
def test_json_looking_text(union: Any, payload: str) -> None:
    _decodes_or_refuses(payload.encode(), union)


@pytest.mark.parametrize("union", UNIONS, ids=UNION_IDS)
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_bytes_of_every_message(union: Any, data: st.DataObject) -> None:
    _cls, payload = data.draw(encoded(union))
    _decodes_or_refuses(data.draw(mutated_bytes(payload)), union)


@pytest.mark.parametrize("union", UNIONS, ids=UNION_IDS)
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_fields_of_every_message(union: Any, data: st.DataObject) -> None:
    _cls, payload = data.draw(encoded(union))
    _decodes_or_refuses(data.draw(mutated_json(payload)), union)


@pytest.mark.parametrize("cls", sorted({c for u in UNIONS for c in members(u)}, key=str))
@settings(FUZZ, max_examples=8)
@given(data=st.data())
def test_every_message_type_mutated(cls: type, data: st.DataObject) -> None:
    """Each type gets its own examples, so none is left to chance; decoded against every union
    (a frame of one union sent where another is expected must be refused cleanly too)."""
    payload = codec.encode(data.draw(derive(cls)), UNION_OF[cls])
    variants = [payload, data.draw(mutated_json(payload)), data.draw(mutated_bytes(payload))]
    for union in UNIONS:
        for variant in variants:
            _decodes_or_refuses(variant, union)


def test_deep_nesting_is_refused() -> None:
    for union in UNIONS:
        with pytest.raises(codec.DecodeError):
            codec.decode(b"[" * 100_000 + b"]" * 100_000, union)
        with pytest.raises(codec.DecodeError):
            codec.decode(b'{"op":' + b"[" * 100_000 + b"]" * 100_000 + b"}", union)
