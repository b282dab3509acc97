"""Fixtures for the fault-injection tests: each gets its own hq world (`hq_env`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv, hq_env_fixture


@pytest.fixture
def hq_env(tmp_path: Path) -> Iterator[HqEnv]:
    """A fresh hq world; teardown stops the server and checks that no process is left."""
    yield from hq_env_fixture(tmp_path)
