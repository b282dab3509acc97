"""The reconnect window a restored server gives the workers of the server before: their
longest grace; what is left of it for workers of an earlier run killed before they came back;
nothing for workers that ended or whose grace is over; the same after `hq journal compact`."""

from __future__ import annotations

from pathlib import Path

from hqpy.app import journaling
from hqpy.journal import file
from hqpy.journal import records as r
from hqpy.server.state import ServerState

NOW = 10_000.0


def window(records: list[r.Record]) -> tuple[float, set[int]]:
    rep = journaling.replay(ServerState("t"), records, clock=lambda: NOW)
    return rep.reconnect_window, rep.returning_workers()


def test_workers_registered_when_the_server_went() -> None:
    records: list[r.Record] = [
        r.ServerStarted(NOW - 100, "x"),
        r.WorkerJoined(1, 300.0),
        r.WorkerJoined(2, 60.0),
        r.WorkerJoined(3, 0.0),  # no grace: it exited with the server
        r.WorkerJoined(4, 300.0),
        r.WorkerLeft(4),
    ]
    assert window(records) == (300.0, {1, 2})


def test_workers_of_a_run_killed_before_they_came_back_keep_what_is_left() -> None:
    records: list[r.Record] = [
        r.ServerStarted(NOW - 500, "x"),
        r.WorkerJoined(1, 300.0),
        r.WorkerJoined(2, 300.0),
        r.WorkerJoined(3, 60.0),
        # Killed; started again 100 s ago and killed again before workers 1 and 3 were back.
        r.ServerStarted(NOW - 100, "x"),
        r.WorkerJoined(2, 300.0),
    ]
    # Worker 2 is of the last run (its whole grace); worker 1 may still come back for 200 s;
    # worker 3's grace is over.
    assert window(records) == (300.0, {1, 2})
    assert window([*records, r.WorkerLeft(2)]) == (200.0, {1})
    # Three runs back and its grace over at the start of the last one: gone.
    older = [*records, r.WorkerLeft(2), r.ServerStarted(NOW - 10 + 300, "x")]
    assert window(older)[1] == set()


def test_compact_keeps_the_runs_apart(tmp_path: Path) -> None:
    path = tmp_path / "j"
    records: list[r.Record] = [
        r.ServerStarted(NOW - 5000, "x"),
        r.WorkerJoined(1, 300.0),  # killed with its server, never came back
        r.ServerStarted(NOW - 1000, "x"),
        r.WorkerJoined(2, 300.0),
        r.WorkerLeft(2),  # an orderly stop
    ]
    file.write_atomically(path, records)
    assert window(file.read(path).records) == (0.0, set())
    journaling.compact(path)
    assert window(file.read(path).records) == (0.0, set())
