"""The status page in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven
by selenium with the driver's path given, so nothing is downloaded), during an end-to-end run."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import HqEnv, wait_until
from tests.http.conftest import ARTIFACTS, add_local_queue

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's Chromium and its driver: `apt-get install chromium "
        "chromium-driver` (.ci/run does so in CI)",
    ),
]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="needs selenium: `pip install -e .[dev]`"
    )
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager look for (or download) a driver or a browser.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def test_status_page_shows_queue_allocations_and_job_progress(
    metrics_env: tuple[HqEnv, int], browser: Any
) -> None:
    hq_env, port = metrics_env
    add_local_queue(hq_env, "--backlog", "1", "--workers-per-alloc", "1", "--max-worker-count", "2")
    hq_env.command("submit", "--array", "1-24", "--name", "demo", "--", "sleep", "0.5")
    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.title == "hqpy status"

    # The queue with an allocation drawn on its timeline.
    wait_until(
        lambda: js(
            browser,
            "return document.querySelectorAll("
            "'.queue[data-queue-id=\"1\"] svg.timeline g.alloc rect.alloc-bar').length",
        ),
        timeout=60,
        what="an allocation bar on queue 1's timeline",
    )

    # The job's progress: a finished part on its bar (the array runs for a few seconds).
    def progress() -> tuple[int, int] | None:
        row = js(
            browser,
            "const r = document.querySelector('tr.job[data-job-id=\"1\"]');"
            "return r && [Number(r.dataset.finished), Number(r.dataset.total),"
            " r.querySelectorAll('svg.progress rect.finished').length];",
        )
        return (row[0], row[1]) if row and row[0] > 0 and row[2] == 1 else None

    shown = wait_until(progress, timeout=60, what="job 1 shows progress")
    assert shown is not None
    finished, total = shown
    assert total == 24 and 0 < finished
    assert js(browser, "return document.querySelectorAll('tr.worker').length") >= 1
    assert js(browser, "return document.querySelectorAll('tr.event').length") >= 2
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "status-page-running.png"))

    # It refreshes by itself: the job ends on the page, and the running allocation is drawn.
    wait_until(
        lambda: js(
            browser,
            "const r = document.querySelector('tr.job[data-job-id=\"1\"]');"
            "return r && r.dataset.state === 'finished' && r.dataset.finished === '24';",
        ),
        timeout=90,
        what="job 1 finished on the page",
    )
    states = js(
        browser,
        "return [...document.querySelectorAll('.queue[data-queue-id=\"1\"] g.alloc')]"
        ".map(g => g.dataset.state);",
    )
    assert states and set(states) <= {"queued", "running", "finished", "failed"}
    assert "running" in states
    text = js(
        browser, "return document.querySelector('.queue[data-queue-id=\"1\"] h3').textContent"
    )
    assert "Queue 1" in text and "local" in text
    assert browser.save_screenshot(str(ARTIFACTS / "status-page.png"))

    # No script error and no blocked resource (the page's CSP would report one).
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_status_page_for_operators(metrics_env: tuple[HqEnv, int], browser: Any) -> None:
    """Queue errors on the queue, a removed queue kept, one time axis, ended workers folded,
    the task stream, tasks per minute, and links from a job to its failed tasks."""
    hq_env, port = metrics_env
    # Queue 1: its workers cannot start (the commonest real failure: a broken environment).
    hq_env.command(
        "alloc", "add", "local", "--time-limit", "10m", "--cpus", "1", "--no-dry-run",
        "--worker-start-cmd", "echo boom >&2; exit 3",
    )  # fmt: skip
    # Tasks 4, 8 and 12 fail.
    script = "sleep 0.2; test $((HQ_TASK_ID % 4)) != 0"
    hq_env.command("submit", "--array", "1-12", "--name", "mixed", "--", "bash", "-c", script)
    browser.get(f"http://127.0.0.1:{port}/")
    ARTIFACTS.mkdir(exist_ok=True)

    # The failures of queue 1 are shown on the queue itself, grouped.
    errors = wait_until(
        lambda: js(
            browser,
            "return [...document.querySelectorAll("
            "'.queue[data-queue-id=\"1\"] li.queue-error')].map(li => li.dataset.event);",
        ),
        timeout=60,
        what="queue 1's errors on the queue",
    )
    assert "allocation-failed" in errors
    assert browser.save_screenshot(str(ARTIFACTS / "status-page-queue-errors.png"))
    hq_env.command("alloc", "remove", "--force", "1")
    hq_env.command(
        "alloc", "add", "local", "--time-limit", "10m", "--cpus", "1", "--no-dry-run",
        "--idle-timeout", "2s", "--backlog", "2", "--workers-per-alloc", "1",
    )  # fmt: skip

    # The job ends; its failed count links to its failed tasks and their errors.
    wait_until(
        lambda: js(
            browser,
            "const r = document.querySelector('tr.job[data-job-id=\"1\"]');"
            "return r && r.dataset.state === 'failed' && r.querySelector('a.failed-link');",
        ),
        timeout=90,
        what="job 1 ended with a link to its failures",
    )
    js(browser, "document.querySelector('tr.job[data-job-id=\"1\"] a.failed-link').click();")
    assert browser.current_url.endswith("#failures-1")
    failed = wait_until(
        lambda: js(
            browser,
            "return [...document.querySelectorAll('#failures-1 tr.failure')]"
            ".map(r => [Number(r.dataset.taskId), r.querySelector('pre').textContent]);",
        ),
        what="job 1's failed tasks listed",
    )
    assert sorted(t for t, _ in failed) == [4, 8, 12]
    assert all("exit code 1" in error for _, error in failed), failed

    # The task stream draws every task on the worker it ran on; the chart counts them.
    runs = wait_until(
        lambda: js(
            browser,
            "return [...document.querySelectorAll('svg.task-stream rect.task-run')]"
            ".map(r => [Number(r.dataset.taskId), r.dataset.state, r.dataset.workerId]);",
        ),
        what="the task stream",
    )
    assert sorted(t for t, _, _ in runs) == list(range(1, 13))
    assert {t for t, state, _ in runs if state == "failed"} == {4, 8, 12}
    assert all(worker for _, _, worker in runs)
    per_minute = js(
        browser,
        "return [...document.querySelectorAll('svg.per-minute g.minute')]"
        ".reduce((s, g) => [s[0] + Number(g.dataset.finished), s[1] + Number(g.dataset.failed)],"
        " [0, 0]);",
    )
    assert per_minute == [9, 3]

    # The removed queue is kept (folded), on the same time axis as the live one.
    assert (
        js(
            browser,
            "return document.querySelectorAll("
            "'#removed-queues .queue.removed[data-queue-id=\"1\"]').length",
        )
        == 1
    )
    axes = js(
        browser,
        "return [...document.querySelectorAll('.queue svg.timeline')]"
        ".map(s => s.querySelector('text').textContent);",
    )
    assert len(axes) == 2 and axes[0] == axes[1], axes
    labels = js(
        browser,
        "return [...document.querySelectorAll('.queue[data-queue-id=\"2\"] text.alloc-label')]"
        ".map(t => t.textContent);",
    )
    assert labels and all("1 node" in label for label in labels), labels

    # Idle workers end (2 s) and are folded into one row that unfolds them.
    folded = wait_until(
        lambda: js(
            browser,
            "const r = document.querySelector('tr.ended-workers');"
            "return r && Number(r.dataset.count) >= 1 && "
            "!document.querySelector('tr.worker:not([data-state=\"running\"])');",
        ),
        timeout=60,
        what="ended workers folded",
    )
    assert folded
    browser.set_window_size(1280, 1900)
    js(browser, "window.scrollTo(0, 0);")
    assert browser.save_screenshot(str(ARTIFACTS / "status-page-operators.png"))
    js(browser, "document.querySelector('tr.ended-workers button').click();")
    shown = js(browser, "return document.querySelectorAll('tr.worker').length")
    assert shown >= 1
    # The page refreshes every 2 s: the unfolded rows stay unfolded.
    time.sleep(2.5)
    assert js(browser, "return document.querySelectorAll('tr.worker').length") >= shown
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
