"""`run_command`: argv lists under a timeout, with HyperQueue's error texts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from hqpy.autoalloc.backends.base import BackendError
from hqpy.autoalloc.backends.runner import BatchCommandRunner, BoundedOutput, run_command
from hqpy.common.events import BatchCommandRun


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


# -- process groups, bounded output, observers (#8.6, #8.9) ----------------------------------


def fake_command(bin_dir: Path, name: str, body: str) -> str:
    """A fake batch command `name` (a bash script) in `bin_dir`; returns its path."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """No such process, or only its zombie is left (PID 1 here may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


async def wait_gone(pids: list[int]) -> None:
    # SIGKILL is delivered asynchronously: give the kernel a moment, never forever.
    with trio.fail_after(10):
        while not all(gone(pid) for pid in pids):  # noqa: ASYNC110 - no event for an exit
            await trio.sleep(0.02)


async def test_huge_output_keeps_a_head_and_a_tail(tmp_path: Path) -> None:
    sbatch = fake_command(
        tmp_path / "bin",
        "sbatch",
        # 100 MB on stdout between a first and a last line; a little on stderr.
        'echo first; head -c 100000000 /dev/zero | tr "\\0" x; echo; echo last; echo err >&2',
    )
    result = await BatchCommandRunner(output_limit=1024)([sbatch], timeout=60)
    assert result.returncode == 0
    total = len("first\n") + 100_000_000 + len("\nlast\n")
    assert result.stdout.startswith("first\nxxx")
    assert result.stdout.endswith("xxx\nlast\n")
    assert f"\n... [{total - 1024} bytes cut] ...\n" in result.stdout
    assert len(result.stdout) < 1024 + 100
    assert result.stderr == "err\n"


def test_bounded_output_keeps_short_streams_whole() -> None:
    out = BoundedOutput(8)
    for piece in (b"ab", b"cd", b"ef"):
        out.feed(piece)
    assert (out.text(), out.cut) == ("abcdef", 0)
    out.feed(b"ghij")
    assert (out.text(), out.cut) == ("abcd\n... [2 bytes cut] ...\nghij", 2)


async def test_timeout_ends_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    sbatch = fake_command(
        tmp_path / "bin",
        "sbatch",
        f"sleep 1000 & echo $! >> {pids}\n"
        f"bash -c 'sleep 1000 & echo $! >> {pids}; wait' & echo $! >> {pids}\n"
        f"echo $$ >> {pids}\nwait",
    )
    runner = BatchCommandRunner(kill_grace=0.5)
    with pytest.raises(BackendError, match=r"^`.*sbatch` did not finish within 0.5s$"):
        await runner([sbatch], timeout=0.5)
    listed = [int(line) for line in pids.read_text().split()]
    assert len(listed) == 4
    await wait_gone(listed)


async def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    squeue = fake_command(
        tmp_path / "bin",
        "squeue",
        # Ignored signals stay ignored across fork and exec: the sleep ignores SIGTERM too.
        f"trap '' TERM\nsleep 1000 & echo $! >> {pids}\necho $$ >> {pids}\n"
        "while true; do wait; done",
    )
    with pytest.raises(BackendError, match="did not finish within 0.3s"):
        await BatchCommandRunner(kill_grace=0.3)([squeue], timeout=0.3)
    listed = [int(line) for line in pids.read_text().split()]
    assert len(listed) == 2
    await wait_gone(listed)


async def test_children_left_holding_the_output_are_ended(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    qsub = fake_command(
        tmp_path / "bin", "qsub", f"sleep 1000 & echo $! > {pids}\necho 12.server\nexit 0"
    )
    result = await BatchCommandRunner(kill_grace=0.2)([qsub], timeout=30)
    assert (result.returncode, result.stdout) == (0, "12.server\n")
    await wait_gone([int(pids.read_text())])


async def test_outer_cancellation_ends_the_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    scancel = fake_command(
        tmp_path / "bin", "scancel", f"sleep 1000 & echo $! >> {pids}\necho $$ >> {pids}\nwait"
    )
    with trio.move_on_after(0.5):
        await BatchCommandRunner(kill_grace=0.2)([scancel], timeout=30)
    listed = [int(line) for line in pids.read_text().split()]
    await wait_gone(listed)


async def test_observer_is_told_of_every_command(tmp_path: Path) -> None:
    seen: list[BatchCommandRun] = []
    runner = BatchCommandRunner(seen.append)
    ok = fake_command(tmp_path / "bin", "sbatch", "echo Submitted batch job 1")
    bad = fake_command(tmp_path / "bin", "squeue", "exit 1")
    await runner([ok])
    await runner([bad])
    with pytest.raises(BackendError):
        await runner([str(tmp_path / "bin" / "missing")])
    with pytest.raises(BackendError):
        await runner(["sleep", "10"], timeout=0.1)
    assert [(e.program, e.ok) for e in seen] == [
        (ok, True),
        (bad, False),
        (str(tmp_path / "bin" / "missing"), False),
        ("sleep", False),
    ]
    assert all(e.seconds >= 0 for e in seen)


async def test_a_failing_observer_does_not_fail_the_command(tmp_path: Path) -> None:
    def broken(event: BatchCommandRun) -> None:
        raise RuntimeError("broken")

    result = await BatchCommandRunner(broken)(["true"])
    assert result.returncode == 0


async def test_stdin_from_a_file(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#BSUB -J x\necho hi\n")
    result = await run_command(["cat"], stdin=script, timeout=5)
    assert result.stdout == "#BSUB -J x\necho hi\n"
