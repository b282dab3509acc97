"""A third-party backend, found through the entry-point group `hqpy.backends` without any
change to hqpy: the tiny package `tests/backends/plugin/` (the one `docs/backends.md` shows)
is pip-installed into the running test venv, a queue runs tasks on it end to end, and the
package is uninstalled afterwards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv, hq_env_fixture

pytestmark = pytest.mark.e2e

PLUGIN = Path(__file__).parent / "plugin"
DIST = "hqpy-toy-backend"


def pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def toy_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The plug-in, installed for this module's tests only (other tests see the built-in
    backends alone). Built from a copy, so that no build files land under `tests/`; pip's
    build isolation takes setuptools from the configured package index."""
    source = tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__"))
    pip("install", "-q", "--no-deps", str(source))
    try:
        yield
    finally:
        pip("uninstall", "-q", "-y", DIST)


@pytest.fixture
def hq_env(tmp_path: Path) -> Iterator[HqEnv]:
    yield from hq_env_fixture(tmp_path)


def test_plugin_backend_runs_a_queue_end_to_end(toy_backend: None, hq_env: HqEnv) -> None:
    hq_env.env["HQ_AUTOALLOC_SCHEDULE_TICK_INTERVAL_MS"] = "100"
    hq_env.start_server()
    # The CLI offers it, and the dry run prints its script.
    assert "toy" in hq_env.run("alloc", "add", "--help").stdout
    options = ["--time-limit", "10m", "--cpus", "1", "--idle-timeout", "2s"]
    script = hq_env.command("alloc", "dry-run", "toy", *options, "--print-script")
    assert script.startswith("#!/bin/bash\n# toy allocation hq-0-1: 1 worker(s), 00:10:00\n")
    assert '--manager "detect"' in script

    result = hq_env.run("alloc", "add", "toy", "--no-dry-run", *options)
    assert "Allocation queue 1 successfully created" in result.stderr
    hq_env.command("submit", "--array", "1-5", "--", "bash", "-c", 'echo "$HQPY_ALLOCATION_ID"')
    [job] = hq_env.command("job", "wait", "1", json=True)
    assert job["task_stats"]["finished"] == 5
    outputs = set(hq_env.command("job", "cat", "1", "stdout").split())
    assert outputs <= {"toy-1-1", "toy-1-2"} and outputs, outputs

    [queue_json] = hq_env.command("alloc", "list", json=True)
    assert queue_json["manager"] == "TOY"
    allocations = hq_env.command("alloc", "info", "1", json=True)
    assert allocations[0]["id"] == "toy-1-1"
    assert allocations[0]["started_at"] is not None
    workers = hq_env.command("worker", "list", "--all", json=True)
    assert any(w["allocation"] and w["allocation"]["id"] == "toy-1-1" for w in workers), workers
    assert hq_env.stop_server() == 0


def test_docs_show_the_whole_plugin() -> None:
    """`docs/backends.md` shows the plug-in that the test above runs, as it is."""
    docs = (Path(__file__).parents[2] / "docs" / "backends.md").read_text()
    source = (PLUGIN / "hqpy_toy_backend" / "__init__.py").read_text()
    code = source[source.index("from __future__") :].rstrip()
    assert code in docs
    assert '[project.entry-points."hqpy.backends"]\ntoy = "hqpy_toy_backend:ToyBackend"' in docs
