"""Tags, filter tags, the fit check and concurrency pools with a real server and real workers."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import HqEnv, parse_table, parse_tables

pytestmark = pytest.mark.e2e

RECORD = 'echo "start $(date +%s.%N)" >> {log}; sleep 0.3; echo "end $(date +%s.%N)" >> {log}'


def intervals(text: str) -> list[tuple[float, float]]:
    """(start, end) of each task from the lines `start T` / `end T` tasks wrote; with one
    writer at a time a start is followed by its own end."""
    starts: list[float] = []
    ends: list[float] = []
    for line in text.splitlines():
        kind, stamp = line.split()
        (starts if kind == "start" else ends).append(float(stamp))
    assert len(starts) == len(ends)
    return list(zip(sorted(starts), sorted(ends), strict=True))


def test_size_one_pool_never_overlaps_two_tasks(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    hq_env.start_worker(cpus="2")
    hq_env.command("pool", "set", "serial", "1")
    log = hq_env.path("times.log")
    script = RECORD.format(log=log)
    out = hq_env.command(
        "submit", "--array", "1-6", "--pool", "serial", "--wait", "--", "bash", "-c", script
    )
    assert "Job submitted successfully, job ID: 1" in out
    spans = intervals(log.read_text())
    assert len(spans) == 6
    # Each task starts after the one before it ended: the intervals are disjoint.
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans
    # Afterwards the pool holds nothing.
    (pool,) = hq_env.command("pool", "list", json=True)
    assert pool == {"name": "serial", "size": 1, "running": 0, "waiting": 0}


def test_pool_list_set_remove_in_every_mode(hq_env: HqEnv) -> None:
    hq_env.start_server()
    assert hq_env.command("pool", "set", "lic", "4", json=True) == {}
    assert hq_env.command("pool", "set", "big", "2", mode="quiet") == ""
    table = hq_env.table("pool", "list")
    assert table.header == ["Name", "Size", "Running", "Waiting"]
    assert table.rows == [["big", "2", "0", "0"], ["lic", "4", "0", "0"]]
    assert hq_env.command("pool", "list", mode="quiet") == "big 2\nlic 4\n"
    # No worker: the task waits in the pool, so the pool cannot be removed.
    hq_env.command("submit", "--pool", "lic", "--", "true")
    assert hq_env.command("pool", "list", json=True)[1]["waiting"] == 1
    out = hq_env.command("pool", "remove", "lic", expect_fail=True)
    assert "Pool 'lic' still has 0 running and 1 waiting task(s)" in out
    hq_env.command("job", "cancel", "1")
    hq_env.command("pool", "remove", "lic")
    assert [p["name"] for p in hq_env.command("pool", "list", json=True)] == ["big"]


def test_submit_to_an_unknown_pool_is_refused(hq_env: HqEnv) -> None:
    hq_env.start_server()
    out = hq_env.command("submit", "--pool", "nope", "--", "true", expect_fail=True)
    assert "create it with: hq pool set nope SIZE" in out
    assert hq_env.command("job", "list", "--all", json=True) == []


def test_tagged_job_runs_only_on_the_matching_worker(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--filter-tag", "system=H2O", "--hostname", "h2o-node", cpus="2")
    hq_env.start_worker("--filter-tag", "system=CO2", "--hostname", "co2-node", cpus="2")
    hq_env.start_worker("--hostname", "any-node", cpus="2")
    info = hq_env.command("worker", "info", "1", json=True)
    assert info[0]["configuration"]["filter_tags"] == ["system=H2O"]
    listed = hq_env.command("worker", "list", json=True)
    assert [w["configuration"]["filter_tags"] for w in listed] == [
        ["system=H2O"],
        ["system=CO2"],
        [],
    ]
    assert hq_env.table("worker", "info", "2").as_dict()["Filter tags"] == "system=CO2"
    hq_env.command(
        "submit", "--array", "0-7", "--tag", "system=H2O", "--tag", "scale=4", "--", "true"
    )
    hq_env.command("submit", "--array", "0-7", "--tag", "system=N2", "--", "true")
    hq_env.command("job", "wait", "all")
    h2o = hq_env.command("job", "info", "1", json=True)[0]
    n2 = hq_env.command("job", "info", "2", json=True)[0]
    # The H2O worker or the one without filter tags; never the CO2 one.
    assert {t["worker"] for t in h2o["tasks"]} <= {"h2o-node", "any-node"}
    assert {t["worker"] for t in n2["tasks"]} == {"any-node"}
    assert h2o["submits"][0]["tags"] == ["scale=4", "system=H2O"]
    assert hq_env.table("job", "info", "1").as_dict()["Tags"] == "scale=4, system=H2O"
    assert hq_env.table("task", "info", "1", "0").as_dict()["Tags"] == "scale=4, system=H2O"
    (task,) = hq_env.command("task", "info", "1", "0", json=True)
    assert task["tags"] == ["scale=4", "system=H2O"]


def test_task_that_fits_nowhere_is_reported_at_submit(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    result = hq_env.run("submit", "--array", "0-3", "--cpus", "8", "--", "true")
    assert "Job submitted successfully, job ID: 1" in result.stdout
    assert (
        "Tasks 0-3 of job 1 can run on no worker and in no queue: needs cpus 8; worker 1 gives 2"
        in result.stderr
    )
    # JSON mode: the warning is on stderr, stdout stays one document.
    result = hq_env.run("--output-mode", "json", "submit", "--cpus", "8", "--", "true")
    assert "Task 0 of job 2 can run on no worker" in result.stderr
    assert '"id": 2' in result.stdout
    result = hq_env.run("--output-mode", "quiet", "submit", "--cpus", "8", "--", "true")
    assert "Task 0 of job 3 can run on no worker" in result.stderr
    assert result.stdout == "3\n"
    # A task that fits gives no warning.
    result = hq_env.run("submit", "--cpus", "2", "--", "true")
    assert "can run on no worker" not in result.stderr


def test_task_explain_in_every_mode(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker(cpus="2")
    hq_env.start_worker("--filter-tag", "gpu", cpus="4")
    hq_env.run("submit", "--cpus", "3", "--", "true")
    text = hq_env.command("task", "explain", "1", "0")
    lines = text.splitlines()
    assert lines[0] == "Task 1@0 is ready to run because it has no dependencies."
    assert lines[1] == "There is no worker where the task can run."
    (table,) = parse_tables(text)
    assert table.header == ["Worker Id", "Runnable", "Variant", "Type", "Provides", "Request"]
    rows = [r[:2] + r[3:] for r in table.rows]
    assert rows == [
        ["1", "no", "cpus", "2 (missing)", "3"],
        ["2", "no", "cpus", "4", "3"],
        ["2", "no", "tags", "gpu (missing)", "(none)"],
    ]
    data = hq_env.command("task", "explain", "1", "0", json=True)
    workers = data["explanation"]["workers"]
    assert [w["worker_id"] for w in workers] == [1, 2]
    assert [c["kind"] for c in workers[1]["variants"][0]["checks"]] == ["resource", "tags"]
    assert data["explanation"]["queues"] == []
    assert hq_env.command("task", "explain", "1", "0", mode="quiet") == ""
    # The task with the tag runs on worker 2.
    hq_env.run("submit", "--cpus", "3", "--tag", "gpu", "--", "true")
    explained = hq_env.command("task", "explain", "2", "0")
    assert "The task can run on 1 worker: 2" in explained.splitlines()
    out = hq_env.command("task", "explain", "1", "7", expect_fail=True)
    assert "Task 7 of job 1 not found" in out


def test_bad_tag_is_a_usage_error(hq_env: HqEnv) -> None:
    hq_env.start_server()
    result = hq_env.run("submit", "--tag", "a b", "--", "true", check=False)
    assert result.returncode == 2
    assert "invalid tag 'a b'" in result.stderr
    assert parse_table(hq_env.command("job", "list", "--all")).rows == []


def test_from_json_items_carry_their_own_tags(hq_env: HqEnv) -> None:
    hq_env.start_server()
    hq_env.start_worker("--filter-tag", "gpu", "--hostname", "gpu-node", cpus="2")
    hq_env.start_worker("--filter-tag", "cpu", "--hostname", "cpu-node", cpus="2")
    items = [
        {"n": 0, "hq_tags": ["gpu"]},
        {"n": 1, "hq_tags": ["cpu"]},
        {"n": 2, "hq_tags": ["gpu"]},
    ]
    hq_env.path("items.json").write_text(json.dumps(items))
    hq_env.command(
        "submit", "--wait", "--from-json", "items.json", "--", "bash", "-c", 'echo "$HQ_ENTRY"'
    )
    job = hq_env.command("job", "info", "1", json=True)[0]
    where = {t["id"]: t["worker"] for t in job["tasks"]}
    assert where == {0: "gpu-node", 1: "cpu-node", 2: "gpu-node"}
    assert hq_env.table("job", "info", "1").as_dict()["Tags"] == "0,2: gpu\n1: cpu"
    # The item is the entry, whole.
    assert json.loads(hq_env.path("job-1", "1.stdout").read_text()) == items[1]
    bad = [{"hq_tags": "gpu"}]
    hq_env.path("bad.json").write_text(json.dumps(bad))
    out = hq_env.command("submit", "--from-json", "bad.json", "--", "true", expect_fail=True)
    assert '"hq_tags" must be a list of strings' in out


def test_pools_and_tagged_pool_jobs_survive_a_restart_from_the_journal(hq_env: HqEnv) -> None:
    journal = hq_env.root / "journal.hqj"
    hq_env.start_server("--journal", str(journal))
    hq_env.command("pool", "set", "lic", "2")
    hq_env.command("pool", "set", "tmp", "1")
    hq_env.command("pool", "remove", "tmp")
    hq_env.command("submit", "--array", "0-4", "--pool", "lic", "--tag", "gpu", "--", "true")
    assert hq_env.stop_server() == 0
    hq_env.start_server("--journal", str(journal))
    assert hq_env.command("pool", "list", json=True) == [
        {"name": "lic", "size": 2, "running": 0, "waiting": 5}
    ]
    (job,) = hq_env.command("job", "info", "1", json=True)
    assert (job["submits"][0]["tags"], job["submits"][0]["pool"]) == (["gpu"], "lic")
    hq_env.start_worker("--filter-tag", "gpu", cpus="4")
    hq_env.command("job", "wait", "1")
    assert hq_env.command("pool", "list", json=True)[0]["waiting"] == 0
