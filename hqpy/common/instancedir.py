"""The server directory's layout, with the standard library only: `hq server start` lays it out
before it imports anything heavy (`serverdir` adds the access record on top)."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

CURRENT = "hq-current"
ACCESS_FILE = "access.json"


def new_server_uid() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(6))


def create_instance_dir(server_dir: Path) -> Path:
    """Make the next numbered instance dir (`001`, `002`, ...)."""
    server_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in server_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    n = max(numbers, default=0) + 1
    while True:
        path = server_dir / f"{n:03}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def link_current(server_dir: Path, instance: Path, error: type[Exception]) -> None:
    """Point `hq-current` at `instance` atomically; `error` if a real directory is in the way."""
    current = server_dir / CURRENT
    if current.is_dir() and not current.is_symlink():
        raise error(f"`{current}` is a directory; remove it before starting a server")
    tmp = server_dir / f".{CURRENT}.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(instance.name)
    os.replace(tmp, current)
