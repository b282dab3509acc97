"""Fixtures that run the backend classes against the CLI emulators in `tests/emulators/`."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from hqpy.autoalloc.backends.base import CommandRunner
from hqpy.autoalloc.backends.runner import run_command
from tests.emulators import batch_emulator


@attrs.define
class Emulator:
    """The emulated batch system of one test: its bin dir, state and call log."""

    bin_dir: Path
    state: Path
    log: Path
    env: dict[str, str]

    def runner(self, **extra_env: str) -> CommandRunner:
        """A `run_command` that finds the emulators first on `PATH`."""
        return functools.partial(run_command, env={**self.env, **extra_env})

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    bin_dir = batch_emulator.install(tmp_path / "bin")
    state = tmp_path / "emulator-state.json"
    log = tmp_path / "emulator-calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HQPY_EMULATOR_STATE": str(state),
        "HQPY_EMULATOR_LOG": str(log),
        "HQPY_EMULATOR_KILL_WAIT": "1",
    }
    yield Emulator(bin_dir, state, log, env)
    batch_emulator.cleanup(state)
