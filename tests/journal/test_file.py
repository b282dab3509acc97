"""The journal file format: frames with checksums, torn tails cut, damage in the middle refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hqpy.journal import file
from hqpy.journal import records as r
from hqpy.protocol import messages as m
from tests.factories import submit_desc


def some_records() -> list[r.Record]:
    return [
        r.ServerStarted(1.0, "0.1.0"),
        r.JobSubmitted(1, 1, 2.0, m.SubmitRequest(submit_desc("0-999"))),
        r.TasksUpdated([[1, 0, 0, 9]], [[1, 0, 4]], [[1, 5, "boom"]]),
        r.JobsCanceled("1", "enough"),
        r.IdsUsed(2, 2),
    ]


def write(path: Path, records: list[r.Record]) -> list[int]:
    """Write a journal; returns the byte offset where each record starts."""
    offsets = []
    data = bytearray(file.MAGIC)
    for record in records:
        offsets.append(len(data))
        data += file.frame_record(record)
    path.write_bytes(bytes(data))
    return offsets


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "j"
    records = some_records()
    write(path, records)
    loaded = file.read(path)
    assert loaded.records == records
    assert loaded.warning is None
    assert loaded.good_size == path.stat().st_size


@pytest.mark.parametrize("cut", [1, 5, 12, 13, 20])
def test_torn_tail_is_cut_with_a_warning(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "j"
    records = some_records()
    offsets = write(path, records)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - cut)
    loaded = file.read(path)
    assert loaded.records == records[:-1]
    assert loaded.good_size == offsets[-1]
    assert loaded.warning is not None and "torn or corrupt tail" in loaded.warning


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j"
    records = some_records()
    write(path, records)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    loaded = file.read(path)
    assert loaded.records == records
    assert loaded.good_size == size
    assert loaded.warning is not None


def test_damaged_last_payload_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "j"
    records = some_records()
    offsets = write(path, records)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    loaded = file.read(path)
    assert loaded.records == records[:-1]
    assert loaded.good_size == offsets[-1]


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_damage_in_the_middle_is_an_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / "j"
    offsets = write(path, some_records())
    at = {"payload": offsets[1] + 30, "length": offsets[1] + 1, "crc": offsets[1] + 5}[where]
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(file.JournalError, match=f"damaged at byte {offsets[1]}"):
        file.read(path)


def test_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text("hello, this is text and not a journal\n")
    with pytest.raises(file.JournalError, match="not an hqpy journal"):
        file.read(path)


def test_unknown_record_with_a_good_checksum_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(file.MAGIC + file.frame(b'{"op":"from-the-future"}') + file.frame(b"{}"))
    with pytest.raises(file.JournalError, match="not understood"):
        file.read(path)


def test_append_after_a_torn_tail_keeps_the_file_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "j"
    records = some_records()
    write(path, records)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    loaded = file.read(path)
    fd = file.open_for_append(path, loaded.good_size)
    try:
        os.write(fd, file.frame_record(r.JobsClosed("7")))
    finally:
        os.close(fd)
    again = file.read(path)
    assert again.warning is None
    assert again.records == [*records[:-1], r.JobsClosed("7")]


def test_write_atomically_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write(path, some_records())
    file.write_atomically(path, [r.IdsUsed(5, 9)])
    assert file.read(path).records == [r.IdsUsed(5, 9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j"]


def test_one_writer_per_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write(path, some_records())
    size = path.stat().st_size
    fd = file.open_for_append(path, size)
    try:
        with pytest.raises(file.JournalError, match="in use by another server"):
            file.open_for_append(path, 0)
        # The refused opener did not cut the file.
        assert path.stat().st_size == size
    finally:
        os.close(fd)
    os.close(file.open_for_append(path, size))
