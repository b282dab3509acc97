"""The worker's blocking link (`hqpy.worker.startup`): it reads whole frames and not a byte more,
so what the server sends after its answer is left in the socket for the agent."""

from __future__ import annotations

import socket

from hqpy.protocol import codec
from hqpy.protocol import messages as m
from hqpy.protocol.blocking import BlockingLink
from hqpy.protocol.frames import encode_frame
from hqpy.protocol.handshake import new_nonce, new_secret
from hqpy.protocol.seal import peer_pair, server_pair


def test_receive_reads_one_frame_and_leaves_the_next_in_the_socket() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = BlockingLink(ours)
        first = encode_frame(codec.encode(m.ServerHello("p", "v", "n"), codec.HANDSHAKE))
        second = encode_frame(b"what the agent reads")
        theirs.sendall(first + second)
        assert link.receive(codec.HANDSHAKE) == m.ServerHello("p", "v", "n")
        assert link.decoder.pending == 0
        ours.settimeout(5)
        assert ours.recv(len(second) + 10) == second


def test_sealed_frames_continue_from_the_handshake_counters() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = BlockingLink(ours)
        args = (new_secret(), "worker", new_nonce(), new_nonce())
        link.sealer, link.opener = peer_pair(*args)
        server_sealer, server_opener = server_pair(*args)
        reply = m.WorkerRegistered(7, "uid", None)
        theirs.sendall(server_sealer.seal(codec.encode(reply, codec.TO_WORKER)))
        assert link.receive(codec.TO_WORKER) == reply
        link.send(m.Heartbeat(), codec.FROM_WORKER)
        theirs.settimeout(5)
        wire = theirs.recv(1 << 16)
        assert codec.decode(server_opener.open(wire[4:]), codec.FROM_WORKER) == m.Heartbeat()
        assert (link.opener.counter, link.sealer.counter) == (1, 1)
