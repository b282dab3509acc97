"""Framing and the handshake over in-memory streams (no sockets, no real time)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hqpy import __version__
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import (
    PROTOCOL,
    AuthError,
    new_secret,
    peer_handshake,
    server_handshake,
)
from hqpy.protocol.framing import (
    FRAME_LIMIT,
    HANDSHAKE_FRAME_LIMIT,
    HEADER,
    FramedStream,
    ProtocolError,
)

SECRET = new_secret()


def framed_pair() -> tuple[FramedStream, FramedStream]:
    left, right = trio.testing.memory_stream_pair()
    return FramedStream(left), FramedStream(right)


async def outcome_of(fn: Callable[[], Awaitable[Any]]) -> Any:
    """The result of `fn()`, or the exception it raised."""
    try:
        return await fn()
    except Exception as e:
        return e


async def handshake_both(
    server_secrets: dict[str, str], role: str, secret: str
) -> tuple[Any, Any, FramedStream, FramedStream]:
    """Run both sides of the handshake; returns what each side returned or raised."""
    server, peer = framed_pair()
    results: dict[str, Any] = {}

    async def run_server() -> None:
        results["server"] = await outcome_of(lambda: server_handshake(server, server_secrets))
        if isinstance(results["server"], Exception):
            await server.aclose()

    async def run_peer() -> None:
        results["peer"] = await outcome_of(lambda: peer_handshake(peer, role, secret))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            nursery.start_soon(run_peer)
    return results["server"], results["peer"], server, peer


async def hello_from_server(peer: FramedStream) -> m.ServerHello:
    hello = await peer.receive(codec.HANDSHAKE)
    assert isinstance(hello, m.ServerHello)
    return hello


# --- framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 200_000])
async def test_frame_round_trips(size: int) -> None:
    a, b = framed_pair()
    a.limit = b.limit = FRAME_LIMIT
    payload = secrets.token_bytes(size)
    await a.send_frame(payload)
    assert await b.receive_frame() == payload


async def test_frames_keep_their_boundaries() -> None:
    a, b = framed_pair()
    payloads = [b"first", b"", b"third" * 100]
    for payload in payloads:
        await a.send_frame(payload)
    assert [await b.receive_frame() for _ in payloads] == payloads


async def test_frame_split_into_single_bytes_is_reassembled() -> None:
    left, right = trio.testing.memory_stream_pair()
    framed = FramedStream(right)
    data = HEADER.pack(5) + b"hello"
    for i in range(len(data)):
        await left.send_all(data[i : i + 1])
    assert await framed.receive_frame() == b"hello"


async def test_message_round_trips_through_a_frame() -> None:
    a, b = framed_pair()
    await a.send(m.CloseJobsRequest("1-3"), codec.CLIENT_REQUEST)
    assert await b.receive(codec.CLIENT_REQUEST) == m.CloseJobsRequest("1-3")


async def test_oversized_length_prefix_raises_protocol_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    framed = FramedStream(right, limit=1024)
    await left.send_all(HEADER.pack(1025))
    with pytest.raises(ProtocolError):
        await framed.receive_frame()


async def test_frame_at_the_limit_is_accepted() -> None:
    left, right = trio.testing.memory_stream_pair()
    framed = FramedStream(right, limit=1024)
    await left.send_all(HEADER.pack(1024) + b"x" * 1024)
    assert await framed.receive_frame() == b"x" * 1024


async def test_eof_in_the_middle_of_a_payload_raises_protocol_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    framed = FramedStream(right)
    await left.send_all(HEADER.pack(10) + b"abc")
    await left.aclose()
    with pytest.raises(ProtocolError):
        await framed.receive_frame()


async def test_eof_in_the_middle_of_a_length_prefix_raises_protocol_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    framed = FramedStream(right)
    await left.send_all(HEADER.pack(10)[:2])
    await left.aclose()
    with pytest.raises(ProtocolError):
        await framed.receive_frame()


async def test_clean_eof_returns_none() -> None:
    a, b = framed_pair()
    await a.send_frame(b"last")
    await a.aclose()
    assert await b.receive_frame() == b"last"
    assert await b.receive_frame() is None


async def test_clean_eof_returns_none_from_receive() -> None:
    a, b = framed_pair()
    await a.aclose()
    assert await b.receive(codec.CLIENT_REQUEST) is None


async def test_undecodable_frame_raises_protocol_error() -> None:
    a, b = framed_pair()
    await a.send_frame(b"not json")
    with pytest.raises(ProtocolError):
        await b.receive(codec.CLIENT_REQUEST)


async def test_frame_of_another_union_raises_protocol_error() -> None:
    a, b = framed_pair()
    await a.send(m.OkResponse(), codec.CLIENT_RESPONSE)
    with pytest.raises(ProtocolError):
        await b.receive(codec.CLIENT_REQUEST)


async def test_non_object_json_frame_raises_protocol_error() -> None:
    a, b = framed_pair()
    await a.send_frame(b"null")
    with pytest.raises(ProtocolError):
        await b.receive(codec.CLIENT_REQUEST)


# --- handshake -----------------------------------------------------------------------------------


async def test_handshake_with_the_right_secret_passes_both_ways() -> None:
    server_result, peer_result, server, peer = await handshake_both(
        {"client": SECRET}, "client", SECRET
    )
    assert server_result == "client"
    assert peer_result is None
    await peer.send(m.ServerInfoRequest(), codec.CLIENT_REQUEST)
    assert await server.receive(codec.CLIENT_REQUEST) == m.ServerInfoRequest()


async def test_handshake_returns_the_role_of_the_peer() -> None:
    server_result, _, _, _ = await handshake_both(
        {"client": new_secret(), "worker": SECRET}, "worker", SECRET
    )
    assert server_result == "worker"


async def test_handshake_lifts_the_frame_limit_on_both_sides() -> None:
    _, _, server, peer = await handshake_both({"client": SECRET}, "client", SECRET)
    assert server.limit == peer.limit == FRAME_LIMIT


async def test_wrong_secret_fails_on_both_sides() -> None:
    server_result, peer_result, server, _ = await handshake_both(
        {"client": SECRET}, "client", new_secret()
    )
    assert isinstance(server_result, AuthError)
    assert "wrong secret" in str(server_result)
    assert isinstance(peer_result, AuthError)
    assert "refused" in str(peer_result)
    assert server.limit == HANDSHAKE_FRAME_LIMIT


async def test_secret_of_the_other_role_fails() -> None:
    worker_secret = new_secret()
    server_result, peer_result, _, _ = await handshake_both(
        {"client": SECRET, "worker": worker_secret}, "client", worker_secret
    )
    assert isinstance(server_result, AuthError)
    assert isinstance(peer_result, AuthError)


async def test_wrong_role_is_refused() -> None:
    server_result, peer_result, _, _ = await handshake_both({"client": SECRET}, "worker", SECRET)
    assert isinstance(server_result, AuthError)
    assert "unknown role 'worker'" in str(server_result)
    assert isinstance(peer_result, AuthError)
    assert "unknown role" in str(peer_result)


async def test_peer_with_another_version_is_refused() -> None:
    server, peer = framed_pair()
    result: Any = None

    async def run_server() -> None:
        nonlocal result
        result = await outcome_of(lambda: server_handshake(server, {"client": SECRET}))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            await hello_from_server(peer)
            hello = m.PeerHello(PROTOCOL, "0.0.1-other", "client", "00" * 16, "00" * 32)
            await peer.send(hello, codec.HANDSHAKE)
            answer = await peer.receive(codec.HANDSHAKE)
    assert isinstance(answer, m.Refused)
    assert "version mismatch" in answer.reason
    assert isinstance(result, AuthError)
    assert "0.0.1-other" in str(result)


async def test_peer_with_another_protocol_is_refused() -> None:
    server, peer = framed_pair()
    result: Any = None

    async def run_server() -> None:
        nonlocal result
        result = await outcome_of(lambda: server_handshake(server, {"client": SECRET}))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            await hello_from_server(peer)
            hello = m.PeerHello("hqpy/0", __version__, "client", "00" * 16, "00" * 32)
            await peer.send(hello, codec.HANDSHAKE)
            answer = await peer.receive(codec.HANDSHAKE)
    assert isinstance(answer, m.Refused)
    assert isinstance(result, AuthError)


async def test_server_with_another_version_is_refused_by_the_peer() -> None:
    server, peer = framed_pair()
    await server.send(m.ServerHello(PROTOCOL, "0.0.1-other", "00" * 16), codec.HANDSHAKE)
    with pytest.raises(AuthError, match="version mismatch"):
        await peer_handshake(peer, "client", SECRET)


async def test_server_that_cannot_prove_the_secret_is_refused_by_the_peer() -> None:
    server, peer = framed_pair()

    async def fake_server() -> None:
        await server.send(m.ServerHello(PROTOCOL, __version__, "00" * 16), codec.HANDSHAKE)
        await server.receive(codec.HANDSHAKE)
        await server.send(m.Welcome("ab" * 32), codec.HANDSHAKE)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_server)
            with pytest.raises(AuthError, match="could not prove"):
                await peer_handshake(peer, "client", SECRET)
    assert peer.limit == HANDSHAKE_FRAME_LIMIT


async def test_peer_closing_during_the_handshake_is_an_auth_error() -> None:
    server, peer = framed_pair()

    async def leaving_peer() -> None:
        await hello_from_server(peer)
        assert isinstance(peer.stream, trio.abc.HalfCloseableStream)
        await peer.stream.send_eof()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leaving_peer)
            with pytest.raises(AuthError):
                await server_handshake(server, {"client": SECRET})


async def test_server_closing_during_the_handshake_is_an_auth_error() -> None:
    server, peer = framed_pair()
    await server.aclose()
    with pytest.raises(AuthError):
        await peer_handshake(peer, "client", SECRET)


async def test_garbage_before_hello_raises_protocol_error() -> None:
    server, peer = framed_pair()
    await peer.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ProtocolError):
        await server_handshake(server, {"client": SECRET})


async def test_non_json_hello_raises_protocol_error() -> None:
    server, peer = framed_pair()
    await peer.send_frame(b"\x00\x01garbage")
    with pytest.raises(ProtocolError):
        await server_handshake(server, {"client": SECRET})


async def test_non_object_json_hello_raises_protocol_error() -> None:
    server, peer = framed_pair()
    await peer.send_frame(b"null")
    with pytest.raises(ProtocolError):
        await server_handshake(server, {"client": SECRET})


async def test_hello_of_the_wrong_kind_raises_protocol_error() -> None:
    server, peer = framed_pair()
    await peer.send(m.Welcome("x"), codec.HANDSHAKE)
    with pytest.raises(ProtocolError):
        await server_handshake(server, {"client": SECRET})


async def test_request_before_hello_raises_protocol_error() -> None:
    server, peer = framed_pair()
    await peer.send(m.StopServerRequest(), codec.CLIENT_REQUEST)
    with pytest.raises(ProtocolError):
        await server_handshake(server, {"client": SECRET})


async def test_frame_over_the_handshake_limit_is_refused_before_authentication() -> None:
    server, peer = framed_pair()
    assert server.limit == HANDSHAKE_FRAME_LIMIT
    await peer.stream.send_all(HEADER.pack(HANDSHAKE_FRAME_LIMIT + 1))
    with pytest.raises(ProtocolError, match="over the limit"):
        await server_handshake(server, {"client": SECRET})


async def test_frame_at_the_handshake_limit_is_read_before_authentication() -> None:
    server, peer = framed_pair()
    await peer.send_frame(b" " * (HANDSHAKE_FRAME_LIMIT - 2) + b"{}")
    with pytest.raises(ProtocolError, match="malformed"):
        await server_handshake(server, {"client": SECRET})


async def test_peer_is_also_limited_before_authentication() -> None:
    server, peer = framed_pair()
    await server.stream.send_all(HEADER.pack(HANDSHAKE_FRAME_LIMIT + 1))
    with pytest.raises(ProtocolError, match="over the limit"):
        await peer_handshake(peer, "client", SECRET)


async def test_silent_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    server, _peer = framed_pair()
    with pytest.raises(trio.TooSlowError):
        await server_handshake(server, {"client": SECRET})
