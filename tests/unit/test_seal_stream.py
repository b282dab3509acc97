"""`FramedStream.secure`: both ends switch to sealed frames; what is injected fails to open."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hqpy.protocol.frames import FRAME_LIMIT, HANDSHAKE_FRAME_LIMIT, HEADER, encode_frame
from hqpy.protocol.framing import FramedStream, ProtocolError
from hqpy.protocol.handshake import new_nonce, new_secret
from hqpy.protocol.seal import TAG_SIZE, SealError, peer_pair, server_pair


def _pair() -> tuple[FramedStream, FramedStream, trio.abc.Stream]:
    """A secured (peer, server) pair, and the peer's raw side for injecting bytes."""
    left, right = trio.testing.memory_stream_pair()
    peer, server = FramedStream(left), FramedStream(right)
    args = (new_secret(), "worker", new_nonce(), new_nonce())
    peer.secure(*peer_pair(*args))
    server.secure(*server_pair(*args))
    return peer, server, left


async def test_sealed_frames_cross_both_ways_and_carry_no_plaintext() -> None:
    left, right = trio.testing.memory_stream_pair()
    peer, server = FramedStream(left), FramedStream(right)
    assert peer.limit == HANDSHAKE_FRAME_LIMIT
    args = (new_secret(), "client", new_nonce(), new_nonce())
    peer.secure(*peer_pair(*args))
    server.secure(*server_pair(*args))
    assert peer.limit == server.limit == FRAME_LIMIT
    secret_text = b"the payload travels sealed " * 4
    await peer.send_frame(secret_text)
    wire = await right.receive_some(65536)
    assert secret_text not in wire
    assert HEADER.unpack_from(wire)[0] == len(secret_text) + TAG_SIZE
    # Hand the bytes back to the server's decoder, as if it had read them itself.
    server._decoder.feed(wire)
    assert await server.receive_frame() == secret_text
    for i in range(5):
        await server.send_frame(b"down %d" % i)
        assert await peer.receive_frame() == b"down %d" % i


async def test_an_unsealed_frame_after_secure_fails_to_open() -> None:
    peer, server, raw = _pair()
    await peer.send_frame(b"first")
    assert await server.receive_frame() == b"first"
    await raw.send_all(encode_frame(b"x" * 40))
    with pytest.raises(SealError, match="frame 1 failed authentication"):
        await server.receive_frame()


async def test_a_claimed_length_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    _peer, server, raw = _pair()
    await raw.send_all(HEADER.pack(FRAME_LIMIT + TAG_SIZE + 1))
    with pytest.raises(ProtocolError, match="over the limit") as caught:
        await server.receive_frame()
    assert not isinstance(caught.value, SealError)
