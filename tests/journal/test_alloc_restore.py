"""The allocator's part of a journal replayed: queues with settings and event history,
allocations by their events, and allocations journaled but never confirmed submitted."""

from __future__ import annotations

from pathlib import Path

from hqpy.app import journaling
from hqpy.autoalloc.config import AutoAllocConfig
from hqpy.autoalloc.service import AutoAllocService
from hqpy.common.events import EventHub
from hqpy.common.states import AllocationState, QueueState
from hqpy.journal import records as r
from hqpy.protocol import messages as m
from hqpy.server.demand import ServerDemand
from hqpy.server.state import ServerState


def service(tmp_path: Path) -> AutoAllocService:
    hub = EventHub()
    return AutoAllocService(
        ServerDemand(ServerState("t", hub=hub)), hub, tmp_path, AutoAllocConfig()
    )


def event(kind: str, queue_id: int, allocation_id: str | None, t: float = 1.0) -> r.Record:
    return r.AllocEventLogged(t, kind, queue_id, allocation_id, "")


def test_queues_allocations_and_events_restore(tmp_path: Path) -> None:
    svc = service(tmp_path)
    params = m.QueueParams("local", 600.0, backlog=2, name="big")
    records: list[r.Record] = [
        event("queue-created", 2, None),  # logged before its QueueAdded, as the server does
        r.QueueAdded(2, params, 1.0),
        r.AllocationPlanned(2, 1, 3, str(tmp_path / "a1")),
        event("allocation-queued", 2, "local-1"),
        r.AllocationPlanned(2, 2, 1, str(tmp_path / "a2")),
        event("allocation-queued", 2, "local-2"),
        event("allocation-started", 2, "local-1", 5.0),
        event("allocation-finished", 2, "local-2", 6.0),
        event("queue-paused", 2, None),
    ]
    left = journaling.restore_allocator(svc, records, 3)
    assert left == []
    queue = svc.state.queues[2]
    assert queue.params == params
    assert queue.state is QueueState.PAUSED
    assert queue.event_count == 6
    assert [e.event for e in queue.events][:2] == ["queue-created", "allocation-queued"]
    a1, a2 = queue.allocations["local-1"], queue.allocations["local-2"]
    assert (a1.state, a1.worker_count, a1.started_at) == (AllocationState.RUNNING, 3, 5.0)
    assert a2.state is AllocationState.FINISHED
    assert [a.id for a in queue.active()] == ["local-1"]
    assert queue.next_seq == 3
    assert svc.state.next_queue_id == 3
    assert svc.state.find_allocation("local-1") is not None


def test_allocations_never_confirmed_are_adopted_or_named(tmp_path: Path) -> None:
    svc = service(tmp_path)
    params = m.QueueParams("slurm", 600.0)
    (tmp_path / "a1").mkdir()
    (tmp_path / "a1" / "jobid").write_text("4242\n")
    records: list[r.Record] = [
        r.QueueAdded(1, params, 1.0),
        r.QueueAdded(2, params, 1.0),
        r.AllocationPlanned(1, 1, 1, str(tmp_path / "a1")),
        r.AllocationPlanned(2, 1, 1, str(tmp_path / "b1")),
    ]
    left = journaling.restore_allocator(svc, records, 3)
    assert [p.queue_id for p in left] == [1, 2]
    journaling.resolve_unconfirmed(svc, left)
    # Its id reached the work dir: adopted (the status poll says what became of it).
    assert [a.id for a in svc.state.queues[1].active()] == ["4242"]
    # Nothing says it was submitted: named, for a person to check the batch system.
    last = svc.state.queues[2].events[-1]
    assert last.event == "submit-failed"
    assert "hq-2-1" in last.message
    assert not svc.state.queues[2].allocations
