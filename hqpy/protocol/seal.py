"""Sealed frames without I/O: ChaCha20-Poly1305 over every frame after the handshake.

Each direction has its own key, derived with HKDF-SHA256 from the role's secret and both
handshake nonces, so a connection's keys are fresh even though the secret is long-lived. The AEAD
nonce is a 64-bit count of the frames sent so far in that direction (little endian, padded to 12
bytes); it is never sent, so a replayed, reordered, dropped or altered frame fails to open. The
4-byte length prefix is the associated data: a changed length fails too. A wire frame is

    length (4 bytes, big endian, of what follows) | ciphertext | tag (16 bytes)

and a sealed frame costs exactly one AEAD call on each side.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hqpy.protocol.frames import HEADER, ProtocolError

KEY_SIZE = 32
TAG_SIZE = 16
COUNTER_LIMIT = 2**64
"""Nonces 0 .. 2**64 - 1; past that a direction refuses to seal or open (never reuse a nonce)."""
_NONCE = struct.Struct("<Q4x")
_INFO = b"hqpy/1 frame keys"


class SealError(ProtocolError):
    """A frame failed authentication, or a direction ran out of nonces."""


def derive_keys(secret: str, role: str, server_nonce: str, peer_nonce: str) -> tuple[bytes, bytes]:
    """The (peer -> server, server -> peer) keys of one connection."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_SIZE,
        salt=f"{server_nonce}\n{peer_nonce}".encode(),
        info=_INFO + b" " + role.encode(),
    )
    material = hkdf.derive(bytes.fromhex(secret))
    return material[:KEY_SIZE], material[KEY_SIZE:]


class Sealer:
    """Seals the outgoing frames of one direction."""

    __slots__ = ("_aead", "counter")

    def __init__(self, key: bytes, counter: int = 0) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = counter

    def seal(self, payload: bytes) -> bytes:
        """The whole wire frame (length prefix included) carrying `payload`."""
        counter = self.counter
        if counter >= COUNTER_LIMIT:
            raise SealError("frame counter exhausted: the connection must be reopened")
        self.counter = counter + 1
        header = HEADER.pack(len(payload) + TAG_SIZE)
        return header + self._aead.encrypt(_NONCE.pack(counter), payload, header)


class Opener:
    """Opens the incoming frames of one direction, in order."""

    __slots__ = ("_aead", "counter")

    def __init__(self, key: bytes, counter: int = 0) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = counter

    def open(self, frame: bytes) -> bytes:
        """The payload of one received frame (what followed its length prefix).

        Raises `SealError` if the frame was altered, replayed, reordered or follows a dropped one;
        the connection cannot continue after that."""
        counter = self.counter
        if counter >= COUNTER_LIMIT:
            raise SealError("frame counter exhausted: the connection must be reopened")
        if len(frame) < TAG_SIZE:
            raise SealError(f"sealed frame {counter} is too short ({len(frame)} bytes)")
        try:
            payload = self._aead.decrypt(_NONCE.pack(counter), frame, HEADER.pack(len(frame)))
        except InvalidTag:
            raise SealError(f"frame {counter} failed authentication") from None
        self.counter = counter + 1
        return payload


def server_pair(
    secret: str, role: str, server_nonce: str, peer_nonce: str
) -> tuple[Sealer, Opener]:
    """The server's side of a connection: seals server -> peer, opens peer -> server."""
    up, down = derive_keys(secret, role, server_nonce, peer_nonce)
    return Sealer(down), Opener(up)


def peer_pair(secret: str, role: str, server_nonce: str, peer_nonce: str) -> tuple[Sealer, Opener]:
    """A worker's or client's side: seals peer -> server, opens server -> peer."""
    up, down = derive_keys(secret, role, server_nonce, peer_nonce)
    return Sealer(up), Opener(down)
