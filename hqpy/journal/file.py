"""The journal file: a header, then frames `length | crc32(payload) | crc32(length) | payload`.

The length has its own checksum so that a damaged length is told apart from a short (torn)
file: only what a crash can leave (a partial last frame, or zeros the file system extended the
file with) is cut, with a warning; any other damage is an error naming its offset.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from hqpy.journal.records import Record, RecordError, decode, encode

MAGIC = b"HQPYJNL1"
HEADER = struct.Struct("<III")
MAX_RECORD = 256 * 1024 * 1024
"""No single record is larger (a submit with a huge `--each-line` file is the largest)."""


class JournalError(Exception):
    """The journal cannot be used (damaged in the middle, not a journal, unreadable)."""


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return HEADER.pack(len(payload), zlib.crc32(payload), zlib.crc32(length)) + payload


def frame_record(record: Record) -> bytes:
    return frame(encode(record))


@attrs.frozen
class Loaded:
    records: list[Record]
    good_size: int
    """Bytes up to the end of the last good record (the writer appends from there)."""
    warning: str | None
    """Set when a torn tail was cut."""


def read(path: Path) -> Loaded:
    """Every record of the journal at `path`; a torn tail is cut (with a warning), damage
    before the last record raises `JournalError`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"Cannot read journal `{path}`: {e.strerror or e}") from None
    return parse(path, data)


def parse(path: Path, data: bytes) -> Loaded:
    size = len(data)
    if size == 0:
        return Loaded([], 0, None)
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data) or not data.strip(b"\0"):
            return Loaded([], 0, f"journal `{path}` has no complete header; starting it anew")
        raise JournalError(f"`{path}` is not an hqpy journal (bad header)")
    records: list[Record] = []
    offset = len(MAGIC)
    while offset < size:
        rest = size - offset
        torn = Loaded(
            records,
            offset,
            f"journal `{path}`: torn or corrupt tail at byte {offset} ({rest} bytes) cut; "
            f"the {len(records)} records before it are restored",
        )
        if rest < HEADER.size:
            return torn
        length, crc, length_crc = HEADER.unpack_from(data, offset)
        if zlib.crc32(data[offset : offset + 4]) != length_crc or length > MAX_RECORD:
            if not data[offset:].strip(b"\0"):
                return torn
            raise JournalError(_damaged(path, offset, "bad record header", rest))
        end = offset + HEADER.size + length
        if end > size:
            return torn
        payload = data[offset + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            if end == size:
                return torn
            raise JournalError(_damaged(path, offset, "checksum mismatch", rest))
        try:
            records.append(decode(payload))
        except RecordError as e:
            raise JournalError(
                f"journal `{path}`: record at byte {offset} is not understood ({e}); "
                "was it written by another version of hqpy?"
            ) from None
        offset = end
    return Loaded(records, offset, None)


def _damaged(path: Path, offset: int, what: str, rest: int) -> str:
    return (
        f"journal `{path}` is damaged at byte {offset} ({what}) with {rest} bytes after it; "
        "refusing to load part of it. Move it aside to start empty, or cut it at that byte "
        "to keep the records before"
    )


def open_for_append(path: Path, good_size: int) -> int:
    """Open the journal for appending at `good_size` (cutting a torn tail); a new file gets
    the header. The file stays locked (flock) while open: one server per journal. Returns the
    file descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(
                f"journal `{path}` is in use by another server; stop it first, or give this "
                "server another journal"
            ) from None
        if good_size == 0:
            os.ftruncate(fd, 0)
            os.write(fd, MAGIC)
        else:
            os.ftruncate(fd, good_size)
        os.lseek(fd, 0, os.SEEK_END)
        os.fsync(fd)
    except (OSError, JournalError):
        os.close(fd)
        raise
    _fsync_dir(path)
    return fd


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the journal's lock (as a server does) for an offline rewrite (`hq journal
    compact`); JournalError while a server has it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(
                f"journal `{path}` is in use by a running server; stop the server first"
            ) from None
        yield
    finally:
        os.close(fd)


def write_atomically(path: Path, records: list[Record]) -> None:
    """Replace the journal by these records: a new file, fsynced, renamed over the old one."""
    tmp = path.with_name(path.name + ".compact.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        for record in records:
            f.write(frame_record(record))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
