"""A journal torn at any byte (a crash mid-write) restores with a warning and loses nothing
written before the torn record; a full disk under the journal refuses submits with a clear
error, loses nothing acknowledged, and the server keeps serving reads."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqpy.app import journaling
from hqpy.journal import file as journal_file
from hqpy.journal import records as r
from hqpy.server.state import ServerState
from tests.e2e.harness import HqEnv


def some_records() -> list[r.Record]:
    return [
        r.ServerStarted(1.0, "test"),
        r.JobOpened(1, "first", None, 2.0),
        r.TasksUpdated(started=[[1, 0, 1, 5]], finished=[[1, 1, 3]]),
        r.WorkerJoined(1, 300.0),
        r.TasksUpdated(crashed=[[1, 4, 1, 1]]),
        r.JobOpened(2, "second", 3, 3.0),
        r.WorkerLeft(1),
    ]


def test_a_tail_torn_at_any_byte_keeps_every_record_before_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    records = some_records()
    journal_file.write_atomically(path, records)
    data = path.read_bytes()
    ends = []  # byte offset after each record
    offset = len(journal_file.MAGIC)
    for record in records:
        offset += len(journal_file.frame_record(record))
        ends.append(offset)
    assert ends[-1] == len(data)
    cuts = random.Random(12).sample(range(len(journal_file.MAGIC) + 1, len(data)), 40)
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        loaded = journal_file.read(path)
        whole = sum(1 for end in ends if end <= cut)
        assert loaded.records == records[:whole], f"cut at byte {cut}"
        assert loaded.good_size == (ends[whole - 1] if whole else len(journal_file.MAGIC))
        if cut not in ends:
            assert loaded.warning is not None and "torn" in loaded.warning, cut
        journaling.replay(ServerState("torn"), loaded.records)  # and it restores


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root; skips when it cannot be mounted)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=30, check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` up; returns the filler file (remove it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * 4096
    try:
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.e2e
def test_full_disk_refuses_submits_and_loses_nothing(hq_env: HqEnv, small_disk: Path) -> None:
    journal = small_disk / "journal.hqj"
    hq_env.start_server("--journal", str(journal))
    hq_env.command("submit", "--array", "1-5", "--", "true")
    filler = fill(small_disk)
    # The journal's last page may still have room: submit until the disk is really full.
    acknowledged = [1]
    padding = "x" * 1500
    for _ in range(20):
        result = hq_env.run("submit", "--", "echo", padding, check=False)
        if result.returncode != 0:
            break
        acknowledged.append(int(result.stdout.split()[-1]))
    else:
        raise AssertionError("no submit was refused on a full disk")
    assert "Submit refused" in result.stderr
    assert str(journal) in result.stderr
    assert "No space left on device" in result.stderr
    # Reads go on; the refused job is not there.
    jobs = hq_env.command("job", "list", "--all", json=True)
    assert [j["id"] for j in jobs] == acknowledged

    filler.unlink()
    out = hq_env.command("submit", "--", "true")
    acknowledged.append(int(out.split()[-1]))
    assert hq_env.stop_server() == 0
    hq_env.start_server("--journal", str(journal))
    jobs = hq_env.command("job", "list", "--all", json=True)
    assert [j["id"] for j in jobs] == acknowledged
    assert hq_env.stop_server() == 0
