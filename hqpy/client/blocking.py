"""The command line's connection to the server: plain blocking sockets, no event loop.

A client command sends a request and waits for its answer; it needs no concurrency, and not
importing trio makes every `hq` call start noticeably faster. Frames and the handshake are the
same as the server's (`protocol.frames`, `protocol.handshake`, sealed by `protocol.seal`).
"""

from __future__ import annotations

import _socket  # the C module under `socket`: see `_open_socket`
import time
from pathlib import Path
from typing import TypeVar

from hqpy.common import serverdir
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.blocking import BlockingLink
from hqpy.protocol.frames import ProtocolError
from hqpy.protocol.handshake import HANDSHAKE_TIMEOUT, AuthError

T = TypeVar("T")
M = TypeVar("M")

ACCESS_RETRY = 1.0
"""How long a client waits for a just-started server to write its access file."""


class ClientError(Exception):
    """Anything that stops a client command: the message is shown to the user as it is."""


class BlockingConnection(BlockingLink[_socket.socket]):
    def __init__(
        self, sock: _socket.socket, record: serverdir.AccessRecord, server_dir: Path
    ) -> None:
        super().__init__(sock)
        self.record = record
        self.server_dir = server_dir

    def handshake(self, role: str, secret: str) -> None:
        self.sock.settimeout(HANDSHAKE_TIMEOUT)
        super().handshake(role, secret)
        self.sock.settimeout(None)

    def request(self, request: m.ClientRequest, expect: type[T]) -> T:
        """Send a request and return its response, raising `ClientError` for an error reply."""
        self.send_request(request)
        return self.response(expect)

    def send_request(self, request: m.ClientRequest) -> None:
        """Send a request whose response `response` reads later (the server works on it
        meanwhile)."""
        try:
            self.send(request, codec.CLIENT_REQUEST)
        except (ConnectionError, TimeoutError, OSError) as e:
            raise ClientError(f"Connection to the server was lost: {e}") from None

    def response(self, expect: type[T]) -> T:
        """The response to the request sent last, raising `ClientError` for an error reply."""
        try:
            response = self.receive(codec.CLIENT_RESPONSE)
        except (ConnectionError, TimeoutError, OSError) as e:
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

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_access(server_dir: Path, wait: float = ACCESS_RETRY) -> serverdir.AccessRecord:
    """The live server's access record; a server that is just starting gets `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return serverdir.load_access(server_dir)
        except serverdir.AccessError as e:
            if time.monotonic() >= deadline or serverdir.resolve_access_path(server_dir).exists():
                raise ClientError(str(e)) from None
        time.sleep(0.02)


def _open_socket(host: str, port: int, timeout: float) -> _socket.socket:
    """`socket.create_connection`, made on `_socket`, the C module that `socket` wraps:
    importing `socket` builds four enums and imports `selectors` (~4 ms of a one-request call).
    An ASCII host goes to `getaddrinfo` as bytes: a str is IDNA-encoded first, and importing that
    codec costs another ~1 ms."""
    name: str | bytes = host.encode() if host.isascii() else host
    error: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as e:  # as create_connection: try the next address, raise the last error
            sock.close()
            error = e
    raise error or OSError("getaddrinfo returns an empty list")


def connect(server_dir: Path, wait: float = ACCESS_RETRY) -> BlockingConnection:
    """Connect and authenticate as a client of the server living in `server_dir`."""
    record = load_access(server_dir, wait)
    endpoint = record.client
    secret = None if endpoint is None else endpoint.secret_key
    if endpoint is None or not secret:
        raise ClientError(f"The access file in `{server_dir}` has no client part")
    try:
        sock = _open_socket(endpoint.host, endpoint.port, HANDSHAKE_TIMEOUT)
    except OSError as e:
        raise ClientError(
            f"Could not connect to server at `{server_dir}` "
            f"({endpoint.host}:{endpoint.port}): {e.strerror or e}. "
            "Make sure that the server is running."
        ) from None
    conn = BlockingConnection(sock, record, server_dir)
    try:
        conn.handshake("client", secret)
    except (AuthError, ProtocolError, OSError) as e:
        conn.close()
        raise ClientError(f"Could not connect to server at `{server_dir}`: {e}") from None
    return conn
