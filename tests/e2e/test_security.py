"""Hostile or broken peers on the server's ports never take the server down."""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import pytest
import trio

from hqpy.protocol.auth import AuthError, new_secret, peer_handshake
from hqpy.protocol.framing import FramedStream
from tests.e2e.harness import HqEnv

pytestmark = pytest.mark.e2e


def access_record(hq_env: HqEnv) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(
        (hq_env.server_dir / "hq-current" / "access.json").read_text()
    )
    return record


def assert_server_healthy(hq_env: HqEnv) -> None:
    assert hq_env.server is not None and hq_env.server.is_running(), hq_env.server
    assert hq_env.command("job", "list", json=True) == []
    assert "Traceback" not in hq_env.server.stderr(), hq_env.server.stderr()


def raw_connect(hq_env: HqEnv, role: str = "client") -> socket.socket:
    endpoint = access_record(hq_env)[role]
    sock = socket.create_connection((endpoint["host"], endpoint["port"]), timeout=20)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


PAYLOADS = {
    "garbage": os.urandom(4096),
    "text": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "huge-length": b"\xff\xff\xff\xff",
    "half-frame": struct.pack(">I", 100) + b"0123456789",
    "bad-json": frame(b"{this is not json"),
    "wrong-message": frame(b'{"op": "stop-server"}'),
}


@pytest.mark.parametrize("role", ["client", "worker"])
def test_server_survives_bad_bytes(hq_env: HqEnv, role: str) -> None:
    server = hq_env.start_server()
    for name, payload in PAYLOADS.items():
        with raw_connect(hq_env, role) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            read_until_closed(sock)
        assert server.is_running(), name
        result = hq_env.run("job", "list", check=False)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
    assert "Traceback" not in server.stderr(), server.stderr()


def test_server_drops_connection_announcing_huge_frame(hq_env: HqEnv) -> None:
    hq_env.start_server()
    with raw_connect(hq_env) as sock:
        # Keep our side open: the server must hang up by itself, not wait for 4 GiB.
        sock.sendall(b"\xff\xff\xff\xff")
        read_until_closed(sock)
    assert_server_healthy(hq_env)


def handshake(host: str, port: int, role: str, secret: str) -> None:
    async def go() -> None:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await peer_handshake(FramedStream(stream), role, secret)

    trio.run(go)


def test_wrong_secret_refused(hq_env: HqEnv) -> None:
    hq_env.start_server()
    client = access_record(hq_env)["client"]
    with pytest.raises(AuthError):
        handshake(client["host"], client["port"], "client", new_secret())
    assert_server_healthy(hq_env)


def test_worker_secret_refused_on_client_port(hq_env: HqEnv) -> None:
    hq_env.start_server()
    record = access_record(hq_env)
    client, worker = record["client"], record["worker"]
    with pytest.raises(AuthError):
        handshake(client["host"], client["port"], "worker", worker["secret_key"])
    with pytest.raises(AuthError):
        handshake(client["host"], client["port"], "client", worker["secret_key"])
    assert_server_healthy(hq_env)


def test_client_secret_refused_on_worker_port(hq_env: HqEnv) -> None:
    hq_env.start_server()
    record = access_record(hq_env)
    client, worker = record["client"], record["worker"]
    with pytest.raises(AuthError):
        handshake(worker["host"], worker["port"], "client", client["secret_key"])
    with pytest.raises(AuthError):
        handshake(worker["host"], worker["port"], "worker", client["secret_key"])
    assert_server_healthy(hq_env)


def test_authenticated_client_sending_garbage(hq_env: HqEnv) -> None:
    hq_env.start_server()
    client = access_record(hq_env)["client"]

    async def go() -> None:
        stream = await trio.open_tcp_stream(client["host"], client["port"])
        async with stream:
            framed = FramedStream(stream)
            await peer_handshake(framed, "client", client["secret_key"])
            await framed.send_frame(b"\x00garbage that is not a request")
            with trio.fail_after(20):
                try:
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass

    trio.run(go)
    assert_server_healthy(hq_env)
