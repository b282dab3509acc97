"""Frames over a trio stream (the server, workers and async clients)."""

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

T = TypeVar("T")

__all__ = ["FRAME_LIMIT", "HANDSHAKE_FRAME_LIMIT", "HEADER", "FramedStream", "ProtocolError"]


class FramedStream:
    """Reads and writes whole frames; `limit` bounds the size of incoming frames."""

    def __init__(self, stream: trio.abc.Stream, limit: int = HANDSHAKE_FRAME_LIMIT) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(limit)
        self._send_lock = trio.StrictFIFOLock()

    @property
    def limit(self) -> int:
        return self._decoder.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._decoder.limit = value

    async def receive_frame(self) -> bytes | None:
        """The next frame's payload, or None when the peer closed the connection cleanly."""
        decoder = self._decoder
        while True:
            missing = decoder.missing()
            if not missing:
                return decoder.next_frame()
            chunk = await self.stream.receive_some(max(65536, missing))
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
            await self.stream.send_all(encode_frame(payload))

    async def send(self, message: T, union: codec.Wire[T]) -> None:
        await self.send_frame(codec.encode(message, union))

    async def aclose(self) -> None:
        await self.stream.aclose()
