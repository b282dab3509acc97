"""The first moments of `server start`, before trio and the server's modules are imported.

Scripts start a server and read its `access.json` a moment later, so the listening sockets are
bound and the access file and `hq-current` written first, with the standard library only; the
server then takes the bound sockets over. A client that connects meanwhile waits in the listen
backlog until the server accepts it.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy import __version__
from hqpy.common.instancedir import (
    ACCESS_FILE,
    CURRENT,
    create_instance_dir,
    link_current,
    new_server_uid,
)

if TYPE_CHECKING:
    from hqpy.common.serverdir import AccessRecord

BIND_ATTEMPTS = 10
BACKLOG = 1024
ALIVE_TIMEOUT = 2.0
"""As in `hqpy.common.serverdir`, which is not imported here: its attrs and cattrs would cost
more than everything else before the access file is written."""


class StartError(Exception):
    """The server cannot start here; the message says why."""


class Endpoint:
    """Plain classes, not dataclasses: `dataclasses` imports `inspect` (some 15 ms)."""

    def __init__(self, host: str, port: int, secret_key: str) -> None:
        self.host = host
        self.port = port
        self.secret_key = secret_key


class EarlyStart:
    """What the early start made: the server adopts all of it."""

    def __init__(
        self,
        instance_dir: Path,
        version: str,
        server_uid: str,
        client: Endpoint,
        worker: Endpoint,
        client_sockets: list[socket.socket],
        worker_sockets: list[socket.socket],
    ) -> None:
        self.instance_dir = instance_dir
        self.version = version
        self.server_uid = server_uid
        self.client = client
        self.worker = worker
        self.client_sockets = client_sockets
        self.worker_sockets = worker_sockets

    def record(self) -> AccessRecord:
        from hqpy.common import serverdir

        return serverdir.AccessRecord(
            self.version,
            self.server_uid,
            serverdir.Endpoint(self.client.host, self.client.port, self.client.secret_key),
            serverdir.Endpoint(self.worker.host, self.worker.port, self.worker.secret_key),
        )

    def to_json(self) -> dict[str, object]:
        """What `serverdir.write_access` writes for the same record."""
        return {
            "version": self.version,
            "server_uid": self.server_uid,
            "client": dict(vars(self.client)),
            "worker": dict(vars(self.worker)),
        }

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
    """Is a server answering at the client address of this access file?"""
    try:
        client = json.loads(access_path.read_text())["client"]
        host, port = client["host"], int(client["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        socket.create_connection((host, port), ALIVE_TIMEOUT).close()
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
    """Refuse to start beside a live server; bind; write `access.json` and `hq-current`.
    Raises `StartError` (with the message for the user) or `OSError`."""
    current = server_dir / CURRENT
    current_access = current / ACCESS_FILE if current.exists() else server_dir / ACCESS_FILE
    if current_access.exists() and _server_alive(current_access):
        raise StartError(
            f"Server at `{server_dir}` is already running, "
            "use another server dir or stop it first (`hq server stop`)"
        )
    if access_file is not None:
        from hqpy.common import serverdir

        try:
            record = serverdir.read_access_file(access_file)
        except serverdir.AccessError as e:
            raise StartError(str(e)) from None
        c, w = record.client, record.worker
        if c is None or w is None or not c.secret_key or not w.secret_key:
            raise StartError(
                "The access file must hold both the client and the worker part, with secret keys"
            )
        version, uid = record.version, record.server_uid
        client = Endpoint(c.host, c.port, c.secret_key)
        worker = Endpoint(w.host, w.port, w.secret_key)
    else:
        name = host or socket.gethostname()
        version, uid = __version__, new_server_uid()
        client = Endpoint(name, client_port, secrets.token_hex(32))
        worker = Endpoint(name, worker_port, secrets.token_hex(32))
    client_sockets = open_sockets(client.port)
    try:
        worker_sockets = open_sockets(worker.port)
    except BaseException:
        for sock in client_sockets:
            sock.close()
        raise
    client.port, worker.port = _port(client_sockets), _port(worker_sockets)
    early = EarlyStart(server_dir, version, uid, client, worker, client_sockets, worker_sockets)
    try:
        early.instance_dir = create_instance_dir(server_dir)
        path = early.instance_dir / ACCESS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(early.to_json(), f, indent=2)
        os.chmod(path, 0o600)
        link_current(server_dir, early.instance_dir, StartError)
    except BaseException:
        early.close()
        raise
    return early
