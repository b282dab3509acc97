"""Length-prefixed frames over a trio stream: a 4-byte big-endian length, then the payload."""

from __future__ import annotations

import struct
from typing import Any

import trio

from hqpy.protocol import codec

HEADER = struct.Struct(">I")
HANDSHAKE_FRAME_LIMIT = 16 * 1024
"""Before a peer has authenticated, it may send only small frames."""
FRAME_LIMIT = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol: garbage, an oversized frame, or a frame cut short."""


class FramedStream:
    """Reads and writes whole frames; `limit` bounds the size of incoming frames."""

    def __init__(self, stream: trio.abc.Stream, limit: int = HANDSHAKE_FRAME_LIMIT) -> None:
        self.stream = stream
        self.limit = limit
        self._buffer = bytearray()
        self._send_lock = trio.StrictFIFOLock()

    async def _fill(self, size: int) -> bool:
        """Read until the buffer holds `size` bytes; False on a clean EOF at a frame boundary."""
        while len(self._buffer) < size:
            chunk = await self.stream.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                if self._buffer:
                    raise ProtocolError(
                        f"connection closed in the middle of a frame ({len(self._buffer)} bytes)"
                    )
                return False
            self._buffer += chunk
        return True

    async def receive_frame(self) -> bytes | None:
        """The next frame's payload, or None when the peer closed the connection cleanly."""
        if not await self._fill(HEADER.size):
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > self.limit:
            raise ProtocolError(f"frame of {size} bytes is over the limit of {self.limit} bytes")
        if not await self._fill(HEADER.size + size):
            raise ProtocolError("connection closed in the middle of a frame")
        payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
        del self._buffer[: HEADER.size + size]
        return payload

    async def receive(self, union: Any) -> Any:
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
            await self.stream.send_all(HEADER.pack(len(payload)) + payload)

    async def send(self, message: Any, union: Any) -> None:
        await self.send_frame(codec.encode(message, union))

    async def aclose(self) -> None:
        await self.stream.aclose()
