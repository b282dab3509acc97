"""Sealed frames (`protocol.seal`): what is altered, replayed, reordered or cut never opens."""

from __future__ import annotations

import pytest

from hqpy.protocol.frames import HEADER, FrameDecoder, ProtocolError
from hqpy.protocol.handshake import new_nonce, new_secret
from hqpy.protocol.seal import (
    COUNTER_LIMIT,
    TAG_SIZE,
    Opener,
    Sealer,
    SealError,
    derive_keys,
    peer_pair,
    server_pair,
)

SECRET = new_secret()
SERVER_NONCE = new_nonce()
PEER_NONCE = new_nonce()


def _pair() -> tuple[Sealer, Opener]:
    up, _ = derive_keys(SECRET, "worker", SERVER_NONCE, PEER_NONCE)
    return Sealer(up), Opener(up)


def _body(wire: bytes) -> bytes:
    """What a FrameDecoder hands the opener: the frame without its length prefix."""
    (size,) = HEADER.unpack_from(wire)
    assert size == len(wire) - HEADER.size
    return wire[HEADER.size :]


def test_round_trip_in_order() -> None:
    sealer, opener = _pair()
    payloads = [b"", b"x", b"hello" * 1000, bytes(range(256))]
    for payload in payloads:
        wire = sealer.seal(payload)
        assert len(wire) == HEADER.size + len(payload) + TAG_SIZE
        assert len(payload) < 64 or payload[:64] not in wire
        assert opener.open(_body(wire)) == payload
    assert sealer.counter == opener.counter == len(payloads)


def test_round_trip_through_the_frame_decoder() -> None:
    sealer, opener = _pair()
    decoder = FrameDecoder(1024 + TAG_SIZE)
    decoder.feed(b"".join(sealer.seal(bytes([i]) * i) for i in range(20)))
    got = []
    while (frame := decoder.next_frame()) is not None:
        got.append(opener.open(frame))
    assert got == [bytes([i]) * i for i in range(20)]


def test_peer_and_server_pairs_agree_in_both_directions() -> None:
    peer_sealer, peer_opener = peer_pair(SECRET, "client", SERVER_NONCE, PEER_NONCE)
    server_sealer, server_opener = server_pair(SECRET, "client", SERVER_NONCE, PEER_NONCE)
    assert server_opener.open(_body(peer_sealer.seal(b"up"))) == b"up"
    assert peer_opener.open(_body(server_sealer.seal(b"down"))) == b"down"


def test_directions_have_different_keys() -> None:
    """A frame sent by the server cannot be reflected back to it as the peer's."""
    server_sealer, server_opener = server_pair(SECRET, "client", SERVER_NONCE, PEER_NONCE)
    with pytest.raises(SealError):
        server_opener.open(_body(server_sealer.seal(b"reflected")))


@pytest.mark.parametrize(
    "change",
    [
        lambda: derive_keys(new_secret(), "worker", SERVER_NONCE, PEER_NONCE),
        lambda: derive_keys(SECRET, "client", SERVER_NONCE, PEER_NONCE),
        lambda: derive_keys(SECRET, "worker", new_nonce(), PEER_NONCE),
        lambda: derive_keys(SECRET, "worker", SERVER_NONCE, new_nonce()),
    ],
    ids=["secret", "role", "server-nonce", "peer-nonce"],
)
def test_keys_depend_on_secret_role_and_both_nonces(
    change: object,
) -> None:
    assert callable(change)
    up, down = derive_keys(SECRET, "worker", SERVER_NONCE, PEER_NONCE)
    other_up, other_down = change()
    assert up != other_up and down != other_down and up != down
    wire = Sealer(up).seal(b"payload")
    with pytest.raises(SealError):
        Opener(other_up).open(_body(wire))


def test_tampering_with_any_byte_fails() -> None:
    sealer, _ = _pair()
    up, _ = derive_keys(SECRET, "worker", SERVER_NONCE, PEER_NONCE)
    wire = sealer.seal(b"task 17 finished")
    outcomes = set()
    for index in range(len(wire)):
        for flip in (0x01, 0x80):
            tampered = bytearray(wire)
            tampered[index] ^= flip
            decoder = FrameDecoder(1 << 10)
            decoder.feed(bytes(tampered) + b"\0" * 64)
            try:
                frame = decoder.next_frame()
            except ProtocolError:
                outcomes.add("over the limit")  # a length made huge: refused before reading it
                continue
            if frame is None:
                outcomes.add("incomplete")  # a length made larger: the frame never completes
                continue
            with pytest.raises(SealError, match="failed authentication"):
                Opener(up).open(frame)
            outcomes.add("failed")
    assert outcomes == {"over the limit", "incomplete", "failed"}


def test_a_changed_length_prefix_fails_even_with_the_right_bytes() -> None:
    """The length is associated data: a shorter claimed length cuts the frame and fails."""
    sealer, opener = _pair()
    wire = sealer.seal(b"0123456789")
    body = _body(wire)
    with pytest.raises(SealError):
        opener.open(body[:-1])
    assert opener.counter == 0
    assert opener.open(body) == b"0123456789"


def test_replay_fails() -> None:
    sealer, opener = _pair()
    wire = sealer.seal(b"run task 1")
    assert opener.open(_body(wire)) == b"run task 1"
    with pytest.raises(SealError, match="frame 1 failed"):
        opener.open(_body(wire))


def test_reorder_fails() -> None:
    sealer, opener = _pair()
    first, second = sealer.seal(b"first"), sealer.seal(b"second")
    with pytest.raises(SealError):
        opener.open(_body(second))
    assert opener.open(_body(first)) == b"first"


def test_a_dropped_frame_makes_the_next_one_fail() -> None:
    sealer, opener = _pair()
    sealer.seal(b"dropped")
    with pytest.raises(SealError):
        opener.open(_body(sealer.seal(b"next")))


@pytest.mark.parametrize("size", [0, 1, TAG_SIZE - 1])
def test_truncated_below_the_tag_fails(size: int) -> None:
    sealer, opener = _pair()
    with pytest.raises(SealError, match="too short"):
        opener.open(_body(sealer.seal(b"abc"))[:size])


def test_truncation_inside_the_ciphertext_fails() -> None:
    sealer, opener = _pair()
    body = _body(sealer.seal(b"some payload of a few bytes"))
    for cut in range(TAG_SIZE, len(body)):
        with pytest.raises(SealError):
            opener.open(body[:cut])


def test_counter_overflow_is_refused_on_both_sides() -> None:
    up, _ = derive_keys(SECRET, "worker", SERVER_NONCE, PEER_NONCE)
    sealer, opener = Sealer(up, COUNTER_LIMIT - 1), Opener(up, COUNTER_LIMIT - 1)
    assert opener.open(_body(sealer.seal(b"last"))) == b"last"
    with pytest.raises(SealError, match="exhausted"):
        sealer.seal(b"one too many")
    with pytest.raises(SealError, match="exhausted"):
        opener.open(b"\0" * 32)
    assert sealer.counter == opener.counter == COUNTER_LIMIT


def test_a_failed_frame_does_not_advance_the_counter() -> None:
    sealer, opener = _pair()
    with pytest.raises(SealError):
        opener.open(b"\0" * 40)
    assert opener.counter == 0
    assert opener.open(_body(sealer.seal(b"ok"))) == b"ok"
