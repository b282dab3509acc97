"""Faults on real Slurm allocations: `kill -9` of the server in the middle of an array,
restarted from its journal; the `slurmd` of an allocation's node killed under its running
tasks, and started again before or after Slurm marks the node down; and a dead node (its
slurmd and the allocation's processes on it frozen, then killed). Every task finishes once, and
no allocation is left in `squeue` at the end (docs/reliability.md, "A slurmd dies", says what
each does).

Needs the local Slurm (`bash scripts/slurm-local.sh start`); skips without it. The slurmd tests
need root and the fake nodes (`SLURM_LOCAL_NODES=3`, as CI starts it): they kill one node's
`slurmd -D -N nX` and always start it again (`scripts/slurm-local.sh restart-node nX`), since
the cluster is shared."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, _marked_processes, process_alive, read_lines, wait_until
from tests.e2e.test_slurm_real import (
    SKIP_REASON,
    WAIT,
    SlurmJobs,
    _slurm_answers,
    active_in_squeue,
    add_queue,
    alloc_info,
    job_states,
    queued_ids,
    setup_server,
    slurm,
)
from tests.faults.common import append_line, assert_exactly_once

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.e2e,
    pytest.mark.skipif(not _slurm_answers(), reason=SKIP_REASON),
]


@pytest.fixture
def slurm_jobs(hq_env: HqEnv) -> Iterator[SlurmJobs]:
    """scancel of whatever the test left in Slurm (before the harness checks processes)."""
    jobs = SlurmJobs(hq_env.root)
    yield jobs
    jobs.cancel_all()


def test_kill9_mid_array_on_slurm_allocations(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    journal = hq_env.root / "journal.hqj"
    done = hq_env.path("done.txt")
    journal_args = ("--journal", str(journal), "--journal-flush-period", "100ms")
    setup_server_with(hq_env, *journal_args)
    add_queue(hq_env, "--time-limit", "10m", "--max-worker-count", "2", "--cpus", "1")
    hq_env.command("submit", "--array", "1-200", "--", "bash", "-c", append_line(done))
    wait_until(lambda: len(read_lines(done)) >= 40, timeout=WAIT, what="40 tasks done")
    assert hq_env.server is not None
    hq_env.server.signal(signal.SIGKILL)
    hq_env.server.wait_exit()
    before = [j["id"] for j in slurm_jobs.mine()]

    hq_env.start_server(*journal_args)
    wait_until(
        lambda: hq_env.job_info()["info"]["task_stats"]["finished"] == 200,
        timeout=WAIT + 60,
        what="all 200 tasks finished",
    )
    assert_exactly_once(hq_env, done, range(1, 201))
    ids = sorted(set(before) | set(queued_ids(hq_env)) | {j["id"] for j in slurm_jobs.mine()})
    assert hq_env.stop_server() == 0
    # Nothing of ours is left in Slurm: the orderly stop stopped the workers (their jobs
    # end) and cancelled what was queued.
    wait_until(lambda: not active_in_squeue(ids), timeout=60, interval=0.5, what="squeue is empty")
    # And no process of those jobs lives on (Slurm kills a cancelled job's processes within
    # its KillWait).
    wait_until(lambda: not workers_alive(hq_env), timeout=60, interval=0.5, what="workers gone")


def workers_alive(env: HqEnv) -> list[tuple[int, str]]:
    return [
        (pid, cmd)
        for pid, cmd in _marked_processes(env.marker.encode())
        if "worker start" in cmd or "hq-submit.sh" in cmd
    ]


def setup_server_with(env: HqEnv, *args: str) -> None:
    """`setup_server` (Slurm's environment and fast timers) with server options."""
    setup_server(env)
    assert env.stop_server() == 0
    env.start_server(*args)


# ---------------------------------------------------------------------------------------------
# A slurmd that dies


SLURM_LOCAL = Path(__file__).resolve().parents[2] / "scripts" / "slurm-local.sh"


def _fake_nodes() -> list[str]:
    if not _slurm_answers():
        return []
    return sorted(set(slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split()))


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def slurmd_pids(node: str) -> list[int]:
    """The live `slurmd -D -N <node>` of one fake node (found by its `-N` argument)."""
    found = []
    for pid in _pids():
        argv = _argv(pid)
        if argv and Path(argv[0]).name == "slurmd" and "-N" in argv:
            i = argv.index("-N")
            if argv[i + 1 : i + 2] == [node] and process_alive(pid):
                found.append(pid)
    return found


def step_processes(job_id: str) -> set[int]:
    """The allocation's `slurmstepd: [ID.*]` and all their descendants (its batch script, the
    worker, the tasks): what a node's death takes with it."""
    parents: dict[int, int] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {
        pid
        for pid in parents
        if (argv := _argv(pid)) and argv[0].startswith(f"slurmstepd: [{job_id}.")
    }
    grown = True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grown = bool(more)
    return {pid for pid in found if process_alive(pid)}


def _kill(pids: set[int] | list[int], sig: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


class SlurmNodes:
    """Kills a node's slurmd (and what runs on it) for one test, and always starts it again."""

    def __init__(self) -> None:
        self.killed: list[str] = []
        self.frozen: set[int] = set()

    def kill_slurmd(self, node: str) -> None:
        """`kill -9` the slurmd of `node` only (its slurmstepds live on)."""
        pids = slurmd_pids(node)
        assert len(pids) == 1, f"slurmd of {node}: {pids}"
        self.killed.append(node)
        _kill(pids, signal.SIGKILL)
        wait_until(lambda: not slurmd_pids(node), timeout=10, what=f"the slurmd of {node} dies")

    def freeze_node(self, node: str, job_id: str) -> None:
        """A node that stops answering (hangs, loses power): SIGSTOP its slurmd and the
        allocation's processes on it, so that no socket closes and nothing forks on."""
        [slurmd] = slurmd_pids(node)
        self.killed.append(node)
        self.frozen = {slurmd} | step_processes(job_id)
        assert len(self.frozen) > 1, f"no processes of allocation {job_id}"
        for _ in range(3):  # catch what forked meanwhile
            _kill(self.frozen, signal.SIGSTOP)
            self.frozen |= step_processes(job_id)

    def kill_frozen(self) -> None:
        """`kill -9` of what `freeze_node` froze: the node is dead."""
        victims, self.frozen = self.frozen, set()
        _kill(victims, signal.SIGKILL)
        wait_until(
            lambda: not [p for p in victims if process_alive(p)],
            timeout=10,
            what="the frozen processes die",
        )

    def restart(self, node: str) -> None:
        """Start the node's slurmd as `slurm-local.sh start` does, and resume the node if
        slurmctld had marked it down."""
        result = subprocess.run(
            ["bash", str(SLURM_LOCAL), "restart-node", node],
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
            cwd="/",
        )
        assert result.returncode == 0, f"restart-node {node}: {result.stdout}{result.stderr}"
        if node in self.killed:
            self.killed.remove(node)

    def restore(self) -> None:
        self.kill_frozen()
        for node in list(self.killed):
            if slurmd_pids(node):
                self.killed.remove(node)
            else:
                self.restart(node)


@pytest.fixture
def slurm_nodes(slurm_jobs: SlurmJobs) -> Iterator[SlurmNodes]:
    """Needs root and fake nodes; teardown restarts every slurmd the test killed (before
    `slurm_jobs` cancels what is left, which needs the nodes back)."""
    if os.geteuid() != 0:
        pytest.skip("killing and restarting a slurmd needs root")
    nodes = _fake_nodes()
    if len(nodes) < 2 or not all(slurmd_pids(n) for n in nodes):
        pytest.skip(
            "needs fake nodes, one slurmd each: SLURM_LOCAL_NODES=3 scripts/slurm-local.sh start"
        )
    killer = SlurmNodes()
    try:
        yield killer
    finally:
        killer.restore()


GATE = "gate"


def gated_task(hq_env: HqEnv, done: Path) -> str:
    """Logs `id:instance:allocation` to `started`, waits for the gate file, then appends to
    `done` (see `append_line`)."""
    started = hq_env.path("started.txt")
    gate = hq_env.path(GATE)
    before = (
        f'echo "$HQ_TASK_ID:$HQ_INSTANCE_ID:$SLURM_JOB_ID" >> {started}; '
        f"while [ ! -e {gate} ]; do sleep 0.2; done; "
    )
    return append_line(done, before)


def started(hq_env: HqEnv) -> list[tuple[str, str, str]]:
    """(task, instance, allocation) of each task run that started."""
    rows = [line.split(":") for line in read_lines(hq_env.path("started.txt"))]
    return [(r[0], r[1], r[2]) for r in rows]


def busy_allocation(hq_env: HqEnv) -> str:
    """An allocation that runs two tasks (its worker has 2 cpus), or ""."""
    counts = Counter(row[2] for row in started(hq_env))
    return next((a for a, n in counts.items() if n == 2), "")


def node_of(allocation_id: str) -> str:
    """The node Slurm runs (or ran) the allocation on (`squeue -j ID -o %N`)."""
    node = slurm("squeue", "-h", "-t", "all", "-j", allocation_id, "-o", "%N").stdout.strip()
    assert node and "," not in node and "[" not in node, node
    return node


SLURMD_TIMEOUT_BOUND = 150.0
"""Bound of the wait for slurmctld to mark a node with a dead slurmd down (SlurmdTimeout=30
in scripts/slurm-local.sh; it took about 40 s here)."""


def node_state(node: str) -> str:
    """`sinfo -N -n NODE -o %T`: `idle`, `mixed`, `allocated`, `down*`, ..."""
    return slurm("sinfo", "-h", "-N", "-n", node, "-o", "%T").stdout.strip()


def allocation_status(hq_env: HqEnv, allocation_id: str) -> str:
    [allocation] = [a for a in alloc_info(hq_env) if a["id"] == allocation_id]
    status: str = allocation["status"]
    return status


def allocation_events(hq_env: HqEnv, allocation_id: str) -> list[tuple[str, str]]:
    rows: list[dict[str, Any]] = hq_env.command("alloc", "events", "1", json=True)
    return [(e["event"], e["message"]) for e in rows if e["allocation_id"] == allocation_id]


def wait_all_finished(hq_env: HqEnv, count: int) -> None:
    wait_until(
        lambda: hq_env.job_info()["info"]["task_stats"]["finished"] == count,
        timeout=WAIT + 60,
        what=f"all {count} tasks finished",
    )


def finish_cleanly(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> list[str]:
    """Stop the server; then nothing of the test is left in `squeue` and no worker lives.
    Returns the ids of the test's Slurm jobs."""
    ids = sorted(set(queued_ids(hq_env)) | {j["id"] for j in slurm_jobs.mine()})
    assert hq_env.stop_server() == 0
    wait_until(lambda: not active_in_squeue(ids), timeout=60, interval=0.5, what="squeue is empty")
    wait_until(lambda: not workers_alive(hq_env), timeout=60, interval=0.5, what="workers gone")
    return ids


def test_slurmd_killed_under_a_running_allocation(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, slurm_nodes: SlurmNodes
) -> None:
    """The slurmd dies, its slurmstepd lives on: the worker and its tasks never notice."""
    done = hq_env.path("done.txt")
    setup_server(hq_env)
    add_queue(
        hq_env, "--time-limit", "10m", "--max-worker-count", "1", "--idle-timeout", "3s",
        "--cpus", "2",
    )  # fmt: skip
    hq_env.command("submit", "--array", "1-6", "--", "bash", "-c", gated_task(hq_env, done))
    wait_until(lambda: len(started(hq_env)) == 2, timeout=WAIT, what="two tasks running")
    [allocation_id] = {row[2] for row in started(hq_env)}
    node = node_of(allocation_id)

    slurm_nodes.kill_slurmd(node)
    hq_env.path(GATE).touch()
    # The two running tasks end, and the other four run, on the slurmd-less node.
    wait_all_finished(hq_env, 6)
    instances = assert_exactly_once(hq_env, done, range(1, 7))
    assert set(instances.values()) == {"0"}, instances  # none ran again
    assert {row[2] for row in started(hq_env)} == {allocation_id}
    assert hq_env.job_info()["info"]["task_stats"]["failed"] == 0

    slurm_nodes.restart(node)
    # The worker idles out, the batch script ends, Slurm completes the job.
    wait_until(
        lambda: allocation_status(hq_env, allocation_id) == "finished",
        timeout=WAIT,
        interval=0.5,
        what=f"allocation {allocation_id} finishes",
    )
    wait_until(
        lambda: not active_in_squeue([allocation_id]), timeout=WAIT, what="the job leaves squeue"
    )
    assert job_states([allocation_id]).get(allocation_id, "COMPLETED") == "COMPLETED"
    assert finish_cleanly(hq_env, slurm_jobs) == [allocation_id]


def test_dead_node_under_a_running_allocation(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, slurm_nodes: SlurmNodes
) -> None:
    """The node dies: its slurmd and the allocation's processes on it first stop answering
    (frozen), then are killed. The worker is dropped for its missed heartbeats, its tasks run
    again in another allocation on another node, and the dead allocation is cancelled."""
    done = hq_env.path("done.txt")
    setup_server(hq_env)
    # --exclusive: a new allocation never lands beside the dead one on its node.
    add_queue(
        hq_env, "--time-limit", "10m", "--max-worker-count", "2", "--backlog", "1",
        "--idle-timeout", "3s", "--cpus", "2", "--", "--exclusive",
    )  # fmt: skip
    hq_env.command("submit", "--array", "1-4", "--", "bash", "-c", gated_task(hq_env, done))
    allocation_id = wait_until(
        lambda: busy_allocation(hq_env), timeout=WAIT, what="an allocation runs two tasks"
    )
    node = node_of(allocation_id)

    slurm_nodes.freeze_node(node, allocation_id)
    lost = {row[0] for row in started(hq_env) if row[2] == allocation_id}
    assert len(lost) == 2, started(hq_env)
    # Its worker's connection stays open, but its heartbeats stop (every 8 s by default).
    assert hq_env.server is not None
    server = hq_env.server
    wait_until(
        lambda: "missed its heartbeats" in server.stderr(),
        timeout=60,
        interval=0.5,
        what="the server drops the dead node's worker",
    )
    slurm_nodes.kill_frozen()
    hq_env.path(GATE).touch()
    wait_all_finished(hq_env, 4)
    instances = assert_exactly_once(hq_env, done, range(1, 5))
    # The dead node's tasks ran again (instance 1), elsewhere.
    assert {instances[t] for t in lost} == {"1"}, instances
    reruns = {row[2] for row in started(hq_env) if row[0] in lost and row[1] == "1"}
    assert reruns and allocation_id not in reruns, started(hq_env)
    assert node not in {node_of(a) for a in reruns}

    # hqpy ends the allocation at once (Slurm still says RUNNING) and cancels it.
    wait_until(
        lambda: allocation_status(hq_env, allocation_id) == "failed",
        timeout=WAIT,
        interval=0.5,
        what=f"allocation {allocation_id} is failed ({allocation_events(hq_env, allocation_id)})",
    )
    [(event, message)] = allocation_events(hq_env, allocation_id)[-1:]
    assert event == "allocation-failed" and "heartbeat lost" in message, message
    # The node stays dead until Slurm notices (SlurmdTimeout) and marks it down. Without the
    # cancel, Slurm would now requeue the job (JobRequeue=1) to run again later.
    wait_until(
        lambda: node_state(node).startswith("down"),
        timeout=SLURMD_TIMEOUT_BOUND,
        interval=1,
        what=f"Slurm marks {node} down",
    )
    slurm_nodes.restart(node)
    wait_until(
        lambda: not active_in_squeue([allocation_id]),
        timeout=60,
        interval=0.5,
        what=f"the dead allocation {allocation_id} leaves squeue",
    )
    assert job_states([allocation_id]).get(allocation_id, "CANCELLED") == "CANCELLED"
    # The other allocations idle out: none is left queued or running.
    wait_until(
        lambda: all(a["status"] in ("finished", "failed") for a in alloc_info(hq_env)),
        timeout=WAIT,
        interval=0.5,
        what="every allocation ended",
    )
    ids = finish_cleanly(hq_env, slurm_jobs)
    assert allocation_id in ids and len(ids) >= 2


def test_slurmd_dead_past_its_timeout_under_a_running_allocation(
    hq_env: HqEnv, slurm_jobs: SlurmJobs, slurm_nodes: SlurmNodes
) -> None:
    """The slurmd stays dead until Slurm marks its node down and requeues the job, while the
    worker and its tasks live on. The slurmd, back, kills them: the tasks run again in the
    other allocation, and hqpy cancels the requeued job before it runs again."""
    done = hq_env.path("done.txt")
    setup_server(hq_env)
    add_queue(
        hq_env, "--time-limit", "10m", "--max-worker-count", "2", "--backlog", "1",
        "--idle-timeout", "3s", "--cpus", "2", "--", "--exclusive",
    )  # fmt: skip
    hq_env.command("submit", "--array", "1-4", "--", "bash", "-c", gated_task(hq_env, done))
    wait_until(
        lambda: len(started(hq_env)) == 4 and busy_allocation(hq_env),
        timeout=WAIT,
        what="two allocations run two tasks each",
    )
    allocation_id = busy_allocation(hq_env)
    node = node_of(allocation_id)
    lost = {row[0] for row in started(hq_env) if row[2] == allocation_id}

    slurm_nodes.kill_slurmd(node)
    wait_until(
        lambda: node_state(node).startswith("down"),
        timeout=SLURMD_TIMEOUT_BOUND,
        interval=1,
        what=f"Slurm marks {node} down",
    )
    wait_until(
        lambda: job_states([allocation_id]).get(allocation_id) == "PENDING",
        timeout=30,
        what=f"Slurm requeues {allocation_id}",
    )
    # hqpy still has it running: its worker is connected, its tasks run.
    assert allocation_status(hq_env, allocation_id) == "running"
    assert step_processes(allocation_id)
    assert hq_env.task_states() == {i: "running" for i in range(1, 5)}

    slurm_nodes.restart(node)  # it kills what ran on the node
    wait_until(
        lambda: allocation_status(hq_env, allocation_id) in ("failed", "finished"),
        timeout=WAIT,
        interval=0.5,
        what=f"allocation {allocation_id} ends",
    )
    [(event, message)] = allocation_events(hq_env, allocation_id)[-1:]
    assert "connection lost" in message, (event, message)
    # Cancelled in Slurm: the requeued job never runs again.
    wait_until(
        lambda: not active_in_squeue([allocation_id]),
        timeout=60,
        interval=0.5,
        what=f"the requeued {allocation_id} leaves squeue",
    )
    assert job_states([allocation_id]).get(allocation_id, "CANCELLED") == "CANCELLED"

    hq_env.path(GATE).touch()
    wait_all_finished(hq_env, 4)
    instances = assert_exactly_once(hq_env, done, range(1, 5))
    assert {instances[t] for t in lost} == {"1"}, instances
    assert {instances[t] for t in set(instances) - lost} == {"0"}, instances
    wait_until(
        lambda: all(a["status"] in ("finished", "failed") for a in alloc_info(hq_env)),
        timeout=WAIT,
        interval=0.5,
        what="every allocation ended",
    )
    assert allocation_id in finish_cleanly(hq_env, slurm_jobs)
