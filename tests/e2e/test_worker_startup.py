"""`hq worker start`'s start-up (issue 14 item 11): it registers before importing trio and the
task machinery, and a signal at any point of its start-up is a clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import HqEnv, wait_until

pytestmark = pytest.mark.e2e

STOPPED_BY_SIGNAL = "Worker is stopping: interrupted by a signal"


def test_registration_needs_neither_trio_nor_the_task_machinery(hq_env: HqEnv) -> None:
    hq_env.start_server()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hqpy.worker.startup import WorkerOptions, connect_and_register\n"
        f"options = WorkerOptions(Path({str(hq_env.server_dir)!r}), ()).settled()\n"
        "registration = connect_and_register(options)\n"
        "late = ('trio', 'hqpy.worker.agent', 'hqpy.worker.launcher', 'hqpy.common.process')\n"
        "print(registration.reply.worker_id, [name for name in late if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=hq_env.env,
        cwd=hq_env.work_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 []\n"


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_as_soon_as_registered_is_a_clean_stop(
    hq_env: HqEnv, sig: int, delay: float
) -> None:
    """Registered means the worker may be stopped: the signal may come while trio imports,
    while the event loop starts or once it serves (the delays span those steps)."""
    hq_env.start_server()
    worker = hq_env.start_worker(wait=False)
    wait_until(lambda: "registered" in worker.stderr(), interval=0.002, what="registered")
    time.sleep(delay)
    worker.signal(sig)
    assert worker.wait_exit() == 0, worker.describe()
    assert STOPPED_BY_SIGNAL in worker.stderr()


@pytest.mark.parametrize("delay", [0.0, 0.03])
def test_sigint_stops_a_worker_started_in_the_background(hq_env: HqEnv, delay: float) -> None:
    """A shell starts `cmd &` with SIGINT ignored, and a worker inherits that; its start-up
    still takes SIGINT as a stop, as the running worker does."""
    hq_env.start_server()
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = hq_env.start_worker(wait=False)
    finally:
        signal.signal(signal.SIGINT, inherited)
    wait_until(lambda: "registered" in worker.stderr(), interval=0.002, what="registered")
    time.sleep(delay)
    worker.signal(signal.SIGINT)
    assert worker.wait_exit() == 0, worker.describe()
    assert STOPPED_BY_SIGNAL in worker.stderr()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_waiting_for_the_server_is_a_clean_stop(hq_env: HqEnv, sig: int) -> None:
    """No server yet: the worker keeps trying to connect (10 s), and a signal ends that."""
    work_dir = hq_env.root / "worker-dir"
    worker = hq_env.start_worker("--work-dir", str(work_dir), wait=False)
    # The work dir is made once the worker's signal handling is in place.
    wait_until(work_dir.exists, interval=0.01, what="the worker made its work dir")
    worker.signal(sig)
    assert worker.wait_exit(timeout=5) == 0, worker.describe()
    assert STOPPED_BY_SIGNAL in worker.stderr()
    assert "Cannot connect" not in worker.stderr()


def test_worker_with_a_short_idle_timeout_runs_what_is_submitted_right_after(
    hq_env: HqEnv,
) -> None:
    """The script of issue 14 item 11: start a worker with a 1 s idle timeout, submit at once."""
    hq_env.start_server()
    worker = hq_env.start_worker("--idle-timeout", "1s", wait=False)
    hq_env.command("submit", "--wait", "--", "bash", "-c", "echo ran")
    assert hq_env.path("job-1", "0.stdout").read_text() == "ran\n"
    assert worker.wait_exit() == 0, worker.describe()
    assert "Worker is stopping: the server asked it to stop (idle-timeout)" in worker.stderr()
