"""The first moments of `server start`, before trio and the server's modules are imported.

Scripts start a server and read its `access.json` a moment later, so the listening sockets are
bound and the access file and `hq-current` written first, with the standard library only; the
server then takes the bound sockets over. A client that connects meanwhile waits in the listen
backlog until the server accepts it.
"""

from __future__ import annotations

import errno
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from hqpy import __version__
from hqpy.common import serverdir

BIND_ATTEMPTS = 10
BACKLOG = 1024
ALIVE_TIMEOUT = 2.0


@dataclass
class EarlyStart:
    """What the early start made: the server adopts all of it."""

    instance_dir: Path
    access: serverdir.AccessRecord
    client_sockets: list[socket.socket]
    worker_sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.client_sockets + self.worker_sockets:
            sock.close()


def _bind_all(port: int) -> list[socket.socket]:
    """Listening sockets on every address family, on one port (as `trio.open_tcp_listeners`)."""
    infos = socket.getaddrinfo(
        None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as e:
                if e.errno == errno.EAFNOSUPPORT:
                    continue
                raise
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _port(sockets: list[socket.socket]) -> int:
    port: int = sockets[0].getsockname()[1]
    return port


def open_sockets(port: int) -> list[socket.socket]:
    """With port 0 the first family picks the port and the others bind the same one."""
    if port != 0:
        return _bind_all(port)
    for _attempt in range(BIND_ATTEMPTS):
        sockets = _bind_all(0)
        if len({_port([s]) for s in sockets}) == 1:
            return sockets
        chosen = _port(sockets)
        for sock in sockets:
            sock.close()
        try:
            return _bind_all(chosen)
        except OSError:
            continue
    raise OSError(f"could not bind one port on every address family in {BIND_ATTEMPTS} attempts")


def _server_alive(access_path: Path) -> bool:
    try:
        record = serverdir.read_access_file(access_path)
    except serverdir.AccessError:
        return False
    if record.client is None:
        return False
    try:
        socket.create_connection((record.client.host, record.client.port), ALIVE_TIMEOUT).close()
        return True
    except OSError:
        return False


def early_start(
    server_dir: Path,
    host: str | None,
    client_port: int,
    worker_port: int,
    access_file: Path | None,
) -> EarlyStart:
    """Refuse to start beside a live server; bind; write `access.json` and `hq-current`."""
    current = serverdir.resolve_access_path(server_dir)
    if current.exists() and _server_alive(current):
        raise serverdir.AccessError(
            f"Server at `{server_dir}` is already running, "
            "use another server dir or stop it first (`hq server stop`)"
        )
    if access_file is not None:
        record = serverdir.read_access_file(access_file)
    else:
        name = host or socket.gethostname()
        record = serverdir.AccessRecord(
            __version__,
            serverdir.new_server_uid(),
            serverdir.Endpoint(name, client_port, secrets.token_hex(32)),
            serverdir.Endpoint(name, worker_port, secrets.token_hex(32)),
        )
    client, worker = record.client, record.worker
    if client is None or worker is None or not client.secret_key or not worker.secret_key:
        raise serverdir.AccessError(
            "The access file must hold both the client and the worker part, with secret keys"
        )
    client_sockets = open_sockets(client.port)
    try:
        worker_sockets = open_sockets(worker.port)
    except BaseException:
        for sock in client_sockets:
            sock.close()
        raise
    early = EarlyStart(server_dir, record, client_sockets, worker_sockets)
    try:
        instance_dir = serverdir.create_instance_dir(server_dir)
        early.instance_dir = instance_dir
        early.access = serverdir.AccessRecord(
            record.version,
            record.server_uid,
            serverdir.Endpoint(client.host, _port(client_sockets), client.secret_key),
            serverdir.Endpoint(worker.host, _port(worker_sockets), worker.secret_key),
        )
        serverdir.write_access(instance_dir / serverdir.ACCESS_FILE, early.access)
        serverdir.link_current(server_dir, instance_dir)
    except BaseException:
        early.close()
        raise
    return early
