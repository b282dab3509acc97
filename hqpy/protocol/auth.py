"""The handshake over trio streams; its logic lives in `handshake.py`."""

from __future__ import annotations

import trio

from hqpy.protocol import messages as m
from hqpy.protocol.codec import HANDSHAKE
from hqpy.protocol.framing import FramedStream, ProtocolError
from hqpy.protocol.handshake import (
    HANDSHAKE_TIMEOUT,
    PROTOCOL,
    ROLES,
    AuthError,
    PeerHandshake,
    check_peer,
    new_nonce,
    new_secret,
    server_hello,
    server_seal,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "PROTOCOL",
    "ROLES",
    "AuthError",
    "new_secret",
    "peer_handshake",
    "server_handshake",
]


async def server_handshake(stream: FramedStream, secrets_by_role: dict[str, str]) -> str:
    """Authenticate a peer; returns its role. Raises `AuthError` or `ProtocolError`."""
    nonce = new_nonce()
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await stream.send(server_hello(nonce), HANDSHAKE)
        hello = await stream.receive(HANDSHAKE)
    if hello is None:
        raise AuthError("peer closed the connection during the handshake")
    if not isinstance(hello, m.PeerHello):
        raise ProtocolError(f"expected a peer hello, got {type(hello).__name__}")
    try:
        welcome = check_peer(hello, nonce, secrets_by_role)
    except AuthError as e:
        with trio.move_on_after(1):
            await stream.send(m.Refused(str(e)), HANDSHAKE)
        raise
    await stream.send(welcome, HANDSHAKE)
    stream.secure(*server_seal(hello, nonce, secrets_by_role))
    return hello.role


async def peer_handshake(stream: FramedStream, role: str, secret: str) -> None:
    """Authenticate to the server as `role`. Raises `AuthError` with the server's reason."""
    handshake = PeerHandshake(role, secret)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        hello = await stream.receive(HANDSHAKE)
        await stream.send(handshake.answer(hello), HANDSHAKE)
        answer = await stream.receive(HANDSHAKE)
    handshake.check(answer)
    stream.secure(*handshake.seal())
