"""Frames without I/O: a 4-byte big-endian length, then the payload.

`FrameDecoder` is fed whatever bytes arrive and hands out whole frames, so the async server and
the blocking client read frames the same way.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
HANDSHAKE_FRAME_LIMIT = 16 * 1024
"""Before a peer has authenticated, it may send only small frames."""
FRAME_LIMIT = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol: garbage, an oversized frame, or a frame cut short."""


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Collects received bytes; `limit` bounds the size of one incoming frame."""

    def __init__(self, limit: int = HANDSHAKE_FRAME_LIMIT) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole frame yet."""
        return len(self._buffer)

    def missing(self) -> int:
        """At least how many more bytes the next frame needs (0: a frame is ready)."""
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        size: int = HEADER.unpack_from(self._buffer)[0]
        self._check(size)
        return max(0, HEADER.size + size - len(self._buffer))

    def next_frame(self) -> bytes | None:
        """The next whole frame's payload, or None if more bytes are needed."""
        if self.missing():
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
        del self._buffer[: HEADER.size + size]
        return payload

    def eof(self) -> None:
        """The peer closed the connection: fine between frames, an error inside one."""
        if self._buffer:
            raise ProtocolError(
                f"connection closed in the middle of a frame ({len(self._buffer)} bytes)"
            )

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise ProtocolError(f"frame of {size} bytes is over the limit of {self.limit} bytes")
