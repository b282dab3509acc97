"""A batch system that misbehaves: `sbatch` that hangs past the command timeout, or prints
garbage. The queue's events say so, it backs off, nothing is left behind, the server stays up.

The fake `sbatch` is a shell script first on the server's `PATH` (as the emulators of
tests/emulators/ are put there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv, wait_until
from tests.faults.common import FAST_TIMERS

pytestmark = pytest.mark.e2e


def fake_sbatch(hq_env: HqEnv, tmp_path: Path, body: str) -> None:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "scancel", "scontrol"):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\n{body if tool == 'sbatch' else 'exit 0'}\n")
        script.chmod(0o755)
    hq_env.env["PATH"] = f"{bin_dir}:{hq_env.env.get('PATH', '')}"
    hq_env.env.update(FAST_TIMERS)


def events(hq_env: HqEnv) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = hq_env.command("alloc", "events", "1", json=True)
    return rows


def submit_failures(hq_env: HqEnv) -> list[str]:
    return [e["message"] for e in events(hq_env) if e["event"] == "submit-failed"]


def check_server_survives(hq_env: HqEnv) -> None:
    assert hq_env.server is not None and hq_env.server.is_running()
    assert hq_env.task_states(1) == {0: "waiting"}
    assert [q["id"] for q in hq_env.command("alloc", "list", json=True)] == [1]
    queued = re.findall(r"allocation-queued", hq_env.server.stderr())
    assert queued == [], "no allocation may be recorded from a failed sbatch"


def test_sbatch_printing_garbage(hq_env: HqEnv, tmp_path: Path) -> None:
    fake_sbatch(hq_env, tmp_path, "echo 'Welcome to the cluster! %%% no job id here'; exit 0")
    hq_env.start_server()
    hq_env.run(
        "alloc", "add", "slurm", "--no-dry-run", "--time-limit", "10m", "--cpus", "1"
    )  # fmt: skip
    hq_env.command("submit", "--", "true")
    # The second try comes after HyperQueue's first back-off step (60 s; SUBMISSION_DELAYS).
    wait_until(lambda: len(submit_failures(hq_env)) >= 2, timeout=90, what="two submit failures")
    assert all("sbatch" in message for message in submit_failures(hq_env))
    check_server_survives(hq_env)


def test_sbatch_hanging_past_its_timeout(hq_env: HqEnv, tmp_path: Path) -> None:
    # `exec`: the hanging process is sbatch itself, as a stuck real one would be.
    fake_sbatch(hq_env, tmp_path, "exec sleep 3600")
    hq_env.start_server()
    hq_env.command("submit", "--", "true")
    hq_env.run(
        "alloc", "add", "slurm", "--no-dry-run", "--time-limit", "10m", "--cpus", "1"
    )  # fmt: skip
    wait_until(lambda: submit_failures(hq_env), timeout=90, what="a submit failure")
    [message, *_] = submit_failures(hq_env)
    assert "sbatch" in message and "did not finish within" in message, message
    check_server_survives(hq_env)
