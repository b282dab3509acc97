"""After a real handshake, a frame that was not sealed by the peer closes only that connection."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.auth import peer_handshake
from hqpy.protocol.frames import encode_frame
from hqpy.protocol.framing import FramedStream
from tests.e2e.harness import HqEnv, wait_until

pytestmark = pytest.mark.e2e


def _endpoint(hq_env: HqEnv, role: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(
        (hq_env.server_dir / "hq-current" / "access.json").read_text()
    )
    endpoint: dict[str, Any] = record[role]
    return endpoint


async def _open(endpoint: dict[str, Any], role: str) -> tuple[FramedStream, int]:
    """An authenticated, sealed connection and its local port (the server logs it)."""
    stream = await trio.open_tcp_stream(endpoint["host"], endpoint["port"])
    framed = FramedStream(stream)
    await peer_handshake(framed, role, endpoint["secret_key"])
    return framed, stream.socket.getsockname()[1]


async def _closed_by_server(framed: FramedStream) -> bool:
    """Read until the server hangs up; True if it did so without sending any frame."""
    with trio.fail_after(20):
        try:
            return await framed.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


async def _server_info(framed: FramedStream) -> m.ServerInfoResponse:
    await framed.send(m.ServerInfoRequest(), codec.CLIENT_REQUEST)
    with trio.fail_after(20):
        response = await framed.receive(codec.CLIENT_RESPONSE)
    assert isinstance(response, m.ServerInfoResponse), response
    return response


def _plain_info_request() -> bytes:
    return encode_frame(codec.encode(m.ServerInfoRequest(), codec.CLIENT_REQUEST))


@pytest.mark.parametrize("attack", ["plain", "replay", "flipped", "reflected"])
def test_forged_frame_on_client_port_closes_only_that_connection(
    hq_env: HqEnv, attack: str
) -> None:
    server = hq_env.start_server()
    endpoint = _endpoint(hq_env, "client")

    async def go() -> int:
        bystander, _ = await _open(endpoint, "client")
        victim, port = await _open(endpoint, "client")
        await _server_info(victim)
        if attack == "plain":
            forged = _plain_info_request()
        else:
            # A sealed frame recorded on the wire, then replayed or altered by an injector.
            sealer = victim._sealer
            assert sealer is not None
            sealer.counter -= 1
            forged = sealer.seal(codec.encode(m.ServerInfoRequest(), codec.CLIENT_REQUEST))
            if attack == "flipped":
                sealer.counter -= 1
                data = bytearray(
                    sealer.seal(codec.encode(m.ServerInfoRequest(), codec.CLIENT_REQUEST))
                )
                data[-1] ^= 1
                forged = bytes(data)
            elif attack == "reflected":
                # A frame the server sent to this client, sent back to it.
                await victim.send(m.ServerInfoRequest(), codec.CLIENT_REQUEST)
                with trio.fail_after(20):
                    forged = bytes(await victim.stream.receive_some(65536))
                assert forged
        await victim.stream.send_all(forged)
        assert await _closed_by_server(victim)
        await victim.aclose()
        # The server keeps serving the connection that was already open, and new ones.
        await _server_info(bystander)
        fresh, _ = await _open(endpoint, "client")
        await _server_info(fresh)
        await fresh.aclose()
        await bystander.aclose()
        return port

    port = trio.run(go)
    wait_until(lambda: f":{port} (client) closed" in server.stderr(), what="the logged reason")
    line = next(x for x in server.stderr().splitlines() if f":{port} (client) closed" in x)
    assert "failed authentication" in line, line
    assert server.is_running()
    assert "Traceback" not in server.stderr(), server.stderr()
    assert hq_env.command("job", "list", json=True) == []


def test_forged_frame_on_worker_port_leaves_real_workers_working(hq_env: HqEnv) -> None:
    server = hq_env.start_server()
    hq_env.start_worker()
    endpoint = _endpoint(hq_env, "worker")

    async def go() -> int:
        intruder, port = await _open(endpoint, "worker")
        # A worker's first frame, unsealed: what an injector without the keys could send.
        await intruder.stream.send_all(
            encode_frame(codec.encode(m.WorkerStopping("forged"), codec.FROM_WORKER))
        )
        assert await _closed_by_server(intruder)
        await intruder.aclose()
        return port

    port = trio.run(go)
    wait_until(lambda: f":{port} (worker) closed" in server.stderr(), what="the logged reason")
    hq_env.command("submit", "--", "echo", "still-working")
    hq_env.command("job", "wait", "last")
    assert (hq_env.work_dir / "job-1" / "0.stdout").read_text() == "still-working\n"
    workers = hq_env.command("worker", "list", json=True)
    assert [w["id"] for w in workers] == [1], workers
    assert "Traceback" not in server.stderr(), server.stderr()
