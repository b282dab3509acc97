"""The handshake: each side proves it holds the secret of the role without sending it.

The server opens with a fresh nonce; the peer answers with its role, its own nonce and an HMAC
over both nonces made with that role's secret; the server checks it and answers with its own
HMAC, so the peer knows it talks to the real server. Versions must match exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import trio

from hqpy import __version__
from hqpy.protocol import messages as m
from hqpy.protocol.codec import Handshake
from hqpy.protocol.framing import FRAME_LIMIT, FramedStream, ProtocolError

PROTOCOL = "hqpy/1"
HANDSHAKE_TIMEOUT = 15.0
ROLES = ("client", "worker")


class AuthError(Exception):
    """The handshake failed; the message says why."""


def new_secret() -> str:
    return secrets.token_hex(32)


def _proof(secret: str, label: str, *parts: str) -> str:
    msg = "\n".join((label, *parts)).encode()
    return hmac.new(bytes.fromhex(secret), msg, hashlib.sha256).hexdigest()


async def server_handshake(stream: FramedStream, secrets_by_role: dict[str, str]) -> str:
    """Authenticate a peer; returns its role. Raises `AuthError` or `ProtocolError`."""
    nonce = secrets.token_hex(16)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await stream.send(m.ServerHello(PROTOCOL, __version__, nonce), Handshake)
        hello = await stream.receive(Handshake)
    if hello is None:
        raise AuthError("peer closed the connection during the handshake")
    if not isinstance(hello, m.PeerHello):
        raise ProtocolError(f"expected a peer hello, got {type(hello).__name__}")

    async def refuse(reason: str) -> None:
        with trio.move_on_after(1):
            await stream.send(m.Refused(reason), Handshake)
        raise AuthError(reason)

    if hello.protocol != PROTOCOL:
        await refuse(f"protocol mismatch: server speaks {PROTOCOL}, peer {hello.protocol!r}")
    if hello.version != __version__:
        await refuse(f"version mismatch: server is {__version__}, peer is {hello.version!r}")
    if hello.role not in secrets_by_role:
        await refuse(f"unknown role {hello.role!r}")
    expected = _proof(secrets_by_role[hello.role], "peer", hello.role, nonce, hello.nonce)
    if not hmac.compare_digest(expected, hello.proof):
        await refuse(f"authentication failed: wrong secret for role {hello.role!r}")
    proof = _proof(secrets_by_role[hello.role], "server", hello.role, hello.nonce, nonce)
    await stream.send(m.Welcome(proof), Handshake)
    stream.limit = FRAME_LIMIT
    return hello.role


async def peer_handshake(stream: FramedStream, role: str, secret: str) -> None:
    """Authenticate to the server as `role`. Raises `AuthError` with the server's reason."""
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        hello = await stream.receive(Handshake)
        if not isinstance(hello, m.ServerHello):
            raise AuthError("the server did not greet with a hello")
        if hello.version != __version__:
            raise AuthError(
                f"Hyperqueue version mismatch detected.\nServer version is {hello.version}, "
                f"but the current version is {__version__}."
            )
        nonce = secrets.token_hex(16)
        proof = _proof(secret, "peer", role, hello.nonce, nonce)
        await stream.send(m.PeerHello(PROTOCOL, __version__, role, nonce, proof), Handshake)
        answer = await stream.receive(Handshake)
    if isinstance(answer, m.Refused):
        raise AuthError(f"the server refused the connection: {answer.reason}")
    if not isinstance(answer, m.Welcome):
        raise AuthError("the server closed the connection during the handshake")
    expected = _proof(secret, "server", role, nonce, hello.nonce)
    if not hmac.compare_digest(expected, answer.proof):
        raise AuthError("the server could not prove it holds the secret")
    stream.limit = FRAME_LIMIT
