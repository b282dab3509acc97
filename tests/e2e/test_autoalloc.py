"""`hq alloc ...` end to end: a real server submits allocations that start real workers.

Three batch systems: `local` (allocations are process groups of this machine), and Slurm and
PBS through the CLI emulators of `tests/emulators/` (put first on the server's `PATH`; they
really run the submitted scripts). The server runs with HyperQueue's test timers
(`HQ_AUTOALLOC_*_MS=100`), as HyperQueue's own autoalloc tests do.

Nothing here asserts on timings; waits poll with generous timeouts.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.e2e.harness import HQ, HqEnv, parse_table, process_alive, wait_until
from tests.emulators import batch_emulator

pytestmark = pytest.mark.e2e

FAST_TIMERS = {
    "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "100",
    "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "100",
    "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "100",
}
MANAGERS = ["local", "slurm", "pbs"]
EMULATED = ["slurm", "pbs"]

ALLOCATION_ENV = {"local": "HQPY_ALLOCATION_ID", "slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID"}
"""The variable through which an allocation's processes know their allocation id."""
SUBMIT_TOOL = {"slurm": "sbatch", "pbs": "qsub"}
CANCEL_TOOL = {"slurm": "scancel", "pbs": "qdel"}

SBATCH_ERROR = (
    "sbatch: error: Batch job submission failed: "
    "Invalid account or account/partition combination specified"
)

QUEUE_KEYS = {
    "id",
    "name",
    "state",
    "manager",
    "additional_args",
    "backlog",
    "max_workers_per_alloc",
    "timelimit",
    "max_worker_count",
    "worker_args",
    "known_worker_resources",
}
ALLOCATION_KEYS = {
    "id",
    "target_worker_count",
    "queued_at",
    "started_at",
    "ended_at",
    "status",
    "workdir",
    "pending_reason",
}
EVENT_KEYS = {"time", "event", "queue_id", "allocation_id", "message"}


# ---------------------------------------------------------------------------------------------
# The batch system of a test


@attrs.define
class Batch:
    """The batch system the server of one test talks to (emulated, or `local`)."""

    manager: str
    state: Path | None = None
    log: Path | None = None

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        """Every emulated command the server ran: `{"tool", "argv", "cwd"}`."""
        if self.log is None or not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if tool is None or c["tool"] == tool]


@attrs.define
class Batches:
    tmp_path: Path
    states: list[Path] = attrs.Factory(list)

    def setup(self, env: HqEnv, manager: str, **knobs: str) -> Batch:
        """Give the server of `env` fast autoalloc timers and, for Slurm and PBS, the
        emulators first on its `PATH` (with `knobs`, e.g. `HQPY_EMULATOR_START_DELAY`)."""
        env.env.update(FAST_TIMERS)
        if manager == "local":
            return Batch(manager)
        bin_dir = batch_emulator.install(self.tmp_path / "emulator-bin")
        state = self.tmp_path / "emulator-state.json"
        log = self.tmp_path / "emulator-calls.jsonl"
        self.states.append(state)
        env.env.update(
            {
                "PATH": f"{bin_dir}{os.pathsep}{env.env.get('PATH', '')}",
                "HQPY_EMULATOR_STATE": str(state),
                "HQPY_EMULATOR_LOG": str(log),
                "HQPY_EMULATOR_KILL_WAIT": "1",
                **knobs,
            }
        )
        return Batch(manager, state, log)


@pytest.fixture
def batches(tmp_path: Path) -> Iterator[Batches]:
    """Request it before `hq_env`: its teardown (killing what emulated jobs left) then runs
    after the server is stopped and the leak check of `hq_env` is done."""
    b = Batches(tmp_path)
    yield b
    for state in b.states:
        batch_emulator.cleanup(state)


# ---------------------------------------------------------------------------------------------
# Helpers
#
# A client call costs about a second here (a fresh Python process), so waits watch the server's
# log (free to read) and the CLI is called once the condition holds, to assert on its output.


def add_queue(
    env: HqEnv, manager: str, *args: str, dry_run: bool = False, queue_id: int = 1
) -> str:
    """`hq alloc add <manager> ...`; returns its stderr (the log lines)."""
    extra = [] if dry_run else ["--no-dry-run"]
    result = env.run("alloc", "add", manager, *extra, *args)
    assert f"Allocation queue {queue_id} successfully created" in result.stderr, result.stderr
    return result.stderr


def alloc_info(env: HqEnv, queue_id: int = 1) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = env.command("alloc", "info", str(queue_id), json=True)
    return data


def alloc_events(env: HqEnv, queue_id: int = 1) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = env.command("alloc", "events", str(queue_id), json=True)
    return data


def logged(env: HqEnv, queue_id: int, event: str) -> int:
    """How many times the server logged this event of this queue (`Queue 1: allocation-...`)."""
    assert env.server is not None
    return len(re.findall(rf"Queue {queue_id}: {re.escape(event)}\b", env.server.stderr()))


