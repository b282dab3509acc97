"""Task JSON with the nodes of a multi-node task and the earlier instances of a task."""

from __future__ import annotations

from hqpy.cli.output.json import task_json
from hqpy.common.states import TaskState
from hqpy.protocol import messages as m


def test_waiting_task_shows_why_earlier_instances_ended() -> None:
    task = m.TaskView(
        id=3, state=TaskState.WAITING, instance_id=1, instances=((0, "allocation drained"),)
    )
    assert task_json(task) == {
        "id": 3,
        "state": "waiting",
        "instances": [{"instance_id": 0, "ended": "allocation drained"}],
    }
    assert task_json(m.TaskView(id=3, state=TaskState.WAITING)) == {"id": 3, "state": "waiting"}


def test_multi_node_task_shows_its_nodes_root_first() -> None:
    task = m.TaskView(id=0, state=TaskState.FINISHED, workers=("a.x", "b.x"), nodes=(4, 7))
    data = task_json(task)
    assert data["worker"] == "a.x"
    assert data["nodes"] == [{"worker": 4, "host": "a.x"}, {"worker": 7, "host": "b.x"}]
    assert "nodes" not in task_json(m.TaskView(id=0, state=TaskState.FINISHED, workers=("a.x",)))
