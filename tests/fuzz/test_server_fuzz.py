"""A live server against hostile peers, before and after the handshake, on both ports.

One real server (the in-process `ServerProcess`, its batch backend faked so that no allocation
leaves the test) runs in a thread for the whole module; every example opens a fresh connection,
sends what hypothesis drew, closes its sending side and reads until the server hangs up. The
server must answer or drop the connection, never hang on it, never log an error or a traceback,
and a normal client must still get its `ServerInfoRequest` answered after every example.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hqpy.app.server_process import ServerProcess
from hqpy.client import blocking
from hqpy.common import serverdir
from hqpy.common.resources import ResourceDescriptorItem, ResourceKind
from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.frames import FRAME_LIMIT, FrameDecoder, encode_frame
from hqpy.protocol.handshake import PeerHandshake
from hqpy.protocol.seal import TAG_SIZE, Opener, Sealer
from hqpy.server.server import Server, ServerConfig
from tests.factories import worker_config
from tests.fuzz.strategies import FUZZ, encoded, mutated_bytes, mutated_json
from tests.server.test_autoalloc_service import FakeBackend

READ_TIMEOUT = 20.0
"""How long the server gets to answer or hang up on one connection (a hang is a failure)."""


class LiveServer:
    """A real server in its own thread and trio loop, and what it logged."""

    def __init__(self, server_dir: Path) -> None:
        self.server_dir = server_dir
        self.ready = threading.Event()
        self.crash: BaseException | None = None
        self.records: list[logging.LogRecord] = []
        self._server: ServerProcess | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._main, name="fuzzed-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self.ready.wait(30), "the server did not start"
        assert self.crash is None, self.crash

    def stop(self) -> None:
        if self._server is not None and self._token is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._server.request_stop, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the server did not stop"

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as e:  # reported by the test, not lost in the thread
            self.crash = e
        finally:
            self.ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        config = ServerConfig(server_dir=self.server_dir)
        server = ServerProcess(config, make_backend=FakeBackend().make)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            self._server = server
            self.ready.set()

    def assert_healthy(self) -> None:
        """No crash, nothing logged as an error, and a real client is still served."""
        assert self.crash is None, repr(self.crash)
        bad = [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not bad, [logging.Formatter().format(r) for r in bad]
        with blocking.connect(self.server_dir) as conn:
            info = conn.request(m.ServerInfoRequest(), m.ServerInfoResponse)
        assert info.info.version


class _Capture(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


async def _no_signals(self: Server) -> None:
    """Signal handlers need the main thread; this server runs in another one."""
    await trio.sleep_forever()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("fuzzed-server"))
    capture = _Capture(server.records)
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Server, "_watch_signals", _no_signals)
            server.start()
            try:
                yield server
            finally:
                server.stop()
    finally:
        root.removeHandler(capture)
    assert server.crash is None, repr(server.crash)


# --- a hand-written peer --------------------------------------------------------------------------


class RawPeer:
    """A blocking connection whose bytes the test controls entirely."""

    def __init__(self, live: LiveServer, role: str) -> None:
        record = serverdir.load_access(live.server_dir)
        endpoint = record.client if role == "client" else record.worker
        assert endpoint is not None and endpoint.secret_key is not None
        self.role = role
        self.secret = endpoint.secret_key
        self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=READ_TIMEOUT)
        self.decoder = FrameDecoder()
        self.sealer: Sealer | None = None
        self.opener: Opener | None = None

    def read_frame(self) -> bytes | None:
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame if self.opener is None else self.opener.open(frame)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.decoder.feed(chunk)

    def handshake(self) -> None:
        peer = PeerHandshake(self.role, self.secret)
        hello = codec.decode(self.read_frame() or b"", codec.HANDSHAKE)
        self.sock.sendall(encode_frame(codec.encode(peer.answer(hello), codec.HANDSHAKE)))
        peer.check(codec.decode(self.read_frame() or b"", codec.HANDSHAKE))
        self.sealer, self.opener = peer.seal()
        self.decoder.limit = FRAME_LIMIT + TAG_SIZE

    def send(self, data: bytes) -> None:
        """Send, unless the server already hung up (that is one of the allowed answers)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_sealed(self, payload: bytes) -> None:
        assert self.sealer is not None
        self.send(self.sealer.seal(payload))

    def finish(self) -> None:
        """Close our sending side, then read until the server hangs up (it must, in time)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            pytest.fail("the server neither answered nor dropped the connection")
        except OSError:
            pass  # reset, or already closed by the server
        finally:
            self.sock.close()


def _requests() -> st.SearchStrategy[tuple[type, bytes]]:
    """Every client request but the one that stops the server (it would end the module)."""
    return encoded(codec.CLIENT_REQUEST).filter(lambda pair: pair[0] is not m.StopServerRequest)


REGISTER = codec.encode(
    m.RegisterWorker(worker_config(2, "fuzz", heartbeat_interval=3600.0)), codec.FROM_WORKER
)


# --- before the handshake ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "worker"])
@settings(FUZZ, max_examples=100)
@given(payload=st.binary(max_size=300))
def test_garbage_instead_of_a_hello(live: LiveServer, role: str, payload: bytes) -> None:
    peer = RawPeer(live, role)
    peer.send(payload)
    peer.finish()
    live.assert_healthy()


@pytest.mark.parametrize("role", ["client", "worker"])
@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_hello(live: LiveServer, role: str, data: st.DataObject) -> None:
    peer = RawPeer(live, role)
    hello = codec.decode(peer.read_frame() or b"", codec.HANDSHAKE)
    answer = codec.encode(PeerHandshake(role, peer.secret).answer(hello), codec.HANDSHAKE)
    mutate = data.draw(st.sampled_from([mutated_json, mutated_bytes]))
    peer.send(encode_frame(data.draw(mutate(answer))))
    peer.finish()
    live.assert_healthy()


# --- after the handshake ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "worker"])
@settings(FUZZ, max_examples=100)
@given(payload=st.binary(max_size=300))
def test_unsealed_bytes_after_the_handshake(live: LiveServer, role: str, payload: bytes) -> None:
    peer = RawPeer(live, role)
    peer.handshake()
    peer.send(payload)
    peer.finish()
    live.assert_healthy()


@pytest.mark.parametrize("role", ["client", "worker"])
@settings(FUZZ, max_examples=100)
@given(payload=st.binary(max_size=300))
def test_sealed_garbage(live: LiveServer, role: str, payload: bytes) -> None:
    peer = RawPeer(live, role)
    peer.handshake()
    peer.send_sealed(payload)
    peer.finish()
    live.assert_healthy()


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_client_requests_sealed_and_mutated(live: LiveServer, data: st.DataObject) -> None:
    _cls, payload = data.draw(_requests())
    mutate = data.draw(st.sampled_from([None, mutated_json, mutated_json, mutated_bytes]))
    peer = RawPeer(live, "client")
    peer.handshake()
    peer.send_sealed(payload if mutate is None else data.draw(mutate(payload)))
    peer.finish()
    live.assert_healthy()


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_worker_messages_sealed_and_mutated(live: LiveServer, data: st.DataObject) -> None:
    """Half the time after a valid registration, so the registered worker's loop is fuzzed too."""
    _cls, payload = data.draw(encoded(codec.FROM_WORKER))
    mutate = data.draw(st.sampled_from([None, mutated_json, mutated_json, mutated_bytes]))
    frames = [payload if mutate is None else data.draw(mutate(payload))]
    if data.draw(st.booleans()):
        frames.insert(0, REGISTER)
        more = st.lists(encoded(codec.FROM_WORKER).map(lambda p: p[1]), max_size=3)
        frames.extend(data.draw(more))
    peer = RawPeer(live, "worker")
    peer.handshake()
    for frame in frames:
        peer.send_sealed(frame)
    peer.finish()
    live.assert_healthy()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_client_port_gets_worker_messages_and_the_other_way_round(
    live: LiveServer, data: st.DataObject
) -> None:
    role = data.draw(st.sampled_from(["client", "worker"]))
    union: codec.Wire[Any] = codec.FROM_WORKER if role == "client" else codec.CLIENT_REQUEST
    _cls, payload = data.draw(encoded(union))
    peer = RawPeer(live, role)
    peer.handshake()
    peer.send_sealed(payload)
    peer.finish()
    live.assert_healthy()


@pytest.mark.parametrize("end", [2**40, 2**62])
def test_a_worker_claiming_a_huge_range_resource_is_refused(live: LiveServer, end: int) -> None:
    """Found by the fuzzer: the server expanded `range(0-2**53)` into a list and ran out of
    memory. The registration is refused instead; real workers still register."""
    huge = ResourceDescriptorItem("gpus", ResourceKind.RANGE, start=0, end=end)
    config = worker_config(2, "huge", heartbeat_interval=3600.0)
    config = attrs.evolve(config, resources=(*config.resources, huge))
    peer = RawPeer(live, "worker")
    peer.handshake()
    peer.send_sealed(codec.encode(m.RegisterWorker(config), codec.FROM_WORKER))
    assert peer.read_frame() is None
    peer.finish()
    live.assert_healthy()
    peer = RawPeer(live, "worker")
    peer.handshake()
    peer.send_sealed(REGISTER)
    registered = codec.decode(peer.read_frame() or b"", codec.TO_WORKER)
    assert isinstance(registered, m.WorkerRegistered)
    peer.finish()
    live.assert_healthy()
