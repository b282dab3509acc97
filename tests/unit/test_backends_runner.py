"""`run_command`: argv lists under a timeout, with HyperQueue's error texts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hqpy.autoalloc.backends.base import BackendError
from hqpy.autoalloc.backends.runner import run_command


async def test_captures_output_and_exit_code(tmp_path: Path) -> None:
    result = await run_command(
        ["bash", "-c", 'echo out; echo err >&2; echo "$PWD $HQPY_X"; exit 3'],
        cwd=tmp_path,
        env={"HQPY_X": "x"},
    )
    assert result.argv[0] == "bash"
    assert result.returncode == 3
    assert result.stdout == f"out\n{tmp_path} x\n"
    assert result.stderr == "err\n"


async def test_env_adds_to_the_servers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HQPY_KEPT", "kept")
    result = await run_command(
        ["bash", "-c", 'echo "$HQPY_KEPT $HQPY_ADDED"'], env={"HQPY_ADDED": "a"}
    )
    assert result.stdout == "kept a\n"


async def test_missing_program() -> None:
    with pytest.raises(BackendError, match="^qsub-does-not-exist start failed: No such file"):
        await run_command(["qsub-does-not-exist", "x"])


async def test_timeout_kills_the_command() -> None:
    with pytest.raises(BackendError) as info:
        await run_command(["sleep", "10"], timeout=0.2)
    assert str(info.value) == "`sleep 10` did not finish within 0.2s"


async def test_stdin_is_closed() -> None:
    result = await run_command(["cat"], timeout=5)
    assert result.stdout == ""


async def test_logs_each_command_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hqpy.autoalloc.backends"):
        await run_command(["bash", "-c", "echo hello; echo oops >&2; exit 1"])
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "hqpy.autoalloc.backends")
    assert "running bash -c 'echo hello; echo oops >&2; exit 1'" in text
    assert "exited with 1\nstdout: hello\nstderr: oops" in text
