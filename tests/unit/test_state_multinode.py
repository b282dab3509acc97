"""Multi-node tasks through `ServerState`: the root's row carries the hosts, the other workers
are held until the task ends, and a lost root hands the task back and frees them."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from hqpy.common.errors import RequestError
from hqpy.common.resources import ResourceRequest
from hqpy.common.states import TaskState, WorkerState
from hqpy.protocol import messages as m
from hqpy.server.state import ServerState
from hqpy.server.workers import Worker
from hqpy.worker.launcher import write_node_files
from tests.factories import cpu_request, submit_desc, worker_config
from tests.unit.test_state import FakeClock, Outbox, update


def setup(n_workers: int = 3) -> tuple[ServerState, list[tuple[Worker, Outbox]], int]:
    state = ServerState("uid", clock=FakeClock())
    workers = []
    for i in range(n_workers):
        outbox = Outbox()
        config = worker_config(hostname=f"n{i + 1}.cluster.org", group="alloc-1")
        workers.append((state.add_worker(config, outbox), outbox))
    job_id = state.submit(m.SubmitRequest(submit_desc("0", request=ResourceRequest((), n_nodes=2))))
    return state, workers, job_id


def test_root_row_carries_the_hosts_and_the_others_are_held() -> None:
    state, workers, job_id = setup()
    assert state.schedule() == 1
    (root, root_box), (second, second_box), (third, _) = workers
    [row] = root_box.compute_rows()
    assert row[:3] == [job_id, 0, 0]
    assert row[5] == ["n1.cluster.org", "n2.cluster.org"]
    assert second_box.compute_rows() == []
    # One single-node task: only the third worker may take it.
    state.submit(m.SubmitRequest(submit_desc("0-3")))
    state.schedule()
    assert {t.id for t in third.tasks.values()} == {0, 1, 2, 3}
    assert not second.tasks


def test_the_end_of_the_task_frees_its_workers() -> None:
    state, workers, job_id = setup(2)
    state.schedule()
    (root, _), (second, second_box) = workers
    state.on_task_updates(root, [update(job_id, 0, m.TASK_FINISHED)])
    assert root.mn_task is None and second.mn_task is None
    task = state.jobs[job_id].tasks[0]
    assert task.nodes == ((root.id, "n1.cluster.org"), (second.id, "n2.cluster.org"))
    state.submit(m.SubmitRequest(submit_desc("0-7")))
    state.schedule()
    assert len(second_box.compute_rows()) == 4


def test_lost_root_hands_the_task_back_and_frees_the_others() -> None:
    state, workers, job_id = setup(2)
    state.schedule()
    (root, _), (second, _) = workers
    state.on_task_updates(root, [update(job_id, 0, m.TASK_RUNNING)])
    state.on_worker_lost(root, WorkerState.CONNECTION_LOST)
    task = state.jobs[job_id].tasks[0]
    assert task.state is TaskState.WAITING and task.nodes is None
    assert second.mn_task is None


def test_node_files_list_full_and_short_names_root_first(tmp_path: Path) -> None:
    env = write_node_files(str(tmp_path), ["a.x.org", "b.x.org"])
    assert env["HQ_NUM_NODES"] == "2"
    assert Path(env["HQ_HOST_FILE"]).read_text() == "a.x.org\nb.x.org\n"
    assert Path(env["HQ_NODE_FILE"]).read_text() == "a\nb\n"


def test_a_worker_reserved_for_a_waiting_task_does_not_idle_out() -> None:
    state = ServerState("uid", clock=FakeClock())
    busy = state.add_worker(worker_config(cpus=1, hostname="a", group="g"), Outbox())
    idle = state.add_worker(worker_config(cpus=1, hostname="b", group="g"), Outbox())
    state.submit(m.SubmitRequest(submit_desc("0")))
    state.schedule()
    assert busy.tasks and idle.idle_since is not None
    wide = state.submit(m.SubmitRequest(submit_desc("0", request=ResourceRequest((), n_nodes=2))))
    state.schedule()
    assert idle.idle_since is None, "reserved: the idle timeout must not stop it"
    state.cancel_job(state.jobs[wide], None)
    state.schedule()
    assert idle.idle_since is not None, "no longer reserved: idle again"


def test_a_multi_node_request_with_resources_is_refused() -> None:
    """A hand-written client bypasses `build_request`: the server refuses it too."""
    state = ServerState("uid", clock=FakeClock())
    request = attrs.evolve(cpu_request(1), n_nodes=2)
    with pytest.raises(RequestError, match="takes whole workers"):
        state.submit(m.SubmitRequest(submit_desc("0", request=request)))
    assert not state.jobs
