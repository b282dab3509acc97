"""Logs that explain: per-logger levels from `HQPY_LOG`/`--debug`, and a server that logs every
state change of queues, allocations and workers with ids (its allocations' workers inherit
`HQPY_LOG`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqpy.common.logs import log_levels, parse_spec, rust_log_to_hqpy, setup_logging
from tests.e2e.harness import HqEnv, wait_until
from tests.http.conftest import SERVER_LOG, add_local_queue


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`setup_logging` changes process-wide loggers; put them back."""
    names = ("", "hqpy", "hqpy.autoalloc", "hqpy.server")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers


def test_parse_spec_levels_per_logger() -> None:
    assert parse_spec("hqpy.autoalloc=debug,hqpy=info") == (
        None,
        {"hqpy.autoalloc": logging.DEBUG, "hqpy": logging.INFO},
    )
    assert parse_spec("warn") == (logging.WARNING, {})
    assert parse_spec(" info , hqpy.http=error ") == (logging.INFO, {"hqpy.http": logging.ERROR})
    assert parse_spec("") == (None, {})
    with pytest.raises(ValueError, match="invalid log level `loud`"):
        parse_spec("hqpy=loud")


@pytest.mark.usefixtures("restore_logging")
def test_hqpy_log_sets_levels_per_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HQPY_LOG", "hqpy.autoalloc=debug,hqpy=info")
    setup_logging(debug=False)
    assert logging.getLogger("hqpy.autoalloc.service").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("hqpy.server.state").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("hqpy.server.state").isEnabledFor(logging.INFO)
    assert not logging.getLogger("trio").isEnabledFor(logging.INFO)


def test_rust_log_maps_hyperqueue_modules_to_hqpy_loggers() -> None:
    assert rust_log_to_hqpy("hyperqueue::server::autoalloc=debug") == (
        None,
        {"hqpy.autoalloc": logging.DEBUG},
    )
    assert rust_log_to_hqpy("warn,hyperqueue=trace,tako=info,tokio=debug") == (
        logging.WARNING,
        {"hqpy": logging.DEBUG, "hqpy.server": logging.INFO},
    )
    assert rust_log_to_hqpy("hyperqueue::worker::start=error") == (
        None,
        {"hqpy.worker": logging.ERROR},
    )
    with pytest.raises(ValueError, match="in RUST_LOG"):
        rust_log_to_hqpy("hyperqueue=chatty")


def test_hqpy_log_wins_over_rust_log() -> None:
    environ = {
        "RUST_LOG": "info,hyperqueue::server::autoalloc=debug",
        "HQPY_LOG": "hqpy.autoalloc=warn",
    }
    assert log_levels(environ) == (logging.INFO, {"hqpy.autoalloc": logging.WARNING})
    assert log_levels({"RUST_LOG": "debug", "HQPY_LOG": "error"}) == (logging.ERROR, {})


@pytest.mark.usefixtures("restore_logging")
def test_rust_log_alone_sets_hqpy_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HQPY_LOG", raising=False)
    monkeypatch.setenv("RUST_LOG", "hyperqueue::server::autoalloc=debug")
    setup_logging(debug=False)
    assert logging.getLogger("hqpy.autoalloc.service").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("hqpy.server.state").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("restore_logging")
def test_debug_flag_turns_on_every_hqpy_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HQPY_LOG", raising=False)
    setup_logging(debug=True)
    assert logging.getLogger("hqpy.server.state").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("hqpy.http.server").isEnabledFor(logging.DEBUG)
    # Other libraries stay quiet.
    assert not logging.getLogger("selenium").isEnabledFor(logging.INFO)


@pytest.mark.e2e
def test_server_logs_state_changes_with_ids(metrics_env: tuple[HqEnv, int]) -> None:
    hq_env, _ = metrics_env
    server = hq_env.server
    assert server is not None
    add_local_queue(hq_env, "--backlog", "1", "--workers-per-alloc", "1", "--max-worker-count", "1")
    hq_env.command("submit", "--", "true")
    hq_env.wait_job(1)
    hq_env.command("alloc", "pause", "1")
    hq_env.command("alloc", "resume", "1")
    hq_env.command("worker", "stop", "1")
    wanted = [
        r"INFO hqpy\.autoalloc\.service\] Queue 1: queue-created",
        r"INFO hqpy\.autoalloc\.service\] Queue 1: allocation-queued local-1",
        r"INFO hqpy\.server\.state\] Worker 1 registered from \S+ .* in LOCAL allocation local-1",
        r"INFO hqpy\.autoalloc\.service\] Queue 1: allocation-started local-1: worker 1 registered",
        r"INFO hqpy\.autoalloc\.service\] Queue 1: queue-paused",
        r"INFO hqpy\.autoalloc\.service\] Queue 1: queue-resumed",
        r"INFO hqpy\.server\.state\] Worker 1 asked to stop: stopped",
        r"INFO hqpy\.server\.state\] Worker 1 ended: stopped",
        r"INFO hqpy\.autoalloc\.service\] Queue 1: allocation-finished local-1",
        r"DEBUG hqpy\.autoalloc\.",  # hqpy.autoalloc=debug
    ]

    def all_logged() -> list[str]:
        text = server.stderr()
        return [w for w in wanted if not re.search(w, text)]

    try:
        wait_until(lambda: not all_logged(), what="the server logged every change")
    except AssertionError:
        raise AssertionError(f"not logged: {all_logged()}\n{server.stderr()[-3000:]}") from None
    # hqpy=info: no debug line from other parts of hqpy.
    assert not re.search(r"DEBUG hqpy\.(server|http)", server.stderr())

    # The allocation's worker runs with the server's HQPY_LOG.
    workdir = Path(hq_env.command("alloc", "info", "1", json=True)[0]["workdir"])
    # Exported by the script (hq #14.10), so it also crosses srun/pbsdsh.
    assert f'export HQPY_LOG="{SERVER_LOG}"\n' in (workdir / "hq-submit.sh").read_text()
    assert "INFO hqpy.worker" in (workdir / "stderr").read_text()
