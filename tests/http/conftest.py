"""Fixtures for the HTTP tests: an hq world (as in tests/e2e) with a metrics port and fast
allocator timers, and a local allocation queue that runs the tasks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv, free_ports, hq_env_fixture

FAST_AUTOALLOC = {
    "HQ_AUTOALLOC_REFRESH_INTERVAL_MS": "100",
    "HQ_AUTOALLOC_MAX_SCHEDULE_DELAY_MS": "100",
    "HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS": "100",
}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
"""Screenshots and other files a person may want to look at after a run (gitignored)."""
SERVER_LOG = "hqpy.autoalloc=debug,hqpy=info"


@pytest.fixture
def hq_env(tmp_path: Path) -> Iterator[HqEnv]:
    yield from hq_env_fixture(tmp_path)


@pytest.fixture
def metrics_env(hq_env: HqEnv) -> tuple[HqEnv, int]:
    """A running server with `--metrics-port` and the allocator's timers at 100 ms; the server
    logs `hqpy.autoalloc` at debug level, which its allocations' workers inherit."""
    hq_env.env.update(FAST_AUTOALLOC)
    hq_env.env["HQPY_LOG"] = SERVER_LOG
    [port] = free_ports(1)
    hq_env.start_server("--metrics-port", str(port))
    # Only the server (and what it starts) logs so: clients must keep stderr plain.
    del hq_env.env["HQPY_LOG"]
    return hq_env, port


def add_local_queue(hq_env: HqEnv, *extra: str) -> None:
    """One local allocation queue with 1-cpu workers that idle for long (stable states)."""
    hq_env.command(
        "alloc", "add", "local", "--time-limit", "10m", "--idle-timeout", "5m", "--cpus", "1",
        *extra,
    )  # fmt: skip