def wait_logged(
    env: HqEnv, queue_id: int, event: str, count: int = 1, timeout: float = 30.0
) -> None:
    wait_until(
        lambda: logged(env, queue_id, event) >= count,
        timeout=timeout,
        interval=0.05,
        what=f"queue {queue_id} logs {count} {event}",
    )


def wait_all_ended(env: HqEnv, queue_id: int = 1, timeout: float = 30.0) -> None:
    """Until every allocation the queue submitted has ended (finished or failed)."""

    def ended() -> bool:
        queued = logged(env, queue_id, "allocation-queued")
        done = logged(env, queue_id, "allocation-finished") + logged(
            env, queue_id, "allocation-failed"
        )
        return queued > 0 and done == queued

    wait_until(ended, timeout=timeout, interval=0.05, what="every allocation ends")


def allocation_pids(env: HqEnv, manager: str, allocation_id: str) -> list[int]:
    """Live processes of this test that run inside the allocation (its script, its workers
    and their tasks): they carry the allocation id in their environment."""
    wanted = {env.marker.encode(), f"{ALLOCATION_ENV[manager]}={allocation_id}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ and process_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def wait_allocation_gone(env: HqEnv, manager: str, allocation_id: str) -> None:
    wait_until(
        lambda: not allocation_pids(env, manager, allocation_id),
        timeout=20,
        what=f"the processes of allocation {allocation_id} exit",
    )


def hq_command() -> str:
    """How the server's scripts start `hq` (the server runs as `python -m hqpy`)."""
    return shlex.join(HQ)


def job_stats(env: HqEnv, job_id: int) -> dict[str, int]:
    """`hq job wait <job>`, then the job's task counts."""
    [job] = env.command("job", "wait", str(job_id), json=True)
    stats: dict[str, int] = job["task_stats"]
    return stats


class LineReader:
    """Lines of a process's stdout, read by a thread, with a timeout per line."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.lines: queue.Queue[str] = queue.Queue()
        assert popen.stdout is not None
        stdout = popen.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def next(self, timeout: float = 20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None

    def nothing_within(self, seconds: float) -> bool:
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected line {line!r}")

    def stop(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self.thread.join(5)


# ---------------------------------------------------------------------------------------------
# The whole flow, per batch system


@pytest.mark.parametrize("manager", MANAGERS)
def test_allocations_run_tasks_and_finish(batches: Batches, hq_env: HqEnv, manager: str) -> None:
    batch = batches.setup(hq_env, manager)
    hq_env.start_server()
    # The local dry run is cheap (`bash -n`): do it here; the emulated ones have their test.
    stderr = add_queue(
        hq_env,
        manager,
        "--time-limit",
        "10m",
        "--backlog",
        "2",
        "--workers-per-alloc",
        "1",
        "--idle-timeout",
        "2s",
        "--cpus",
        "1",
        "--worker-start-cmd",
        "echo allocation-output",
        dry_run=manager == "local",
    )
    if manager == "local":
        assert "The allocation script was checked with `bash -n`." in stderr
        assert "trial allocation was submitted" not in stderr

    hq_env.command("submit", "--array", "1-50", "--", "sleep", "0.05")
    assert job_stats(hq_env, 1)["finished"] == 50

    # The workers idle out (2 s), and so their allocations end.
    wait_all_ended(hq_env)
    allocations = alloc_info(hq_env)
    assert allocations
    for a in allocations:
        assert set(a) == ALLOCATION_KEYS
        assert a["status"] == "finished", a
        assert a["target_worker_count"] == 1
        assert a["queued_at"] <= a["started_at"] <= a["ended_at"], a
        wait_allocation_gone(hq_env, manager, a["id"])

    events = alloc_events(hq_env)
    assert all(set(e) == EVENT_KEYS for e in events)
    assert events[0]["event"] == "queue-created"
    # Each allocation went QUEUED -> RUNNING -> FINISHED, in that order.
    for a in allocations:
        mine = [e["event"] for e in events if e["allocation_id"] == a["id"]]
        assert mine == ["allocation-queued", "allocation-started", "allocation-finished"], mine
    # Never more than `backlog` allocations waited in the batch queue at once.
    waiting: set[str] = set()
    for e in events:
        if e["event"] == "allocation-queued":
            waiting.add(e["allocation_id"])
        elif e["event"].startswith("allocation-"):
            waiting.discard(e["allocation_id"])
        assert len(waiting) <= 2, events

    [queue_json] = hq_env.command("alloc", "list", json=True)
    assert set(queue_json) == QUEUE_KEYS
    assert queue_json["id"] == 1
    assert queue_json["name"] is None
    assert queue_json["state"] == "ACTIVE"
    assert queue_json["manager"] == manager.upper()
    assert queue_json["backlog"] == 2
    assert queue_json["max_workers_per_alloc"] == 1
    assert queue_json["timelimit"] == 600.0
    assert queue_json["max_worker_count"] is None
    assert queue_json["additional_args"] == []
    assert queue_json["known_worker_resources"], "learned from the first worker"

    first = allocations[0]
    workdir = Path(first["workdir"])
    assert (workdir.parent.name, workdir.name) == ("1", "001")
    assert {"hq-submit.sh", "jobid", "stdout", "stderr"} <= {p.name for p in workdir.iterdir()}
    assert (workdir / "jobid").read_text().strip() == first["id"]
    assert "allocation-output" in hq_env.command("alloc", "log", first["id"], "stdout")

    if manager in EMULATED:
        instance = workdir.parents[2]
        exec_line = (
            f"echo allocation-output && {hq_command()} worker start "
            f'--idle-timeout "2s" --manager "{manager}" --server-dir "{instance}" '
            f'--cpus "1" --on-server-lost "finish-running" '
            f'--server-lost-grace "5m" --time-limit "10m"'
        )
        if manager == "slurm":
            header = [
                "#!/bin/bash",
                "#SBATCH --nodes=1",
                "#SBATCH --job-name=hq-1-1",
                f"#SBATCH --output={workdir}/stdout",
                f"#SBATCH --error={workdir}/stderr",
                "#SBATCH --time=00:10:00",
            ]
        else:
            header = [
                "#!/bin/bash",
                "#PBS -l select=1",
                "#PBS -N hq-1-1",
                f"#PBS -o {workdir}/stdout",
                f"#PBS -e {workdir}/stderr",
                "#PBS -l walltime=00:10:00",
            ]
        id_var = "$SLURM_JOB_ID" if manager == "slurm" else "$PBS_JOBID"
        trap = (
            f"trap 'hqpy_exit=$?; {hq_command()} worker report-end "
            f'--server-dir "{instance}" --allocation "{id_var}" --exit-code "$hqpy_exit" '
            f'--stderr-file "{workdir}/stderr" >/dev/null 2>&1\' EXIT'
        )
        script = (workdir / "hq-submit.sh").read_text()
        assert script == "\n".join(header) + "\n\n" + trap + "\n" + exec_line + "\n"
        submits = batch.calls(SUBMIT_TOOL[manager])
        assert len(submits) == len(allocations)
        assert submits[0]["argv"] == [str(workdir / "hq-submit.sh")]
        assert submits[0]["cwd"] == str(workdir)


# ---------------------------------------------------------------------------------------------
# Allocations that report their own end (hq #13.1)


@pytest.mark.parametrize("manager", MANAGERS)
def test_allocation_whose_worker_cannot_start_fails_with_its_stderr_and_pauses(
    batches: Batches, hq_env: HqEnv, manager: str
) -> None:
    # The commonest real failure (a missing module, a broken venv): the script ends before
    # any worker registers. Its exit trap reports it: FAILED with the stderr text, and (one
    # failure allowed here) the queue pauses itself. The batch system is polled only every
    # 30 minutes and queued allocations every 10 minutes, so the report is what tells.
    batches.setup(hq_env, manager)
    hq_env.env["HQ_AUTOALLOC_REFRESH_INTERVAL_MS"] = str(30 * 60 * 1000)
    hq_env.env["HQPY_AUTOALLOC_QUEUED_REFRESH_INTERVAL_MS"] = str(10 * 60 * 1000)
    hq_env.env["HQ_AUTOALLOC_MAX_ALLOCATION_FAILS"] = "1"
    hq_env.start_server()
    add_queue(
        hq_env,
        manager,
        "--time-limit",
        "10m",
        "--cpus",
        "1",
        "--worker-start-cmd",
        "echo boom >&2; false",
    )
    hq_env.command("submit", "--", "sleep", "0")
    wait_logged(hq_env, 1, "allocation-failed")
    wait_logged(hq_env, 1, "queue-paused")
    [info] = alloc_info(hq_env)
    assert info["status"] == "failed"
    events = alloc_events(hq_env)
    [failed] = [e for e in events if e["event"] == "allocation-failed"]
    assert failed["allocation_id"] == info["id"]
    assert failed["message"] == (
        "its script exited with code 1 before any worker registered; stderr: boom"
    )
    [paused] = [e for e in events if e["event"] == "queue-paused"]
    assert "1 allocations in a row failed" in paused["message"]
    [queue_json] = hq_env.command("alloc", "list", json=True)
    assert queue_json["state"] == "PAUSED"
    assert "boom" in hq_env.command("alloc", "log", info["id"], "stderr")


def test_report_end_needs_the_worker_secret_and_a_live_server(hq_env: HqEnv) -> None:
    # The report is authenticated like a worker: a wrong secret is refused, in one line.
    hq_env.start_server()
    [access] = hq_env.server_dir.glob("[0-9]*/access.json")
    record = json.loads(access.read_text())
    record["worker"]["secret_key"] = "0" * len(record["worker"]["secret_key"])
    forged = hq_env.work_dir / "forged"
    (forged / "001").mkdir(parents=True)
    (forged / "001" / "access.json").write_text(json.dumps(record))
    args = ("worker", "report-end", "--allocation", "local-1", "--exit-code", "1")
    result = hq_env.run(*args, server_dir=forged / "001", expect_fail=True)
    [line] = result.stderr.strip().splitlines()
    assert "Could not report the end of allocation local-1" in line, result.stderr
    hq_env.run(*args)  # the right secret: taken (no queue knows the allocation)
    assert hq_env.stop_server() == 0
    result = hq_env.run(*args, expect_fail=True)
    assert "Could not report the end of allocation local-1" in result.stderr


# ---------------------------------------------------------------------------------------------
# The environment each queue's workers start in (hq #9.5)


@pytest.mark.parametrize("manager", ["local", "slurm"])
def test_queue_worker_environment_reaches_tasks(
    batches: Batches, hq_env: HqEnv, manager: str
) -> None:
    batches.setup(hq_env, manager)
    hq_env.start_server()
    env_script = hq_env.work_dir / "env.sh"
    env_script.write_text("export FROM_ENV_SCRIPT=sourced\n")
    # A stand-in interpreter: marks the environment, then runs the real one.
    python = hq_env.work_dir / "my python"
    python.write_text(
        '#!/bin/bash\nexport VIA_PYTHON="$0"\nexport WORKER_CWD="$PWD"\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    worker_dir = hq_env.work_dir / "worker dir"
    workers = "2" if manager == "slurm" else "1"  # Slurm: through `srun`
    add_queue(
        hq_env,
        manager,
        "--time-limit",
        "10m",
        "--cpus",
        "1",
        "--workers-per-alloc",
        workers,
        "--env-script",
        str(env_script),
        "--worker-env",
        "FROM_WORKER_ENV=a b",
        "--worker-env",
        "SECOND=2",
        "--python",
        str(python),
        "--worker-dir",
        str(worker_dir),
    )
    hq_env.command(
        "submit",
        "--",
        "bash",
        "-c",
        'echo "$FROM_ENV_SCRIPT|$FROM_WORKER_ENV|$SECOND|$VIA_PYTHON|$WORKER_CWD"',
    )
    assert job_stats(hq_env, 1)["finished"] == 1
    output = hq_env.command("job", "cat", "1", "stdout").strip()
    assert output == f"sourced|a b|2|{python}|{worker_dir}"
    [queue_json] = hq_env.command("alloc", "list", json=True)
    assert queue_json["worker_environment"] == {
        "env_script": str(env_script),
        "worker_env": ["FROM_WORKER_ENV=a b", "SECOND=2"],
        "python": str(python),
        "worker_dir": str(worker_dir),
        "script_template": False,
        "template_params": [],
    }
    # `alloc info` shows it too: on each allocation (JSON) and under the table.
    allocations = hq_env.command("alloc", "info", "1", json=True)
    assert allocations
    assert all(a["worker_environment"] == queue_json["worker_environment"] for a in allocations)
    table = hq_env.command("alloc", "info", "1")
    assert f"| Env script | {env_script}" in table
    assert "| Worker env | FROM_WORKER_ENV=a b" in table
    assert f"| Python     | {python}" in table
    assert f"| Worker dir | {worker_dir}" in table


def test_alloc_add_refuses_a_missing_env_script_or_interpreter(hq_env: HqEnv) -> None:
    hq_env.start_server()
    missing = hq_env.work_dir / "missing.sh"
    result = hq_env.run(
        "alloc",
        "add",
        "local",
        "--time-limit",
        "1h",
        "--env-script",
        str(missing),
        expect_fail=True,
    )
    assert f"Env script `{missing}` does not exist" in result.stderr
    result = hq_env.run(
        "alloc",
        "add",
        "local",
        "--time-limit",
        "1h",
        "--python",
        "no-such-python3",
        expect_fail=True,
    )
    assert "Python interpreter `no-such-python3` was not found" in result.stderr
    assert hq_env.command("alloc", "list", json=True) == []


# ---------------------------------------------------------------------------------------------
# Script templates and `dry-run --print-script` (hq #9.6)

DIRECTIVE = {
    "slurm": "#SBATCH --time=01:00:00",
    "pbs": "#PBS -l walltime=01:00:00",
    "local": "# time limit 01:00:00",
    "lsf": "#BSUB -W 1:00",
    "htcondor": "#CONDOR batch_name",
    "sge": "#$ -l h_rt=01:00:00",
}


def test_dry_run_prints_the_script_of_every_backend(hq_env: HqEnv) -> None:
    hq_env.start_server()
    [instance] = [p.parent for p in hq_env.server_dir.glob("[0-9]*/access.json")]
    for manager, directive in DIRECTIVE.items():
        script = hq_env.command(
            "alloc", "dry-run", manager, "--time-limit", "1h", "--cpus", "1", "--print-script"
        )
        lines = script.splitlines()
        assert lines[0] == "#!/bin/bash", script
        assert any(line.startswith(directive) for line in lines), (manager, script)
        assert 'worker start --idle-timeout "5m"' in script
        assert f'worker report-end --server-dir "{instance}"' in script
    # Nothing was submitted and nothing is left behind.
    assert not list((instance / "autoalloc").glob("dry-run-*"))


def test_script_template_replaces_the_script_and_runs_a_queue(
    batches: Batches, hq_env: HqEnv
) -> None:
    batches.setup(hq_env, "local")
    hq_env.start_server()
    template = hq_env.work_dir / "site.sh"
    template.write_text(
        "#!/bin/bash\n$directives\n# site template for $queue_name: $node_count node(s), "
        "$walltime, in $allocation_dir\n$env_setup\nexport FROM_TEMPLATE=$module\n"
        "$worker_command\n"
    )
    options = ["--time-limit", "1h", "--cpus", "1", "--name", "site"]
    options += ["--script-template", str(template), "-x", "module=gcc/12", "-x", "unused=1"]
    printed = hq_env.command("alloc", "dry-run", "local", *options, "--print-script")
    builtin = hq_env.command(
        "alloc",
        "dry-run",
        "local",
        "--time-limit",
        "1h",
        "--cpus",
        "1",
        "--name",
        "site",
        "--print-script",
    )
    # The two dry runs have their own dirs (`dry-run-1`, `dry-run-2`).
    printed, builtin = (re.sub(r"dry-run-\d+", "dry-run-N", t) for t in (printed, builtin))
    head, _, body = builtin.partition("\n\n")
    trap, _, worker_lines = body.partition("\n")
    [dry_dir] = re.findall(r'--stderr-file "(.*)/stderr"', trap)
    assert printed == (
        head
        + f"\n# site template for site: 1 node(s), 01:00:00, in {dry_dir}\n"
        + trap
        + "\nexport FROM_TEMPLATE=gcc/12\n"
        + worker_lines
    ), printed

    add_queue(hq_env, "local", *options)
    [queue_json] = hq_env.command("alloc", "list", json=True)
    assert queue_json["worker_environment"]["template_params"] == ["module=gcc/12", "unused=1"]
    hq_env.command("submit", "--", "bash", "-c", 'echo "$FROM_TEMPLATE"')
    assert job_stats(hq_env, 1)["finished"] == 1
    assert hq_env.command("job", "cat", "1", "stdout").strip() == "gcc/12"
    [info] = alloc_info(hq_env)
    script = (Path(info["workdir"]) / "hq-submit.sh").read_text()
    assert f"in {info['workdir']}\n" in script


def test_script_template_names_what_is_missing(hq_env: HqEnv) -> None:
    hq_env.start_server()
    template = hq_env.work_dir / "t.sh"
    template.write_text("#!/bin/bash\n$directives\nmodule load $module\n$worker_command\n")
    base = ["alloc", "add", "slurm", "--time-limit", "1h", "--script-template", str(template)]
    result = hq_env.run(*base, expect_fail=True)
    assert "script template uses `$module`" in result.stderr
    assert "give it with `-x module=VALUE`" in result.stderr
    template.write_text("#!/bin/bash\n$directives\ncost: 5$\n")
    result = hq_env.run(*base, expect_fail=True)
    assert "Invalid script template" in result.stderr
    assert "$$" in result.stderr
    result = hq_env.run(*base, "-x", "directives=no", expect_fail=True)
    assert "would hide the built-in placeholder `$directives`" in result.stderr
    missing = hq_env.work_dir / "missing.sh"
    result = hq_env.run(
        "alloc",
        "add",
        "slurm",
        "--time-limit",
        "1h",
        "--script-template",
        str(missing),
        expect_fail=True,
    )
    assert f"Cannot read script template `{missing}`" in result.stderr
    assert hq_env.command("alloc", "list", json=True) == []


# ---------------------------------------------------------------------------------------------
# Options the CLI refuses


def test_alloc_add_refuses_bad_options(hq_env: HqEnv) -> None:
    # No server is needed: these are refused before any connection.
    result = hq_env.run("alloc", "add", "slurm", expect_fail=True)
    assert result.returncode == 2
    assert "--time-limit" in result.stderr

    result = hq_env.run(
        "alloc", "add", "slurm", "--time-limit", "1h", "--backlog", "0", expect_fail=True
    )
    assert result.returncode == 2
    assert "Backlog has to be at least 1" in result.stderr

    result = hq_env.run(
        "alloc",
        "add",
        "slurm",
        "--time-limit",
        "10m",
        "--worker-time-limit",
        "20m",
        expect_fail=True,
    )
    assert result.returncode == 1
    assert "Worker time limit cannot be larger than queue time limit" in result.stderr


def test_alloc_add_takes_batch_arguments_after_double_dash(hq_env: HqEnv) -> None:
    # design.md §1: `hq alloc add slurm --time-limit 1h ... -- --partition=p1 --account=abc`.
    # No server runs: parsing must pass and the command fail only to connect (exit 1).
    result = hq_env.run(
        "alloc",
        "add",
        "slurm",
        "--time-limit",
        "1h",
        "--backlog",
        "2",
        "--",
        "--partition=p1",
        "--account=abc",
        expect_fail=True,
    )
    assert "unrecognized arguments" not in result.stderr
    assert result.returncode == 1, result.stderr
    assert "No running instance of HQ found" in result.stderr


# ---------------------------------------------------------------------------------------------
# Failing submissions


def test_dry_run_shows_the_batch_system_error(batches: Batches, hq_env: HqEnv) -> None:
    batch = batches.setup(hq_env, "slurm", HQPY_EMULATOR_FAIL_SUBMIT=SBATCH_ERROR)
    hq_env.start_server()
    for verb in ("add", "dry-run"):
        result = hq_env.run(
            "alloc", verb, "slurm", "--time-limit", "10m", "--cpus", "1", expect_fail=True
        )
        assert result.returncode == 1
        assert "Could not submit allocation:" in result.stderr
        assert SBATCH_ERROR in result.stderr
    assert len(batch.calls("sbatch")) == 2
    assert batch.calls("scancel") == []
    assert logged(hq_env, 1, "queue-created") == 0, "no queue was created"


def test_missing_sbatch_is_a_submit_failure(
    batches: Batches, hq_env: HqEnv, tmp_path: Path
) -> None:
    batches.setup(hq_env, "local")  # only the timers
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    hq_env.env["PATH"] = str(empty)  # the server finds no sbatch (nor anything else)
    hq_env.start_server()
    result = hq_env.run(
        "alloc", "add", "slurm", "--time-limit", "10m", "--cpus", "1", expect_fail=True
    )
    assert result.returncode == 1
    assert "Could not submit allocation:" in result.stderr
    assert "sbatch" in result.stderr
    add_queue(hq_env, "slurm", "--time-limit", "10m", "--cpus", "1")
    hq_env.command("submit", "--", "sleep", "0")
    wait_logged(hq_env, 1, "submit-failed")
    [failed] = [e for e in alloc_events(hq_env) if e["event"] == "submit-failed"]
    assert "sbatch" in failed["message"]
    assert failed["allocation_id"] is None
    # The server lives on, nothing was queued or left behind, and the task still waits.
    assert hq_env.task_states(1) == {0: "waiting"}
    assert hq_env.server is not None and hq_env.server.is_running()
    assert logged(hq_env, 1, "allocation-queued") == 0


# ---------------------------------------------------------------------------------------------
# Removing queues and stopping the server

HELD = {
    "local": ["--worker-start-cmd", "sleep 60"],  # QUEUED until a worker registers
    "slurm": ["--", "--hold"],  # `#SBATCH --hold`: PENDING (JobHeldUser)
    "pbs": ["--", "-h"],  # `#PBS -h`: H
}
"""Options of a queue whose allocations stay queued."""


def logged_ids(env: HqEnv, queue_id: int, event: str) -> list[str]:
    """Allocation ids of the logged events, in order (`Queue 1: allocation-queued <id>: ...`)."""
    assert env.server is not None
    pattern = rf"Queue {queue_id}: {re.escape(event)} (\S+):"
    return re.findall(pattern, env.server.stderr())


@pytest.mark.parametrize("manager", MANAGERS)
def test_remove_refuses_running_allocations_unless_forced_and_stop_cancels_queued(
    batches: Batches, hq_env: HqEnv, manager: str
) -> None:
    batch = batches.setup(hq_env, manager)
    hq_env.start_server()
    # Queue 1: 2-cpu workers whose allocations never start. The dry run submits and cancels
    # a trial allocation (only `bash -n` for local).
    result = hq_env.run(
        "alloc",
        "add",
        manager,
        "--time-limit",
        "10m",
        "--cpus",
        "2",
        "--backlog",
        "2",
        *HELD[manager],
    )
    checked = {"local": "The allocation script was checked with `bash -n`."}
    assert checked.get(manager, "A trial allocation was submitted successfully") in result.stderr
    hq_env.command("submit", "--cpus", "2", "--array", "1-3", "--", "sleep", "0")
    wait_logged(hq_env, 1, "allocation-queued", 2)
    queued = logged_ids(hq_env, 1, "allocation-queued")
    # Queue 2: 1-cpu workers that start and stay (only they can run job 2).
    add_queue(
        hq_env, manager, "--time-limit", "10m", "--cpus", "1", "--idle-timeout", "5m", queue_id=2
    )
    hq_env.command("submit", "--", "sleep", "0")
    assert job_stats(hq_env, 2)["finished"] == 1
    [running_id] = logged_ids(hq_env, 2, "allocation-started")
    assert allocation_pids(hq_env, manager, running_id)

    refused = hq_env.command("alloc", "remove", "2", expect_fail=True)
    assert "Allocation queue has running jobs, so it will not be removed" in refused
    assert "--force" in refused
    result = hq_env.run("alloc", "remove", "2", "--force")
    assert "Allocation queue 2 successfully removed" in result.stderr
    wait_allocation_gone(hq_env, manager, running_id)

    # Queue 1's allocations never started; stopping the server cancels them.
    assert logged(hq_env, 1, "allocation-started") == 0
    assert hq_env.stop_server() == 0
    ended = logged_ids(hq_env, 1, "allocation-finished") + logged_ids(
        hq_env, 1, "allocation-failed"
    )
    assert sorted(ended) == sorted(queued)
    for allocation_id in queued:
        wait_allocation_gone(hq_env, manager, allocation_id)
    if manager == "local":
        return

    # What the batch system saw, in HyperQueue's argv shapes (hq-cli-compat §7.1).
    submit_tool, cancel_tool = SUBMIT_TOOL[manager], CANCEL_TOOL[manager]
    submits = batch.calls(submit_tool)
    cancels = batch.calls(cancel_tool)
    # Every batch job the server ever submitted is cancelled: none outlives it.
    assert batch.state is not None
    jobs = json.loads(batch.state.read_text())["jobs"]
    assert {i: j["state"] for i, j in jobs.items() if j["state"] != "cancelled"} == {}
    assert len(submits) == 4  # the trial, two held, one that ran
    for call in submits:
        assert call["argv"] == [f"{call['cwd']}/hq-submit.sh"], call
    held_script = Path(submits[1]["cwd"], "hq-submit.sh").read_text()
    directive = {"slurm": "#SBATCH --hold", "pbs": "#PBS -h"}[manager]
    assert f"\n{directive}\n" in held_script, "the batch arguments after `--`, on one line"
    trial_id = next(iter(jobs))  # the first submission: the dry run's
    trial, removed, stopped = cancels
    assert trial["argv"] == [trial_id]
    assert Path(trial["cwd"]).name.startswith("dry-run"), trial
    assert removed["argv"] == [running_id]
    assert Path(removed["cwd"], "jobid").read_text().strip() == running_id
    # One command cancels all of a queue's allocations, run in the queue's directory.
    assert sorted(stopped["argv"]) == sorted(queued)
    jobids = {f.read_text().strip() for f in Path(stopped["cwd"]).glob("*/jobid")}
    assert set(queued) <= jobids, (stopped, jobids)
    ids = [running_id, *queued]
    assert {jobs[i]["state"] for i in [trial_id, *ids]} == {"cancelled"}
    for call in batch.calls():
        if call["tool"] not in (submit_tool, cancel_tool):
            assert_status_call_shape(manager, call, ids)


def assert_status_call_shape(manager: str, call: dict[str, Any], ids: list[str]) -> None:
    argv = call["argv"]
    if manager == "pbs":
        assert call["tool"] == "qstat", call
        if argv[-1] != "-x":
            # A worker asking for its time limit: `qstat -f <id> -F json`.
            assert len(argv) == 4 and argv[0] == "-f" and argv[2:] == ["-F", "json"], call
            assert argv[1] in ids, call
            return
        # The server, one call for many: `qstat -f <id1> -f <id2> ... -F json -x`.
        assert argv[-3:] == ["-F", "json", "-x"], call
        pairs = argv[:-3]
        assert pairs and pairs[::2] == ["-f"] * (len(pairs) // 2), call
    else:
        # HyperQueue and design.md §7: `scontrol show job <id>`, one call per allocation.
        # hqpy's Slurm backend asks `squeue` once for all (and `scontrol` for ids it lacks):
        # a deliberate deviation (see the backend's docstring); both shapes are checked.
        if call["tool"] == "scontrol":
            assert argv[:2] == ["show", "job"] and len(argv) == 3, call
        else:
            assert call["tool"] == "squeue", call
            assert argv[:3] == ["--noheader", "--states=all", "--format=%i|%T|%S|%e|%r"], call
            assert argv[3].startswith("--jobs="), call


# ---------------------------------------------------------------------------------------------
# Pause, resume and the event stream


@pytest.mark.parametrize("manager", MANAGERS)
def test_queued_allocation_is_withdrawn_once_its_tasks_are_gone(
    batches: Batches, hq_env: HqEnv, manager: str
) -> None:
    # hq #13.2: an allocation queued for work that is no longer there is cancelled in the
    # batch system after the grace period (here 0.5 s), instead of starting for nothing.
    batch = batches.setup(hq_env, manager)
    hq_env.env["HQPY_AUTOALLOC_WITHDRAW_GRACE_MS"] = "500"
    hq_env.start_server()
    add_queue(hq_env, manager, "--time-limit", "10m", "--cpus", "1", *HELD[manager])
    hq_env.command("submit", "--", "sleep", "0")
    wait_logged(hq_env, 1, "allocation-queued")
    [allocation_id] = logged_ids(hq_env, 1, "allocation-queued")
    hq_env.command("job", "cancel", "1")
    wait_logged(hq_env, 1, "allocation-withdrawn")
    [info] = alloc_info(hq_env)
    assert (info["id"], info["status"]) == (allocation_id, "finished")
    [event] = [e for e in alloc_events(hq_env) if e["event"] == "allocation-withdrawn"]
    assert event["allocation_id"] == allocation_id
    assert event["message"] == "no waiting task needed it; cancelled in the batch system"
    wait_allocation_gone(hq_env, manager, allocation_id)
    if manager != "local":
        [cancel] = batch.calls(CANCEL_TOOL[manager])
        assert cancel["argv"] == [allocation_id]
        assert batch.state is not None
        jobs = json.loads(batch.state.read_text())["jobs"]
        assert {j["state"] for j in jobs.values()} == {"cancelled"}
    assert hq_env.stop_server() == 0


def test_a_hanging_sbatch_does_not_stall_a_local_queue(batches: Batches, hq_env: HqEnv) -> None:
    # hq #8.6: while queue 1's `sbatch` hung, queue 2 (local) submitted nothing for 30 s.
    batch = batches.setup(hq_env, "slurm", HQPY_EMULATOR_HANG="15")
    hq_env.start_server()
    add_queue(hq_env, "slurm", "--time-limit", "10m", "--cpus", "2", *HELD["slurm"])
    add_queue(hq_env, "local", "--time-limit", "10m", "--cpus", "1", queue_id=2)
    hq_env.command("submit", "--cpus", "2", "--", "sleep", "0")  # only queue 1 runs it
    wait_until(lambda: batch.calls("sbatch"), timeout=20, what="sbatch is called")
    hq_env.command("submit", "--", "sleep", "0")  # queue 2 runs it (queue 1 covers job 1)
    assert job_stats(hq_env, 2)["finished"] == 1
    assert logged(hq_env, 1, "allocation-queued") + logged(hq_env, 1, "submit-failed") == 0, (
        "the local queue waited for the hanging sbatch"
    )
    assert len(batch.calls("sbatch")) == 1, "a submission under way is not made again"
    # Stopping waits for the submission under way, then cancels what it made (its `scancel`
    # hangs too: 15 + 15 s, within the stop's bound of the command timeout + 5 s).
    assert hq_env.server is not None
    hq_env.command("server", "stop")
    assert hq_env.server.wait_exit(timeout=60) == 0
    [allocation_id] = logged_ids(hq_env, 1, "allocation-queued")
    assert [c["argv"] for c in batch.calls("scancel")] == [[allocation_id]]


def test_pause_resume_and_events_follow(batches: Batches, hq_env: HqEnv) -> None:
    batches.setup(hq_env, "local")
    hq_env.start_server()
    add_queue(hq_env, "local", "--time-limit", "10m", "--cpus", "1", "--idle-timeout", "2s")
    follow = subprocess.Popen(
        hq_env.hq_argv("--output-mode", "json", "alloc", "events", "1", "--follow"),
        cwd=hq_env.work_dir,
        env=hq_env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    reader = LineReader(follow)
    try:

        def next_event() -> dict[str, Any]:
            event: dict[str, Any] = json.loads(reader.next())  # one object per line
            assert set(event) == EVENT_KEYS
            return event

        assert next_event()["event"] == "queue-created"

        hq_env.command("alloc", "pause", "1")
        paused = next_event()
        assert (paused["event"], paused["queue_id"], paused["allocation_id"]) == (
            "queue-paused",
            1,
            None,
        )
        [queue_json] = hq_env.command("alloc", "list", json=True)
        assert queue_json["state"] == "PAUSED"

        # A paused queue submits nothing, however many passes it sees (the timers are 100 ms).
        hq_env.command("submit", "--array", "1-3", "--", "sleep", "0")
        assert reader.nothing_within(0.8)
        assert alloc_info(hq_env) == []

        hq_env.command("alloc", "resume", "1")
        assert next_event()["event"] == "queue-resumed"
        assert next_event()["event"] == "allocation-queued"
        assert follow.poll() is None, "--follow keeps streaming"
    finally:
        reader.stop()

    table = parse_table(hq_env.command("alloc", "events", "1"))
    assert table.header == ["Time", "Event", "Allocation", "Message"]
    assert table.column("Event")[:4] == [
        "queue-created",
        "queue-paused",
        "queue-resumed",
        "allocation-queued",
    ]
