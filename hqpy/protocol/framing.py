"""Frames over a trio stream (the server, workers and async clients).

After the handshake, `secure` switches both directions to sealed frames (`protocol.seal`)."""

from __future__ import annotations

from typing import TypeVar

import trio

from hqpy.protocol import codec
from hqpy.protocol.frames import (
    FRAME_LIMIT,
    HANDSHAKE_FRAME_LIMIT,
    HEADER,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from hqpy.protocol.seal import TAG_SIZE, Opener, Sealer

RECEIVE_CHUNK = 1 << 20
"""At most this much is asked of the socket at once: a claimed length is no reason to allocate."""

T = TypeVar("T")

__all__ = ["FRAME_LIMIT", "HANDSHAKE_FRAME_LIMIT", "HEADER", "FramedStream", "ProtocolError"]


class FramedStream:
    """Reads and writes whole frames; `limit` bounds the size of incoming frames."""

    def __init__(self, stream: trio.abc.Stream, limit: int = HANDSHAKE_FRAME_LIMIT) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(limit)
        self._send_lock = trio.StrictFIFOLock()
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None

    def secure(self, sealer: Sealer, opener: Opener) -> None:
        """Seal every later frame in both directions, and accept frames up to FRAME_LIMIT."""
        self._sealer = sealer
        self._opener = opener
        self.limit = FRAME_LIMIT

    @property
    def limit(self) -> int:
        """The largest payload accepted (a sealed frame is its tag longer on the wire)."""
        return self._decoder.limit - (TAG_SIZE if self._opener is not None else 0)

    @limit.setter
    def limit(self, value: int) -> None:
        self._decoder.limit = value + (TAG_SIZE if self._opener is not None else 0)

    async def receive_frame(self) -> bytes | None:
        """The next frame's payload, or None when the peer closed the connection cleanly."""
        decoder = self._decoder
        while True:
            missing = decoder.missing()
            if not missing:
                frame = decoder.next_frame()
                opener = self._opener
                if opener is None or frame is None:
                    return frame
                return opener.open(frame)
            chunk = await self.stream.receive_some(min(max(65536, missing), RECEIVE_CHUNK))
            if not chunk:
                decoder.eof()
                return None
            decoder.feed(chunk)

    async def receive(self, union: codec.Wire[T]) -> T | None:
        """The next message of `union`, or None on a clean close."""
        payload = await self.receive_frame()
        if payload is None:
            return None
        try:
            return codec.decode(payload, union)
        except codec.DecodeError as e:
            raise ProtocolError(str(e)) from None

    async def send_frame(self, payload: bytes) -> None:
        async with self._send_lock:
            sealer = self._sealer
            # Sealed under the lock: frames must leave in the order of their counters.
            data = encode_frame(payload) if sealer is None else sealer.seal(payload)
            await self.stream.send_all(data)

    async def send(self, message: T, union: codec.Wire[T]) -> None:
        await self.send_frame(codec.encode(message, union))

    async def aclose(self) -> None:
        await self.stream.aclose()
