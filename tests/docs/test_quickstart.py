"""`docs/quickstart.md` runs as written: every command in it, in order, in one shell, with
the output it shows (times, ids of the run and paths normalised). A page that drifts from what
hqpy does fails here, not in a new user's terminal."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.docs.session import BACKGROUND_WAIT, ShellSession
from tests.docs.shell_doc import Command, Normaliser, Script, compare, parse_page

PAGE = Path(__file__).parents[2] / "docs" / "quickstart.md"
SHOWN_ROOT = "/tmp/hqdoc"

pytestmark = pytest.mark.e2e


def test_the_page_parses_into_scripts_and_commands() -> None:
    steps = parse_page(PAGE.read_text())
    scripts = [s.name for s in steps if isinstance(s, Script)]
    assert "simulate.sh" in scripts and "check.sh" in scripts
    assert sum(isinstance(s, Command) for s in steps) > 40


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    root = tmp_path / "hqdoc"
    work = root / "work"
    work.mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hq"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hqpy "$@"\n')
    shim.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HQ_", "HQPY_", "SLURM_", "PBS_")) and k != "RUST_LOG"
    }
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        HQ_SERVER_DIR=str(root / "hq-server"),
        PYTHONUNBUFFERED="1",
        TZ="UTC",
    )
    normalise = Normaliser(((str(root), SHOWN_ROOT), (socket.gethostname(), "vm")))
    shell = ShellSession(work, env, tmp_path)
    failures: list[str] = []
    try:
        for step in parse_page(PAGE.read_text()):
            if isinstance(step, Script):
                path = work / step.name
                path.write_text(step.text)
                continue
            if "not-run" in step.directives:
                continue
            if step.background:
                log = shell.start(step.command)
                output = _await_output(log, step, normalise)
            else:
                # A failing command prints its error, which the page must show too.
                _, output = shell.run(step.command)
            ok, shown, actual = compare(step, output, normalise)
            if not ok:
                failures.append(
                    f"line {step.line}: `{step.command}` printed\n  "
                    + "\n  ".join(actual)
                    + "\nwhere the page shows\n  "
                    + "\n  ".join(shown)
                )
            if len(failures) >= 5:
                break
    finally:
        shell.run("hq server stop >/dev/null 2>&1; true", timeout=30)
        shell.close()
    assert not failures, "\n\n".join(failures)


def _await_output(log: Path, step: Command, normalise: Normaliser) -> str:
    """A background command's output, once it matches what the page shows (or after a wait)."""
    deadline = time.monotonic() + BACKGROUND_WAIT
    while True:
        text = log.read_text() if log.exists() else ""
        if compare(step, text, normalise)[0] or time.monotonic() > deadline:
            return text
        time.sleep(0.1)
