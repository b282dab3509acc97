"""An async client connection, for code that runs inside trio (in-process tests, a Python API).

The command line uses the blocking one (`hqpy.client.blocking`), which starts faster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

from hqpy.client.blocking import ACCESS_RETRY, ClientError
from hqpy.common import serverdir
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import AuthError, peer_handshake
from hqpy.protocol.framing import FramedStream, ProtocolError

T = TypeVar("T")


class ServerConnection:
    def __init__(
        self, framed: FramedStream, record: serverdir.AccessRecord, server_dir: Path
    ) -> None:
        self.framed = framed
        self.record = record
        self.server_dir = server_dir

    async def request(self, request: m.ClientRequest, expect: type[T]) -> T:
        """Send a request and return its response, raising `ClientError` for an error reply."""
        try:
            await self.framed.send(request, codec.CLIENT_REQUEST)
            response = await self.framed.receive(codec.CLIENT_RESPONSE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as e:
            raise ClientError(f"Connection to the server was lost: {e}") from None
        except ProtocolError as e:
            raise ClientError(f"Invalid response from the server: {e}") from None
        if response is None:
            raise ClientError("The server closed the connection")
        if isinstance(response, m.ErrorResponse):
            raise ClientError(response.message)
        if not isinstance(response, expect):
            raise ClientError(f"Unexpected response from the server: {type(response).__name__}")
        return response

    async def aclose(self) -> None:
        await self.framed.aclose()


async def _load_access(server_dir: Path, wait: float) -> serverdir.AccessRecord:
    deadline = trio.current_time() + wait
    while True:
        try:
            return serverdir.load_access(server_dir)
        except serverdir.AccessError:
            if (
                trio.current_time() >= deadline
                or serverdir.resolve_access_path(server_dir).exists()
            ):
                raise
        await trio.sleep(0.02)


async def connect(server_dir: Path, wait: float = ACCESS_RETRY) -> ServerConnection:
    """Connect and authenticate as a client of the server living in `server_dir`."""
    try:
        record = await _load_access(server_dir, wait)
    except serverdir.AccessError as e:
        raise ClientError(str(e)) from None
    if record.client is None or not record.client.secret_key:
        raise ClientError(f"The access file in `{server_dir}` has no client part")
    try:
        stream = await trio.open_tcp_stream(record.client.host, record.client.port)
    except OSError as e:
        raise ClientError(
            f"Could not connect to server at `{server_dir}` "
            f"({record.client.host}:{record.client.port}): {e.strerror or e}. "
            "Make sure that the server is running."
        ) from None
    framed = FramedStream(stream)
    try:
        await peer_handshake(framed, "client", record.client.secret_key)
    except (AuthError, ProtocolError, trio.TooSlowError) as e:
        await stream.aclose()
        raise ClientError(f"Could not connect to server at `{server_dir}`: {e}") from None
    except (trio.BrokenResourceError, ConnectionError) as e:
        await stream.aclose()
        raise ClientError(f"Could not connect to server at `{server_dir}`: {e}") from None
    return ServerConnection(framed, record, server_dir)


@asynccontextmanager
async def open_connection(
    server_dir: Path, wait: float = ACCESS_RETRY
) -> AsyncIterator[ServerConnection]:
    conn = await connect(server_dir, wait)
    try:
        yield conn
    finally:
        with trio.CancelScope(shield=True):
            await conn.aclose()
