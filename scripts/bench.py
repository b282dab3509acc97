#!/usr/bin/env python3
"""Throughput and memory benchmark: hqpy beside HyperQueue's own engine and the spawn floor.

Run from the repository root:

    .venv/bin/python scripts/bench.py [--quick] [--only NAME ...] [--json-only]

Benchmarks (names for `--only`):

- ``floor``: ``subprocess.run(["true"])`` from a 2-thread pool, no scheduler at all.
- ``hq-engine``: HyperQueue's Rust server and one 2-cpu worker
  (``hyperqueue.cluster.LocalCluster``), jobs of ``true`` tasks submitted with its ``Client``.
- ``hqpy``: a real ``hq server start`` and ``hq worker start --cpus 2`` (hqpy), then
  ``hq submit --array 1-N --stdout none --stderr none -- true`` and ``hq job wait last``.
- ``hqpy-array``: a 1,000,000-task array submitted with no worker; submit time, server RSS and a
  ``job list`` round trip.
- ``hqpy-server-only``: as ``hqpy``, but the worker runs with ``HQPY_ZERO_WORKER=1`` (it completes
  tasks without spawning processes).
- ``bigjob``: the server alone (simulated workers that finish each task the moment it arrives,
  in one child process) runs a 1,000,000-task array to completion: rate, server RSS at the end.
  Then, on a finished 100,000-task job: the time of `hq job info`, of `hq task list J --output-mode
  json` and of `hq job cat J stdout`, with each client's peak RSS and the CPU seconds of
  the client and of the server for each.
- ``many-workers``: the server alone with 64 simulated 2-cpu workers runs 200,000 tasks: rate,
  and the spread of tasks per worker (largest distance from the mean, in percent of the mean).
- ``load`` (only with ``--only load``; not in CI): the server alone with 1,000 simulated 2-cpu
  workers (real handshake, sealed frames, a heartbeat every ``LOAD_HEARTBEAT`` seconds, all in one
  trio process) runs a 1,000,000-task array: the server's peak RSS, its CPU seconds per task
  (from ``/proc/<pid>/stat``), the task rate, and tasks per worker (min, max, stddev).
  ``--load-workers`` / ``--load-tasks`` shrink it.
- ``seal``: frames per second through `Sealer.seal` + `Opener.open` (ChaCha20-Poly1305) beside
  plain length-prefixed frames through the same decoder, for a task-update frame and a 64 KiB one.
- ``startup``: how long after its process starts `hq server start` has written
  `<server-dir>/hq-current/access.json` (the file polled every millisecond), median of 7 starts,
  beside `python -c pass`; then how long after its spawn a `worker start` logs that it registered,
  started the moment the access file appears (`worker_registered_ms`: the rest of the server's
  start-up is in it) and again once the server has answered a client
  (`worker_registered_ready_ms`: the worker's own start-up, with `worker_registered_ready_cpu_ms`
  the CPU time it had used by then, beside `python_pass_cpu_ms`); each server is then stopped
  with SIGINT (exit code checked).
- ``cli``: the start-up cost of `hq` from a regular (non-editable) install in a fresh venv:
  median wall time of `hq job list`, `hq submit -- true`, `hq job info 1` (against a running
  server) and `hq --version`, each as a ratio to `python -c pass` by the same interpreter; the
  same for the CPU time (user + system) of each, which drifts far less on a loaded machine.

The end of the output is a table and one JSON object per figure per line (``grep '^{'``).
See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHES = (
    "floor",
    "hq-engine",
    "hqpy",
    "hqpy-array",
    "hqpy-autoalloc",
    "hqpy-server-only",
    "bigjob",
    "many-workers",
    "load",
    "seal",
    "startup",
    "cli",
)

# Default wall-time cap (seconds) for one HyperQueue-engine measurement. HyperQueue's engine runs
# 100,000 `true` tasks at ~150-200 tasks/s on 2 cores, i.e. well over the budget of the whole
# run; past the cap the measurement reports the rate over the tasks finished so far.
HQ_ENGINE_CAP = 300.0

STARTUP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

NO_OUTPUT = ("--stdout", "none", "--stderr", "none")

_log_enabled = True


def log(message: str) -> None:
    if _log_enabled:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A measurement failed; the message says why."""


@dataclass
class Result:
    bench: str
    tasks: int
    seconds: float | None = None
    rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "bench": self.bench,
            "tasks": self.tasks,
            "seconds": _round(self.seconds),
            "rate": _round(self.rate),
        }
        data.update({k: _round(v) if isinstance(v, float) else v for k, v in self.extra.items()})
        if self.error is not None:
            data["error"] = self.error
        return json.dumps(data)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def timed_rate(bench: str, tasks: int, seconds: float, **extra: Any) -> Result:
    return Result(bench, tasks, seconds, tasks / seconds if seconds > 0 else None, dict(extra))


# --------------------------------------------------------------------------------------------
# floor


def _machine_times() -> tuple[int, int]:
    """All CPU time of the machine so far and the idle part of it (`/proc/stat`, in ticks)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def _busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """How busy the machine's cpus were between two `_machine_times`, in percent."""
    total = after[0] - before[0]
    return 100.0 * (1 - (after[1] - before[1]) / total) if total > 0 else None


