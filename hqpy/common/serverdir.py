"""The server directory: numbered instance dirs, the `hq-current` link and `access.json`.

Layout (as HyperQueue's): `D/001/`, `D/002/`, ... one per `server start`; `D/hq-current` links to
the live one and is removed on a clean stop; `D/NNN/access.json` (mode 0600) holds hosts, ports
and the two secrets. Clients and workers also accept a plain `hq-current` directory, or a server
dir that holds an `access.json` itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy import __version__
from hqpy.common import instancedir
from hqpy.common.instancedir import ACCESS_FILE as ACCESS_FILE
from hqpy.common.instancedir import CURRENT as CURRENT
from hqpy.common.instancedir import create_instance_dir as create_instance_dir
from hqpy.common.instancedir import new_server_uid as new_server_uid
from hqpy.common.jsontypes import JsonObject, JsonValue

if TYPE_CHECKING:
    import attrs
    import cattrs
else:  # the same classes, made without importing attrs (see lightattrs)
    from hqpy.common import lightattrs as attrs


@attrs.frozen
class Endpoint:
    host: str
    port: int
    secret_key: str | None = None


@attrs.frozen
class AccessRecord:
    """`access.json`: a partial record (one of `client`/`worker`) has no `server_uid`."""

    version: str
    server_uid: str = ""
    client: Endpoint | None = None
    worker: Endpoint | None = None

    def to_json(self) -> JsonObject:
        """Absent parts (and the uid of a partial record) are left out, not written as null."""
        data: JsonObject = {
            "version": self.version,
            "server_uid": self.server_uid,
            "client": _endpoint_json(self.client),
            "worker": _endpoint_json(self.worker),
        }
        return {k: v for k, v in data.items() if v is not None and v != ""}

    @classmethod
    def from_json(cls, data: JsonValue, source: str) -> AccessRecord:
        exact = _exact_record(data)
        if exact is not None:
            return exact
        import cattrs

        try:
            return _converter().structure(data, cls)
        except Exception as e:
            detail = (
                "; ".join(cattrs.transform_error(e))
                if isinstance(e, cattrs.BaseValidationError)
                else e
            )
            raise AccessError(f"Access file `{source}` is malformed: {detail}") from None


def _endpoint_json(endpoint: Endpoint | None) -> JsonObject | None:
    if endpoint is None:
        return None
    return {"host": endpoint.host, "port": endpoint.port, "secret_key": endpoint.secret_key}


def _exact_record(data: JsonValue) -> AccessRecord | None:
    """The record of a file as hq writes it (every value of its exact type), read without
    cattrs; None for anything else, which the lenient converter reads or explains."""
    if not isinstance(data, dict) or not {"version"} <= data.keys() <= _RECORD_KEYS:
        return None
    version, uid = data["version"], data.get("server_uid", "")
    if not isinstance(version, str) or not isinstance(uid, str):
        return None
    parts: list[Endpoint | None] = []
    for key in ("client", "worker"):
        part = data.get(key)
        if part is None:
            parts.append(None)
            continue
        if not isinstance(part, dict) or not {"host", "port"} <= part.keys() <= _ENDPOINT_KEYS:
            return None
        host, port, secret = part["host"], part["port"], part.get("secret_key")
        if not isinstance(host, str) or type(port) is not int:
            return None
        if secret is not None and not isinstance(secret, str):
            return None
        parts.append(Endpoint(host, port, secret))
    return AccessRecord(version, uid, parts[0], parts[1])


_RECORD_KEYS = {"version", "server_uid", "client", "worker"}
_ENDPOINT_KEYS = {"host", "port", "secret_key"}


def _converter() -> cattrs.Converter:
    """Access files are written by hand as often as by hq: lenient on types (`"port": "1234"`)."""
    import cattrs

    return cattrs.Converter()


class AccessError(Exception):
    """The access record is missing, unreadable or from another version."""


def default_server_dir() -> Path:
    env = os.environ.get("HQ_SERVER_DIR")
    return Path(env) if env else Path.home() / ".hq-server"


def write_access(path: Path, record: AccessRecord) -> None:
    """Write an access file readable only by its owner."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record.to_json(), f, indent=2)
    os.chmod(path, 0o600)


def read_access_file(path: Path) -> AccessRecord:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AccessError(f"Access file `{path}` does not exist") from None
    except (OSError, ValueError) as e:
        raise AccessError(f"Cannot read access file `{path}`: {e}") from None
    return AccessRecord.from_json(data, str(path))


def resolve_access_path(server_dir: Path) -> Path:
    """The access file of the live server in `server_dir` (through `hq-current` if it exists)."""
    current = server_dir / CURRENT
    if current.exists():
        return current / ACCESS_FILE
    return server_dir / ACCESS_FILE


def load_access(server_dir: Path) -> AccessRecord:
    """Read the live server's access record and check that its version is ours."""
    path = resolve_access_path(server_dir)
    if not path.exists():
        raise AccessError(
            f"No running instance of HQ found at `{server_dir}`. "
            "Make sure that the server is running (`hq server start`)."
        )
    record = read_access_file(path)
    if record.version != __version__:
        raise AccessError(
            "Hyperqueue version mismatch detected.\n"
            f"Access record contains version {record.version}, "
            f"but the current version is {__version__}."
        )
    return record


def link_current(server_dir: Path, instance: Path) -> None:
    instancedir.link_current(server_dir, instance, AccessError)


def unlink_current(server_dir: Path, instance: Path) -> None:
    """Remove `hq-current` if it still points at our instance."""
    current = server_dir / CURRENT
    try:
        if current.is_symlink() and os.readlink(current) in (instance.name, str(instance)):
            current.unlink()
    except OSError:
        pass
