"""The handshake's logic, without I/O: each side proves it holds the secret of the role.

The server opens with a fresh nonce; the peer answers with its role, its own nonce and an HMAC
over both nonces made with that role's secret; the server checks it and answers with its own
HMAC, so the peer knows it talks to the real server. Versions must match exactly. Every later
frame is sealed under keys derived from the secret and both nonces (`seal.py`). The async
drivers are in `auth.py`, the blocking client's in `hqpy.client.blocking`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from hqpy import __version__
from hqpy.protocol import messages as m
from hqpy.protocol.seal import Opener, Sealer, peer_pair, server_pair

PROTOCOL = "hqpy/1"
HANDSHAKE_TIMEOUT = 15.0
ROLES = ("client", "worker")


class AuthError(Exception):
    """The handshake failed; the message says why."""


def new_secret() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def _proof(secret: str, label: str, *parts: str) -> str:
    msg = "\n".join((label, *parts)).encode()
    return hmac.new(bytes.fromhex(secret), msg, hashlib.sha256).hexdigest()


def server_hello(nonce: str) -> m.ServerHello:
    return m.ServerHello(PROTOCOL, __version__, nonce)


def check_peer(hello: m.PeerHello, nonce: str, secrets_by_role: dict[str, str]) -> m.Welcome:
    """The server's answer to a valid peer; `AuthError` with the reason to refuse otherwise."""
    if hello.protocol != PROTOCOL:
        raise AuthError(f"protocol mismatch: server speaks {PROTOCOL}, peer {hello.protocol!r}")
    if hello.version != __version__:
        raise AuthError(f"version mismatch: server is {__version__}, peer is {hello.version!r}")
    secret = secrets_by_role.get(hello.role)
    if secret is None:
        raise AuthError(f"unknown role {hello.role!r}")
    expected = _proof(secret, "peer", hello.role, nonce, hello.nonce)
    if not hmac.compare_digest(expected, hello.proof):
        raise AuthError(f"authentication failed: wrong secret for role {hello.role!r}")
    return m.Welcome(_proof(secret, "server", hello.role, hello.nonce, nonce))


def server_seal(
    hello: m.PeerHello, nonce: str, secrets_by_role: dict[str, str]
) -> tuple[Sealer, Opener]:
    """The server's sealer and opener for a peer that `check_peer` accepted."""
    return server_pair(secrets_by_role[hello.role], hello.role, nonce, hello.nonce)


class PeerHandshake:
    """The peer's side: answer the server's hello, then check the server's proof."""

    def __init__(self, role: str, secret: str) -> None:
        self.role = role
        self.secret = secret
        self.nonce = new_nonce()
        self.server_nonce = ""

    def answer(self, hello: object) -> m.PeerHello:
        if not isinstance(hello, m.ServerHello):
            raise AuthError("the server did not greet with a hello")
        if hello.version != __version__:
            raise AuthError(
                f"Hyperqueue version mismatch detected.\nServer version is {hello.version}, "
                f"but the current version is {__version__}."
            )
        self.server_nonce = hello.nonce
        proof = _proof(self.secret, "peer", self.role, hello.nonce, self.nonce)
        return m.PeerHello(PROTOCOL, __version__, self.role, self.nonce, proof)

    def check(self, answer: object) -> None:
        if isinstance(answer, m.Refused):
            raise AuthError(f"the server refused the connection: {answer.reason}")
        if not isinstance(answer, m.Welcome):
            raise AuthError("the server closed the connection during the handshake")
        expected = _proof(self.secret, "server", self.role, self.nonce, self.server_nonce)
        if not hmac.compare_digest(expected, answer.proof):
            raise AuthError("the server could not prove it holds the secret")

    def seal(self) -> tuple[Sealer, Opener]:
        """This peer's sealer and opener, once `check` passed."""
        return peer_pair(self.secret, self.role, self.server_nonce, self.nonce)