def _process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process and of the children it has reaped (`/proc`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is the state, field 3
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _self_cpu() -> tuple[float, float]:
    """CPU seconds of this process and of the children it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, _children_cpu()


def bench_floor(tasks: int, timeout: float) -> Result:
    """Spawn `true` `tasks` times from a 2-thread pool: the cost of the processes alone. Also
    the CPU each task cost the spawning process and the task itself, and how busy the cpus
    were: what bounds every engine's rate on the machine (see `bench_hqpy_throughput`)."""

    def spawn(_: int) -> int:
        return subprocess.run(["true"]).returncode

    cpu_before, machine_before = _self_cpu(), _machine_times()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        futures = [pool.submit(spawn, i) for i in range(tasks)]
        done, not_done = concurrent.futures.wait(futures, timeout=timeout)
        seconds = time.perf_counter() - start
        if not_done:
            for fut in not_done:
                fut.cancel()
            raise BenchError(f"timed out after {timeout:.0f} s ({len(done)} of {tasks} done)")
    cpu_after, machine_after = _self_cpu(), _machine_times()
    failed = sum(1 for fut in futures if fut.result() != 0)
    if failed:
        raise BenchError(f"{failed} of {tasks} `true` processes failed")
    return timed_rate(
        "floor",
        tasks,
        seconds,
        parent_cpu_us=(cpu_after[0] - cpu_before[0]) / tasks * 1e6,
        task_cpu_us=(cpu_after[1] - cpu_before[1]) / tasks * 1e6,
        busy_pct=_busy_pct(machine_before, machine_after),
    )


# --------------------------------------------------------------------------------------------
# HyperQueue's own engine (runs in a child process so that it can be timed out and capped)


def hq_engine_child(tasks: int, server_dir: str) -> int:
    """Child mode: submit `tasks` `true` tasks to a LocalCluster, print JSON progress lines."""
    from hyperqueue import Client, Job
    from hyperqueue.cluster import LocalCluster, WorkerConfig

    def emit(**data: Any) -> None:
        print(json.dumps(data), flush=True)

    with LocalCluster(server_dir=server_dir) as cluster:
        cluster.start_worker(WorkerConfig(cores=2))
        client: Client = cluster.client()

        build_start = time.perf_counter()
        job = Job()
        # The Python API (hyperqueue 0.27) has no task arrays: one program task per `true`.
        for _ in range(tasks):
            job.program(["true"], stdout=None, stderr=None)
        emit(event="built", build_seconds=time.perf_counter() - build_start)

        start = time.perf_counter()
        submitted = client.submit(job)
        emit(event="submitted", submit_seconds=time.perf_counter() - start)

        last_finished = -1

        def progress(jobs: dict[int, dict[str, Any]]) -> None:
            nonlocal last_finished
            finished = sum(int(status["finished"]) for status in jobs.values())
            if finished != last_finished:
                last_finished = finished
                emit(event="progress", finished=finished, seconds=time.perf_counter() - start)

        # `Client.wait_for_jobs` draws a tqdm bar; the connection takes our own callback.
        failed_jobs = client.connection.wait_for_jobs([submitted.id], progress)
        seconds = time.perf_counter() - start
        emit(event="done", seconds=seconds, failed_jobs=list(failed_jobs))
    return 0


def _read_events(path: Path) -> dict[str, dict[str, Any]]:
    """The last JSON event of each kind a child printed (other output is ignored)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            by_kind[event["event"]] = event
    return by_kind


def bench_hq_engine(tasks: int, cap: float, workdir: Path) -> Result:
    """Run `hq_engine_child` in a child process; past `cap` seconds after the submit, stop it
    and report the rate over the tasks finished so far."""
    out_path = workdir / f"hq-engine-{tasks}.out"
    err_path = workdir / f"hq-engine-{tasks}.err"
    server_dir = workdir / f"hq-engine-{tasks}-server"
    server_dir.mkdir()
    cmd = [sys.executable, os.path.abspath(__file__), "--hq-engine-child", str(tasks)]
    cmd += ["--hq-engine-server-dir", str(server_dir)]
    # Starting the cluster and building 100,000 task descriptions take seconds; allow for it.
    deadline = time.perf_counter() + cap + 120.0
    submitted_at: float | None = None
    capped = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=workdir, start_new_session=True)
        try:
            while proc.poll() is None:
                now = time.perf_counter()
                if submitted_at is None and "submitted" in _read_events(out_path):
                    submitted_at = now
                if now > deadline or (submitted_at is not None and now > submitted_at + cap):
                    capped = True
                    break
                time.sleep(0.5)
        finally:
            _kill_group(proc)
    events = _read_events(out_path)
    extra: dict[str, Any] = {}
    if "built" in events:
        extra["build_seconds"] = events["built"]["build_seconds"]
    if "submitted" in events:
        extra["submit_seconds"] = events["submitted"]["submit_seconds"]
    if "done" in events:
        done = events["done"]
        if done["failed_jobs"]:
            raise BenchError(f"job failed: {done['failed_jobs']}")
        return timed_rate("hq-engine", tasks, done["seconds"], **extra)
    if capped and "progress" in events:
        last = events["progress"]
        finished, seconds = int(last["finished"]), float(last["seconds"])
        extra.update(capped_at=cap, finished=finished)
        log(f"hq-engine {tasks}: capped after {seconds:.0f} s with {finished} tasks finished")
        return Result("hq-engine", tasks, seconds, finished / seconds if seconds else None, extra)
    reason = "timed out" if capped else f"exit code {proc.returncode}"
    raise BenchError(f"{reason}: {_tail(err_path)}")


# --------------------------------------------------------------------------------------------
# hqpy


class HqpyCluster:
    """A real hqpy server (and optionally one worker) in a temporary server directory."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir()
        self.server_dir = self.workdir / "server"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.server_pid: int | None = None
        self.worker_pid: int | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hqpy", "--server-dir", str(self.server_dir), *args]

    def _spawn(
        self, name: str, args: Sequence[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "wb") as logfile:
            proc = subprocess.Popen(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run one hq command; raise BenchError on a timeout or a non-zero exit code."""
        try:
            done = subprocess.run(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.workdir,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`hq {' '.join(args)}` timed out after {timeout:.0f} s") from exc
        if done.returncode != 0:
            text = _last_lines(done.stderr) or _last_lines(done.stdout)
            raise BenchError(f"`hq {' '.join(args)}` exited with {done.returncode}: {text}")
        return done

    def start_server(self) -> None:
        self.server = self._spawn("server", ["server", "start"], {})
        info = self._wait_for(
            "the server to start",
            self.server,
            lambda: json.loads(self.run("--output-mode", "json", "server", "info").stdout),
        )
        pid = info.get("pid") if isinstance(info, dict) else None
        self.server_pid = pid if isinstance(pid, int) else self.server.pid

    def start_worker(self, cpus: int = 2, env: dict[str, str] | None = None) -> None:
        worker = self._spawn("worker", ["worker", "start", "--cpus", str(cpus)], env or {})
        self.worker_pid = worker.pid

        def registered() -> bool:
            workers = json.loads(self.run("--output-mode", "json", "worker", "list").stdout)
            if not workers:
                raise BenchError("no worker registered yet")
            return True

        self._wait_for("the worker to register", worker, registered)

    def _wait_for(self, what: str, proc: subprocess.Popen[bytes], probe: Callable[[], Any]) -> Any:
        deadline = time.perf_counter() + STARTUP_TIMEOUT
        last_error = ""
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{what}: process exited with {proc.returncode}: {self.log_tail()}"
                )
            try:
                return probe()
            except (BenchError, ValueError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise BenchError(f"timed out waiting for {what}: {last_error}")

    def rss(self) -> dict[str, float]:
        """VmRSS and VmHWM of the server process, in MiB."""
        if self.server_pid is None:
            raise BenchError("server pid unknown")
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.server_pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
        return values

    def cpu(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        if self.server_pid is None:
            raise BenchError("server pid unknown")
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        tails = [f"{p.name}: {_tail(p)}" for p in sorted(self.workdir.glob("*.log"))]
        return " | ".join(tails)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            try:
                self.run("server", "stop", timeout=STOP_TIMEOUT)
            except BenchError as exc:
                log(f"note: {exc}")
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"note: pid {proc.pid} did not exit after `hq server stop`; killing it")
            _kill_group(proc)


@contextmanager
def hqpy_cluster(workdir: Path, name: str) -> Iterator[HqpyCluster]:
    cluster = HqpyCluster(workdir, name)
    try:
        yield cluster
    except BenchError as exc:
        raise BenchError(f"{exc} [logs: {cluster.log_tail()}]") from exc
    finally:
        cluster.stop()


FLOOR_BESIDE_TASKS = 2_000
"""Tasks of the floor measured right before and right after each `hqpy` row."""


def bench_hqpy_throughput(
    bench: str, tasks: int, workdir: Path, wait_timeout: float, worker_env: dict[str, str]
) -> Result:
    """`tasks` `true` tasks on one 2-cpu worker. When the worker spawns real processes, a short
    floor is measured right before and right after the row: on a shared machine the load
    changes within minutes, and `floor_ratio` (rate / mean of those floors) is the figure that
    can be compared between runs.

    The CPU each task cost the worker, the server and the task process itself, and how busy the
    cpus were, show what bounds the row: the server, the worker and the tasks share the cores
    the floor has for itself. `cpu_budget_ratio` (the floor's CPU per task over this row's) is
    the `floor_ratio` the row would reach if it kept the cores as busy as the floor does."""
    spawns = worker_env.get("HQPY_ZERO_WORKER") != "1"
    with hqpy_cluster(workdir, f"{bench}-{tasks}") as cluster:
        cluster.start_server()
        cluster.start_worker(2, worker_env)
        floors = [bench_floor(FLOOR_BESIDE_TASKS, wait_timeout).rate] if spawns else []
        assert cluster.server_pid is not None and cluster.worker_pid is not None
        server_before = _process_cpu(cluster.server_pid)
        worker_before = _process_cpu(cluster.worker_pid)
        machine_before = _machine_times()
        start = time.perf_counter()
        cluster.run("submit", "--array", f"1-{tasks}", *NO_OUTPUT, "--", "true")
        submitted = time.perf_counter()
        cluster.run("job", "wait", "last", timeout=wait_timeout)
        end = time.perf_counter()
        machine_after = _machine_times()
        server_after = _process_cpu(cluster.server_pid)
        worker_after = _process_cpu(cluster.worker_pid)
        cpu: dict[str, Any] = {
            "worker_cpu_us": (worker_after[0] - worker_before[0]) / tasks * 1e6,
            "server_cpu_us": (server_after[0] - server_before[0]) / tasks * 1e6,
            "busy_pct": _busy_pct(machine_before, machine_after),
        }
        if spawns:
            cpu["task_cpu_us"] = (worker_after[1] - worker_before[1]) / tasks * 1e6
            floor_after = bench_floor(FLOOR_BESIDE_TASKS, wait_timeout)
            floors.append(floor_after.rate)
            floor_cpu = floor_after.extra["parent_cpu_us"] + floor_after.extra["task_cpu_us"]
            row_cpu = cpu["worker_cpu_us"] + cpu["server_cpu_us"] + cpu["task_cpu_us"]
            cpu["floor_cpu_us"] = floor_cpu
            cpu["floor_busy_pct"] = floor_after.extra["busy_pct"]
            cpu["cpu_budget_ratio"] = floor_cpu / row_cpu if row_cpu > 0 else None
        # The server's own clock, from the submission it received to the last task's end:
        # what the scheduler, the protocol and the worker do, without client start-up.
        info = json.loads(cluster.run("--output-mode", "json", "job", "info", "last").stdout)[0]
        makespan = _iso_seconds(info["finished_at"]) - _iso_seconds(info["started_at"])
        extra: dict[str, Any] = {}
        if floors and all(f is not None for f in floors):
            floor_rate = sum(f for f in floors if f is not None) / len(floors)
            extra = {"floor_rate": floor_rate, "floor_ratio": tasks / (end - start) / floor_rate}
            if makespan > 0:
                extra["server_floor_ratio"] = tasks / makespan / floor_rate
        return timed_rate(
            bench,
            tasks,
            end - start,
            submit_seconds=submitted - start,
            wait_seconds=end - submitted,
            server_seconds=makespan,
            server_rate=tasks / makespan if makespan > 0 else None,
            **extra,
            **cpu,
        )


def _iso_seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def _job_json(cluster: HqpyCluster) -> dict[str, Any]:
    jobs = json.loads(cluster.run("--output-mode", "json", "job", "info", "last").stdout)
    job: dict[str, Any] = jobs[0]
    return job


def bench_hqpy_autoalloc(tasks: int, workdir: Path, wait_timeout: float) -> Result:
    """A local queue (backlog 2, 2 workers per allocation) against hand-started workers.

    Reaction times come from the server's own timestamps: job submission -> allocation queued
    (the backend's submit call), and worker registration -> its first task's start.
    """
    queue = ["alloc", "add", "local", "--time-limit", "10m", "--backlog", "2"]
    queue += ["--workers-per-alloc", "2", "--idle-timeout", "30s", "--no-dry-run"]
    array = ["submit", "--array", f"1-{tasks}", *NO_OUTPUT, "--", "true"]
    with hqpy_cluster(workdir, "autoalloc-reaction") as cluster:
        cluster.start_server()
        cluster.run(*queue)
        cluster.run("submit", *NO_OUTPUT, "--", "true")
        cluster.run("job", "wait", "last", timeout=wait_timeout)
        job = _job_json(cluster)
        allocs = json.loads(cluster.run("--output-mode", "json", "alloc", "info", "1").stdout)
        workers = json.loads(cluster.run("--output-mode", "json", "worker", "list").stdout)
        submitted = _iso_seconds(job["started_at"])
        queued = min(_iso_seconds(a["queued_at"]) for a in allocs)
        registered = min(_iso_seconds(w["started"]) for w in workers)
        first_task = _iso_seconds(job["tasks"][0]["started_at"])
    with hqpy_cluster(workdir, "autoalloc-array") as cluster:
        cluster.start_server()
        cluster.run(*queue)
        start = time.perf_counter()
        cluster.run(*array)
        cluster.run("job", "wait", "last", timeout=wait_timeout)
        queue_seconds = time.perf_counter() - start
    with hqpy_cluster(workdir, "autoalloc-by-hand") as cluster:
        cluster.start_server()
        cluster.start_worker(1)
        cluster.start_worker(1)
        start = time.perf_counter()
        cluster.run(*array)
        cluster.run("job", "wait", "last", timeout=wait_timeout)
        hand_seconds = time.perf_counter() - start
    return timed_rate(
        "hqpy-autoalloc",
        tasks,
        queue_seconds,
        submit_to_backend_ms=(queued - submitted) * 1000,
        registration_to_first_task_ms=(first_task - registered) * 1000,
        hand_started_seconds=hand_seconds,
        ratio_to_hand_started=queue_seconds / hand_seconds,
    )


def bench_hqpy_array(tasks: int, workdir: Path) -> Result:
    with hqpy_cluster(workdir, f"hqpy-array-{tasks}") as cluster:
        cluster.start_server()
        before = cluster.rss()
        start = time.perf_counter()
        cluster.run("submit", "--array", f"0-{tasks - 1}", *NO_OUTPUT, "--", "true")
        seconds = time.perf_counter() - start
        after = cluster.rss()
        list_start = time.perf_counter()
        listed = json.loads(cluster.run("--output-mode", "json", "job", "list").stdout)
        list_seconds = time.perf_counter() - list_start
        settled = cluster.rss()
        # The CLI's own start-up cost, which every submit and list above includes.
        version_start = time.perf_counter()
        cluster.run("--version")
        version_seconds = time.perf_counter() - version_start
        return Result(
            "hqpy-array",
            tasks,
            seconds,
            tasks / seconds,
            {
                "rss_mb_before": before.get("VmRSS"),
                "rss_mb": after.get("VmRSS"),
                "rss_mb_after_list": settled.get("VmRSS"),
                "peak_rss_mb": settled.get("VmHWM"),
                "job_list_seconds": list_seconds,
                "jobs_listed": len(listed) if isinstance(listed, list) else None,
                "cli_version_seconds": version_seconds,
            },
        )


# --------------------------------------------------------------------------------------------
# the server alone: simulated workers (bigjob, many-workers)

SIM_READY_TIMEOUT = 60.0
BIGJOB_TASKS = 1_000_000
BIGJOB_CLI_TASKS = 100_000
MANY_WORKERS = 64
MANY_WORKERS_TASKS = 200_000


def sim_workers_child(count: int, cpus: int, server_dir: str, heartbeat: float = 3600.0) -> int:
    """Child mode: `count` simulated workers of `cpus` cpus on one trio loop. Each finishes a
    task the moment its assignment arrives (writing the task's stdout file if it has one, so
    that `hq job cat` has something to print); when the server closes the connections, prints
    one JSON line with the tasks each worker ran. With a short `heartbeat`, each worker also
    sends its heartbeats, as a real one does."""
    import resource

    import trio

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, count + 256):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))

    from hqpy.common import serverdir
    from hqpy.common.resources import parse_descriptor
    from hqpy.protocol import codec
    from hqpy.protocol import messages as m
    from hqpy.protocol.auth import peer_handshake
    from hqpy.protocol.framing import FramedStream

    counts = [0] * count
    finished = int(m.TASK_FINISHED)
    spans: dict[int, list[float]] = {}
    """Per job: when its first task arrived, when its last update went out."""

    async def one(index: int) -> None:
        record = serverdir.load_access(Path(server_dir))
        assert record.worker is not None and record.worker.secret_key
        stream = await trio.open_tcp_stream(record.worker.host, record.worker.port)
        framed = FramedStream(stream)
        await peer_handshake(framed, "worker", record.worker.secret_key)
        config = m.WorkerConfiguration(
            hostname=f"sim{index}",
            work_dir="/nonexistent",
            listen_address=f"sim{index}:0",
            heartbeat_interval=heartbeat,
            idle_timeout=None,
            time_limit=None,
            resources=(parse_descriptor("cpus", str(cpus)),),
            group="default",
            on_server_lost="stop",
            pid=os.getpid(),
        )
        await framed.send(m.RegisterWorker(config), codec.FROM_WORKER)
        await framed.receive(codec.TO_WORKER)
        async with trio.open_nursery() as nursery:
            if heartbeat < 3600.0:
                nursery.start_soon(beat, framed)
            await serve(index, framed)
            nursery.cancel_scope.cancel()

    async def beat(framed: FramedStream) -> None:
        # Spread over the interval, so 1,000 workers do not beat in the same tick.
        await trio.sleep(heartbeat * (hash(id(framed)) % 1000) / 1000)
        frame = codec.encode(m.Heartbeat(), codec.FROM_WORKER)
        while True:
            try:
                await framed.send_frame(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            await trio.sleep(heartbeat)

    async def serve(index: int, framed: FramedStream) -> None:
        bodies: dict[int, m.TaskBody] = {}
        while True:
            try:
                msg = await framed.receive(codec.TO_WORKER)
            except (trio.BrokenResourceError, OSError):
                msg = None
            if msg is None or isinstance(msg, m.StopWorker):
                return
            if not isinstance(msg, m.ComputeTasks):
                continue
            for body in msg.bodies:
                bodies[body.group_id] = body
            now = time.time()
            updates = []
            for job_id, task_id, instance_id, group_id, _entry in msg.tasks:
                if job_id not in spans:
                    spans[job_id] = [now, now]
                body = bodies[group_id]
                if body.stdout is not None:
                    stdout = body.resolve_paths(task_id, instance_id)[1]
                    if stdout is not None:
                        # What the task would write; blocking is fine for a simulation.
                        Path(stdout).write_text(f"task {task_id}\n")  # noqa: ASYNC240
                updates.append([job_id, task_id, instance_id, finished, now, now, None])
            counts[index] += len(updates)
            try:
                await framed.send_frame(codec.encode(m.TaskUpdates(updates), codec.FROM_WORKER))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            sent = time.time()
            for row in updates:
                spans[row[0]][1] = sent

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)

    trio.run(main)
    print(json.dumps({"event": "done", "counts": counts, "spans": spans}), flush=True)
    return 0


class SimWorkers:
    """The simulated-workers child of a cluster (see `sim_workers_child`)."""

    def __init__(
        self, cluster: HqpyCluster, count: int, cpus: int = 2, heartbeat: float = 3600.0
    ) -> None:
        self.cluster = cluster
        self.count = count
        self.out_path = cluster.workdir / "sim-workers.out"
        cmd = [sys.executable, os.path.abspath(__file__), "--sim-workers-child", str(count)]
        cmd += ["--sim-cpus", str(cpus), "--sim-server-dir", str(cluster.server_dir)]
        cmd += ["--sim-heartbeat", str(heartbeat)]
        with open(self.out_path, "wb") as out, open(cluster.workdir / "sim.log", "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, cwd=cluster.workdir, start_new_session=True
            )
        cluster.procs.append(self.proc)

        def registered() -> bool:
            workers = json.loads(cluster.run("--output-mode", "json", "worker", "list").stdout)
            if len(workers) < count:
                raise BenchError(f"{len(workers)} of {count} simulated workers registered")
            return True

        cluster._wait_for("the simulated workers to register", self.proc, registered)

    def result(self) -> tuple[list[int], dict[int, float]]:
        """Tasks per worker, and seconds from each job's first assignment to its last update;
        call after the server stopped."""
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the simulated workers did not end with the server") from exc
        done = _read_events(self.out_path).get("done")
        if done is None:
            raise BenchError(
                f"the simulated workers failed: {_tail(self.cluster.workdir / 'sim.log')}"
            )
        spans = {int(job): last - first for job, (first, last) in done["spans"].items()}
        return list(done["counts"]), spans


def _server_run(
    cluster: HqpyCluster, tasks: int, timeout: float, *options: str
) -> tuple[int, float]:
    """Submit an array of `tasks` and wait for it: the job's id and the wall time (with the
    start-up of two clients; the simulated workers time the job from its first assignment)."""
    start = time.perf_counter()
    submit = ("--output-mode", "json", "submit", "--array", f"1-{tasks}", *options, "--", "true")
    job_id = int(json.loads(cluster.run(*submit).stdout)["id"])
    cluster.run("job", "wait", str(job_id), timeout=timeout)
    return job_id, time.perf_counter() - start


_client_cpu: list[float] = [0.0]
"""CPU seconds of the last `_client_run` command."""


def _client_run(cluster: HqpyCluster, *args: str) -> tuple[float, float, int]:
    """One hq command with its output thrown away: (seconds, peak RSS in MiB, output bytes).
    Its CPU time is in `_client_cpu` (wall times drift with the machine's load)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cluster.command(*args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=cluster.workdir,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        _client_cpu[:] = [usage.ru_utime + usage.ru_stime]
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        size = out.seek(0, os.SEEK_END)
    if proc.returncode != 0:
        raise BenchError(f"`hq {' '.join(args)}` exited with {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, size


def bench_bigjob(tasks: int, cli_tasks: int, workdir: Path) -> Result:
    """1,000,000 tasks through the server alone, then the CLI on a finished 100,000-task job."""
    extra: dict[str, Any] = {}
    with hqpy_cluster(workdir, f"bigjob-{tasks}") as cluster:
        cluster.start_server()
        sim = SimWorkers(cluster, 1)
        before = cluster.rss()
        big, seconds = _server_run(cluster, tasks, wait_timeout(tasks), *NO_OUTPUT)
        after = cluster.rss()
        extra.update(
            rss_mb_before=before.get("VmRSS"),
            rss_mb_end=after.get("VmRSS"),
            peak_rss_mb=after.get("VmHWM"),
        )
        out_dir = cluster.workdir / "out"
        out_dir.mkdir()
        stdout = str(out_dir / "%{TASK_ID}.out")
        job, _ = _server_run(
            cluster, cli_tasks, wait_timeout(cli_tasks), "--stdout", stdout, "--stderr", "none"
        )
        for name, args in (
            ("job_info", ("job", "info", str(job))),
            ("task_list_json", ("--output-mode", "json", "task", "list", str(job))),
            ("job_cat", ("job", "cat", str(job), "stdout")),
        ):
            server_cpu = cluster.cpu()
            took, rss, size = _client_run(cluster, *args)
            extra[f"{name}_server_cpu_seconds"] = cluster.cpu() - server_cpu
            extra[f"{name}_client_cpu_seconds"] = _client_cpu[0]
            extra[f"{name}_seconds"] = took
            extra[f"{name}_client_mb"] = rss
            extra[f"{name}_output_mb"] = size / 2**20
        extra["rss_mb_after_cli"] = cluster.rss().get("VmRSS")
    counts, spans = sim.result()
    if sum(counts) < tasks + cli_tasks:
        raise BenchError(f"the simulated workers ran {sum(counts)} tasks of {tasks + cli_tasks}")
    extra["server_rate"] = tasks / spans[big]
    extra["targets_met"] = (
        extra["server_rate"] >= 20_000
        and (extra["rss_mb_end"] or 0) <= 200
        and extra["job_info_seconds"] < 0.5
        and extra["task_list_json_seconds"] < 3
        and extra["task_list_json_client_mb"] < 200
    )
    return Result("bigjob", tasks, seconds, tasks / seconds, extra)


def bench_many_workers(workers: int, tasks: int, workdir: Path) -> Result:
    """`tasks` tasks over `workers` simulated 2-cpu workers: rate and spread of tasks."""
    with hqpy_cluster(workdir, f"many-workers-{workers}") as cluster:
        cluster.start_server()
        sim = SimWorkers(cluster, workers)
        job, seconds = _server_run(cluster, tasks, wait_timeout(tasks), *NO_OUTPUT)
    counts, spans = sim.result()
    mean = sum(counts) / len(counts)
    spread = max(abs(c - mean) for c in counts) / mean * 100 if mean else 0.0
    rate = tasks / spans[job]
    log(f"many-workers: tasks per worker min {min(counts)}, max {max(counts)}, mean {mean:.0f}")
    return Result(
        "many-workers",
        tasks,
        seconds,
        tasks / seconds,
        {
            "workers": workers,
            "server_rate": rate,
            "min_tasks": min(counts),
            "max_tasks": max(counts),
            "spread_pct": spread,
            "targets_met": rate >= 20_000 and spread <= 10.0,
        },
    )


LOAD_WORKERS = 1_000
LOAD_TASKS = 1_000_000
LOAD_HEARTBEAT = 8.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_load(workers: int, tasks: int, workdir: Path) -> Result:
    """`tasks` tasks over `workers` simulated workers that heartbeat: the server's peak RSS, CPU
    per task, rate, and the spread of tasks over the workers."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, workers + 256)
    if soft < wanted:
        # The server inherits it: one socket per worker.
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with hqpy_cluster(workdir, f"load-{workers}") as cluster:
        cluster.start_server()
        registering = time.perf_counter()
        sim = SimWorkers(cluster, workers, heartbeat=LOAD_HEARTBEAT)
        registered = time.perf_counter() - registering
        assert cluster.server_pid is not None
        idle_rss = cluster.rss().get("VmRSS")
        cpu_before = _cpu_seconds(cluster.server_pid)
        job, seconds = _server_run(cluster, tasks, max(wait_timeout(tasks), 900.0), *NO_OUTPUT)
        cpu = _cpu_seconds(cluster.server_pid) - cpu_before
        memory = cluster.rss()
        alive = json.loads(cluster.run("--output-mode", "json", "worker", "list").stdout)
    counts, spans = sim.result()
    if sum(counts) < tasks:
        raise BenchError(f"the simulated workers ran {sum(counts)} tasks of {tasks}")
    mean = sum(counts) / len(counts)
    stddev = (sum((c - mean) ** 2 for c in counts) / len(counts)) ** 0.5
    log(
        f"load: {workers} workers, tasks per worker min {min(counts)} max {max(counts)} "
        f"mean {mean:.0f} stddev {stddev:.1f}; server CPU {cpu:.1f} s"
    )
    return Result(
        "load",
        tasks,
        seconds,
        tasks / seconds,
        {
            "workers": workers,
            "workers_alive_at_end": len(alive),
            "register_seconds": registered,
            "server_rate": tasks / spans[job],
            "server_cpu_seconds": cpu,
            "server_cpu_us_per_task": cpu / tasks * 1e6,
            "rss_mb_idle_workers": idle_rss,
            "rss_mb_end": memory.get("VmRSS"),
            "peak_rss_mb": memory.get("VmHWM"),
            "min_tasks": min(counts),
            "max_tasks": max(counts),
            "stddev_tasks": stddev,
            "stddev_pct": stddev / mean * 100 if mean else 0.0,
        },
    )


def bench_seal(frames: int) -> Result:
    """Frames per second sealed and opened beside plain frames, both through a FrameDecoder."""
    from hqpy.protocol import codec
    from hqpy.protocol import messages as m
    from hqpy.protocol.frames import FRAME_LIMIT, FrameDecoder, encode_frame
    from hqpy.protocol.handshake import new_nonce, new_secret
    from hqpy.protocol.seal import TAG_SIZE, peer_pair, server_pair

    now = time.time()
    rows = [[1, i, 0, int(m.TASK_FINISHED), now, now, None] for i in range(4)]
    update = codec.encode(m.TaskUpdates(rows), codec.FROM_WORKER)
    extra: dict[str, Any] = {"update_frame_bytes": len(update)}
    secret, server_nonce, peer_nonce = new_secret(), new_nonce(), new_nonce()

    def run(payload: bytes, count: int, sealed: bool) -> float:
        sealer, _ = peer_pair(secret, "worker", server_nonce, peer_nonce)
        _, opener = server_pair(secret, "worker", server_nonce, peer_nonce)
        decoder = FrameDecoder(FRAME_LIMIT + TAG_SIZE)
        start = time.perf_counter()
        for _ in range(count):
            decoder.feed(sealer.seal(payload) if sealed else encode_frame(payload))
            frame = decoder.next_frame()
            assert frame is not None
            if sealed:
                frame = opener.open(frame)
        return count / (time.perf_counter() - start)

    big = os.urandom(64 * 1024)
    for name, payload, count in (("update", update, frames), ("64k", big, max(1, frames // 20))):
        plain = run(payload, count, False)
        sealed = run(payload, count, True)
        extra[f"{name}_plain_fps"] = plain
        extra[f"{name}_sealed_fps"] = sealed
        extra[f"{name}_sealed_us"] = 1e6 / sealed - 1e6 / plain
        if name == "64k":
            extra["64k_sealed_mb_s"] = sealed * len(payload) / 2**20
    rate = extra["update_sealed_fps"]
    return Result("seal", frames, frames / rate, rate, extra)


STARTUP_RUNS = 7
SEAL_FRAMES = 200_000


def bench_startup(workdir: Path, runs: int = STARTUP_RUNS) -> Result:
    """Time from `server start`'s spawn to its access file, next to `python -c pass`; and from
    a `worker start`'s spawn to its registration, with that fresh server (its own start-up is
    then part of the figure) and once the server answers (the worker's start-up alone)."""
    times, registered, registered_ready, registered_cpu = [], [], [], []
    for n in range(runs):
        server_dir = workdir / f"startup-{n}"
        access = server_dir / "hq-current" / "access.json"
        cmd = [sys.executable, "-m", "hqpy", "--server-dir", str(server_dir), "server", "start"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            while not access.exists():
                if proc.poll() is not None or time.perf_counter() - start > STARTUP_TIMEOUT:
                    raise BenchError(f"server start wrote no access file (exit {proc.poll()})")
                time.sleep(0.001)
            times.append(time.perf_counter() - start)
            registered.append(_worker_registration(server_dir)[0])
            _wait_answering(server_dir)
            took, cpu = _worker_registration(server_dir)
            registered_ready.append(took)
            registered_cpu.append(cpu)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=STOP_TIMEOUT)
            if code != 0:
                raise BenchError(f"server start exited with {code} on SIGINT")
        finally:
            _kill_group(proc)
    times.sort()
    registered.sort()
    registered_ready.sort()
    registered_cpu.sort()
    base, base_cpu = _medians([sys.executable, "-c", "pass"], workdir, runs)
    median = times[len(times) // 2]
    return Result(
        "startup",
        runs,
        median,
        None,
        {
            "access_file_ms": median * 1000,
            "python_pass_ms": base * 1000,
            "best_ms": times[0] * 1000,
            "worker_registered_ms": registered[len(registered) // 2] * 1000,
            "worker_registered_best_ms": registered[0] * 1000,
            "worker_registered_ready_ms": registered_ready[len(registered_ready) // 2] * 1000,
            "worker_registered_ready_best_ms": registered_ready[0] * 1000,
            "worker_registered_ready_cpu_ms": registered_cpu[len(registered_cpu) // 2] * 1000,
            "python_pass_cpu_ms": base_cpu * 1000,
        },
    )


def _on_cpu_seconds(pid: int) -> float:
    """CPU time of a running process so far: the sum over its threads of `schedstat`'s first
    field (nanoseconds on a CPU; `stat`'s ticks are 10 ms coarse)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return total / 1e9


def _wait_answering(server_dir: Path) -> None:
    """Until the server completes a client's handshake: it has finished starting."""
    from hqpy.client.blocking import connect

    with connect(server_dir):
        pass


def _worker_registration(server_dir: Path) -> tuple[float, float]:
    """Time from `worker start`'s spawn to its `registered` log line (issue 14 item 11: within
    150 ms), the log file polled every millisecond, and the CPU time the worker had used by then
    (all its threads, from `/proc`: it drifts far less than the wall time on a loaded machine);
    the worker is then stopped with SIGINT."""
    log_path = server_dir / "worker-startup.log"
    cmd = [sys.executable, "-m", "hqpy", "--server-dir", str(server_dir), "worker", "start"]
    with open(log_path, "wb") as logfile:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "--cpus", "1"], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while b"registered" not in log_path.read_bytes():
            if proc.poll() is not None or time.perf_counter() - start > STARTUP_TIMEOUT:
                raise BenchError(f"worker start did not register (exit {proc.poll()})")
            time.sleep(0.001)
        took = time.perf_counter() - start
        cpu = _on_cpu_seconds(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_TIMEOUT)
        return took, cpu
    finally:
        _kill_group(proc)


# --------------------------------------------------------------------------------------------
# cli: start-up time of `hq` from a regular install

CLI_RUNS = 21
CLI_TARGET_RATIO = 6.0
CLI_VERSION_TARGET_RATIO = 2.0


def _cli_venv(workdir: Path) -> Path:
    """A fresh venv with hqpy installed as users install it (`pip install .`, no editable
    finder on the import path)."""
    venv = workdir / "cli-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(repo)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise BenchError(f"pip install into {venv} failed: {_last_lines(done.stderr)}")
    return venv


def _median_seconds(cmd: Sequence[str], cwd: Path, runs: int) -> float:
    return _medians(cmd, cwd, runs)[0]


def _medians(cmd: Sequence[str], cwd: Path, runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `runs` runs of `cmd`. The CPU
    time is what the command itself costs: on a shared, loaded machine it drifts far less than
    the wall time, which also counts the waits for a core."""
    times, cpu = [], []
    for _ in range(runs):
        before = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise BenchError(f"`{' '.join(cmd)}` timed out") from exc
        times.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - before)  # communicate() reaped it: one child at a time
        if proc.returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` exited with {proc.returncode}")
    times.sort()
    cpu.sort()
    return times[len(times) // 2], cpu[len(cpu) // 2]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_cli(workdir: Path, venv: Path | None = None) -> Result:
    """Medians of client commands against a running server, next to `python -c pass`."""
    venv = venv or _cli_venv(workdir)
    python, hq = str(venv / "bin" / "python"), str(venv / "bin" / "hq")

    class VenvCluster(HqpyCluster):
        def command(self, *args: str) -> list[str]:
            return [hq, "--server-dir", str(self.server_dir), *args]

    cluster = VenvCluster(workdir, "cli")
    try:
        cluster.start_server()
        cluster.run("submit", *NO_OUTPUT, "--", "true")
        base, base_cpu = _medians([python, "-c", "pass"], cluster.workdir, CLI_RUNS)
        commands = {
            "version": [hq, "--version"],
            "job_list": cluster.command("job", "list"),
            "submit": cluster.command("submit", *NO_OUTPUT, "--", "true"),
            "job_info": cluster.command("job", "info", "1"),
        }
        measured = {
            name: _medians(cmd, cluster.workdir, CLI_RUNS) for name, cmd in commands.items()
        }
        medians = {name: wall for name, (wall, _) in measured.items()}
    except BenchError as exc:
        raise BenchError(f"{exc} [logs: {cluster.log_tail()}]") from exc
    finally:
        cluster.stop()
    extra: dict[str, Any] = {"python_pass_ms": base * 1000, "python_pass_cpu_ms": base_cpu * 1000}
    for name, seconds in medians.items():
        extra[f"{name}_ms"] = seconds * 1000
        extra[f"{name}_ratio"] = seconds / base
    for name, (_, cpu) in measured.items():
        extra[f"{name}_cpu_ms"] = cpu * 1000
        extra[f"{name}_cpu_ratio"] = cpu / base_cpu if base_cpu else None
    worst = max(medians["job_list"], medians["submit"], medians["job_info"]) / base
    extra["targets_met"] = (
        worst <= CLI_TARGET_RATIO and medians["version"] / base <= CLI_VERSION_TARGET_RATIO
    )
    log(
        f"cli: python -c pass {base * 1000:.1f} ms; "
        + ", ".join(f"{k} {v * 1000:.1f} ms ({v / base:.1f}x)" for k, v in medians.items())
        + f"; CPU: python -c pass {base_cpu * 1000:.1f} ms; "
        + ", ".join(
            f"{k} {c * 1000:.1f} ms ({c / base_cpu if base_cpu else 0:.1f}x)"
            for k, (_, c) in measured.items()
        )
    )
    return Result("cli", CLI_RUNS, medians["job_list"], None, extra)


# --------------------------------------------------------------------------------------------
# driver


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process we started (in its own session) and anything it left in its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"note: pid {proc.pid} survived SIGKILL")


def _tail(path: Path, lines: int = 3, chars: int = 500) -> str:
    """The last few non-blank lines of a log file, on one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return _last_lines(text, lines, chars)


def _last_lines(text: str, lines: int = 3, chars: int = 500) -> str:
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " / ".join(last)[-chars:]


@dataclass
class Plan:
    name: str
    tasks: int
    run: Callable[[], Result]


def wait_timeout(tasks: int) -> float:
    """A timeout generous enough for ~200 tasks/s, capped so that a stuck run ends."""
    return min(max(120.0, tasks / 200), 600.0)


def build_plan(args: argparse.Namespace, workdir: Path) -> list[Plan]:
    small, large = (2_000, 10_000) if args.quick else (10_000, 100_000)
    array = 1_000_000
    zero = {"HQPY_ZERO_WORKER": "1"}
    plan = [
        Plan("floor", small, lambda: bench_floor(small, wait_timeout(small))),
        Plan("hq-engine", small, lambda: bench_hq_engine(small, args.hq_cap, workdir)),
        Plan("hq-engine", large, lambda: bench_hq_engine(large, args.hq_cap, workdir)),
        Plan(
            "hqpy",
            small,
            lambda: bench_hqpy_throughput("hqpy", small, workdir, wait_timeout(small), {}),
        ),
        Plan(
            "hqpy",
            large,
            lambda: bench_hqpy_throughput("hqpy", large, workdir, wait_timeout(large), {}),
        ),
        Plan("hqpy-array", array, lambda: bench_hqpy_array(array, workdir)),
        Plan(
            "hqpy-autoalloc",
            small,
            lambda: bench_hqpy_autoalloc(small, workdir, wait_timeout(small)),
        ),
        Plan(
            "hqpy-server-only",
            large,
            lambda: bench_hqpy_throughput(
                "hqpy-server-only", large, workdir, wait_timeout(large), zero
            ),
        ),
        Plan("bigjob", BIGJOB_TASKS, lambda: bench_bigjob(BIGJOB_TASKS, BIGJOB_CLI_TASKS, workdir)),
        Plan(
            "many-workers",
            MANY_WORKERS_TASKS,
            lambda: bench_many_workers(MANY_WORKERS, MANY_WORKERS_TASKS, workdir),
        ),
        Plan("seal", SEAL_FRAMES, lambda: bench_seal(SEAL_FRAMES)),
        Plan("startup", STARTUP_RUNS, lambda: bench_startup(workdir)),
        Plan("cli", CLI_RUNS, lambda: bench_cli(workdir)),
    ]
    if args.only and "load" in args.only:
        workers, tasks = args.load_workers, args.load_tasks
        plan.append(Plan("load", tasks, lambda: bench_load(workers, tasks, workdir)))
    return [p for p in plan if not args.only or p.name in args.only]


def run_plan(plan: Sequence[Plan]) -> list[Result]:
    results: list[Result] = []
    for item in plan:
        log(f"{item.name} {item.tasks}: running")
        try:
            result = item.run()
        except Exception as exc:  # any failure is reported for this row only
            message = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
            )
            log(f"{item.name} {item.tasks}: FAILED: {message}")
            result = Result(item.name, item.tasks, error=message)
        else:
            rate = f"{result.rate:,.0f} tasks/s" if result.rate is not None else "-"
            log(f"{item.name} {item.tasks}: {result.seconds:.3f} s, {rate}")
        results.append(result)
    return results


def format_extra(result: Result) -> str:
    if result.error is not None:
        return f"ERROR: {result.error}"
    parts = []
    for key, value in result.extra.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3f}" if value < 100 else f"{key}={value:.0f}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def print_table(results: Sequence[Result]) -> None:
    rows = [("name", "tasks", "seconds", "tasks/s", "extra")]
    for r in results:
        rows.append(
            (
                r.bench,
                f"{r.tasks:,}",
                "-" if r.seconds is None else f"{r.seconds:.3f}",
                "-" if r.rate is None else f"{r.rate:,.0f}",
                format_extra(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in (1, 2, 3)]
        print("  ".join(cells + [row[4]]).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths) + "  -----")


# ---------------------------------------------------------------------------------------------
# Journal (`--journal`): throughput with the journal off and on in the same run, and the time a
# server takes to restore a 1,000,000-task array from its journal.


def _bench_journal_throughput(
    bench: str, tasks: int, workdir: Path, wait_timeout: float, journal: Path | None
) -> Result:
    with hqpy_cluster(workdir, f"{bench}-{tasks}") as cluster:
        args = ["server", "start"] + ([] if journal is None else ["--journal", str(journal)])
        server = cluster._spawn("server", args, {})
        cluster.server = server
        info = cluster._wait_for(
            "the server to start",
            server,
            lambda: json.loads(cluster.run("--output-mode", "json", "server", "info").stdout),
        )
        cluster.server_pid = info.get("pid") if isinstance(info, dict) else server.pid
        cluster.start_worker(2, {})
        start = time.perf_counter()
        cluster.run("submit", "--array", f"1-{tasks}", *NO_OUTPUT, "--", "true")
        cluster.run("job", "wait", "last", timeout=wait_timeout)
        end = time.perf_counter()
        info = json.loads(cluster.run("--output-mode", "json", "job", "info", "last").stdout)[0]
        makespan = _iso_seconds(info["finished_at"]) - _iso_seconds(info["started_at"])
        extra: dict[str, Any] = {"server_seconds": makespan, "server_rate": tasks / makespan}
        if journal is not None:
            extra["journal_bytes"] = journal.stat().st_size
        return timed_rate(bench, tasks, end - start, **extra)


def bench_journal_restore(tasks: int, workdir: Path) -> Result:
    """Read and replay a journal holding one `tasks`-task array that ran in 10,000-task
    flushes (starts and completions as ranges) until half of it finished, with 64 tasks
    running when the server went: what a restarted server does before it serves."""
    from hqpy.app import journaling
    from hqpy.common.resources import FRACTIONS, ResourceAmountRequest, ResourceRequest
    from hqpy.journal import file as journal_file
    from hqpy.journal import records as r
    from hqpy.protocol import messages as m
    from hqpy.server.state import ServerState

    path = workdir / "restore.hqj"
    desc = m.SubmitDesc(
        ids=f"0-{tasks - 1}",
        args=("true",),
        env={},
        cwd="%{SUBMIT_DIR}",
        stdout=None,
        stderr=None,
        submit_dir=str(workdir),
        request=ResourceRequest((ResourceAmountRequest("cpus", FRACTIONS),)),
    )
    records: list[r.Record] = [r.JobSubmitted(1, 1, 0.0, m.SubmitRequest(desc))]
    step = 10_000
    half = tasks // 2
    for first in range(0, half, step):
        last = min(first + step, half) - 1
        records.append(r.TasksUpdated([[1, 0, first, last]], [[1, first, last]], []))
    records.append(r.TasksUpdated([[1, 0, half, half + 63]], [], []))
    journal_file.write_atomically(path, records)
    start = time.perf_counter()
    loaded = journal_file.read(path)
    state = ServerState("bench")
    journaling.replay(state, loaded.records)
    seconds = time.perf_counter() - start
    job = state.jobs[1]
    if job.task_count != tasks:
        raise BenchError(f"restored {job.task_count} tasks, expected {tasks}")
    return Result(
        "journal-restore",
        tasks,
        seconds,
        None,
        {"journal_bytes": path.stat().st_size, "records": len(loaded.records)},
    )


def journal_plan(args: argparse.Namespace, workdir: Path) -> list[Plan]:
    tasks = 2_000 if args.quick else 10_000
    timeout = wait_timeout(tasks)
    return [
        Plan(
            "journal-off",
            tasks,
            lambda: _bench_journal_throughput("journal-off", tasks, workdir, timeout, None),
        ),
        Plan(
            "journal-on",
            tasks,
            lambda: _bench_journal_throughput(
                "journal-on", tasks, workdir, timeout, workdir / "journal-on.hqj"
            ),
        ),
        Plan("journal-restore", 1_000_000, lambda: bench_journal_restore(1_000_000, workdir)),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="2,000 / 10,000 tasks instead of 10,000 / 100,000"
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHES, metavar="NAME", help=f"run only {', '.join(BENCHES)}"
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines")
    parser.add_argument(
        "--journal",
        action="store_true",
        help="only the journal benchmarks: throughput with the journal off and on, and the "
        "restore of a 1,000,000-task array",
    )
    parser.add_argument(
        "--hq-cap",
        type=float,
        default=HQ_ENGINE_CAP,
        metavar="SECONDS",
        help="wall-time cap of one HyperQueue-engine run; past it, report the rate so far "
        f"(default {HQ_ENGINE_CAP:.0f})",
    )
    # Internal: the HyperQueue engine measurement runs in a child process.
    parser.add_argument("--hq-engine-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hq-engine-server-dir", help=argparse.SUPPRESS)
    # Internal: the simulated workers of `bigjob` and `many-workers` run in a child process.
    parser.add_argument("--sim-workers-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sim-cpus", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--sim-server-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sim-heartbeat", type=float, default=3600.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--load-workers",
        type=int,
        default=LOAD_WORKERS,
        metavar="N",
        help=f"simulated workers of `--only load` (default {LOAD_WORKERS:,})",
    )
    parser.add_argument(
        "--load-tasks",
        type=int,
        default=LOAD_TASKS,
        metavar="N",
        help=f"tasks of `--only load` (default {LOAD_TASKS:,})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    global _log_enabled
    args = parse_args(argv)
    if args.hq_engine_child is not None:
        return hq_engine_child(args.hq_engine_child, args.hq_engine_server_dir)
    if args.sim_workers_child is not None:
        return sim_workers_child(
            args.sim_workers_child, args.sim_cpus, args.sim_server_dir, args.sim_heartbeat
        )
    _log_enabled = not args.json_only
    with tempfile.TemporaryDirectory(prefix="hqpy-bench-") as tmp:
        workdir = Path(tmp)
        log(f"work directory {workdir}, {os.cpu_count()} cpus, python {sys.version.split()[0]}")
        total = time.perf_counter()
        plan = journal_plan(args, workdir) if args.journal else build_plan(args, workdir)
        results = run_plan(plan)
        log(f"total {time.perf_counter() - total:.0f} s")
    if not args.json_only:
        print()
        print_table(results)
        print()
    for result in results:
        print(result.to_json())
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
