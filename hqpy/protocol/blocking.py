"""One blocking, framed and (after the handshake) sealed connection, without an event loop.

Both ends that talk before trio is imported use it: the CLI client for its whole life, and
`worker start` until it has registered (the agent then adopts the socket, so a read never takes a
byte past the frame it needs).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from hqpy.protocol import codec
from hqpy.protocol.frames import FRAME_LIMIT, FrameDecoder, ProtocolError, encode_frame
from hqpy.protocol.handshake import PeerHandshake
from hqpy.protocol.seal import TAG_SIZE, Opener, Sealer

T = TypeVar("T")

READ_LIMIT = 1 << 20
"""Bytes asked of one `recv` at most (its buffer is allocated at that size)."""


class BlockingSocket(Protocol):
    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, size: int, /) -> bytes: ...


S = TypeVar("S", bound="BlockingSocket")


class BlockingLink(Generic[S]):
    def __init__(self, sock: S) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.sealer: Sealer | None = None
        self.opener: Opener | None = None

    def send(self, message: T, union: codec.Wire[T]) -> None:
        payload = codec.encode(message, union)
        sealer = self.sealer
        self.sock.sendall(encode_frame(payload) if sealer is None else sealer.seal(payload))

    def receive(self, union: codec.Wire[T]) -> T | None:
        """The next message, or None on a clean close; reads no byte past its frame."""
        decoder = self.decoder
        while missing := decoder.missing():
            chunk = self.sock.recv(min(missing, READ_LIMIT))
            if not chunk:
                decoder.eof()
                return None
            decoder.feed(chunk)
        frame = decoder.next_frame()
        assert frame is not None
        if self.opener is not None:
            frame = self.opener.open(frame)
        try:
            return codec.decode(frame, union)
        except codec.DecodeError as e:
            raise ProtocolError(str(e)) from None

    def handshake(self, role: str, secret: str) -> None:
        """Prove the shared secret as `role` (`client`, `worker`); frames are sealed after."""
        peer = PeerHandshake(role, secret)
        hello = self.receive(codec.HANDSHAKE)
        self.send(peer.answer(hello), codec.HANDSHAKE)
        answer = self.receive(codec.HANDSHAKE)
        peer.check(answer)
        self.sealer, self.opener = peer.seal()
        self.decoder.limit = FRAME_LIMIT + TAG_SIZE
